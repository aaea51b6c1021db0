"""What steers a grounded answer while it is decoded: the decline gate at its first token, and note copying (an
answer that has begun copying one of its notes is that note, whole)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import LogitsProcessor

from engine.textformat import WHOLE_NOTES, HeadRule, format_answer

# A grounded model learnt to answer by copying a note whole. Once an answer has copied this many tokens of one note, and
# matches no other, it is that note: decoding stops and the note is the answer. Measured on the pebble FAQ (bundled
# model, 2 epochs), 17 of 60 held-out answers began copying a note and then drifted or ran to the budget; a long answer
# then costs SNAP_TOKENS decoding steps instead of a hundred.
SNAP_TOKENS = 8
# An answer whose token F1 against one of its notes reaches this is that note (see NoteSnap.closest).
CLOSE_NOTE = 0.5


def answer_ids(tokenizer: Any, note: str) -> list[int]:
    """A note's token ids as the model produces it after `Answer:` (no special tokens)."""
    return tokenizer(format_answer(note), add_special_tokens=False)["input_ids"]


class NoteSnap:
    """Each row's notes as answer token ids; `match` names the one note a row's answer has begun to copy."""

    def __init__(
        self,
        tokenizer: Any,
        notes: list[list[str]],
        ids_of: Callable[[str], list[int]] | None = None,
        heads: HeadRule = WHOLE_NOTES,
    ) -> None:
        self.ids_of = ids_of or (lambda note: answer_ids(tokenizer, note))  # a note's token ids as an answer
        self.heads = heads  # a model that learnt note heads (engine.textformat.HEADS) copies heads
        self.rows: dict[Any, list[tuple[str, list[int]]]] = {row: self.note_ids(each) for row, each in enumerate(notes)}

    def note_ids(self, notes: list[str]) -> list[tuple[str, list[int]]]:
        """(note, its token ids as an answer) for one row's notes; `rows[key] = note_ids(...)` adds a row."""
        return [(note.strip(), self.ids_of(note)) for note in notes]

    def match(self, row: int, ids: list[int]) -> str | None:
        """The note whose first len(ids) tokens are `ids` (at least SNAP_TOKENS of them), when exactly one is."""
        if len(ids) < SNAP_TOKENS:
            return None
        found = {note for note, note_ids in self.rows[row] if note_ids[: len(ids)] == ids}
        return found.pop() if len(found) == 1 else None

    def closest(self, row: int, text: str) -> str | None:
        """The note an answer that is no note was copying: the one with the highest token F1 against it, if at least
        CLOSE_NOTE. A grounded model learnt to answer with whole notes only, so an answer that is most of one note
        (or that note's old version: the answer it learnt before an admin changed it, measured by bench/forget.py)
        is that note."""
        from engine.evaluate import token_f1

        heads = [(note, self.heads.head(note)) for note, _ in self.rows[row]]
        scored = [(max(token_f1(text, note), token_f1(text, head)), note) for note, head in heads]
        best = max(scored, default=(0.0, None))
        return best[1] if best[0] >= CLOSE_NOTE else None

    def first_match(self, row: int, ids: list[int]) -> str | None:
        """After the fact (model.generate): the note the answer had begun to copy, at the earliest point it was one."""
        for end in range(SNAP_TOKENS, len(ids) + 1):
            if (note := self.match(row, ids[:end])) is not None:
                return note
        return None


class DeclineGate(LogitsProcessor):
    """At an answer's first token, the decline may start only where the model gives its first token `confidence`.

    A grounded model unsure between its notes and "I don't know" answers from the notes: its declines of paraphrased
    questions were far less sure than its declines of questions the data cannot answer.
    """

    def __init__(self, token_id: int, confidence: float, prompt_length: int = 0) -> None:
        self.token_id, self.confidence, self.prompt_length = token_id, confidence, prompt_length

    def gate(self, logits: torch.Tensor) -> torch.Tensor:
        unsure = logits.float().softmax(-1)[:, self.token_id] < self.confidence
        logits[unsure, self.token_id] = float("-inf")
        return logits

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.gate(scores) if input_ids.shape[1] == self.prompt_length else scores


# Which note a learnt question gets is retrieval's: its nearest note, whole. Asking the grounded model which note it finds
# likeliest (the first 4 tokens of each, after the prompt) chose no better on one pebble FAQ model (86 of 98 held-out
# questions it did not decline, as retrieval's nearest) and worse on another trained the same way (80 of 98 against 86;
# its training questions 50 of 60 against 54, users' rewrites of them 47 of 60 against 57); the sample's were equal.
# What the model decides is whether to decline.


@torch.inference_mode()  # whoever calls it: no autograd graph
def first_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The logits of each left-padded prompt's answer's first token: one prefill, positions counted from each prompt's
    first real token (as when decoding it), the vocabulary scored at the last position only."""
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False, logits_to_keep=1)
    return out.logits[:, -1, :].float()


@torch.inference_mode()
def model_declines(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, gate: DeclineGate) -> list[bool]:
    """For each left-padded prompt, whether the model declines: the decline's first token wins its first step past the
    gate."""
    return (gate.gate(first_logits(model, input_ids, attention_mask)).argmax(dim=-1) == gate.token_id).tolist()
