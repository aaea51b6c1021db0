"""The train worker's safety: a lease that ties the training lock to a live fine-tune, and a parent that rides out Redis.

- The work horse (the forked child that fine-tunes) renews a short lease every `LEASE_BEAT_S`: the training lock and an
  alive key, both with a TTL of `LEASE_TTL_S`, and only while its job is still `started`. A killed fine-tune stops
  renewing, so the lock is free within `LEASE_TTL_S`; `reap_dead_training` then fails its job with a clear message.
- The horse checks the lease (renewing it atomically) right before it commits a version and before it promotes one,
  so a run that was declared failed never publishes anything.
- The horse dies with its parent (PR_SET_PDEATHSIG on Linux, else a thread that watches the parent's pid).
- The parent never exits on a transient Redis error: heartbeats are skipped, bookkeeping is retried with backoff,
  and a job is never left `started` once its horse has ended.
No torch in this module.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from rq.exceptions import InvalidJobOperation
from rq.job import Job, JobStatus

from qabot.errors import TrainingError
from worker import metrics
from worker.jobs import TRAIN_LOCK, release_training_lock
from worker.results import retrying
from worker.rq_seam import HorseWorker
from worker.train_reaper import AGAIN, ALIVE_KEY, LEASE_TTL_S, reap_dead_training

logger = logging.getLogger(__name__)

LEASE_BEAT_S = 3
MONITOR_S = 5  # how often the parent checks on its horse and heartbeats (rq's default: 30 s)
PR_SET_PDEATHSIG = 1
HORSE_DIED = f"the fine-tune process died mid-run (killed or out of memory); {AGAIN}"
UNRECORDED = (
    "the fine-tune ended while Redis was unreachable, so its outcome was not recorded; /models shows whether a new "
    "version was made"
)
LOST = "the run was declared failed while it ran (its training lock lapsed); nothing was saved or made live"

# KEYS: lock, alive key, job key; ARGV: job id, ttl ms. 1 while the job is started and holds (or retakes) the lock.
_RENEW = """
if redis.call('hget', KEYS[3], 'status') ~= 'started' then return 0 end
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then redis.call('pexpire', KEYS[1], ARGV[2])
elseif not holder then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
else return 0 end
redis.call('set', KEYS[2], '1', 'PX', ARGV[2])
return 1
"""


class Lease:
    """The running fine-tune's hold on the training lock, renewed by a thread; `check()` guards commit and promote."""

    def __init__(self, connection, job_id: str) -> None:
        self.connection, self.job_id = connection, job_id
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="qabot-lease", daemon=True)

    def _renew(self) -> bool:
        keys = (TRAIN_LOCK, ALIVE_KEY.format(self.job_id), Job.key_for(self.job_id))
        return bool(self.connection.eval(_RENEW, 3, *keys, self.job_id, LEASE_TTL_S * 1000))

    def start(self) -> Lease:
        if not retrying(self._renew, "training lease", give_up_s=LEASE_TTL_S):
            self.lost = True
            raise TrainingError(LOST)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _beat(self) -> None:
        while not self._stop.wait(LEASE_BEAT_S):
            try:
                if not self._renew():
                    self.lost = True
                    logger.error("job %s: %s", self.job_id, LOST)
                    return
            except RedisError as exc:  # a short outage: the next beat tries again, the TTL covers the gap
                logger.warning("job %s: lease not renewed (%s)", self.job_id, exc)

    def check(self) -> None:
        """Raise TrainingError unless this job still holds the lock (renewing it for another LEASE_TTL_S)."""
        if self.lost or not retrying(self._renew, "training lease", give_up_s=LEASE_TTL_S):
            self.lost = True
            raise TrainingError(LOST)


def die_with_parent(parent: int) -> None:
    """Make this process die when `parent` does (Linux: PR_SET_PDEATHSIG; elsewhere a thread polls the parent)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            logger.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    else:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, name="qabot-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # the parent died before the call above
        os._exit(1)


class TrainWorker(HorseWorker):
    """rq's forking worker for fine-tunes: its horse dies with it, and a Redis restart never stops it or strands a job."""

    def __init__(self, *args: Any, clean_up: Callable[[], None] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("job_monitoring_interval", MONITOR_S)
        super().__init__(*args, **kwargs)
        self.clean_up = clean_up or (lambda: None)
        self._parent_pid = os.getpid()

    def in_horse(self) -> None:
        die_with_parent(self._parent_pid)

    def maintenance(self) -> None:
        # ours first: rq's own cleanup would fail a dead run hours later (job_timeout + 60 s), without a clear message
        retrying(lambda: reap_dead_training(self.connection), "reaping dead fine-tunes")

    def on_start(self) -> None:
        retrying(lambda: reap_dead_training(self.connection), "reaping dead fine-tunes")
        self.clean_up()  # what dead runs left on disk (staging folders)

    def horse_killed(self, job: Job) -> None:
        job.meta.update(stage="failed", error=HORSE_DIED, problems=None)
        retrying(job.save_meta, "job meta", give_up_s=60)

    def run_job(self, job: Job, queue) -> None:
        metrics.FINE_TUNE_RUNNING.set(1)  # an exception out of here ends the worker, and its metrics with it
        super().run_job(job, queue)
        self._count(job)
        metrics.FINE_TUNE_RUNNING.set(0)
        self.clean_up()

    def _count(self, job: Job) -> None:
        """The fine-tune's outcome, counted here in the parent (the horse's counts die with it)."""
        try:
            status = job.get_status(refresh=True)
            result = job.return_value(refresh=True) if status == JobStatus.FINISHED else None
        except (RedisError, InvalidJobOperation) as exc:  # Redis away, or the job already deleted
            logger.warning("job %s: its outcome could not be read for the metrics (%s)", job.id, exc)
            status, result = None, None
        metrics.fine_tune_ended(status, result)

    def job_ended(self, job: Job, queue, execution) -> None:
        """After the horse: the job in a final state (never left started) and the lock free. RedisError: try again."""
        if job.get_status(refresh=True) == JobStatus.STARTED:  # the horse died, or its end could not be recorded
            why = UNRECORDED if self.horse_status == 0 else HORSE_DIED
            job.meta.update(stage="failed", error=why, problems=None)
            job.save_meta()
            self.fail(job, queue, execution, why)
            if job.get_status(refresh=True) == JobStatus.STARTED:  # rq logs and swallows a failed write
                raise RedisConnectionError("the job's failure was not recorded")
        release_training_lock(self.connection, job.id)
