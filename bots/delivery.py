"""What a bot sends of its own accord, written once for both platforms: a fine-tune's outcome (also after a restart),
an admin's answer in the chats where the question was asked, and an alert to the admins.

A platform supplies its message limit and two primitives: `send` (to a chat: split already, optionally a reply, an
image, a ping of one person) and `send_private` (to one person). Everything else is here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from bots.core import RetrainOutcome
from bots.split import split_message
from qabot.shapes import ReplyTo

logger = logging.getLogger(__name__)


class Delivery:
    """The messages a bot sends unprompted; subclasses implement `send` and `send_private`."""

    platform = ""
    limit = 2000
    alert_in_chat = False  # when no admin can be messaged privately, post the alert where the question was asked

    def __init__(self, admins: Sequence[int]) -> None:
        self.admins = list(admins)

    async def send(
        self, chat: str, text: str, *, reply_to: str | None = None, image: bytes | None = None, ping: str | None = None
    ) -> None:
        """Post one message (within `limit`) in a chat; `image` goes with it, `ping` may mention that person only."""
        raise NotImplementedError

    async def send_private(self, user: int, text: str) -> None:
        """A private message to one person; raises if the platform refuses it (blocked, never started a chat)."""
        raise NotImplementedError

    def addressed(self, user: str, text: str) -> str:
        """The outcome's text as its requester reads it (Discord names them, since the reply may come much later)."""
        return text

    async def deliver(self, where: ReplyTo, outcome: RetrainOutcome) -> None:
        """A fine-tune's outcome in the chat it was asked from, the loss curve with its last part."""
        parts = split_message(self.addressed(where.user, outcome.text), self.limit)
        for index, part in enumerate(parts):
            image = outcome.image if index == len(parts) - 1 else None
            await self.send(where.chat, part, reply_to=where.message, image=image, ping=where.user)

    async def notify(self, chat: str, text: str) -> None:
        """An admin's answer, posted in a chat where the question was asked."""
        for part in split_message(text, self.limit):
            await self.send(chat, part)

    async def alert_admins(self, text: str, chat: str) -> None:
        """Tell each configured admin privately; if none could be reached, the chat of the question (where the platform
        allows it: `alert_in_chat`), else raise so that the next question tries again."""
        reached = 0
        for admin in self.admins:
            try:
                await self.send_private(admin, text)
                reached += 1
            except Exception as exc:  # noqa: BLE001 - blocked, DMs closed, never started a chat: try the others
                logger.warning("could not message admin %s: %s", admin, exc)
        if reached:
            return
        if self.alert_in_chat:
            await self.notify(chat.partition(":")[2] or chat, text)
        elif self.admins:
            raise RuntimeError("no admin could be reached")
