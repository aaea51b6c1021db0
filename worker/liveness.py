"""Liveness of answer workers: nothing a worker has taken is lost when it dies, and Redis going away never stops it.

Each question is registered as started the moment it is taken, with a short TTL that a keeper thread renews while the
worker lives; the keeper of every live worker puts the questions of dead ones back at the front of the queue
(`rescue_orphans`). Bound: a dead worker's questions are back in the queue within LIVE_TTL_SECONDS + BEAT_SECONDS
(12 s) of its death, and answered by the next worker that runs. While Redis is away the worker waits, reconnects,
hands in the batch in hand and registers itself again if Redis lost its record.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from redis.exceptions import RedisError
from rq import Queue
from rq.job import Job, JobStatus

from worker import metrics
from worker.results import retrying
from worker.rq_seam import BatchingWorker, Execution, drop_started, put_back, started_entries, stranded, worker_alive

logger = logging.getLogger(__name__)

MODEL_FIELD = "qabot_model"  # in the worker's own rq hash: the version it answers with (the health check reads it)
FALLBACK_FIELD = "qabot_fallback"  # beside it, while the live version does not load: {"live": ..., "why": ...} (JSON)
BEAT_SECONDS = 2.0  # the keeper thread refreshes the worker's record and the questions it holds this often
LIVE_TTL_SECONDS = 10  # a worker that misses beats this long counts as dead (its record expires)
# A held question's started entry outlives its worker's record (both renewed in one beat): a dead worker's questions are
# put back (record gone) before rq's own cleanup, which any len(registry) runs, could fail them as abandoned (entry gone).
HELD_TTL_SECONDS = LIVE_TTL_SECONDS + 6  # seconds, a whole number (EXPIRE takes no fractions): three beats more
INTERMEDIATE_GRACE_SECONDS = 5  # a question taken off the queue but never registered (killed in that instant)
RECONNECT_MAX_SECONDS = 5.0  # longest pause between tries while Redis is away


class LiveWorker(BatchingWorker):
    """A worker whose record and held questions a keeper thread renews, and whose Redis errors are waited out."""

    model_version: str | None = None
    fallback: dict[str, str] | None = None  # {"live", "why"} while it serves another version because the live one fails
    record_ttl = LIVE_TTL_SECONDS  # a worker that misses beats this long drops out of /status
    held_ttl = HELD_TTL_SECONDS  # the keeper renews what the worker holds

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_connection_wait_time = RECONNECT_MAX_SECONDS
        self._held: dict[str, Execution] = {}  # questions in hand, by execution id (the keeper renews them)
        self._held_lock = threading.Lock()
        self._keeper: threading.Thread | None = None
        self._stop_keeper = threading.Event()
        self._rescue_after = 0.0

    def _publish_model(self) -> None:
        """Say in this worker's rq record which version it answers with, and why when it is not the live one (both
        expire with the worker)."""
        try:
            if self.model_version is not None and self.connection.exists(self.key):
                with self.connection.pipeline() as pipeline:
                    pipeline.hset(self.key, MODEL_FIELD, self.model_version)
                    if self.fallback:
                        pipeline.hset(self.key, FALLBACK_FIELD, json.dumps(self.fallback))
                    else:
                        pipeline.hdel(self.key, FALLBACK_FIELD)
                    pipeline.execute()
        except RedisError as exc:  # the keeper publishes it again when it registers the worker again
            self.log.warning("Worker %s: could not publish its model (%s)", self.name, exc)

    def on_birth(self) -> None:
        self._publish_model()
        self._start_keeper()

    # -- liveness: the keeper thread, heartbeats that never stop the worker -----------------
    def _start_keeper(self) -> None:
        if self._keeper is not None:
            return
        self._rescue_after = time.monotonic() + 2 * BEAT_SECONDS  # let workers that were cut off re-register first
        self._keeper = threading.Thread(target=self._keep, name=f"qabot-keeper-{self.name}", daemon=True)
        self._keeper.start()

    def _keep(self) -> None:
        """Every BEAT_SECONDS: renew this worker's record and the questions it holds, register again if Redis lost the
        record, and put back the questions of dead workers. Runs beside the model, which blocks the main thread."""
        down_since: float | None = None
        while not self._stop_keeper.is_set():
            try:
                self._beat()
                metrics.set_queue_depth(self.queues)
                if time.monotonic() >= self._rescue_after:
                    rescue_orphans(self.connection, self.queues, self.log)
                if down_since is not None:
                    self.log.warning("Worker %s: Redis is back after %.0f s", self.name, time.monotonic() - down_since)
                    down_since = None
            except RedisError as exc:
                if down_since is None:
                    down_since = time.monotonic()
                    self.log.warning("Worker %s: Redis unreachable (%s); retrying", self.name, exc)
                self._rescue_after = time.monotonic() + 2 * BEAT_SECONDS
            except Exception:  # the keeper must outlive any surprise
                self.log.exception("Worker %s: keeper failed a round", self.name)
            self._stop_keeper.wait(BEAT_SECONDS)

    def _beat(self) -> None:
        if not self.connection.hexists(self.key, "birth"):
            self.register_again()  # Redis lost this worker's record (a restart without AOF): /status counts it again
            self._publish_model()
            self.log.warning("Worker %s: registered again (Redis had lost its record)", self.name)
        with self._held_lock:
            held = list(self._held.values())
        with self.connection.pipeline() as pipeline:
            self.renew(held, pipeline)
            pipeline.execute()

    def before_cleanup(self) -> None:
        """rq's maintenance fails expired started jobs as abandoned: put back dead workers' questions before it looks."""
        rescue_orphans(self.connection, self.queues, self.log)

    def on_teardown(self) -> None:
        self._stop_keeper.set()
        if self._keeper is not None:
            self._keeper.join(timeout=BEAT_SECONDS * 2)

    # -- holding questions: registered as started the moment they are taken -----------------
    def _hold(self, job: Job, queue: Queue) -> Execution:
        """Register a taken question as started (the keeper renews it) and keep it in hand."""
        execution = self.hold(job, queue)
        with self._held_lock:
            self._held[execution.id] = execution
        return execution

    def _let_go(self, execution: Execution) -> None:
        with self._held_lock:
            self._held.pop(execution.id, None)
        self.let_go(execution)

    def before_hand_in(self, job: Job) -> None:
        """Runs inside each try of `_hand_in`, right before rq records the job's outcome (a hook for subclasses)."""

    def _hand_in(self, job: Job, queue: Queue, execution: Execution, give_up_s: float) -> bool:
        """Let rq record the job's outcome; while Redis is away, wait and try again for up to `give_up_s` (as long as
        the asker waits). False when the outcome was dropped (the job is gone, or Redis stayed away)."""

        def hand_in() -> bool:
            self.connection.ping()
            if not self.connection.exists(job.key):  # Redis lost it (restart without AOF) or it expired
                self.log.warning("Worker %s: job %s is gone; its answer is dropped", self.name, job.id)
                return False
            self.before_hand_in(job)
            self.finish(job, queue, execution)
            return True

        what = f"Worker {self.name}: handing in job {job.id}"
        try:
            return retrying(hand_in, what, give_up_s=give_up_s, max_pause=RECONNECT_MAX_SECONDS)
        except RedisError:
            self.log.error("Worker %s: Redis stayed away; the answer to job %s is dropped", self.name, job.id)
            return False


