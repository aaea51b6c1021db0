"""The Telegram front end (python-telegram-bot): questions in, answers out; admins retrain from the chat."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

from telegram import Message, Update
from telegram.constants import ChatAction, ChatType, MessageEntityType
from telegram.error import BadRequest, Forbidden
from telegram.ext import Application, ApplicationBuilder, CommandHandler, ContextTypes, MessageHandler, filters

from bots.core import ADMIN_HELP, HELP_TEXT, REFUSAL, BotCore
from bots.feedback import WRONG, Reply, remember, report_wrong
from bots.split import split_message
from bots.telegram_delivery import (
    MESSAGE_LIMIT,
    PLATFORM,
    TelegramDelivery,
    on_error,
    set_admin_menu,
    start_delivery,
    stop_delivery,
)
from qabot.settings import Settings
from qabot.shapes import ReplyTo

logger = logging.getLogger(__name__)

TYPING_EVERY_SECONDS = 4.0  # Telegram shows "typing" for 5 s per chat action
RETRAIN_CAPTION = re.compile(r"^/retrain(@\w+)?(\s|$)")
DOCUMENT_LIMIT = 50 * 1024 * 1024  # the Bot API's limit for a file a bot sends
NOT_AN_ANSWER = 'I can only pass on a "wrong" about one of my answers from the last few days.'
SENT_PRIVATELY = "I've sent you that in our private chat: it quotes people's messages."
NO_PRIVATE_CHAT = (
    "That reply quotes people's messages, so it goes to our private chat, but I can't write to you first: open a "
    "private chat with me, press Start, then ask again."
)


def _core(context: ContextTypes.DEFAULT_TYPE) -> BotCore:
    return context.application.bot_data["core"]


def _is_admin(update: Update, context: ContextTypes.DEFAULT_TYPE) -> bool:
    user = update.effective_user
    return user is not None and user.id in _core(context).settings.telegram_admins


Handler = Callable[[Update, ContextTypes.DEFAULT_TYPE], Awaitable[None]]


def admins_only(handler: Handler) -> Handler:
    """Everyone else gets a polite refusal and nothing happens."""

    @functools.wraps(handler)
    async def guarded(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if not _is_admin(update, context):
            await reply(update.effective_message, REFUSAL)
            return
        await handler(update, context)

    return guarded


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


async def reply(message: Message, text: str) -> list[Message]:
    """Reply to a message, split at Telegram's length limit; the messages sent."""
    return [await message.reply_text(part, do_quote=True) for part in split_message(text, MESSAGE_LIMIT)]


async def reply_privately(message: Message, text: str, document: tuple[bytes, str] | None = None) -> None:
    """An admin reply that quotes people (the inbox, the data): in the admin's private chat; in a group, only a
    pointer to it. Telegram lets a bot write first only to someone who started a chat with it."""
    admin = message.from_user
    if message.chat.type == ChatType.PRIVATE or admin is None:
        if document is not None:
            await message.reply_document(document[0], filename=document[1], caption=text, do_quote=True)
        else:
            await reply(message, text)
        return
    try:
        if document is not None:
            await message.get_bot().send_document(admin.id, document[0], filename=document[1], caption=text)
        else:
            for part in split_message(text, MESSAGE_LIMIT):
                await message.get_bot().send_message(admin.id, part)
    except (Forbidden, BadRequest) as exc:
        logger.info("could not write to an admin privately: %s", exc)
        await reply(message, NO_PRIVATE_CHAT)
        return
    await reply(message, SENT_PRIVATELY)


async def answer_question(message: Message, context: ContextTypes.DEFAULT_TYPE, question: str) -> None:
    """Answer `question` as a reply to `message`, showing typing meanwhile."""
    user = message.from_user.id if message.from_user else message.chat_id
    core = _core(context)
    async with typing(message):
        answer: Reply = await core.ask(f"tg:{user}", question, f"tg:{message.chat_id}")
    sent = await reply(message, answer.text)
    await remember(core.client, PLATFORM, str(message.chat_id), [str(m.message_id) for m in sent], answer)


