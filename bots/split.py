"""Long texts in parts within a platform's message limit, split where a reader expects a break."""

from __future__ import annotations

import re

_BREAKS = ("\n\n", "\n", ". ", "! ", "? ", "; ", ", ", " ")  # best first: a paragraph, a line, a sentence, a word
_UNBROKEN = re.compile(r"\[[^\]\n]*\]\([^)\s]*\)|`[^`\n]*`|\S*://\S*")  # a Markdown link, inline code, a URL


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


def split_message(text: str, limit: int) -> list[str]:
    """Split a long text into parts of at most `limit` characters at sensible places: a paragraph, a line, a
    sentence, then a word; never inside a Markdown link, inline code or a URL unless one alone is over the limit."""
    parts: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        cut = _cut(rest, limit)
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        parts.append(rest)
    return parts or [""]
