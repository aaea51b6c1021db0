"""The one place where qabot uses rq beyond its documented API (rq 3.0; the pin in pyproject.toml is >=3.0,<3.1).

rq documents custom worker classes (`rq worker -w module.Class`), SimpleWorker, jobs, queues, registries and results.
It has no hook for what the workers here need, so each workaround is below, and nothing else in qabot names an rq
attribute that rq's docs do not describe (tests/test_deploy.py greps for them). Upgrading rq means reading this file
against the new version:

1. Taking several waiting questions at once (the answer worker's batches; rq's maintainers declined a multi-dequeue):
   `Queue.dequeue_any` with no timeout, then registering each taken job as started ourselves (`Execution.create`,
   `Job.prepare_for_execution`, taking it off rq's intermediate list) and later letting rq finish it
   (`Worker.perform_job`), so each question keeps its own status, result and TTLs.
2. Doing that around the job rq hands a worker (`Worker.execute_job`), and riding out Redis errors where rq would quit
   or stop: heartbeats, state writes, the suspension check, registry cleanup, start and teardown.
3. Putting back the questions of an answer worker that died: the started registry's raw entries with their expiry
   (ZRANGE/ZREM on its key) and rq's intermediate list.
4. Stopping promptly (`Worker.unsubscribe`, every worker here): rq 3.0 runs its pub/sub thread with a 60 s wait and
   redis-py 8.2's `PubSubWorkerThread.stop()` now waits for that thread with no limit, so a burst end or a warm
   shutdown sometimes hung up to 60 s in rq's teardown (when the thread read the unsubscribe reply before it was told
   to stop, it went back to waiting for a subscription). Ours waits 1 s, as rq meant to.
5. Watching a forking worker's horse: whether it still runs (`_horse_pid`), its wait status (`wait_for_horse`), a hook
   in the horse before the job (`main_work_horse`) and after rq saw it killed (`handle_work_horse_killed`), and failing
   a job whose horse ended without recording it (`handle_job_failure`).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError
from rq import Queue, SimpleWorker, Worker, worker_registration
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.timeouts import JobTimeoutException
from rq.utils import current_timestamp, now, parse_composite_key
from rq.worker import WorkerStatus

__all__ = ["AdminWorker", "BatchingWorker", "Execution", "HorseWorker", "JobTimeoutException", "SturdyWorker"]

logger = logging.getLogger(__name__)

PUBSUB_STOP_S = 1.0  # how long teardown waits for rq's pub/sub thread to end (rq 3.0's own join)


class PromptWorker(Worker):
    """A worker whose teardown waits at most PUBSUB_STOP_S for rq's pub/sub thread (see 4. above)."""

    def unsubscribe(self) -> None:
        thread = self.pubsub_thread
        if not thread:
            return
        self.log.info("Worker %s: unsubscribing from channel %s", self.name, self.pubsub_channel_name)
        try:
            self.pubsub.unsubscribe()
        except RedisError as exc:  # the connection closes below either way
            self.log.warning("Worker %s: could not unsubscribe (%s)", self.name, exc)
        if "timeout" in inspect.signature(thread.stop).parameters:  # redis-py >= 8.2 waits for the thread
            thread.stop(timeout=PUBSUB_STOP_S)
        else:
            thread.stop()
            thread.join(timeout=PUBSUB_STOP_S)
        self.pubsub.close()


class AdminWorker(PromptWorker, SimpleWorker):
    """rq's SimpleWorker, stopping promptly: the admin worker."""


class SturdyWorker(PromptWorker):
    """Redis errors in heartbeats, state writes, the suspension check, registry cleanup and teardown are logged and the
    worker goes on (rq ends the worker on a ConnectionError there); the next dequeue waits for Redis with rq's own
    backoff. `record_ttl`: when set, the worker's record expires this many seconds after each heartbeat, whatever rq
    asks. Subclasses implement `run_job` (what to do with a job rq hands them) and may implement the lifecycle hooks."""

    record_ttl: int | None = None

    def _ride_out(self, failed: str, call: Callable[[], Any]) -> None:
        """Run one of rq's bookkeeping calls; a Redis error is logged (`failed`: what went undone) and the worker goes
        on."""
        try:
            call()
        except RedisError as exc:
            self.log.warning("Worker %s: %s (%s)", self.name, failed, exc)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        timeout = self.record_ttl or timeout
        if pipeline is not None:  # queued in a pipeline the caller executes (and retries)
            super().heartbeat(timeout, pipeline=pipeline)
            return
        self._ride_out("heartbeat skipped", lambda: super(SturdyWorker, self).heartbeat(timeout))

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is not None:
            super().set_state(state, pipeline=pipeline)
            return
        self._ride_out("could not record its state", lambda: super(SturdyWorker, self).set_state(state))

    def check_for_suspension(self, burst: bool) -> None:
        self._ride_out("could not check for suspension", lambda: super(SturdyWorker, self).check_for_suspension(burst))

    def run_job(self, job: Job, queue: Queue) -> None:
        """What the worker does with a job rq handed it."""
        raise NotImplementedError

    def execute_job(self, job: Job, queue: Queue) -> None:  # rq calls this for each job it dequeues
        self.set_state(WorkerStatus.BUSY)
        try:
            self.run_job(job, queue)
        finally:
            self.set_state(WorkerStatus.IDLE)

    def on_start(self) -> None:
        """After rq's start-up (registered, ready), before the first job is taken."""

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)
        self.on_start()