async def flag_wrong(message: Message, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A reply "wrong" to one of the bot's answers: the question goes to the admins' inbox with that answer."""
    user = message.from_user.id if message.from_user else message.chat_id
    answer = message.reply_to_message
    feedback = await report_wrong(_core(context).client, PLATFORM, str(message.chat_id), str(answer.message_id), f"tg:{user}")
    await reply(message, feedback.text if feedback is not None else NOT_AN_ANSWER)


async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/start and /help: what the bot does; an admin's private chat gets the admin command menu."""
    admin = _is_admin(update, context)
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


def _reply_to(message: Message) -> ReplyTo:
    user = message.from_user.id if message.from_user else message.chat_id
    return ReplyTo(PLATFORM, str(user), str(message.chat_id), str(message.message_id))


def _words(message: Message, context: ContextTypes.DEFAULT_TYPE) -> list[str]:
    """The command's arguments, from the text or from a document's caption."""
    if context.args is not None:
        return [w.casefold() for w in context.args]
    return [w.casefold() for w in (message.caption or "").split()[1:]]


@admins_only
async def retrain(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/retrain [replace] [force], optionally with a JSON or JSONL dataset attached (admins only)."""
    message = update.effective_message
    core = _core(context)
    words = _words(message, context)
    upload = None
    document = message.document
    if document is not None:
        if document.file_size and document.file_size > core.settings.upload_max_bytes:
            await reply(
                message, f"{document.file_name} is {document.file_size} bytes; the limit is {core.settings.upload_max_bytes}."
            )
            return
        file = await context.bot.get_file(document.file_id)
        upload = (bytes(await file.download_as_bytearray()), document.file_name or "dataset.json")

    async def send(text: str) -> Message:
        return await message.reply_text(text, do_quote=True)

    async def edit(handle: Message, text: str) -> None:
        with contextlib.suppress(Exception):  # an edit that fails (flood, unchanged) must not stop the run
            await handle.edit_text(text)

    outcome = await core.retrain(_reply_to(message), upload, send, edit, replace="replace" in words, force="force" in words)
    if outcome is not None:
        await TelegramDelivery(context.application).deliver(_reply_to(message), outcome)


@admins_only
async def add_qa(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/addqa question | answer (admins only)."""
    message = update.effective_message
    text = (message.text or "").partition(" ")[2]
    if "|" not in text:
        await reply(message, "Usage: /addqa question | answer")
        return
    question, _, answer = text.partition("|")
    await reply(message, await _core(context).add_pair(question.strip(), answer.strip(), _reply_to(message)))


@admins_only
async def forget(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/forget <question> (admins only)."""
    message = update.effective_message
    await reply(message, await _core(context).forget((message.text or "").partition(" ")[2], _reply_to(message)))


@admins_only
async def export(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/export (admins only): the dataset as a JSON document, in the admin's private chat."""
    message = update.effective_message
    text, found = await _core(context).export(DOCUMENT_LIMIT)
    await reply_privately(message, text, (found.data, found.filename) if found is not None else None)


@admins_only
async def find(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/find <words>: the nearest pairs, numbered, in the admin's private chat (admins only)."""
    message = update.effective_message
    await reply_privately(message, await _core(context).find((message.text or "").partition(" ")[2]))


@admins_only
async def undo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/undo (admins only)."""
    message = update.effective_message
    await reply(message, await _core(context).undo(_reply_to(message)))


@admins_only
async def status(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/status (admins only)."""
    await reply(update.effective_message, await _core(context).status())


@admins_only
async def models(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/models (admins only)."""
    await reply(update.effective_message, await _core(context).models())


@admins_only
async def rollback(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/rollback [version] (admins only)."""
    message = update.effective_message
    await reply(message, await _core(context).rollback((context.args or [None])[0], _reply_to(message)))


@admins_only
async def unanswered(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/unanswered [page]: the most-asked questions the bot could not answer, with their ids (admins only), privately."""
    await reply_privately(update.effective_message, await _core(context).inbox((context.args or ["1"])[0]))


@admins_only
async def answer(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/answer <id> <answer>: the question becomes a pair and its askers get the answer (admins only)."""
    message = update.effective_message
    words = (message.text or "").split(maxsplit=2)
    item_id, text = (words[1] if len(words) > 1 else ""), (words[2] if len(words) > 2 else "")
    await reply_privately(message, await _core(context).inbox_answer(item_id, text, _reply_to(message)))


@admins_only
async def dismiss(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/dismiss <id>: close a question without an answer (admins only)."""
    message = update.effective_message
    await reply_privately(message, await _core(context).inbox_dismiss((context.args or [""])[0], _reply_to(message)))


def build_application(settings: Settings, core: BotCore | None = None) -> Application:
    """Wire the handlers; the token comes from the settings and is never logged."""
    if settings.telegram_token is None:
        raise ValueError("QABOT_TELEGRAM_TOKEN is not set: create a bot with @BotFather and set its token")
    for noisy in ("httpx", "httpcore"):  # their request lines carry the token in the URL
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("telegram").setLevel(logging.INFO)  # its debug lines print the API URL, token included
    api = settings.telegram_api_url.rstrip("/")
    app = (
        ApplicationBuilder()
        .token(settings.telegram_token.get_secret_value())
        .base_url(f"{api}/bot")
        .base_file_url(f"{api}/file/bot")
        .concurrent_updates(True)
        .post_init(start_delivery)
        .post_stop(stop_delivery)
        .build()
    )
    core = app.bot_data["core"] = core or BotCore(settings)
    core.platform, core.alert = PLATFORM, TelegramDelivery(app).alert_admins
    new = filters.UpdateType.MESSAGE  # an edited message must not ask again or retrain again
    app.add_handler(CommandHandler(["start", "help"], start, filters=new))
    app.add_handler(CommandHandler("ask", ask, filters=new))
    app.add_handler(CommandHandler("retrain", retrain, filters=new))
    app.add_handler(MessageHandler(new & filters.Document.ALL & filters.CaptionRegex(RETRAIN_CAPTION), retrain))
    app.add_handler(CommandHandler("addqa", add_qa, filters=new))
    app.add_handler(CommandHandler("export", export, filters=new))
    app.add_handler(CommandHandler("find", find, filters=new))
    app.add_handler(CommandHandler("forget", forget, filters=new))
    app.add_handler(CommandHandler("undo", undo, filters=new))
    app.add_handler(CommandHandler("status", status, filters=new))
    app.add_handler(CommandHandler("models", models, filters=new))
    app.add_handler(CommandHandler("rollback", rollback, filters=new))
    app.add_handler(CommandHandler("unanswered", unanswered, filters=new))
    app.add_handler(CommandHandler("answer", answer, filters=new))
    app.add_handler(CommandHandler("dismiss", dismiss, filters=new))
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
