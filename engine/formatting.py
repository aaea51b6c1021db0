"""The `Question: ...\\nAnswer: ...` format, answer-only labels, and the padding collator."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from engine.textformat import QUESTION_START, STOP_TEXT, format_answer, format_prompt
from qabot.dataset import QAPair

__all__ = [
    "IGNORE_INDEX",
    "STOP_TEXT",
    "AnswerCollator",
    "PadCollator",
    "PromptTokens",
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

    @staticmethod
    def fits(model: Any) -> bool:
        """Whether a model's forward pass takes `logits_to_keep` and `position_ids` (every causal LM of transformers
        5; a model of its own code may not, and trains on PadCollator and its own loss)."""
        from engine.models import forward_takes

        return forward_takes(model, "logits_to_keep", "position_ids")

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        longest = max(len(f["input_ids"]) for f in features)
        learnt = max(len(f["labels"]) - next((i for i, x in enumerate(f["labels"]) if x != IGNORE_INDEX), 0) for f in features)
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


def length_batches(ids: list[list[int]], size: int) -> Iterator[list[int]]:
    """Positions of tokenised texts in batches of `size` with similar lengths, shortest first: padded to its longest,
    a batch of mixed lengths spends most of its work on padding (engine.retrieval BY_LENGTH). Whoever batches this way
    puts each result back at its position."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), size):
        yield order[start : start + size]


class PromptTokens:
    """Prompts' token ids for answering, each question tokenised once: when it is checked (`question`).

    A grounded prompt is its notes' lines, then the question's `Question: ...\nAnswer:`. Its ids are the notes' ids
    (kept: the same notes come back question after question) followed by the question's, where this tokenizer gives
    the same ids for the two parts as for the whole text. A new line always ends a byte-level BPE pre-token (GPT-2,
    SmolLM2), so there it does; a SentencePiece tokenizer puts a space before a text's first word, so there it does
    not, and each prompt is tokenised whole. Which of the two holds is checked once, on a probe. Special-token strings
    in a question are plain text, never control tokens. Ids are kept until their batch is built (`batch`).
    """

    KEPT = 4096  # prompts, questions and notes kept at most (checked but never asked: a longer variant that did not fit)
    PROBE = ("Note: The stone is kept in the old tower, by the sea.\nNote: x\n", "Question: where's the stone?\nAnswer:")

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._questions: dict[str, list[int]] = {}  # a question's prompt -> its ids, without special tokens
        self._notes: dict[str, list[int]] = {}  # notes' lines -> their ids, with the special tokens a text starts with
        self._ids: dict[str, list[int]] = {}  # prompts tokenised by a check, until their batch is built
        notes, question = self.PROBE
        self.joins = all(
            self._tokenize(lines + question) == self._tokenize(lines) + self._tokenize(question, first=False)
            for lines in (notes, "")
        )

    def _tokenize(self, text: str, *, first: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=first, split_special_tokens=True)["input_ids"]

    @staticmethod
    def _keep(store: dict[str, list[int]], key: str, ids: list[int]) -> list[int]:
        if len(store) >= PromptTokens.KEPT:
            store.clear()
        store[key] = ids
        return ids

    def question(self, question: str) -> int:
        """The length in tokens of a question's prompt (`format_prompt`), kept for the grounded prompts built on it."""
        prompt = format_prompt(question)
        if not self.joins:
            return len(self.ids(prompt))
        ids = self._questions.get(prompt) or self._keep(self._questions, prompt, self._tokenize(prompt, first=False))
        return len(self._lines("")) + len(ids)

    def _lines(self, lines: str) -> list[int]:
        return self._notes.get(lines) or self._keep(self._notes, lines, self._tokenize(lines))

    def _joined(self, prompt: str) -> list[int] | None:
        """A prompt's ids from its notes' and its checked question's, or None (not joinable, or not checked)."""
        start = prompt.rfind(QUESTION_START) if self.joins else -1
        while start >= 0:  # a question may itself hold "Question: ": its prompt starts at an earlier one
            question = self._questions.get(prompt[start:])
            if question is not None and (start == 0 or prompt[start - 1] == "\n"):
                return self._lines(prompt[:start]) + question
            start = prompt.rfind(QUESTION_START, 0, start)
        return None

    def _fresh(self, prompt: str) -> list[int]:
        """A prompt's ids not kept by a check: joined where it can be, else the whole prompt tokenised."""
        return self._joined(prompt) or self._tokenize(prompt)

    def ids(self, prompt: str) -> list[int]:
        """A prompt's token ids, kept until its batch is built."""
        if (found := self._ids.get(prompt)) is None:
            found = self._keep(self._ids, prompt, self._fresh(prompt))
        return found

    def batch(self, prompts: list[str], pad_token_id: int) -> dict[str, torch.Tensor]:
        """Prompts as a left-padded batch of token ids (a prompt asked twice in one batch is tokenised once too)."""
        known: dict[str, list[int]] = {}
        for text in prompts:
            if text not in known:
                known[text] = self._ids.pop(text, None) or self._fresh(text)
        rows = [known[text] for text in prompts]
        width = max(len(row) for row in rows)
        ids = torch.tensor([[pad_token_id] * (width - len(row)) + row for row in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask}