class BatchingWorker(SturdyWorker, SimpleWorker):
    """A SimpleWorker that takes the waiting jobs beside the one rq hands it and runs them together (its `run_job`).
    `held_ttl`: the started entry of a job it holds expires this long after its last renewal (`hold`, `renew`)."""

    held_ttl = 60

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.held_ttl

    def take_waiting(self, queue: Queue) -> Job | None:
        """A job already waiting in `queue`, or None at once (never blocks)."""
        found = self.queue_class.dequeue_any(
            [queue], None, connection=self.connection, job_class=self.job_class, serializer=self.serializer
        )
        return found[0] if found is not None else None

    def hold(self, job: Job, queue: Queue) -> Execution:
        """Register a taken job as started under this worker (an entry that expires after `held_ttl` unless renewed),
        as rq does when it starts a job, and take it off rq's intermediate list."""
        with self.connection.pipeline() as pipeline:
            execution = Execution.create(job, self.held_ttl, pipeline=pipeline, worker_name=self.name)
            job.prepare_for_execution(self.name, pipeline)
            pipeline.persist(job.key)  # as rq does when a job starts; put back, it expires again
            pipeline.lrem(queue.intermediate_queue_key, 1, job.id)
            pipeline.delete(queue.intermediate_queue.get_first_seen_key(job.id))
            pipeline.execute()
        self.executions[execution.id] = execution
        return execution

    def let_go(self, execution: Execution) -> None:
        self.executions.pop(execution.id, None)

    def finish(self, job: Job, queue: Queue, execution: Execution) -> None:
        """Let rq perform a held job (it runs the job function) and record its outcome, result and registries."""
        self.perform_job(job, queue, execution)

    def renew(self, executions: list[Execution], pipeline: Any) -> None:
        """Push back this worker's record and the held jobs' started entries (in `pipeline`)."""
        self.heartbeat(pipeline=pipeline)
        registry = self.queues[0].started_job_registry
        for execution in executions:
            execution.heartbeat(registry, self.held_ttl, pipeline=pipeline)

    def register_again(self) -> None:
        """Write this worker's record as at its birth (Redis lost it: a restart without AOF)."""
        self.last_heartbeat = now()
        with self.connection.pipeline() as pipeline:
            pipeline.hset(self.key, mapping=self.serialize())
            worker_registration.register(self, pipeline)
            pipeline.expire(self.key, self.record_ttl or self.worker_ttl + 60)
            pipeline.execute()

    def time_limit(self, seconds: int, job: Job) -> Any:
        """A context that raises JobTimeoutException in this thread after `seconds` (rq's own timer for jobs)."""
        return self.death_penalty_class(seconds, JobTimeoutException, job_id=job.id)

    # rq's lifecycle, each a hook of ours
    def on_birth(self) -> None:
        """After rq registered the worker."""

    def before_cleanup(self) -> None:
        """Before rq's registry maintenance (which fails expired started jobs as abandoned)."""

    def on_teardown(self) -> None:
        """Before rq registers the worker's death."""

    def register_birth(self, *args: Any, **kwargs: Any) -> None:
        super().register_birth(*args, **kwargs)
        self.on_birth()

    def clean_registries(self) -> None:
        def clean() -> None:
            self.before_cleanup()
            super(BatchingWorker, self).clean_registries()

        self._ride_out("could not clean the registries", clean)

    def clean_group_registries(self) -> None:
        self._ride_out("could not clean the group registries", super().clean_group_registries)

    def teardown(self) -> None:
        self.on_teardown()
        self._ride_out("could not register its death", super().teardown)


# -- a dead answer worker's questions: the started registry's raw entries and rq's intermediate list --------------
def started_entries(connection: Any, queue: Queue) -> list[tuple[str, str, bool]]:
    """(entry, job id, expired) for each entry of the queue's started registry, without rq's cleanup."""
    entries = []
    for composite, score in connection.zrange(queue.started_job_registry.key, 0, -1, withscores=True):
        entry = composite.decode()
        entries.append((entry, parse_composite_key(entry)[0], score <= current_timestamp()))
    return entries


