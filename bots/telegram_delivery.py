"""Telegram messages the bot sends of its own accord (fine-tune outcomes and admins' answers, each delivered once),
and the command menus it sets at start."""

from __future__ import annotations

import asyncio
import functools
import logging

from telegram import BotCommand, BotCommandScopeChat, BotCommandScopeDefault
from telegram.error import TelegramError
from telegram.ext import Application, ContextTypes

from bots.commands import ADMIN, PUBLIC
from bots.core import BotCore, RetrainOutcome
from bots.split import split_message
from qabot.shapes import ReplyTo

logger = logging.getLogger(__name__)

MESSAGE_LIMIT = 4096
PLATFORM = "telegram"


async def deliver(app: Application, where: ReplyTo, outcome: RetrainOutcome) -> None:
    """A fine-tune's outcome, with the loss curve, as replies to the request (also after a bot restart)."""
    options = {"reply_to_message_id": int(where.message) if where.message else None, "allow_sending_without_reply": True}
    for part in split_message(outcome.text, MESSAGE_LIMIT):
        await app.bot.send_message(int(where.chat), part, **options)
    if outcome.image is not None:
        await app.bot.send_photo(int(where.chat), outcome.image, caption="Loss and accuracy during training", **options)


async def notify(app: Application, chat: str, text: str) -> None:
    """Post an admin's answer in a chat where the question was asked."""
    for part in split_message(text, MESSAGE_LIMIT):
        await app.bot.send_message(int(chat), part)


async def alert_admins(app: Application, text: str, chat: str) -> None:
    """Tell each admin of QABOT_TELEGRAM_ADMINS in their private chat with the bot (one who never opened it misses it)."""
    core: BotCore = app.bot_data["core"]
    reached = 0
    for admin in core.settings.telegram_admins:
        try:
            await app.bot.send_message(admin, text)
            reached += 1
        except TelegramError as exc:  # blocked, or never started a chat with the bot
            logger.warning("could not tell admin %s: %s", admin, exc)
    if core.settings.telegram_admins and not reached:
        raise RuntimeError("no admin could be reached")


async def set_menus(app: Application) -> None:
    """Telegram's command menus (bots.commands): the public commands for everyone, and in each admin's private chat
    (a chat scope: the Bot API has no per-user scope for private chats) the admin commands too. An admin who never
    opened a chat with the bot cannot get one yet: logged, and the bot carries on. The bot still checks admins itself."""
    public = [BotCommand(c.name, c.help) for c in PUBLIC]
    try:
        await app.bot.set_my_commands(public, scope=BotCommandScopeDefault())
    except TelegramError as exc:
        logger.warning("could not set the command menu: %s", exc)
    for admin in app.bot_data["core"].settings.telegram_admins:
        await set_admin_menu(app, admin)


async def set_admin_menu(app: Application, chat: int) -> None:
    """Every command in the menu of an admin's private chat (again on the admin's /start or /help)."""
    everything = [BotCommand(c.name, c.help) for c in (*PUBLIC, *ADMIN)]
    try:
        await app.bot.set_my_commands(everything, scope=BotCommandScopeChat(chat))
    except TelegramError as exc:
        logger.info("no admin command menu in chat %s yet (the admin has not opened a chat with the bot): %s", chat, exc)


async def start_delivery(app: Application) -> None:
    """At start: the command menus; then deliver finished fine-tunes nobody reported and admins' answers (each once),
    now and every few seconds."""
    await set_menus(app)
    core: BotCore = app.bot_data["core"]
    task = core.keep_delivering(PLATFORM, functools.partial(deliver, app), functools.partial(notify, app))
    app.bot_data["delivery"] = asyncio.create_task(task)


async def stop_delivery(app: Application) -> None:
    task = app.bot_data.pop("delivery", None)
    if task is not None:
        task.cancel()


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log handler errors; the bot keeps running."""
    logger.error("a handler failed", exc_info=context.error)
