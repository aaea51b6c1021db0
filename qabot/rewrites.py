"""Questions rewritten the way people type them in a chat: lower case, a typo, keywords only, "pls".

Used where a dataset brings no held-out questions of its own (the release gate) and to calibrate the decline
thresholds on the dataset being trained: a rewrite of a training question is an answerable question in users'
style, which the bot must not decline. Deterministic for a seed; torch-free.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from qabot.dataset import QAPair

# Function words that users drop when they type keywords ("pricing pebble cloud"); English only, and only used to make
# a keyword rewrite: where a question has no such words, that rewrite is simply its other forms.
FUNCTION_WORDS = frozenset(
    "a an the is are was were be been do does did can could would should will shall may might must i me my we our you "
    "your it its to of in on at for with by from about as and or what which who whom whose how when where why there "
    "this that these those please".split()
)
_WORD = re.compile(r"[^\W_][\w'’-]*")
_SUFFIXES = ("pls", "?", "thx", "??")


@dataclass(frozen=True)
class Rewrite:
    """A rewritten question and the pair it asks about."""

    question: str
    pair: QAPair
    style: str  # "lower", "typo", "keywords"


def _typo(word: str, rng: random.Random) -> str:
    """One slip of the keyboard in a word: two letters swapped, or one dropped or doubled."""
    i = rng.randrange(1, len(word) - 1)
    kind = rng.choice(("swap", "drop", "double"))
    if kind == "swap":
        return word[: i - 1] + word[i] + word[i - 1] + word[i + 1 :]
    if kind == "drop":
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


def rewrite(question: str, rng: random.Random) -> list[tuple[str, str]]:
    """(style, text) rewrites of one question; each differs from the question once case and spaces are folded."""
    base = " ".join(question.split()).rstrip("?!. ").lower()
    words = _WORD.findall(base)
    found: list[tuple[str, str]] = [("lower", base + (rng.choice(_SUFFIXES[1:]) if rng.random() < 0.3 else ""))]
    long_words = [w for w in words if len(w) >= 5 and w.isalpha()]
    if long_words:
        target = rng.choice(long_words)
        found.append(("typo", re.sub(rf"\b{re.escape(target)}\b", _typo(target, rng), base, count=1)))
    keywords = [w for w in words if w not in FUNCTION_WORDS]
    if 0 < len(keywords) < len(words):
        found.append(("keywords", " ".join(keywords) + (" " + rng.choice(_SUFFIXES) if rng.random() < 0.5 else "")))
    folded = " ".join(question.split()).rstrip("?!. ").casefold()
    return [(style, text) for style, text in found if text.rstrip("?! ").casefold() != folded or style == "lower"]


def user_rewrites(pairs: list[QAPair], *, limit: int | None = None, seed: int = 0) -> list[Rewrite]:
    """Rewrites of the pairs' questions (up to `limit`, spread over the pairs and the styles), deterministic for `seed`."""
    rng = random.Random(seed)
    found = [Rewrite(text, pair, style) for pair in pairs for style, text in rewrite(pair.prompt, rng)]
    if limit is not None and len(found) > limit:
        found = random.Random(seed).sample(found, limit)
    return found
