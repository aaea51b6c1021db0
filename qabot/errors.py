"""Exceptions raised by the engine; callers at the edges turn them into short messages."""

from __future__ import annotations


class QabotError(Exception):
    """Base class for errors a user can act on; the message names the fix."""


class DatasetError(QabotError):
    """A dataset failed validation; `problems` lists every problem found, one line each."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        shown = "\n".join(f"  - {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        # the validator stops after MAX_PROBLEMS - 1 problems and says so in a last line that starts "checking stopped"
        count = f"more than {len(problems) - 1}" if problems and problems[-1].startswith("checking stopped") else len(problems)
        super().__init__(f"{source}: {count} problem(s) found, nothing was trained:\n{shown}{more}")


class QuestionError(QabotError):
    """A question cannot be answered as asked (empty, too long)."""


class ModelError(QabotError):
    """A model or tokenizer could not be loaded or does not exist."""


class VersionError(QabotError):
    """A model version does not exist or cannot be promoted or rolled back to."""


class TrainingError(QabotError):
    """A fine-tune could not start or did not finish."""


class ServiceUnavailable(QabotError):
    """The queue (Redis) or the workers cannot be reached."""


class Busy(ServiceUnavailable):
    """The bot already waits on as many questions as it can hold: the asker is told at once, not queued."""


class AnswerTimeout(QabotError):
    """No answer arrived in time."""


class JobFailed(QabotError):
    """A queued job ended in failure; the message says why, `kind` names the exception it raised."""

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind


class TrainingBusy(QabotError):
    """A training run is already queued or running; only one runs at a time."""