def drop_started(connection: Any, queue: Queue, entry: str) -> bool:
    """Remove one started entry; True for the one caller that removed it (so a job is put back once)."""
    return bool(connection.zrem(queue.started_job_registry.key, entry))


def worker_alive(connection: Any, name: str) -> bool:
    """Whether worker `name` still has its rq record (it lapses when its heartbeats stop)."""
    return bool(connection.exists(SimpleWorker.redis_worker_namespace_prefix + name))


def stranded(connection: Any, queue: Queue, started: set[str], grace_s: float) -> list[Job]:
    """Jobs taken off `queue` by a worker that died before registering them: on rq's intermediate list, in no started
    entry, for `grace_s` seconds. Each is removed from the list (once, whoever sees it first) and returned."""
    intermediate = queue.intermediate_queue
    found = []
    for job_id in intermediate.get_job_ids():
        if job_id in started or intermediate.set_first_seen(job_id):
            continue
        first_seen = intermediate.get_first_seen(job_id)
        if first_seen is None or (now() - first_seen).total_seconds() < grace_s:
            continue
        if connection.lrem(intermediate.key, 1, job_id):
            connection.delete(intermediate.get_first_seen_key(job_id))
            job = queue.fetch_job(job_id)
            if job is not None:
                found.append(job)
    return found


def put_back(connection: Any, queue: Queue, job: Job) -> int:
    """Put a started or queued job back at the front of its queue (1), unless it ended meanwhile (0)."""
    if job.get_status(refresh=False) not in (JobStatus.STARTED, JobStatus.QUEUED):
        return 0
    with connection.pipeline() as pipeline:
        job.set_status(JobStatus.QUEUED, pipeline=pipeline)
        if job.ttl:
            pipeline.expire(job.key, job.ttl)  # a question nobody takes still expires
        queue.push_job_id(job.id, pipeline=pipeline, at_front=True)
        pipeline.execute()
    return 1


# -- the forking train worker's horse ------------------------------------------------------------------------------
class HorseWorker(SturdyWorker):
    """rq's forking Worker with hooks around its horse, and a parent that never leaves a job started."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.horse_status: int | None = None  # the last horse's wait status (0: it exited normally)

    def in_horse(self) -> None:
        """In the forked horse, before it runs the job."""

    def horse_killed(self, job: Job) -> None:
        """After rq saw the horse die (its failure is recorded)."""

    def maintenance(self) -> None:
        """Before rq's own maintenance, between jobs."""

    def job_ended(self, job: Job, queue: Queue, execution: Execution) -> None:
        """In the parent after the horse ended (RedisError: it is called again)."""

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        self.in_horse()
        super().main_work_horse(job, queue)

    def maintain_heartbeats(self, job: Job, execution: Execution) -> None:
        try:
            super().maintain_heartbeats(job, execution)
        except RedisError as exc:  # the horse keeps going; the next beat tries again
            self.log.warning("job %s: heartbeat skipped (%s)", job.id, exc)

    def run_maintenance_tasks(self) -> None:
        from worker.results import retrying

        self.maintenance()
        retrying(super().run_maintenance_tasks, "maintenance")

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        from worker.results import retrying

        retrying(self.connection.ping, "worker start")  # a worker started while Redis restarts waits for it
        super().bootstrap(*args, **kwargs)

    def handle_work_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        self.horse_killed(job)

    def wait_for_horse(self) -> tuple[int | None, int | None, Any]:
        pid, status, rusage = super().wait_for_horse()
        if pid is not None:
            self.horse_status = status
        return pid, status, rusage

    def run_job(self, job: Job, queue: Queue) -> None:
        """Fork a horse for the job, watch it through Redis errors, then `job_ended` (retried until Redis answers)."""
        from worker.results import retrying

        execution = retrying(lambda: self.prepare_execution(job), "job start")
        self.horse_status = None
        self.fork_work_horse(job, queue)
        while True:
            try:
                self.monitor_work_horse(job, queue, execution)
                break
            except RedisError as exc:
                if not self._horse_pid:  # the horse ended; its end could not be written
                    self.log.warning("job %s: its end could not be recorded (%s)", job.id, exc)
                    break
                self.log.warning("job %s: monitoring interrupted (%s); watching on", job.id, exc)
                time.sleep(1)
        retrying(lambda: self.job_ended(job, queue, execution), "job end")

    def fail(self, job: Job, queue: Queue, execution: Execution, why: str) -> None:
        """Fail a job that is still started after its horse ended, as rq fails a job."""
        self.handle_job_failure(job, queue=queue, exc_string=why, execution=execution)
