"""What admins read of the data and the inbox (/find, /unanswered, /answer, /dismiss, and the CLI's `qabot data` and
`qabot inbox`): users' words quoted, cut, and escaped where the platform would format them. Plain text."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bots.render import QUOTE_CHARS, ago, problems_text, render_added, when
from qabot.inbox import DISMISSED_KEEP_S
from qabot.shapes import FindResult, InboxAnswerResult, InboxDismissResult, InboxItem, InboxKind, InboxListResult

FOUND_ANSWER_CHARS = 120  # /find shows the start of each answer


@dataclass(frozen=True)
class InboxHints:
    """How admins act on what they read, where they read it: chat commands, or the CLI."""

    answer: str = "/answer <id> <answer>"
    dismiss: str = "/dismiss <id>"
    listing: str = "/unanswered"
    page: str = "/unanswered {page}"
    forget: str = "/forget <number>"
    escape: Callable[[str], str] = str  # user text as the platform shows it literally (Discord: Markdown escaped)


CHAT_HINTS = InboxHints()
CLI_HINTS = InboxHints(
    "qabot inbox answer ID 'ANSWER'",
    "qabot inbox dismiss ID",
    "qabot inbox list",
    "qabot inbox list --page {page}",
    "qabot data forget NUMBER",
)


def origin_text(origin: dict[str, str], now: float | None = None) -> str:
    """Where a pair came from, in words: 'from faq.json', 'added with /addqa by telegram:42, 3 h ago'."""
    parts = []
    if origin.get("added_with"):
        parts.append(f"added with /{origin['added_with']}" + (f" by {origin['added_by']}" if origin.get("added_by") else ""))
    elif origin.get("source"):
        parts.append(f"from {origin['source']}")
    if origin.get("added_at"):
        parts.append(when(origin["added_at"], now))
    return ", ".join(parts) or "origin not recorded"


def render_find(result: FindResult, hints: InboxHints = CHAT_HINTS) -> str:
    if not result.found:
        return "The dataset is empty: /addqa adds a pair, /retrain with a file attached adds many."
    lines = [f'The {len(result.found)} pairs nearest to "{_quote(result.query, hints.escape)}", of {result.pairs}:']
    for found in result.found:
        answer = _quote(found.answer[:FOUND_ANSWER_CHARS] + ("…" if len(found.answer) > FOUND_ANSWER_CHARS else ""))
        lines.append(
            f'#{found.number} "{_quote(found.question, hints.escape)}" → {hints.escape(answer)} '
            f"(similarity {found.score:.2f}; {origin_text(found.origin)})"
        )
    lines.append(
        f"{hints.forget} removes a pair. Numbers are places in the dataset (and in /export's file) and change after an "
        "edit: look again before using one."
    )
    return "\n".join(lines)


def _quote(text: str, escape: Callable[[str], str] = str) -> str:
    text = " ".join(text.split())
    return escape(text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 1] + "…")


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _inbox_line(item: InboxItem, escape: Callable[[str], str] = str) -> str:
    counted = [f"asked {_times(item.asked)}"] if item.asked else []
    counted += [f"flagged wrong {_times(item.flagged)}"] if item.flagged else []
    last = max(m.last_asked for m in (item, *item.also))
    line = f'{item.id}: "{_quote(item.text, escape)}", {", ".join(counted) or "asked"}, last {ago(last)}'
    if item.kind == InboxKind.WRONG:
        line += f'; the answer was "{_quote(item.answer or "", escape)}"'
    if item.also:
        line += "; also asked as " + ", ".join(f'"{_quote(m.text, escape)}" ({m.id})' for m in item.also)
    return line


def render_inbox(result: InboxListResult, hints: InboxHints = CHAT_HINTS) -> str:
    if not result.items:
        return "No unanswered questions: the inbox is empty."
    page = f", page {result.page} of {result.pages}" if result.pages > 1 else ""
    lines = [f"Unanswered questions: {result.open} open, most asked first{page}:"]
    lines += [_inbox_line(i, hints.escape) for i in result.items]
    lines.append(f"Answer one with {hints.answer}, or drop it with {hints.dismiss}; an id answers its other wordings too.")
    turns = [f"Next page: {hints.page.format(page=result.page + 1)}"] if result.page < result.pages else []
    turns += [f"Previous page: {hints.page.format(page=result.page - 1)}"] if result.page > 1 else []
    if turns:
        lines.append("; ".join(turns) + ".")
    return "\n".join(lines)


def _no_such(item_id: str, hints: InboxHints) -> str:
    return f"No open question has the id '{item_id}'; {hints.listing} lists them."


def render_inbox_answer(result: InboxAnswerResult, hints: InboxHints = CHAT_HINTS) -> str:
    if not result.found:
        return _no_such(result.id, hints)
    if result.added is None or not result.added.added:
        problems = result.added.problems if result.added is not None else ()
        return problems_text(problems, "That answer") + f'\nThe question "{hints.escape(result.question or "")}" stays open.'
    told = len(result.notified)
    where = f" The answer goes to the {told} chat(s) where it was asked lately." if told else ""
    others = f" with its {result.grouped} other wording(s)" if result.grouped else ""
    return f"{render_added(result.added, hints.escape)} The question is closed{others}.{where}"


def render_inbox_dismiss(result: InboxDismissResult, hints: InboxHints = CHAT_HINTS) -> str:
    if not result.found:
        return _no_such(result.id, hints)
    days = DISMISSED_KEEP_S // 86400
    others = f" with its {result.grouped} other wording(s)" if result.grouped else ""
    return f'Dismissed "{hints.escape(result.question or "")}"{others}; it won\'t come back to the inbox for {days} days.'
