"""How the Telegram bot sends: replies split at Telegram's limit, the messages it sends of its own accord
(bots.delivery: fine-tune outcomes, admins' answers, alerts), and the command menus it sets at start."""

from __future__ import annotations

import asyncio
import logging

from telegram import BotCommand, BotCommandScopeChat, BotCommandScopeDefault, Message
from telegram.error import TelegramError
from telegram.ext import Application, ContextTypes

from bots.commands import ADMIN, PUBLIC
from bots.core import BotCore
from bots.delivery import Delivery
from bots.split import split_message
from qabot.shapes import ReplyTo

logger = logging.getLogger(__name__)

MESSAGE_LIMIT = 4096
PLATFORM = "telegram"


def core_of(context: ContextTypes.DEFAULT_TYPE) -> BotCore:
    return context.application.bot_data["core"]


async def reply(message: Message, text: str) -> list[Message]:
    """Reply to a message, split at Telegram's length limit; the messages sent. A message deleted meanwhile (a group's
    anti-spam bot often deletes commands) still gets its reply, without the quote."""
    return [
        await message.reply_text(part, do_quote=True, allow_sending_without_reply=True)
        for part in split_message(text, MESSAGE_LIMIT)
    ]


def reply_to(message: Message) -> ReplyTo:
    """Where a job's outcome goes back to: this message, its chat and its sender."""
    user = message.from_user.id if message.from_user else message.chat_id
    return ReplyTo(PLATFORM, str(user), str(message.chat_id), str(message.message_id))


class TelegramDelivery(Delivery):
    """bots.delivery on the Bot API: outcomes as replies to the request, the loss curve as a photo after the text."""

    platform, limit = PLATFORM, MESSAGE_LIMIT

    def __init__(self, app: Application) -> None:
        super().__init__(app.bot_data["core"].settings.telegram_admins)
        self.bot = app.bot

    async def send(
        self, chat: str, text: str, *, reply_to: str | None = None, image: bytes | None = None, ping: str | None = None
    ) -> None:
        options = {"reply_to_message_id": int(reply_to), "allow_sending_without_reply": True} if reply_to else {}
        await self.bot.send_message(int(chat), text, **options)
        if image is not None:
            await self.bot.send_photo(int(chat), image, caption="Loss and accuracy during training", **options)

    async def send_private(self, user: int, text: str) -> None:
        await self.bot.send_message(user, text)  # a private chat's id is the person's


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
    delivery = TelegramDelivery(app)
    app.bot_data["delivery"] = asyncio.create_task(core.keep_delivering(PLATFORM, delivery.deliver, delivery.notify))


async def stop_delivery(app: Application) -> None:
    task = app.bot_data.pop("delivery", None)
    if task is not None:
        task.cancel()


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log handler errors; the bot keeps running."""
    logger.error("a handler failed", exc_info=context.error)
