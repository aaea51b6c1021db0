"""Admins' answers on their way to the chats where the question was asked (`/answer`: worker.inbox_jobs). No torch, no
rq.

Redis layout: `qabot:notify:<platform>` list of JSON {chat, question, answer, tries}, one per chat, for that platform's
bots to post (popping is the claim: one bot delivers each; bots.feedback.deliver_notices).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from qabot.shapes import Place

NOTIFY = "qabot:notify:{}"
NOTIFY_MAX = 1000  # undelivered answers kept per platform (no bot of that platform running)
NOTIFY_KEEP_S = 7 * 24 * 3600
NOTIFY_TRIES = 3


@dataclass(frozen=True)
class Notice:
    """An admin's answer waiting to be posted in a chat where the question was asked."""

    chat: str
    question: str
    answer: str
    tries: int = 0


def push_notices(connection: Any, question: str, answer: str, places: list[Place]) -> None:
    """Queue the answer for each chat, on its platform's list."""
    with connection.pipeline(transaction=False) as pipe:
        for place in places:
            key = NOTIFY.format(place.platform)
            pipe.rpush(key, _raw(Notice(place.chat, question, answer)))
            pipe.ltrim(key, -NOTIFY_MAX, -1)
            pipe.expire(key, NOTIFY_KEEP_S)
        pipe.execute()


def pop_notices(connection: Any, platform: str, most: int = 20) -> list[Notice]:
    """Take (and so claim) up to `most` waiting answers for `platform`."""
    found = connection.lpop(NOTIFY.format(platform), most) or []
    return [Notice(**json.loads(raw)) for raw in found]


def retry_notice(connection: Any, platform: str, notice: Notice) -> bool:
    """Put back an answer whose delivery failed, unless it failed NOTIFY_TRIES times; True if put back."""
    if notice.tries + 1 >= NOTIFY_TRIES:
        return False
    connection.rpush(NOTIFY.format(platform), _raw(replace(notice, tries=notice.tries + 1)))
    return True


def return_notices(connection: Any, platform: str, notices: list[Notice]) -> None:
    """Put answers taken but not posted (the bot stopped) back at the front of the line, in their order, their tries
    unchanged."""
    if notices:
        connection.lpush(NOTIFY.format(platform), *[_raw(n) for n in reversed(notices)])


def _raw(notice: Notice) -> str:
    """A notice as its platform's list holds it (`pop_notices` reads it back)."""
    return json.dumps(asdict(notice))
