"""What steers a grounded answer while it is decoded: the decline gate at its first token, and note copying (an
answer that has begun copying one of its notes is that note, whole)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import LogitsProcessor

from engine.textformat import format_answer

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
        note_words: int = 0,
    ) -> None:
        self.ids_of = ids_of or (lambda note: answer_ids(tokenizer, note))  # a note's token ids as an answer
        self.note_words = note_words  # a model that learnt note heads (engine.grounding.NOTE_WORDS) copies heads
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
        from engine.grounding import note_head

        heads = [(note, note_head(note, self.note_words)) for note, _ in self.rows[row]]
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


# How many of a note's first tokens the model's choice between notes reads (see `choose_notes`). Measured on the pebble
# FAQ's grounded model (bundled model, 2 epochs, its calibrated gate), choosing by the first 4 tokens: 78 of 100
# held-out questions right against 75 by greedy decoding; 8 and 16 tokens chose no better.
CHOICE_TOKENS = 4


@torch.inference_mode()  # whoever calls it: no autograd graph (model.generate's path called it outside one: 24 GB)
def choose_notes(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, notes: list[list[list[int]]], gate: DeclineGate
) -> list[int | None]:
    """For each left-padded prompt: None where the model declines (the decline's first token wins its first step, past
    the gate), else the index of the note (its answer token ids, in `notes`) whose first CHOICE_TOKENS tokens the model
    finds likeliest after the prompt. A grounded model learnt to answer with one of its notes, whole: this asks it
    which one, in one prefill and one short pass over every note's first tokens, instead of decoding and matching."""
    from transformers import DynamicCache

    from engine.decoding import cache_keyword

    cache = DynamicCache(config=model.config)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    keyword = cache_keyword(model)
    prompt = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": positions}
    out = model(**prompt, **{keyword: cache}, use_cache=True, logits_to_keep=1)
    first = out.logits[:, -1, :].float()
    declines = gate.gate(first.clone()).argmax(dim=-1) == gate.token_id
    first = first.log_softmax(dim=-1)
    pairs = [(row, i) for row in range(len(notes)) if not declines[row] for i in range(len(notes[row])) if notes[row][i]]
    chosen: list[int | None] = [None] * len(notes)
    if not pairs:
        return chosen
    width = min(CHOICE_TOKENS, max(len(notes[row][i]) for row, i in pairs))
    tokens = torch.zeros((len(pairs), width), dtype=torch.long, device=input_ids.device)
    used = torch.zeros((len(pairs), width), dtype=torch.long, device=input_ids.device)
    for n, (row, i) in enumerate(pairs):
        ids = notes[row][i][:width]
        tokens[n, : len(ids)], used[n, : len(ids)] = torch.tensor(ids), 1
    rows = torch.tensor([row for row, _ in pairs], device=input_ids.device)
    score = first[rows, tokens[:, 0]]
    if width > 1:
        cache.batch_select_indices(rows)  # each prompt's cache once per note (rows repeat)
        mask = torch.cat([attention_mask[rows], used[:, :-1]], dim=1)
        steps = positions[rows, -1:] + 1 + torch.arange(width - 1, device=input_ids.device)
        later = model(input_ids=tokens[:, :-1], attention_mask=mask, position_ids=steps, **{keyword: cache}, use_cache=True)
        logp = later.logits.float().log_softmax(dim=-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
        score = score + (logp * used[:, 1:]).sum(dim=1)
    best: dict[int, tuple[float, int]] = {}
    for (row, i), value in zip(pairs, score.tolist(), strict=True):
        if row not in best or value > best[row][0]:
            best[row] = (value, i)
    for row, (_, i) in best.items():
        chosen[row] = i
    return chosen
