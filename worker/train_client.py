"""The training half of the queue client: queue a fine-tune under the one-at-a-time lock, follow it, and find ended
fine-tunes that no bot has delivered. No torch; `worker.client.QueueClient` is what callers use."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry

from qabot.errors import ServiceUnavailable, TrainingBusy
from qabot.settings import Settings
from qabot.shapes import ReplyTo
from worker.jobs import TRAIN_JOB, TRAIN_LOCK, TRAIN_QUEUE, UPLOAD_KEY, release_training_lock
from worker.results import FINAL_STATES, RETRY_MAX_S, TrainStatus, failure_text, retrying_async
from worker.train_reaper import ALIVE_KEY, reap_dead_training

LOCK_MARGIN_S = 300
LOCK_GRACE_S = 30
UPLOAD_TTL_S = 3600  # an uploaded dataset waits this long for its train job to start
DELIVERED_KEY = "qabot:delivered:{}"
DELIVERED_TTL_S = 8 * 24 * 3600  # longer than train results live (7 days)
RESULT_KEEP_S = 7 * 24 * 3600
TRAIN_TTL_MARGIN_S = 900  # rq drops a train job still queued this long after QABOT_TRAIN_START_WAIT (no bot cancelled it)

logger = logging.getLogger(__name__)


class TrainingClient:
    """Fine-tunes through Redis; needs `settings`, `connection` and the `training` queue (set by QueueClient)."""

    settings: Settings
    connection: Redis
    training: Queue

    # -- training ---------------------------------------------------------------------------
    def running_training(self) -> str | None:
        """The id of the train job that is queued or running, if any."""
        holder = self.connection.get(TRAIN_LOCK)
        if holder is None:
            return None
        job_id = holder.decode()
        try:
            status = Job.fetch(job_id, connection=self.connection).get_status()
        except NoSuchJobError:
            lock_age = self.settings.train_timeout + LOCK_MARGIN_S - self.connection.ttl(TRAIN_LOCK)
            if lock_age < LOCK_GRACE_S:
                return job_id  # being enqueued right now
            status = None
        if status is None or status in FINAL_STATES:
            release_training_lock(self.connection, job_id)  # a stale lock: its job ended without releasing it
            return None
        return job_id

    def start_training(
        self, request: dict[str, Any], reply_to: ReplyTo | None = None, upload: tuple[bytes, str] | None = None
    ) -> Job:
        """Queue a fine-tune (an upload's bytes wait in a short-lived key); raise TrainingBusy if one is queued or running."""
        try:
            if self.running_training():
                raise TrainingBusy("A training run is already in progress; wait for it to finish, then try again")
            job_id = Job.create(TRAIN_JOB, connection=self.connection).id  # reserve an id for the lock
            if not self.connection.set(TRAIN_LOCK, job_id, nx=True, ex=self.settings.train_timeout + LOCK_MARGIN_S):
                raise TrainingBusy("A training run was just started by someone else; wait for it to finish, then try again")
            if upload is not None:
                data, filename = upload
                upload_id = uuid.uuid4().hex
                self.connection.set(UPLOAD_KEY.format(upload_id), data, ex=UPLOAD_TTL_S)
                request = request | {"upload": {"id": upload_id, "filename": filename, "mode": request.get("mode")}}
            who = asdict(reply_to) if reply_to is not None else None
            return self.training.enqueue(
                TRAIN_JOB,
                args=(request,),
                job_id=job_id,
                job_timeout=self.settings.train_timeout,
                ttl=self.settings.train_start_wait + TRAIN_TTL_MARGIN_S,
                result_ttl=RESULT_KEEP_S,
                failure_ttl=RESULT_KEEP_S,
                meta={"stage": "queued", "requested_by": reply_to.user if reply_to else None, "reply_to": who},
            )
        except RedisError as exc:
            raise ServiceUnavailable(f"the training queue is unreachable ({exc})") from exc

    # -- delivery: every finished fine-tune reaches its admin once, whichever bot runs -------
    def claim_delivery(self, job_id: str) -> bool:
        """True for the first caller only: that one delivers the outcome."""
        return bool(self.connection.set(DELIVERED_KEY.format(job_id), 1, nx=True, ex=DELIVERED_TTL_S))

    def release_delivery(self, job_id: str) -> None:
        """Give a claim back (the delivery failed): the next round tries again."""
        self.connection.delete(DELIVERED_KEY.format(job_id))

    def undelivered_training(self, platform: str) -> list[TrainStatus]:
        """Ended fine-tunes asked for on `platform` whose outcome no bot has delivered yet."""
        for job_id in self.training.get_job_ids():  # requests no worker took in time are cancelled here too
            with contextlib.suppress(NoSuchJobError):
                self.training_status(job_id)
        reap_dead_training(self.connection)  # and fine-tunes that died with their worker, even if none runs again
        ids = [
            *FinishedJobRegistry(TRAIN_QUEUE, connection=self.connection).get_job_ids(),
            *FailedJobRegistry(TRAIN_QUEUE, connection=self.connection).get_job_ids(),
            *CanceledJobRegistry(TRAIN_QUEUE, connection=self.connection).get_job_ids(),
        ]
        found = []
        for job_id in ids:
            if self.connection.exists(DELIVERED_KEY.format(job_id)):
                continue
            with contextlib.suppress(NoSuchJobError):
                status = self.training_status(job_id)
                if status.done and status.reply_to is not None and status.reply_to.platform == platform:
                    found.append(status)
        return found

    def training_status(self, job_id: str) -> TrainStatus:
        """A snapshot of a train job; one that no worker took within QABOT_TRAIN_START_WAIT is cancelled first, and one
        whose fine-tune died (its lease lapsed: the train worker was killed whole) is failed first."""
        job = Job.fetch(job_id, connection=self.connection)
        state = job.get_status()
        if state == JobStatus.QUEUED and self._overdue(job):
            self._cancel_unstarted(job)
            state = job.get_status()
        elif state == JobStatus.STARTED and not self.connection.exists(ALIVE_KEY.format(job_id)):
            if job_id in reap_dead_training(self.connection):
                state = job.get_status()
        meta = job.get_meta()
        result = job.latest_result() if state in FINAL_STATES else None
        if state == JobStatus.FINISHED and result is not None:
            return TrainStatus(job_id, state, meta, result.return_value)
        error = failure_text(result, job) if state in FINAL_STATES else None
        return TrainStatus(job_id, state, meta, None, error)

    def _overdue(self, job: Job) -> bool:
        waited = (datetime.now(UTC) - job.enqueued_at).total_seconds() if job.enqueued_at else 0.0
        return waited > self.settings.train_start_wait

    def _cancel_unstarted(self, job: Job) -> None:
        """Withdraw a fine-tune that no train worker took in time, say why, and free the training lock."""
        wait = self.settings.train_start_wait
        try:
            job.cancel()
        except InvalidJobOperation:  # a worker took it this very moment: it runs
            return
        job.meta["error"] = (
            f"no train worker took the request within {wait} s, so it was cancelled; "
            "is `qabot worker train` running? Send /retrain again once it is"
        )
        job.save_meta()
        release_training_lock(self.connection, job.id)
        logger.warning("cancelled fine-tune %s: no train worker took it within %d s", job.id, wait)

    async def follow_training(self, job_id: str, poll_s: float = 1.0) -> AsyncIterator[TrainStatus]:
        """Yield a status whenever the job's progress changes, and the final one. Redis going away is waited out; a job
        Redis lost (a restart without its data) ends as failed."""
        previous = None
        while True:
            try:
                status = await retrying_async(
                    lambda: asyncio.to_thread(self.training_status, job_id),
                    f"following fine-tune {job_id}",
                    first=poll_s,
                    max_pause=RETRY_MAX_S,
                )
            except NoSuchJobError:
                yield TrainStatus(job_id, JobStatus.FAILED, {}, None, "the request was lost (Redis lost its data); send it again")
                return
            key = (status.state, tuple(sorted((k, str(v)) for k, v in status.meta.items())))
            if key != previous:
                previous = key
                yield status
            if status.done:
                return
            await asyncio.sleep(poll_s)
