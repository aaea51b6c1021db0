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
from rq import Queue, SimpleWorker, worker_registration
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.utils import current_timestamp, now, parse_composite_key

from worker import metrics

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


class LiveWorker(SimpleWorker):
    """A SimpleWorker whose record and held questions a keeper thread renews, and whose Redis errors are waited out."""

    model_version: str | None = None
    fallback: dict[str, str] | None = None  # {"live", "why"} while it serves another version because the live one fails

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

    def register_birth(self, *args: Any, **kwargs: Any) -> None:
        super().register_birth(*args, **kwargs)
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
            self._register_again()
        with self._held_lock:
            held = list(self._held.values())
        with self.connection.pipeline() as pipeline:
            super().heartbeat(LIVE_TTL_SECONDS, pipeline=pipeline)
            for execution in held:
                execution.heartbeat(self.queues[0].started_job_registry, HELD_TTL_SECONDS, pipeline=pipeline)
            pipeline.execute()

    def _register_again(self) -> None:
        """Redis lost this worker's record (a restart without AOF): register as at birth, so /status counts it."""
        self.last_heartbeat = now()
        with self.connection.pipeline() as pipeline:
            pipeline.hset(self.key, mapping=self.serialize())
            worker_registration.register(self, pipeline)
            pipeline.expire(self.key, LIVE_TTL_SECONDS)
            pipeline.execute()
        self._publish_model()
        self.log.warning("Worker %s: registered again (Redis had lost its record)", self.name)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """A record that expires LIVE_TTL_SECONDS after the last beat: a dead worker drops out of /status within that."""
        if pipeline is not None:
            super().heartbeat(LIVE_TTL_SECONDS, pipeline=pipeline)
            return
        try:
            super().heartbeat(LIVE_TTL_SECONDS)
        except RedisError as exc:  # the keeper and the dequeue loop retry; the worker stays up
            self.log.warning("Worker %s: heartbeat failed (%s)", self.name, exc)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return HELD_TTL_SECONDS  # the keeper renews what the worker holds

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is not None:
            super().set_state(state, pipeline=pipeline)
            return
        try:
            super().set_state(state)
        except RedisError as exc:
            self.log.warning("Worker %s: could not record its state (%s)", self.name, exc)

    def check_for_suspension(self, burst: bool) -> None:
        try:
            super().check_for_suspension(burst)
        except RedisError as exc:  # the dequeue that follows waits for Redis with backoff
            self.log.warning("Worker %s: could not check for suspension (%s)", self.name, exc)

    def clean_registries(self) -> None:
        """rq's maintenance fails expired started jobs as abandoned: put back dead workers' questions before it looks."""
        try:
            rescue_orphans(self.connection, self.queues, self.log)
            super().clean_registries()
        except RedisError as exc:
            self.log.warning("Worker %s: could not clean the registries (%s)", self.name, exc)

    def clean_group_registries(self) -> None:
        try:
            super().clean_group_registries()
        except RedisError as exc:
            self.log.warning("Worker %s: could not clean the group registries (%s)", self.name, exc)

    def teardown(self) -> None:
        self._stop_keeper.set()
        if self._keeper is not None:
            self._keeper.join(timeout=BEAT_SECONDS * 2)
        try:
            super().teardown()
        except RedisError as exc:
            self.log.warning("Worker %s: could not register its death (%s)", self.name, exc)

    # -- holding questions: registered as started the moment they are taken -----------------
    def _hold(self, job: Job, queue: Queue) -> Execution:
        """Register a taken question as started, with a TTL the keeper renews, and take it off rq's intermediate list."""
        with self.connection.pipeline() as pipeline:
            execution = Execution.create(job, HELD_TTL_SECONDS, pipeline=pipeline, worker_name=self.name)
            job.prepare_for_execution(self.name, pipeline)
            pipeline.persist(job.key)  # as rq does when a job starts; put back, it expires again
            pipeline.lrem(queue.intermediate_queue_key, 1, job.id)
            pipeline.delete(queue.intermediate_queue.get_first_seen_key(job.id))
            pipeline.execute()
        with self._held_lock:
            self._held[execution.id] = execution
        self.executions[execution.id] = execution
        return execution

    def _let_go(self, execution: Execution) -> None:
        with self._held_lock:
            self._held.pop(execution.id, None)
        self.executions.pop(execution.id, None)


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
        registry = queue.started_job_registry
        started: set[str] = set()  # the jobs whose entries stay
        for composite, score in connection.zrange(registry.key, 0, -1, withscores=True):
            job_id, _ = parse_composite_key(composite.decode())
            job = queue.fetch_job(job_id)
            expired = score <= current_timestamp()
            if job is not None and job.get_status(refresh=False) == JobStatus.STARTED:
                owner = job.worker_name
                if owner and connection.exists(SimpleWorker.redis_worker_namespace_prefix + owner):
                    started.add(job_id)
                    continue  # its worker lives (even if cut off a moment): it renews or finishes the question
            elif not expired:
                started.add(job_id)
                continue  # a job ending right now, or one this code does not own
            if connection.zrem(registry.key, composite) and job is not None:
                rescued += _put_back(connection, queue, job)
        intermediate = queue.intermediate_queue
        for job_id in intermediate.get_job_ids():
            if job_id in started or intermediate.set_first_seen(job_id):
                continue
            first_seen = intermediate.get_first_seen(job_id)
            if first_seen is None or (now() - first_seen).total_seconds() < INTERMEDIATE_GRACE_SECONDS:
                continue
            if connection.lrem(intermediate.key, 1, job_id):
                connection.delete(intermediate.get_first_seen_key(job_id))
                job = queue.fetch_job(job_id)
                rescued += _put_back(connection, queue, job) if job is not None else 0
    if rescued:
        metrics.PUT_BACK.inc(rescued)
        log.warning("put back %d question(s) that a dead answer worker held", rescued)
    return rescued


def _put_back(connection: Any, queue: Queue, job: Job) -> int:
    if job.get_status(refresh=False) not in (JobStatus.STARTED, JobStatus.QUEUED):
        return 0  # it ended after all
    with connection.pipeline() as pipeline:
        job.set_status(JobStatus.QUEUED, pipeline=pipeline)
        if job.ttl:
            pipeline.expire(job.key, job.ttl)  # a question nobody takes still expires
        queue.push_job_id(job.id, pipeline=pipeline, at_front=True)
        pipeline.execute()
    return 1
