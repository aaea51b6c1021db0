"""Queue names, job names, and the answer job. Imported by workers and clients alike (no torch)."""

from __future__ import annotations

from typing import Any

from rq.job import Job

ANSWER_QUEUE = "answer"
TRAIN_QUEUE = "train"
ADMIN_QUEUE = "admin"
ANSWER_JOB = "worker.jobs.answer"
TRAIN_JOB = "worker.jobs.train"
TRAIN_LOCK = "qabot:train:lock"
UPLOAD_KEY = "qabot:upload:{}"  # an uploaded dataset's bytes, kept until its train job reads them
ANSWER_DOWN_KEY = "qabot:alert:answer-down"  # platforms whose admins were told no answer worker runs (this outage)


def answer(question: str, asker: str | None = None, channel: str | None = None) -> dict[str, Any]:
    """Answer job. Only `qabot worker answer` runs these: it answers a batch in one pass and hands each job its share."""
    raise RuntimeError("answer jobs run on `qabot worker answer`, which batches them; no answer was computed")


def train(request: dict[str, Any]) -> dict[str, Any]:
    """Train job (runs in the train worker's forked child): see worker.training.train_job."""
    from worker.training import train_job

    return train_job(request)


class BatchedJob(Job):
    """A job whose outcome was computed before rq performs it (the answer worker's batch): rq records it as usual."""

    outcome: dict[str, Any] | BaseException | None = None

    def _execute(self) -> Any:
        if self.outcome is None:
            return super()._execute()
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


_RELEASE_IF_HOLDER = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def release_training_lock(connection, job_id: str) -> None:
    """Delete the training lock only if `job_id` still holds it."""
    connection.eval(_RELEASE_IF_HOLDER, 1, TRAIN_LOCK, job_id)
