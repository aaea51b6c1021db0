"""The client side of the queues, for the CLI and the bots: enqueue, await results, follow training.

Imports neither torch nor the engine's model code, so bot containers stay slim.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.job import Job

from qabot import inbox, notices
from qabot.errors import AnswerTimeout, Busy, ServiceUnavailable
from qabot.settings import Settings
from qabot.shapes import ReplyTo
from worker.jobs import (
    ADMIN_QUEUE,
    ANSWER_DOWN_KEY,
    ANSWER_JOB,
    ANSWER_QUEUE,
    FALLBACK_ALERT_KEY,
    TRAIN_QUEUE,
)
from worker.results import RETRY_MAX_S, AnswerResult, connect, retrying, return_value
from worker.train_client import TrainingClient

WAITERS = 256  # questions one client may be waiting on at once, each in its own thread; past that: Busy at once
ADMIN_WAITERS = 16  # admin commands waiting at once, in threads of their own: they never queue behind questions
POOL_SPARE = 64  # Redis connections beyond the waiters (enqueueing, admin jobs, delivery, status)
ANSWER_DOWN_ALERT_TTL_S = 6 * 3600  # an outage nobody ends (no answer comes) is told again after this long

logger = logging.getLogger(__name__)


class QueueClient(TrainingClient):
    """Enqueues answer and train jobs on Redis and waits for their results (the training half: `TrainingClient`)."""

    def __init__(
        self,
        settings: Settings,
        connection: Redis | None = None,
        *,
        no_worker_wait: float | None = None,
        waiters: int = WAITERS,
    ) -> None:
        """`no_worker_wait`: give up on a question after this many seconds when no answer worker is alive (the bots);
        None waits the whole QABOT_ANSWER_WAIT (the CLI, whose user may be starting a worker). `waiters`: questions
        waited on at once; the next one raises Busy at once rather than wait for a thread."""
        self.settings = settings
        self.no_worker_wait = no_worker_wait
        # one connection per waiting question (each blocks on its result) and some to spare: redis-py's default pool
        # of 100 refused questions past that with "Too many connections" (bench.load, 1,000 questions in a minute)
        self.connection = connection or connect(
            settings.redis_url, socket_timeout=settings.answer_wait + 10, max_connections=waiters + ADMIN_WAITERS + POOL_SPARE
        )
        self.answers = Queue(ANSWER_QUEUE, connection=self.connection)
        self._waiters = ThreadPoolExecutor(max_workers=waiters, thread_name_prefix="qabot-wait")
        self.waiters = waiters
        self._seats = threading.BoundedSemaphore(waiters)  # a free thread per question in flight, or Busy
        self._admin_waiters = ThreadPoolExecutor(max_workers=ADMIN_WAITERS, thread_name_prefix="qabot-admin")
        self.training = Queue(TRAIN_QUEUE, connection=self.connection)
        self.admin_jobs = Queue(ADMIN_QUEUE, connection=self.connection)

    # -- answers ----------------------------------------------------------------------------
    def enqueue_answer(self, question: str, asker: str | None = None, channel: str | None = None) -> Job:
        """One question, one rq job with its own timeout and TTLs."""
        try:
            return self.answers.enqueue(
                ANSWER_JOB,
                kwargs={"question": question, "asker": asker, "channel": channel},
                job_timeout=self.settings.answer_timeout,
                ttl=self.settings.answer_wait,
                result_ttl=self.settings.result_ttl,
                failure_ttl=self.settings.result_ttl,
            )
        except RedisError as exc:
            raise ServiceUnavailable(f"the question queue is unreachable ({exc})") from exc

    def wait_answer(self, job: Job, timeout: float | None = None) -> AnswerResult:
        """Block until the job has a result; raise AnswerTimeout or JobFailed.

        With no live answer worker the wait ends after `no_worker_wait`, if set. A Redis restart during the wait is
        waited out (the question is answered after it when Redis keeps its data).
        """
        wait = timeout if timeout is not None else self.settings.answer_wait
        started = time.monotonic()
        deadline = started + wait
        unanswered = AnswerTimeout(f"no answer within {wait:.0f} s; are the answer workers running?")
        result, checked = None, self.no_worker_wait is None

        def block() -> float:
            left = max(0.0, deadline - time.monotonic())
            return max(1, math.ceil(left if checked else min(left, self.no_worker_wait or left)))

        while deadline - time.monotonic() > 0:
            try:
                left = deadline - time.monotonic()
                result = retrying(lambda: job.latest_result(timeout=block()), "waiting for an answer", left, RETRY_MAX_S)
                if result is not None or checked:
                    break
                checked = True
                left = deadline - time.monotonic()
                if retrying(self.live_answer_workers, "counting answer workers", left, RETRY_MAX_S) == 0:
                    unanswered = AnswerTimeout("no answer worker is running; are the answer workers running?")
                    break
            except RedisError as exc:
                raise ServiceUnavailable(f"the question queue is unreachable ({exc})") from exc
        try:
            value = return_value(job, result, unanswered) or {}
        except RedisError as exc:
            raise ServiceUnavailable(f"the question queue is unreachable ({exc})") from exc
        seconds = time.monotonic() - started
        return AnswerResult(job.kwargs["question"], value.get("answer", ""), value.get("version"), seconds, job.id, value)

    def live_answer_workers(self) -> int:
        """How many answer workers are alive: registered on the answer queue with a record that has not expired (an
        answer worker's record lapses seconds after its last heartbeat; `Worker.all` drops lapsed ones)."""
        return len(Worker.all(queue=self.answers))

    def claim_answer_down_alert(self, platform: str) -> bool:
        """True for the first caller per platform and outage: that one tells the admins that no answer worker runs.
        An answer worker ends the outage (deletes the key) once it has answered a batch."""
        return self._claim_once(ANSWER_DOWN_KEY, platform)

    def claim_fallback_alert(self, platform: str, live: str) -> bool:
        """True for the first caller per platform and live version that does not load: that one tells the admins."""
        return self._claim_once(FALLBACK_ALERT_KEY, f"{platform}:{live}")

    def _claim_once(self, key: str, field: str) -> bool:
        """Claim `field` of the alert hash `key` (True for the first caller only); the hash lapses after
        ANSWER_DOWN_ALERT_TTL_S, so what nobody ends is told again after that long."""
        if not self.connection.hsetnx(key, field, int(time.time())):
            return False
        self.connection.expire(key, ANSWER_DOWN_ALERT_TTL_S)
        return True

    def release_answer_down_alert(self, platform: str) -> None:
        """Give a claim back (no admin could be told): the next unanswered question tries again."""
        self.connection.hdel(ANSWER_DOWN_KEY, platform)

    def ask_sync(
        self, question: str, asker: str | None = None, channel: str | None = None, timeout: float | None = None
    ) -> AnswerResult:
        return self.wait_answer(self.enqueue_answer(question, asker, channel), timeout)

    async def ask(
        self, question: str, asker: str | None = None, channel: str | None = None, timeout: float | None = None
    ) -> AnswerResult:
        """Enqueue and await an answer without blocking the event loop. Each question gets a thread at once, so its wait
        counts from its enqueue; past `waiters` questions in flight it raises Busy at once."""
        if not self._seats.acquire(blocking=False):
            raise Busy(f"already waiting on {self.waiters} questions")

        def seated() -> AnswerResult:
            try:
                return self.ask_sync(question, asker, channel, timeout)
            finally:
                self._seats.release()

        return await asyncio.get_running_loop().run_in_executor(self._waiters, seated)

    # -- admin jobs -------------------------------------------------------------------------
    def admin_call(self, function: str, *args: Any, reply_to: ReplyTo | None = None) -> Any:
        """Run an admin job (`worker.admin.<function>`, or `worker.<module>.<function>` for a dotted name) and return
        its result; ServiceUnavailable if none answers."""
        wait = self.settings.admin_wait
        try:
            job = self.admin_jobs.enqueue(
                f"worker.{function}" if "." in function else f"worker.admin.{function}",
                args=args,
                job_timeout=wait,
                ttl=wait,
                result_ttl=self.settings.result_ttl,
                failure_ttl=self.settings.result_ttl,
                meta={"reply_to": asdict(reply_to) if reply_to else None},
            )
            result = job.latest_result(timeout=wait)
        except RedisError as exc:
            raise ServiceUnavailable(f"the admin queue is unreachable ({exc})") from exc
        unanswered = ServiceUnavailable(f"no admin worker answered within {wait} s; is `qabot worker admin` running?")
        return return_value(job, result, unanswered)

    async def ask_admin(self, function: str, *args: Any, reply_to: ReplyTo | None = None) -> Any:
        """`admin_call` without blocking the event loop, in threads of its own (never behind waiting questions)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._admin_waiters, lambda: self.admin_call(function, *args, reply_to=reply_to))

    # -- the unanswered inbox: answers people may flag, admins' answers to deliver ----------
    def remember_answer(self, platform: str, chat: str, messages: list[str], question: str, answer: str) -> None:
        inbox.remember_answer(self.connection, platform, chat, messages, question, answer)

    def recall_answer(self, platform: str, chat: str, message: str) -> tuple[str, str] | None:
        return inbox.recall_answer(self.connection, platform, chat, message)

    def count_report(self, platform: str, chat: str, message: str, reporter: str) -> int:
        return inbox.count_report(self.connection, platform, chat, message, reporter)

    def uncount_report(self, platform: str, chat: str, message: str, reporter: str) -> None:
        inbox.uncount_report(self.connection, platform, chat, message, reporter)

    def pop_notices(self, platform: str) -> list[notices.Notice]:
        return notices.pop_notices(self.connection, platform)

    def retry_notice(self, platform: str, notice: notices.Notice) -> bool:
        return notices.retry_notice(self.connection, platform, notice)

    def return_notices(self, platform: str, taken: list[notices.Notice]) -> None:
        notices.return_notices(self.connection, platform, taken)
