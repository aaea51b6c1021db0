"""What an answer is, and how its tokens are picked: the answer, why it ended, and the sampling options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import torch
from transformers import TopPLogitsWarper


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
