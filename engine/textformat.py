"""The `Question: ...\\nAnswer: ...` text format, grounded prompts (notes shown by their heads), and token counting
with the `tokenizers` library. No torch here.

The admin worker (no torch) checks new pairs against the live model's context with these, by the
same rule the train job uses with the transformers tokenizer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STOP_TEXT = "\nQuestion:"
DEFAULT_MAX_LENGTH = 256  # longest formatted training example in tokens (TrainConfig.max_length)
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length")
# The answer budget follows the data: its longest answer in tokens (EOS included), times a margin for a reworded or
# merged answer, plus a little slack for a short dataset; within half the model's context. An answer that reaches the
# budget is a runaway (shown as a decline), so the budget must never be what cuts an answer as long as the data's.
BUDGET_MARGIN = 1.25
BUDGET_SLACK = 8
MIN_BUDGET = 16
FALLBACK_BUDGET = 64  # for a version trained before budgets were stored, when no dataset is at hand to measure


QUESTION_START = "Question: "
NOTE_PREFIX = "Note: "
# A grounded prompt shows each note's first NOTE_WORDS words, and the model learns to answer with its note's first
# NOTE_WORDS words; the answer shown is the note whole (the nearest, where the model does not decline, or the one
# decoding began to copy: engine.steering). Long FAQ answers (up to 150 tokens; three notes and the answer per example)
# made each pebble example about 370 tokens against the sample's 83. Measured on pebble with the bundled model
# (2026-12-03, same rules): whole notes 56/60 training, 87/100 held-out, 41/50 out-of-scope declined, 10/160 answerable
# declined; heads of 24 words 60/60, 90/100, 38/50, 3/160. Shorter heads, same code (2026-12-04, bench.quality and
# bench.forget, one run each): 16 words gave pebble the same four figures, 18/20 corrections answered with their new
# answer (17/20 with 24 words in earlier runs) and a fine-tune of 92.9 s against 143.7 s, and change nothing on
# one-sentence facts (the sample's longest answer is 15 words); 12 words gave pebble 59/60, 89/100, 38/50, 5/160; 8
# words gave pebble its four figures again in 65.9 s, but the sample 57/60 held-out against 58/60, 1/220 answerable
# declined against 0/220, and 16/20 corrections answered with their new answer (19/20 and 20/20 with 24 words in earlier
# runs).
NOTE_WORDS = 16
# ... and at most NOTE_CHARS characters of them (whole words, at least one): a word of a link or of Markdown costs
# several tokens, so pebble's 16-word heads took 26.5 tokens on average (up to 61) against the sample's 16, and its
# examples 181 tokens per pair and epoch against 122. With the characters capped at 64, about 16 tokens of English
# prose, heads cost about as many tokens in either style (2026-12-05, bench.quality: pebble 122 tokens per pair and
# epoch, the sample 114, the same answers on both; at 60 characters 116 and 110, at 70 130 and 118). A cap of 80
# gave the same answers too, at 142 and 121 tokens and 1.37x the sample's fine-tune per pair instead of 1.13x; with
# either cap the sample's corrections (bench.forget) got their new answer 17/20, pebble's 20/20 at 64 and 19/20 at 80.
NOTE_CHARS = 64


def format_prompt(question: str) -> str:
    """The text the model sees before it answers."""
    return f"{QUESTION_START}{question.strip()}\nAnswer:"


def format_answer(answer: str) -> str:
    """The text the model learns to produce after the prompt (EOS is added as a token)."""
    return f" {answer.strip()}"


def answer_budget(longest_answer: int, context: int) -> int:
    """New tokens an answer may take, for data whose longest answer is `longest_answer` tokens long (EOS included)."""
    return max(MIN_BUDGET, min(context // 2, math.ceil(longest_answer * BUDGET_MARGIN) + BUDGET_SLACK))


def context_from_config(config: dict) -> int:
    """The longest sequence a model takes, from its config.json values."""
    for key in CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def version_counter(folder: Path) -> tuple[Callable[[str, str], int], int, list[str]] | None:
    """For a saved model folder: (count_tokens(prompt, response), token limit, special tokens), or None.

    None when the folder has no fast tokenizer file (then only the text rules apply).
    """
    from tokenizers import Tokenizer

    tokenizer_file, config_file = folder / "tokenizer.json", folder / "config.json"
    if not tokenizer_file.is_file() or not config_file.is_file():
        return None
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    limit = min(DEFAULT_MAX_LENGTH, context_from_config(json.loads(config_file.read_text(encoding="utf-8"))))
    specials = [t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special]

    def count(prompt: str, response: str) -> int:
        prompt_ids = tokenizer.encode(format_prompt(prompt), add_special_tokens=True).ids
        answer_ids = tokenizer.encode(format_answer(response), add_special_tokens=False).ids
        return len(prompt_ids) + len(answer_ids) + 1  # + EOS

    return count, limit, specials


@dataclass(frozen=True)
class HeadRule:
    """How much of a note a grounded prompt shows, and of its own answer a grounded model learns: the note's first
    `words` words (whitespace folded), then as many of those as fit in `chars` characters (whole words, at least one).
    0 words: whole notes (versions from before note heads); 0 characters: no cap (versions from before NOTE_CHARS).
    A version stores its rule (`meta()`) and answers by the one it learnt."""

    words: int = 0
    chars: int = 0

    def head(self, note: str) -> str:
        kept = note.split()
        if not self.words:
            return " ".join(kept)
        kept = kept[: self.words]
        if self.chars and kept:  # a blank note has no first word
            length = len(kept[0])
            for count, word in enumerate(kept[1:], start=1):
                length += 1 + len(word)
                if length > self.chars:
                    kept = kept[:count]
                    break
        return " ".join(kept)

    def meta(self) -> dict[str, int]:
        """The rule as a version's `grounding` meta stores it."""
        return {"note_words": self.words, "note_chars": self.chars}

    @classmethod
    def from_meta(cls, grounding: dict) -> HeadRule:
        """A version's rule; keys an older version lacks read 0 (whole notes, or heads of whole words)."""
        return cls(int(grounding.get("note_words", 0)), int(grounding.get("note_chars", 0)))


WHOLE_NOTES = HeadRule()
HEADS = HeadRule(NOTE_WORDS, NOTE_CHARS)  # what a version learns by default


def format_grounded(question: str, notes: list[str], heads: HeadRule = WHOLE_NOTES) -> str:
    """Notes (each cut to its head: see NOTE_WORDS), then the question, in the `Question: ...\\nAnswer:` format the
    model continues."""
    lines = "".join(f"{NOTE_PREFIX}{heads.head(note)}\n" for note in notes)
    return f"{lines}Question: {question.strip()}\nAnswer:"


def fitted_notes(question: str, notes: list[str], fits=lambda prompt: True, heads: HeadRule = WHOLE_NOTES) -> list[str]:
    """The notes a grounded prompt shows: `notes` (farthest first) less the farthest ones, dropped until `fits(prompt)`."""
    while notes and not fits(format_grounded(question, notes, heads)):
        notes = notes[1:]
    return notes


def fitted_prompt(question: str, notes: list[str], fits=lambda prompt: True, heads: HeadRule = WHOLE_NOTES) -> str:
    """The grounded prompt, its farthest notes (the first ones) dropped until `fits(prompt)`."""
    return format_grounded(question, fitted_notes(question, notes, fits, heads), heads)
