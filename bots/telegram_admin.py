"""Telegram's admin commands (/retrain, /addqa, /forget, /export, /find, /undo, /status, /models, /rollback, the inbox):
each refuses everyone but the admins, asks the core, and replies; a reply that quotes people goes to the admin's
private chat."""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import Awaitable, Callable

from telegram import Message, Update
from telegram.constants import ChatType
from telegram.error import BadRequest, Forbidden
from telegram.ext import Application, CommandHandler, ContextTypes, MessageHandler, filters

from bots.core import REFUSAL, RetrainOutcome
from bots.split import split_message
from bots.telegram_delivery import MESSAGE_LIMIT, TelegramDelivery, core_of, reply, reply_to

logger = logging.getLogger(__name__)

RETRAIN_CAPTION = re.compile(r"^/retrain(@\w+)?(\s|$)")
DOCUMENT_LIMIT = 50 * 1024 * 1024  # the Bot API's limit for a file a bot sends
SENT_PRIVATELY = "I've sent you that in our private chat: it quotes people's messages."
NO_PRIVATE_CHAT = (
    "That reply quotes people's messages, so it goes to our private chat, but I can't write to you first: open a "
    "private chat with me, press Start, then ask again."
)

Handler = Callable[[Update, ContextTypes.DEFAULT_TYPE], Awaitable[None]]


def is_admin(update: Update, context: ContextTypes.DEFAULT_TYPE) -> bool:
    user = update.effective_user
    return user is not None and user.id in core_of(context).settings.telegram_admins


def admins_only(handler: Handler) -> Handler:
    """Everyone else gets a polite refusal and nothing happens."""

    @functools.wraps(handler)
    async def guarded(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if not is_admin(update, context):
            await reply(update.effective_message, REFUSAL)
            return
        await handler(update, context)

    return guarded


async def reply_privately(message: Message, text: str, document: tuple[bytes, str] | None = None) -> None:
    """An admin reply that quotes people (the inbox, the data): in the admin's private chat; in a group, only a
    pointer to it. Telegram lets a bot write first only to someone who started a chat with it."""
    admin = message.from_user
    if message.chat.type == ChatType.PRIVATE or admin is None:
        if document is not None:
            await message.reply_document(
                document[0], filename=document[1], caption=text, do_quote=True, allow_sending_without_reply=True
            )
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


def _words(message: Message, context: ContextTypes.DEFAULT_TYPE) -> list[str]:
    """The command's arguments, from the text or from a document's caption."""
    if context.args is not None:
        return [w.casefold() for w in context.args]
    return [w.casefold() for w in (message.caption or "").split()[1:]]


def _rest(message: Message) -> str:
    """The text after the command, whatever space follows it (a phone keyboard often puts a new line there)."""
    parts = (message.text or "").split(None, 1)
    return parts[1] if len(parts) > 1 else ""


@admins_only
async def retrain(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/retrain [replace] [force], optionally with a JSON or JSONL dataset attached."""
    message = update.effective_message
    core = core_of(context)
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
        return await message.reply_text(text, do_quote=True, allow_sending_without_reply=True)

    async def edit(handle: Message, text: str) -> None:
        with contextlib.suppress(Exception):  # an edit that fails (flood, unchanged) must not stop the run
            await handle.edit_text(text)

    where = reply_to(message)

    async def deliver(outcome: RetrainOutcome) -> None:
        await TelegramDelivery(context.application).deliver(where, outcome)

    await core.retrain(where, upload, send, edit, replace="replace" in words, force="force" in words, deliver=deliver)


@admins_only
async def add_qa(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/addqa question | answer."""
    message = update.effective_message
    text = _rest(message)
    if "|" not in text:
        await reply(message, "Usage: /addqa question | answer")
        return
    question, _, answer = text.partition("|")
    await reply(message, await core_of(context).add_pair(question.strip(), answer.strip(), reply_to(message)))


@admins_only
async def forget(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/forget <question>."""
    message = update.effective_message
    await reply(message, await core_of(context).forget(_rest(message), reply_to(message)))


@admins_only
async def export(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/export: the dataset as a JSON document, in the admin's private chat."""
    message = update.effective_message
    text, found = await core_of(context).export(DOCUMENT_LIMIT)
    await reply_privately(message, text, (found.data, found.filename) if found is not None else None)


@admins_only
async def find(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/find <words>: the nearest pairs, numbered, in the admin's private chat."""
    message = update.effective_message
    await reply_privately(message, await core_of(context).find(_rest(message)))


@admins_only
async def undo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/undo."""
    message = update.effective_message
    await reply(message, await core_of(context).undo(reply_to(message)))


@admins_only
async def status(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/status."""
    await reply(update.effective_message, await core_of(context).status())


@admins_only
async def models(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/models."""
    await reply(update.effective_message, await core_of(context).models())


@admins_only
async def rollback(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/rollback [version]."""
    message = update.effective_message
    await reply(message, await core_of(context).rollback((context.args or [None])[0], reply_to(message)))


@admins_only
async def unanswered(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/unanswered [page]: the most-asked questions the bot could not answer, with their ids, privately."""
    await reply_privately(update.effective_message, await core_of(context).inbox((context.args or ["1"])[0]))


@admins_only
async def answer(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/answer <id> <answer>: the question becomes a pair and its askers get the answer."""
    message = update.effective_message
    words = (message.text or "").split(maxsplit=2)
    item_id, text = (words[1] if len(words) > 1 else ""), (words[2] if len(words) > 2 else "")
    await reply_privately(message, await core_of(context).inbox_answer(item_id, text, reply_to(message)))


@admins_only
async def dismiss(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/dismiss <id>: close a question without an answer."""
    message = update.effective_message
    await reply_privately(message, await core_of(context).inbox_dismiss((context.args or [""])[0], reply_to(message)))


COMMANDS: dict[str, Handler] = {
    "retrain": retrain,
    "addqa": add_qa,
    "export": export,
    "find": find,
    "forget": forget,
    "undo": undo,
    "status": status,
    "models": models,
    "rollback": rollback,
    "unanswered": unanswered,
    "answer": answer,
    "dismiss": dismiss,
}


def add_admin_handlers(app: Application, new: filters.BaseFilter) -> None:
    """The admin commands, for new messages only (`new`: an edited message must not retrain again); /retrain also as
    the caption of an attached dataset."""
    for name, handler in COMMANDS.items():
        app.add_handler(CommandHandler(name, handler, filters=new))
    app.add_handler(MessageHandler(new & filters.Document.ALL & filters.CaptionRegex(RETRAIN_CAPTION), retrain))
