"""The shapes of admin requests and results that bots and workers exchange through Redis. No torch here.

Jobs carry these (pickled by rq); both sides import this module, so a bot needs nothing of `engine/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
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
    unchanged: bool = False  # the very pair was there already: nothing stored, nothing journaled


@dataclass(frozen=True)
class EditResult:
    """The outcome of /forget or /undo: what changed in the current dataset (no training)."""

    done: bool
    what: str = ""  # "forget": the question removed; "undo": the edit undone, in words
    answer: str = ""  # the removed pair's answer (forget)
    pairs: int = 0
    dataset: str | None = None
    suggestions: tuple[str, ...] = ()  # stored questions close to an unknown one (forget)
    message: str = ""  # why nothing changed


@dataclass(frozen=True)
class ExportResult:
    """/export: the current dataset as a file uploads take (with provenance in optional fields)."""

    data: bytes
    pairs: int
    filename: str
    dataset: str | None = None


@dataclass(frozen=True)
class FoundPair:
    """A pair /find shows: `number` is its place in the current dataset and in /export's file, from 1."""

    number: int
    question: str
    answer: str
    score: float  # cosine similarity to the words looked for, as retrieval ranks notes
    origin: dict[str, str] = field(default_factory=dict)  # engine.datastore's PROVENANCE_FIELDS that are known


@dataclass(frozen=True)
class FindResult:
    """/find: the pairs nearest to the words, nearest first."""

    query: str
    found: tuple[FoundPair, ...]
    pairs: int
    dataset: str | None = None


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
    pairs: int | None = None  # the dataset it answers from again (its own, with admins' later edits carried over)


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
    unanswered: int | None = None  # open questions in the inbox; None where the count could not be read
    live_source: str | None = None  # the file the live version learnt from
    last_edit: dict[str, str] = field(default_factory=dict)  # the latest one-pair edit: action, platform, by, at

    @property
    def waiting_dataset(self) -> bool:
        """A dataset newer than what the live model learnt is waiting to be trained."""
        return self.current_dataset is not None and self.current_dataset != self.live_dataset


# -- the unanswered inbox ------------------------------------------------------------------------
class InboxKind(StrEnum):
    """Why a question is in the inbox."""

    DECLINED = "declined"  # the bot said it did not know
    WRONG = "wrong"  # someone said the bot's answer was wrong


@dataclass(frozen=True)
class Place:
    """A chat where a question was asked, and when it was last asked there (no user names or ids)."""

    platform: str
    chat: str
    at: float


@dataclass(frozen=True)
class InboxItem:
    """One open question: asked `count` times, first and last at these epoch seconds."""

    id: str
    text: str
    count: int
    first_asked: float
    last_asked: float
    kind: InboxKind
    answer: str | None = None  # the answer it got, when someone said it was wrong
    places: tuple[Place, ...] = ()
    flags: int = 0  # how many people said its answer was wrong (not counted in `count`)
    also: tuple[InboxItem, ...] = ()  # the same question asked in other words (worker.lookup groups them)

    @property
    def asked(self) -> int:
        """Askings of the whole group."""
        return self.count + sum(i.count for i in self.also)

    @property
    def flagged(self) -> int:
        return self.flags + sum(i.flags for i in self.also)


@dataclass(frozen=True)
class InboxListRequest:
    limit: int = 10  # questions (groups) per page
    page: int = 1


@dataclass(frozen=True)
class InboxListResult:
    """The most-asked open questions first, then the most recent; `open` counts them all."""

    items: tuple[InboxItem, ...]  # this page's groups, each led by its most asked wording
    open: int  # open questions, all wordings counted
    page: int = 1
    pages: int = 1


@dataclass(frozen=True)
class InboxAnswerRequest:
    id: str
    answer: str


@dataclass(frozen=True)
class InboxAnswerResult:
    """/answer: the pair it became (or the validator's problems), and the chats the answer goes to."""

    id: str
    found: bool
    question: str = ""
    added: AddPairResult | None = None
    notified: tuple[Place, ...] = ()
    grouped: int = 0  # other wordings of the question closed with it

    @property
    def closed(self) -> bool:
        return self.added is not None and self.added.added


@dataclass(frozen=True)
class InboxDismissRequest:
    id: str


@dataclass(frozen=True)
class InboxDismissResult:
    id: str
    found: bool
    question: str = ""
    grouped: int = 0  # other wordings of the question dismissed with it


@dataclass(frozen=True)
class WrongReport:
    """Someone said the bot's answer to `question` was wrong, in this chat."""

    question: str
    answer: str
    platform: str
    chat: str


@dataclass(frozen=True)
class WrongReportResult:
    id: str
    count: int
    open: bool  # False when an admin dismissed the question a while ago: it stays dismissed
