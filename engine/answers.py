"""What an answer is, how its tokens are picked, and how a decoded answer is settled: the answer, why it ended, the
sampling options, a question on its way to an answer (`Asked`), and the answer as shown (`finish`, `settle`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import torch
from transformers import TopPLogitsWarper

from engine.textformat import STOP_TEXT


class StopReason(StrEnum):
    """Why an answer ended."""

    EOS = "eos"
    STOP_TEXT = "stop_text"
    LENGTH = "length"
    NOTE = "note"  # it began copying one note: the answer is that note, whole (SNAP_TOKENS)


@dataclass(frozen=True)
class Answer:
    """The bot's answer to one question."""

    question: str
    text: str
    new_tokens: int
    stop: StopReason
    declined: bool = False  # a grounded model said its notes do not answer the question
    sources: tuple[str, ...] = ()  # the questions of the pairs it was given as notes, nearest first
    score: float | None = None  # cosine similarity of the nearest pair
    reason: str | None = None  # why it declined: the model said so, or the data was judged not to hold the answer
    withheld: str = ""  # what the model said when a check turned its answer into a decline (for evaluation)


@dataclass(frozen=True)
class Sampling:
    """Decoding options; greedy unless `do_sample`."""

    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int | None = None


def picker(sampling: Sampling, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """Next token ids from last-position logits: greedy, or temperature and top-p sampling (seeded when asked)."""
    if not sampling.do_sample:
        return lambda logits: logits.argmax(dim=-1)
    generator = torch.Generator(device=device)
    if sampling.seed is not None:
        generator.manual_seed(sampling.seed)
    else:
        generator.seed()
    top_p = TopPLogitsWarper(sampling.top_p)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(top_p(None, logits / max(sampling.temperature, 1e-5)), dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return pick


@dataclass(frozen=True)
class Asked:
    """A question on its way to an answer: its prompt, the pairs its prompt shows as notes (nearest first), and why
    the data declines it without the model (None: the model answers)."""

    question: str
    prompt: str
    hits: list[Any] = field(default_factory=list)
    reason: str | None = None

    def notes(self) -> list[str]:
        return [h.pair.response for h in self.hits]


def finish(tokenizer: Any, question: str, ids: list[int]) -> Answer:
    """A decoded answer: its new tokens up to the end of text or a new `Question:` line, and why it ended."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    while ids and pad != eos and ids[-1] == pad:
        ids = ids[:-1]
    stop = StopReason.LENGTH
    if eos in ids:
        ids = ids[: ids.index(eos)]
        stop = StopReason.EOS
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if STOP_TEXT in text:
        text = text[: text.index(STOP_TEXT)]
        stop = StopReason.STOP_TEXT
    return Answer(question=question, text=text.strip(), new_tokens=len(ids), stop=stop)


def is_decline(text: str, grounding: Any) -> bool:
    """The text is the grounded model's decline (never, for a plain model: `grounding` None)."""
    decline = grounding.decline if grounding is not None else ""
    return " ".join(text.split()).casefold() == " ".join(decline.split()).casefold()


def settle(grounding: Any, item: Asked, answer: Answer) -> Answer:
    """The answer as shown: the data's or the model's decline, a runaway or an answer its notes do not hold turned
    into the decline (what the model said kept in `withheld`), with its sources and score (`grounding`:
    engine.grounding.Grounding; None for a plain model, whose answer is shown as it is)."""
    if grounding is None:
        return answer
    decline = " ".join(grounding.decline.split())
    reason, found = item.reason, item.hits
    if reason is not None:
        answer = replace(answer, text=decline)
    elif is_decline(answer.text, grounding):
        reason = "the model found no answer in its notes"
    elif answer.stop == StopReason.LENGTH:  # kept as a runaway in `stop`, never shown
        reason, answer = "the answer ran to the token limit", replace(answer, text=decline, withheld=answer.text)
    elif (reason := grounding.reason_to_reject(item.question, answer.text, item.notes())) is not None:
        answer = replace(answer, text=decline, withheld=answer.text)
    return replace(
        answer,
        declined=reason is not None,
        reason=reason,
        sources=tuple(h.pair.prompt for h in found),
        score=round(found[0].score, 4) if found else None,
    )
