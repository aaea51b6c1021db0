"""What admins do from a chat, whatever the platform: each action is an admin job that a worker runs; this renders it.

`BotCore` (bots.core) is an `AdminCommands`; the platforms decide who is an admin and where a reply may be shown
(/unanswered, /find, /answer and /dismiss quote people's words: the platforms send those to the admin privately).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from bots.render import render_added, render_forgotten, render_models, render_status, render_undone
from bots.render_inbox import CHAT_HINTS, InboxHints, render_find, render_inbox, render_inbox_answer, render_inbox_dismiss
from qabot.errors import AnswerTimeout, JobFailed, ServiceUnavailable
from qabot.shapes import (
    ExportResult,
    InboxAnswerRequest,
    InboxDismissRequest,
    InboxListRequest,
    ReplyTo,
    RollbackResult,
)
from worker.client import QueueClient

logger = logging.getLogger(__name__)

ADMIN_APOLOGY = (
    "Sorry, the admin service did not answer in time (is `qabot worker admin` running?). "
    "If you asked for a change, check /status before trying again."
)
INBOX_SHOWN = 10  # question groups per /unanswered page


class AdminCommands:
    """The admin commands' texts: usage checks, the job, the rendering. Subclasses set `client` and `hints`."""

    client: QueueClient
    hints: InboxHints = CHAT_HINTS

    async def add_pair(self, question: str, answer: str, reply_to: ReplyTo | None = None) -> str:
        """/addqa: one more pair in the dataset (no training)."""
        if not question.strip() or not answer.strip():
            return "Usage: /addqa question | answer"
        render = functools.partial(render_added, escape=self.hints.escape)
        return await self._admin(render, "add_pair", question, answer, reply_to=reply_to)

    async def forget(self, question: str, reply_to: ReplyTo | None = None) -> str:
        """/forget: the pair of a question leaves the dataset (no training; /undo brings it back)."""
        if not question.strip():
            return "Usage: /forget <question, or a number from /find>"
        render = functools.partial(render_forgotten, escape=self.hints.escape)
        return await self._admin(render, "forget_pair", question.strip(), reply_to=reply_to)

    async def find(self, query: str) -> str:
        """/find <words>: the pairs nearest to the words, numbered, with where each came from."""
        if not query.strip():
            return "Usage: /find <words>"
        return await self._admin(functools.partial(render_find, hints=self.hints), "find_pairs", query.strip())

    async def export(self, limit: int) -> tuple[str, ExportResult | None]:
        """/export: (the message, the file to attach or None); a file over the platform's `limit` bytes is not sent."""
        found: list[ExportResult] = []

        def render(result: ExportResult) -> str:
            if len(result.data) > limit:
                return (
                    f"The dataset ({result.pairs} pairs) is {len(result.data)} bytes, over this platform's {limit}-byte "
                    "limit for a bot's file: run `qabot data export` on the GPU host instead."
                )
            found.append(result)
            return (
                f"The current dataset: {result.pairs} pairs (dataset {result.dataset}). Edit it and send it back with "
                "/retrain replace; the fields besides prompt and response say where each pair came from."
            )

        text = await self._admin(render, "export_dataset")
        return text, (found[0] if found else None)

    async def undo(self, reply_to: ReplyTo | None = None) -> str:
        """/undo: the last /addqa, /answer or /forget is taken back."""
        return await self._admin(render_undone, "undo_edit", reply_to=reply_to)

    async def status(self) -> str:
        return await self._admin(render_status, "status")

    async def models(self) -> str:
        return await self._admin(render_models, "list_models")

    async def rollback(self, version: str | None, reply_to: ReplyTo | None = None) -> str:
        def render(result: RollbackResult) -> str:
            if not result.ok:
                return f"Can't roll back: {result.message}."
            notes = (
                f" It answers from the dataset it was trained on ({result.pairs} pairs, with pairs added or changed one "
                "at a time since then kept)."
                if result.pairs is not None
                else ""
            )
            return (
                f"Rolled back: {result.version} is live again; the answer workers switch to it before their next batch." + notes
            )

        return await self._admin(render, "rollback", version, reply_to=reply_to)

    async def inbox(self, page: str | int = 1, limit: int = INBOX_SHOWN) -> str:
        """/unanswered [page]: one page of the most-asked open questions with their ids, other wordings grouped."""
        number = str(page).strip().lstrip("#") or "1"
        if not (number.isascii() and number.isdecimal()) or int(number) < 1:  # "²" is a digit int() refuses
            return "Usage: /unanswered [page], for example /unanswered 2"
        request = InboxListRequest(limit, int(number))
        return await self._admin(functools.partial(render_inbox, hints=self.hints), "inbox_jobs.inbox_list", request)

    async def inbox_answer(self, item_id: str, answer: str, reply_to: ReplyTo | None = None) -> str:
        """/answer <id> <answer>: the question becomes a pair; the people who asked it get the answer."""
        if not item_id.strip() or not answer.strip():
            return "Usage: /answer <id> <answer> (/unanswered lists the ids)"
        request = InboxAnswerRequest(item_id.strip(), answer.strip())
        return await self._admin(
            functools.partial(render_inbox_answer, hints=self.hints), "inbox_jobs.inbox_answer", request, reply_to=reply_to
        )

    async def inbox_dismiss(self, item_id: str, reply_to: ReplyTo | None = None) -> str:
        """/dismiss <id>: close a question without answering it."""
        if not item_id.strip():
            return "Usage: /dismiss <id> (/unanswered lists the ids)"
        return await self._admin(
            functools.partial(render_inbox_dismiss, hints=self.hints),
            "inbox_jobs.inbox_dismiss",
            InboxDismissRequest(item_id.strip()),
            reply_to=reply_to,
        )

    async def _admin(self, render: Callable[[Any], str], function: str, *args: Any, reply_to: ReplyTo | None = None) -> str:
        """Run admin job `function` and render its result; the admin gets a short message if it fails."""
        try:
            return render(await self.client.ask_admin(function, *args, reply_to=reply_to))
        except (ServiceUnavailable, AnswerTimeout) as exc:
            logger.warning("admin job not answered: %s", exc)
            return ADMIN_APOLOGY
        except JobFailed as exc:
            logger.warning("an admin job failed: %s", exc)
            return f"Sorry, that failed: {exc}"
        except Exception:  # the edge: the bot keeps running
            logger.exception("unexpected failure in an admin command")
            return ADMIN_APOLOGY
