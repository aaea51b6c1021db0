"""The shapes of admin requests and results that bots and workers exchange through Redis. No torch here.

Jobs carry these (pickled by rq); both sides import this module, so a bot needs nothing of `engine/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ReplyTo:
    """Who asked and where: any running bot of that platform can deliver the outcome, once."""

    platform: str  # "telegram", "discord" or "cli"
    user: str
    chat: str
    message: str | None = None  # the message to reply to, when the platform has one


@dataclass(frozen=True)
class AddPairResult:
    """The outcome of /addqa."""

    question: str
    added: bool
    pairs: int = 0
    dataset: str | None = None
    replaced: bool = False  # the question was there with another answer, now replaced
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelRow:
    name: str
    created_at: str
    pairs: int | None
    accuracy: dict[str, float]
    live: bool


@dataclass(frozen=True)
class ModelsResult:
    """The last versions, oldest first."""

    rows: tuple[ModelRow, ...]


@dataclass(frozen=True)
class RollbackResult:
    ok: bool
    version: str | None = None
    message: str = ""


@dataclass(frozen=True)
class StatusReport:
    """What /status and `qabot status` show."""

    live_version: str | None
    trained_at: str | None
    live_dataset: str | None
    live_pairs: int | None
    current_dataset: str | None
    current_pairs: int | None
    queues: dict[str, dict[str, int]] = field(default_factory=dict)
    workers: list[dict[str, Any]] = field(default_factory=list)
    training: dict[str, Any] | None = None

    @property
    def waiting_dataset(self) -> bool:
        """A dataset newer than what the live model learnt is waiting to be trained."""
        return self.current_dataset is not None and self.current_dataset != self.live_dataset
