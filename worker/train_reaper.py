"""Fine-tunes that died: both sides use this (the train worker at start and between jobs, a bot's client when it
looks at a fine-tune), so it imports nothing of a worker: rq's public Job and registry API, and Redis.

A running fine-tune renews ALIVE_KEY every few seconds (worker.train_worker's Lease); once the key lapsed for a job
that rq still lists as started, the job is marked failed with DIED and the training lock is freed.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry

from worker.jobs import TRAIN_QUEUE, release_training_lock

logger = logging.getLogger(__name__)

LEASE_TTL_S = 15  # a dead fine-tune's lock is free within this; a Redis outage longer than about this aborts a run
ALIVE_KEY = "qabot:train:alive:{}"  # set by a live fine-tune, expires LEASE_TTL_S after its last beat
AGAIN = "no new version was made live. Send /retrain to start again."
DIED = f"the train worker died mid-run (killed, out of memory or restarted); {AGAIN}"


def reap_dead_training(connection) -> list[str]:
    """Fail every started train job whose fine-tune stopped renewing its lease (older than one TTL); free its lock."""
    started = StartedJobRegistry(TRAIN_QUEUE, connection=connection)
    failed = FailedJobRegistry(TRAIN_QUEUE, connection=connection)
    reaped = []
    # cleanup=False: rq's own cleanup would fail a job as abandoned before its lease says so
    for job_id in dict.fromkeys(started.get_job_ids(cleanup=False)):
        if connection.exists(ALIVE_KEY.format(job_id)):
            continue
        try:
            job = Job.fetch(job_id, connection=connection)
        except NoSuchJobError:
            continue  # rq's cleanup drops entries of jobs that expired
        began = job.started_at.replace(tzinfo=UTC) if job.started_at else None
        if job.get_status() != JobStatus.STARTED or (began and (datetime.now(UTC) - began).total_seconds() < LEASE_TTL_S):
            continue
        job.meta.update(stage="failed", error=DIED, problems=None)
        job.save_meta()
        with connection.pipeline() as pipeline:
            job.set_status(JobStatus.FAILED, pipeline=pipeline)
            failed.add(job, exc_string=DIED, pipeline=pipeline)
            started.remove_executions(job, pipeline=pipeline)
            pipeline.execute()
        release_training_lock(connection, job_id)
        logger.warning("train job %s: its fine-tune died; marked failed", job_id)
        reaped.append(job_id)
    return reaped
