"""Long texts in parts within a platform's message limit, split where a reader expects a break."""

from __future__ import annotations

import re

_BREAKS = ("\n\n", "\n", ". ", "! ", "? ", "; ", ", ", " ")  # best first: a paragraph, a line, a sentence, a word
_UNBROKEN = re.compile(r"\[[^\]\n]*\]\([^)\s]*\)|`[^`\n]*`|\S*://\S*")  # a Markdown link, inline code, a URL
# A line that opens or closes a code block: ``` and an info string without backticks (CommonMark), so that a line like
# "```ls``` lists files" (inline code written with three backticks) is not one.
_FENCE = re.compile(r"^[ \t]*```[^`\n]*$", re.MULTILINE)
CLOSE = "\n```"


def _cut(text: str, limit: int) -> int:
    """Where to end a part of at most `limit` characters: the best break in its second half, outside links and code."""
    inside = []
    for match in _UNBROKEN.finditer(text):
        if match.start() >= limit:
            break
        inside.append(match.span())
    for mark in _BREAKS:
        at = text.rfind(mark, limit // 2, limit)
        while at > 0 and any(start < at < end for start, end in inside):
            at = text.rfind(mark, limit // 2, at)
        if at > 0:
            return at + len(mark.rstrip())
    return limit


def _open_fence(part: str) -> str | None:
    """The fence line of a code block that `part` opens and does not close (```python), else None."""
    fences = _FENCE.findall(part)
    return fences[-1].strip() if len(fences) % 2 else None


def _reopened(fence: str, limit: int) -> bool:
    """Whether the next part opens the block again with `fence`: only a short fence line, so that each part takes
    more off the text than the fence adds to it (a part holds at least half the limit: see `_cut`)."""
    return len(fence) < limit // 4


def split_message(text: str, limit: int) -> list[str]:
    """Split a long text into parts of at most `limit` characters at sensible places: a paragraph, a line, a
    sentence, then a word; never inside a Markdown link, inline code or a URL unless one alone is over the limit. A
    code block cut in two is closed at the end of its part and opened again, with its language, in the next."""
    parts: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        part = rest[: _cut(rest, limit)].rstrip()
        if (fence := _open_fence(part)) is not None and len(part) + len(CLOSE) > limit:
            part = rest[: _cut(rest, limit - len(CLOSE))].rstrip()  # room for the closing fence
            fence = _open_fence(part)
        rest = rest[len(part) :].lstrip()
        if fence is not None:
            part += CLOSE
            rest = f"{fence}\n{rest}" if _reopened(fence, limit) else rest
        parts.append(part)
    if rest:
        parts.append(rest)
    return parts or [""]
