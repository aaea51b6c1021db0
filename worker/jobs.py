"""Queue names, job names and the job functions. Imported by workers and clients alike (no torch until a job runs)."""

from __future__ import annotations

from typing import Any

ANSWER_QUEUE = "answer"
TRAIN_QUEUE = "train"
ADMIN_QUEUE = "admin"
ANSWER_JOB = "worker.jobs.answer"
TRAIN_JOB = "worker.jobs.train"
TRAIN_LOCK = "qabot:train:lock"
UPLOAD_KEY = "qabot:upload:{}"  # an uploaded dataset's bytes, kept until its train job reads them
ANSWER_DOWN_KEY = "qabot:alert:answer-down"  # platforms whose admins were told no answer worker runs (this outage)
FALLBACK_ALERT_KEY = "qabot:alert:fallback"  # "<platform>:<version>": admins told that this live version does not load


ANSWERED: dict[str, Any] = {}  # outcomes the answer worker's batch computed in this process, by job id, until handed in
_alone: Any = None  # the AnswerWorker that answers jobs one by one on any other rq worker (loaded once per process)


def answer(question: str, asker: str | None = None, channel: str | None = None) -> dict[str, Any]:
    """Answer job: {answer, declined, sources, version, ...}. `qabot worker answer` answers waiting questions in one
    batched pass and this hands each job its share; on any other rq worker (`rq worker answer`, a retry from
    rq-dashboard, `rq requeue`) it answers the question alone with the live version."""
    from rq import get_current_job

    from worker.results import retrying

    global _alone
    job = get_current_job()
    if job is None:
        raise RuntimeError("answer jobs run on an rq worker")
    outcome = ANSWERED.get(job.id)  # kept until handed in: a hand-in that Redis interrupts performs the job again
    if outcome is None:
        if _alone is None:
            from worker.answer_worker import AnswerWorker

            _alone = AnswerWorker([ANSWER_QUEUE], connection=job.connection)
        found: dict[str, Any] = {}
        _alone.answer_batch([job], lambda each, outcome: found.__setitem__(each.id, outcome))
        outcome = found[job.id]
        retrying(lambda: _alone.record_declined(job, outcome), "recording a declined question", give_up_s=job.timeout)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def train(request: dict[str, Any]) -> dict[str, Any]:
    """Train job (runs in the train worker's forked child): see worker.training.train_job."""
    from worker.training import train_job

    return train_job(request)


_RELEASE_IF_HOLDER = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def release_training_lock(connection, job_id: str) -> None:
    """Delete the training lock only if `job_id` still holds it."""
    connection.eval(_RELEASE_IF_HOLDER, 1, TRAIN_LOCK, job_id)
