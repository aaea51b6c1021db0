"""The Telegram front end (python-telegram-bot): questions in, answers out (the admin commands:
bots.telegram_admin)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from telegram import Message, Update
from telegram.constants import ChatAction, ChatType, MessageEntityType
from telegram.ext import Application, ApplicationBuilder, CommandHandler, ContextTypes, MessageHandler, filters

from bots.core import ADMIN_HELP, HELP_TEXT, BotCore
from bots.feedback import WRONG, Reply, remember, report_wrong
from bots.telegram_admin import add_admin_handlers, is_admin
from bots.telegram_delivery import (
    PLATFORM,
    TelegramDelivery,
    core_of,
    on_error,
    reply,
    set_admin_menu,
    start_delivery,
    stop_delivery,
)
from qabot.settings import Settings
from worker.client import ADMIN_WAITERS

logger = logging.getLogger(__name__)

TYPING_EVERY_SECONDS = 4.0  # Telegram shows "typing" for 5 s per chat action
NOT_AN_ANSWER = 'I can only pass on a "wrong" about one of my answers from the last few days.'


@contextlib.asynccontextmanager
async def typing(message: Message) -> AsyncIterator[None]:
    """Show "typing" in the chat until the block ends."""

    async def keep_typing() -> None:
        while True:
            with contextlib.suppress(Exception):
                await message.get_bot().send_chat_action(message.chat_id, ChatAction.TYPING)
            await asyncio.sleep(TYPING_EVERY_SECONDS)

    task = asyncio.create_task(keep_typing())
    try:
        yield
    finally:
        task.cancel()


async def answer_question(message: Message, context: ContextTypes.DEFAULT_TYPE, question: str) -> None:
    """Answer `question` as a reply to `message`, showing typing meanwhile."""
    user = message.from_user.id if message.from_user else message.chat_id
    core = core_of(context)
    async with typing(message):
        answer: Reply = await core.ask(f"tg:{user}", question, f"tg:{message.chat_id}")
    sent = await reply(message, answer.text)
    await remember(core.client, PLATFORM, str(message.chat_id), [str(m.message_id) for m in sent], answer)


async def flag_wrong(message: Message, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A reply "wrong" to one of the bot's answers: the question goes to the admins' inbox with that answer."""
    user = message.from_user.id if message.from_user else message.chat_id
    answer = message.reply_to_message
    feedback = await report_wrong(core_of(context).client, PLATFORM, str(message.chat_id), str(answer.message_id), f"tg:{user}")
    await reply(message, feedback.text if feedback is not None else NOT_AN_ANSWER)


async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/start and /help: what the bot does; an admin's private chat gets the admin command menu."""
    admin = is_admin(update, context)
    if admin and update.effective_chat is not None and update.effective_chat.type == ChatType.PRIVATE:
        await set_admin_menu(context.application, update.effective_chat.id)
    await reply(update.effective_message, HELP_TEXT + ("\n" + ADMIN_HELP if admin else ""))


async def ask(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/ask <question>."""
    await answer_question(update.effective_message, context, " ".join(context.args or []))


async def on_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Private chats: any text; groups: a mention of the bot or a reply to one of its messages."""
    message = update.effective_message
    if message is None or not message.text:
        return
    me = context.bot.username
    text = re.sub(rf"@{re.escape(me or '')}\b", "", message.text, flags=re.IGNORECASE).strip() if me else message.text
    replied = (
        message.reply_to_message is not None
        and message.reply_to_message.from_user is not None
        and (message.reply_to_message.from_user.id == context.bot.id)
    )
    if replied and WRONG.fullmatch(text):
        await flag_wrong(message, context)
        return
    if message.chat.type == ChatType.PRIVATE:
        await answer_question(message, context, message.text)
        return
    mentioned = any(
        e.type == MessageEntityType.MENTION and message.parse_entity(e).lstrip("@").lower() == (me or "").lower()
        for e in message.entities
    )
    if mentioned or replied:
        await answer_question(message, context, text)


SPARE_UPDATES = 64  # updates handled at once beyond questions and admin commands (help, feedback, uploads)


def build_application(settings: Settings, core: BotCore | None = None) -> Application:
    """Wire the handlers; the token comes from the settings and is never logged."""
    if settings.telegram_token is None:
        raise ValueError("QABOT_TELEGRAM_TOKEN is not set: create a bot with @BotFather and set its token")
    for noisy in ("httpx", "httpcore"):  # their request lines carry the token in the URL
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("telegram").setLevel(logging.INFO)  # its debug lines print the API URL, token included
    api = settings.telegram_api_url.rstrip("/")
    core = core or BotCore(settings)
    app = (
        ApplicationBuilder()
        .token(settings.telegram_token.get_secret_value())
        .base_url(f"{api}/bot")
        .base_file_url(f"{api}/file/bot")
        # Every update may wait in a handler: each question the client can wait on, each admin command, and others
        # (help, a 👎) besides. With python-telegram-bot's own default (256, the client's WAITERS) the 257th question
        # waited for a free handler instead of hearing "busy" at once, and admin commands waited behind questions.
        .concurrent_updates(core.client.waiters + ADMIN_WAITERS + SPARE_UPDATES)
        .post_init(start_delivery)
        .post_stop(stop_delivery)
        .build()
    )
    app.bot_data["core"] = core
    core.platform, core.alert = PLATFORM, TelegramDelivery(app).alert_admins
    new = filters.UpdateType.MESSAGE  # an edited message must not ask again or retrain again
    app.add_handler(CommandHandler(["start", "help"], start, filters=new))
    app.add_handler(CommandHandler("ask", ask, filters=new))
    add_admin_handlers(app, new)
    app.add_handler(MessageHandler(new & filters.TEXT & ~filters.COMMAND, on_text))
    app.add_error_handler(on_error)
    return app


def main(settings: Settings) -> None:
    """Run the bot: long polling by default, a webhook when QABOT_TELEGRAM_WEBHOOK_URL is set."""
    app = build_application(settings)
    if settings.telegram_webhook_url:
        host, _, port = settings.telegram_webhook_listen.rpartition(":")
        secret = settings.telegram_webhook_secret.get_secret_value() if settings.telegram_webhook_secret else None
        if secret is None:
            raise ValueError("QABOT_TELEGRAM_WEBHOOK_SECRET is required in webhook mode (Telegram sends it with each update)")
        path = urlsplit(settings.telegram_webhook_url).path.strip("/")  # listen where Telegram will post
        app.run_webhook(
            listen=host, port=int(port), url_path=path, secret_token=secret, webhook_url=settings.telegram_webhook_url
        )
    else:
        app.run_polling(allowed_updates=Update.ALL_TYPES)