def rescue_orphans(connection: Any, queues: list[Queue], log: logging.Logger = logger) -> int:
    """Put back, at the front of their queue, the questions that dead answer workers held; the number put back.

    A question is a dead worker's when the worker named on its started job has no record left (records lapse
    LIVE_TTL_SECONDS after the last beat, before the question's own entry does), when its entry expired (nobody renews
    it), or when it sits on rq's intermediate list, in no registry, for INTERMEDIATE_GRACE_SECONDS (a worker killed
    between taking and registering it). Removing the entry first makes each question put back once, whichever worker
    sees it.
    """
    rescued = 0
    for queue in queues:
        started: set[str] = set()  # the jobs whose entries stay
        for entry, job_id, expired in started_entries(connection, queue):
            job = queue.fetch_job(job_id)
            if job is not None and job.get_status(refresh=False) == JobStatus.STARTED:
                if job.worker_name and worker_alive(connection, job.worker_name):
                    started.add(job_id)
                    continue  # its worker lives (even if cut off a moment): it renews or finishes the question
            elif not expired:
                started.add(job_id)
                continue  # a job ending right now, or one this code does not own
            if drop_started(connection, queue, entry) and job is not None:
                rescued += put_back(connection, queue, job)
        for job in stranded(connection, queue, started, INTERMEDIATE_GRACE_SECONDS):
            rescued += put_back(connection, queue, job)
    if rescued:
        metrics.PUT_BACK.inc(rescued)
        log.warning("put back %d question(s) that a dead answer worker held", rescued)
    return rescued
