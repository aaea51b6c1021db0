"""Answer a batch of questions with one `generate` call."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
from transformers import StoppingCriteriaList, StopStringCriteria

from engine.errors import QuestionError
from engine.formatting import STOP_TEXT, format_prompt

logger = logging.getLogger(__name__)


class StopReason(StrEnum):
    """Why an answer ended."""

    EOS = "eos"
    STOP_TEXT = "stop_text"
    LENGTH = "length"


@dataclass(frozen=True)
class Answer:
    """The bot's answer to one question."""

    question: str
    text: str
    new_tokens: int
    stop: StopReason


@dataclass(frozen=True)
class Sampling:
    """Decoding options; greedy unless `do_sample`."""

    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int | None = None


def check_question(question: str, max_chars: int) -> str:
    """Return the question stripped, or raise QuestionError with a message for the asker."""
    if not isinstance(question, str) or not question.strip():
        raise QuestionError("the question is empty: ask something, e.g. 'Who guards the Luminary Stone?'")
    text = question.strip()
    if len(text) > max_chars:
        raise QuestionError(f"the question is {len(text)} characters long; the limit is {max_chars}")
    return text


class Answerer:
    """Generates answers with a loaded model; one `generate` call per batch of questions."""

    def __init__(self, model: Any, tokenizer: Any, *, max_new_tokens: int = 64, max_question_chars: int = 500) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.max_question_chars = max_question_chars
        self.generate_calls = 0
        self._stopping: StoppingCriteriaList | None = None

    def _stop_criteria(self) -> StoppingCriteriaList:
        """Stop at a new `Question:` line; built once, as building it scans the whole vocabulary."""
        if self._stopping is None:
            self._stopping = StoppingCriteriaList([StopStringCriteria(self.tokenizer, [STOP_TEXT])])
        return self._stopping

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def answer(self, questions: list[str], sampling: Sampling | None = None) -> list[Answer]:
        """Answer every question; raises QuestionError before any model call if one is unusable."""
        if not questions:
            return []
        cleaned = []
        for index, question in enumerate(questions):
            try:
                cleaned.append(check_question(question, self.max_question_chars))
            except QuestionError as exc:
                raise QuestionError(f"question {index}: {exc}" if len(questions) > 1 else str(exc)) from exc
        sampling = sampling or Sampling()
        self.tokenizer.padding_side = "left"
        batch = self.tokenizer(
            [format_prompt(q) for q in cleaned], return_tensors="pt", padding=True, add_special_tokens=True
        ).to(self.device)
        options: dict[str, Any] = {"do_sample": sampling.do_sample}
        if sampling.do_sample:
            options.update(temperature=sampling.temperature, top_p=sampling.top_p)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        else:
            options.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            output = self.model.generate(
                **batch,
                max_new_tokens=self.max_new_tokens,
                eos_token_id=self.tokenizer.eos_token_id,
                pad_token_id=self.tokenizer.pad_token_id,
                stopping_criteria=self._stop_criteria(),
                **options,
            )
        self.generate_calls += 1
        new_tokens = output[:, batch["input_ids"].shape[1] :].tolist()
        return [self._finish(q, ids) for q, ids in zip(cleaned, new_tokens, strict=True)]

    def _finish(self, question: str, ids: list[int]) -> Answer:
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        while ids and pad != eos and ids[-1] == pad:
            ids = ids[:-1]
        stop = StopReason.LENGTH
        if eos in ids:
            ids = ids[: ids.index(eos)]
            stop = StopReason.EOS
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if STOP_TEXT in text:
            text = text[: text.index(STOP_TEXT)]
            stop = StopReason.STOP_TEXT
        return Answer(question=question, text=text.strip(), new_tokens=len(ids), stop=stop)
