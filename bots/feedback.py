"""People's side of the unanswered inbox, for both bots: answers remembered so that they can be flagged as wrong,
flags passed on to the admins, admins' answers posted where the question was asked. Speaks only to Redis."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bots.render import REPORTED, render_notice
from qabot.shapes import WrongReport
from worker.client import QueueClient

logger = logging.getLogger(__name__)

ALREADY_REPORTED = "You've already flagged that answer; the admins have it."
REPORT_APOLOGY = "Sorry, I couldn't pass that on right now; please try again in a minute."

WRONG = re.compile(r"wrong\s*[.!]*", re.IGNORECASE)  # a reply "wrong" to one of the bot's answers flags it (Telegram)
HOW_TO_FLAG = 'To tell the admins one of my answers was wrong, reply "wrong" to that answer.'

Notify = Callable[[str, str], Awaitable[Any]]  # (chat, text): post in a chat of the bot's platform


@dataclass(frozen=True)
class Reply:
    """What a person is told; `answer` is set when it is the model's answer (which people may flag as wrong)."""

    text: str
    question: str | None = None
    answer: str | None = None


@dataclass(frozen=True)
class Feedback:
    """The acknowledgement of a "that was wrong"; `first` for the first report of that answer."""

    text: str
    first: bool = False


async def remember(client: QueueClient, platform: str, chat: str, messages: list[str], reply: Reply) -> None:
    """Remember which answer these bot messages carried, so that people can say it was wrong."""
    if reply.answer is None or reply.question is None or not messages:
        return
    try:
        await asyncio.to_thread(client.remember_answer, platform, chat, messages, reply.question, reply.answer)
    except Exception:  # the answer was delivered; only the "wrong" gesture is lost for it
        logger.warning("could not remember an answer for feedback", exc_info=True)


async def report_wrong(client: QueueClient, platform: str, chat: str, message: str, reporter: str) -> Feedback | None:
    """Someone says a bot message's answer was wrong: the question goes to the inbox (an admin job, the one writer).

    None when the message is no answer the bot remembers; each person counts once per answer.
    """
    try:
        sent = await asyncio.to_thread(client.recall_answer, platform, chat, message)
        if sent is None:
            return None
        number = await asyncio.to_thread(client.count_report, platform, chat, message, reporter)
    except Exception:
        logger.warning("could not read an answer's feedback record", exc_info=True)
        return Feedback(REPORT_APOLOGY)
    if number == 0:
        return Feedback(ALREADY_REPORTED)
    question, answer = sent
    try:
        await client.ask_admin("inbox_jobs.inbox_report", WrongReport(question, answer, platform, chat))
    except Exception:  # the admin worker is away: the person may try again
        logger.warning("could not pass on a report of a wrong answer", exc_info=True)
        await asyncio.to_thread(client.uncount_report, platform, chat, message, reporter)
        return Feedback(REPORT_APOLOGY)
    return Feedback(REPORTED, number == 1)


async def deliver_notices(client: QueueClient, platform: str, notify: Notify, escape: Callable[[str], str] = str) -> int:
    """Post admins' answers in the chats of `platform` where the questions were asked; each is taken by one bot.

    Cancelled (the bot stops), the answers taken and not yet posted go back to the front of the line for the next bot;
    the one being posted goes back too, so it may be posted twice rather than never."""
    taking = asyncio.ensure_future(asyncio.to_thread(client.pop_notices, platform))
    try:
        notices = await asyncio.shield(taking)
    except asyncio.CancelledError:  # the pop runs on in its thread: what it takes goes back
        await asyncio.to_thread(client.return_notices, platform, await taking)
        raise
    delivered = 0
    for index, notice in enumerate(notices):
        try:
            await notify(notice.chat, render_notice(notice.question, notice.answer, escape))
            delivered += 1
        except Exception:
            again = await asyncio.to_thread(client.retry_notice, platform, notice)
            logger.warning("could not post an admin's answer in a chat%s", "; will retry" if again else "", exc_info=True)
        except BaseException:
            await asyncio.to_thread(client.return_notices, platform, notices[index:])
            raise
    return delivered
