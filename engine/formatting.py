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
    "AnswerCollator",
    "PadCollator",
    "answer_lengths",
    "count_tokens",
    "format_answer",
    "format_prompt",
    "longest_answer",
    "tail_loss",
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


@dataclass
class AnswerCollator:
    """The training batches: padded on the left, so that every example's answer lies in the batch's last columns,
    with positions counted from each example's first real token (as when answering a left-padded batch), and
    `logits_to_keep`: those last columns. The model then scores the vocabulary only where an answer token is learnt.

    Measured on the bundled model (vocabulary of 49,152, hidden size 576): the full logits of a batch of 8 x 170 tokens
    are 267 MB, and their head and softmax took about a fifth of each training step though only the answers (a sixth of
    the tokens) are learnt. `tail_loss` is the loss over the kept columns: the same answer-only loss as the model's own.
    """

    pad_token_id: int

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        longest = max(len(f["input_ids"]) for f in features)
        learnt = max(len(f["labels"]) - next(i for i, x in enumerate(f["labels"]) if x != IGNORE_INDEX) for f in features)
        batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": [], "position_ids": []}
        for f in features:
            pad = longest - len(f["input_ids"])
            batch["input_ids"].append([self.pad_token_id] * pad + f["input_ids"])
            batch["attention_mask"].append([0] * pad + f["attention_mask"])
            batch["labels"].append([IGNORE_INDEX] * pad + f["labels"])
            batch["position_ids"].append([0] * pad + list(range(len(f["input_ids"]))))
        tensors: dict[str, Any] = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
        tensors["logits_to_keep"] = min(learnt + 1, longest)  # a logit predicts the next column: one before the first label
        return tensors


def tail_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """Cross-entropy of logits kept for a batch's last columns (AnswerCollator) against those columns' labels, summed
    over the learnt tokens and divided by their count in the whole accumulated batch (as the model's own loss is)."""
    logits = outputs.logits[:, :-1].float()
    targets = labels[:, labels.shape[1] - logits.shape[1] :].to(logits.device)
    loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE_INDEX).sum()
    return loss / count
