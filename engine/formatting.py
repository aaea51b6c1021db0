"""The `Question: ...\\nAnswer: ...` format, answer-only labels, and the padding collator."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from engine.textformat import STOP_TEXT, format_answer, format_prompt
from qabot.dataset import QAPair

__all__ = [
    "IGNORE_INDEX",
    "STOP_TEXT",
    "PadCollator",
    "answer_lengths",
    "count_tokens",
    "format_answer",
    "format_prompt",
    "longest_answer",
    "tokenize_pair",
]

IGNORE_INDEX = -100


def tokenize_pair(pair: QAPair, tokenizer: Any, max_length: int) -> dict[str, list[int]]:
    """Token ids of prompt + answer + EOS, with the prompt's labels masked to IGNORE_INDEX."""
    return tokenize_example(format_prompt(pair.prompt), pair.response, tokenizer, max_length)


def tokenize_example(prompt: str, answer: str, tokenizer: Any, max_length: int) -> dict[str, list[int]]:
    """A formatted prompt (plain or with notes) and its answer: ids, labels on the answer and EOS only.

    Prompt and answer are tokenized separately, so the prompt ids are exactly those the model
    gets at generation time.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(format_answer(answer), add_special_tokens=False)["input_ids"]
    room = max_length - len(answer_ids) - 1
    if len(prompt_ids) > room > 0:  # a grounded prompt too long: its first (farthest) notes go, never the answer
        prompt_ids = prompt_ids[-room:]
    answer_ids = [*answer_ids, tokenizer.eos_token_id]
    input_ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}


def answer_lengths(tokenizer: Any, answers: Iterable[str], chunk: int = 4096) -> list[int]:
    """Each answer's length in tokens as the model produces it (formatted, EOS included)."""
    answers, lengths = list(answers), []
    for start in range(0, len(answers), chunk):
        ids = tokenizer([format_answer(a) for a in answers[start : start + chunk]], add_special_tokens=False)["input_ids"]
        lengths += [len(i) + 1 for i in ids]
    return lengths


def longest_answer(tokenizer: Any, answers: Iterable[str], chunk: int = 4096) -> int:
    """The longest of the answers in tokens as the model produces them (formatted, EOS included); 0 for none."""
    return max(answer_lengths(tokenizer, answers, chunk), default=0)


def count_tokens(tokenizer: Any) -> Any:
    """A function giving the formatted length of a pair, for dataset validation."""

    def count(prompt: str, response: str) -> int:
        return len(tokenize_pair(QAPair(prompt, response), tokenizer, max_length=10**9)["input_ids"])

    return count


@dataclass
class PadCollator:
    """Pads a batch to its longest example; labels are padded with IGNORE_INDEX. It only pads."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            pad = longest - len(f["input_ids"])
            batch["input_ids"].append(f["input_ids"] + [self.pad_token_id] * pad)
            batch["attention_mask"].append(f["attention_mask"] + [0] * pad)
            batch["labels"].append(f["labels"] + [IGNORE_INDEX] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
