"""RQ job functions and their plain-value payloads. Imported by workers; clients enqueue them by name."""

from __future__ import annotations

import logging
import time
from typing import Any

from rq import get_current_job

logger = logging.getLogger(__name__)

ANSWER_QUEUE = "answer"
TRAIN_QUEUE = "train"
ANSWER_JOB = "worker.jobs.answer"
TRAIN_JOB = "worker.jobs.train"
TRAIN_LOCK = "qabot:train:lock"
META_EVERY_SECONDS = 1.0

# Answers computed by the answer worker for the batch it is finishing, keyed by job id.
batch_results: dict[str, dict[str, Any] | BaseException] = {}


def answer(question: str, asker: str | None = None, channel: str | None = None) -> dict[str, Any]:
    """Answer job. The answer worker answers a whole batch in one pass; this hands back this job's share."""
    job = get_current_job()
    outcome = batch_results.pop(job.id, None) if job else None
    if outcome is None:
        raise RuntimeError("answer jobs run on `qabot worker answer`, which batches them; no answer was computed")
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def train(request: dict[str, Any]) -> dict[str, Any]:
    """Train job: validate, fine-tune, evaluate against the live model, promote if not worse."""
    from qabot.settings import Settings
    from worker.training import run_training

    job = get_current_job()
    last_save = 0.0

    def report(**meta: Any) -> None:
        nonlocal last_save
        if job is None:
            return
        stage_changed = meta.get("stage") != job.meta.get("stage")
        job.meta.update(meta)
        if stage_changed or time.monotonic() - last_save >= META_EVERY_SECONDS:
            job.save_meta()
            last_save = time.monotonic()

    try:
        return run_training(Settings(), request, report)
    except Exception as exc:
        if job is not None:
            job.meta.update(stage="failed", error=str(exc))
            job.save_meta()
        raise
    finally:
        if job is not None:
            release_training_lock(job.connection, job.id)


_RELEASE_IF_HOLDER = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def release_training_lock(connection, job_id: str) -> None:
    """Delete the training lock only if `job_id` still holds it."""
    connection.eval(_RELEASE_IF_HOLDER, 1, TRAIN_LOCK, job_id)
