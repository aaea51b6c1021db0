"""What comes back from the queues: answers, train job snapshots, failures read from rq results; Redis connections.

Imports neither torch nor the engine's model code, so bot containers stay slim.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from redis import Redis
from redis.exceptions import RedisError
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.results import Result
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_before_delay,
    stop_never,
    wait_exponential,
)

from qabot.errors import JobFailed
from qabot.shapes import ReplyTo

logger = logging.getLogger(__name__)
T = TypeVar("T")

FINAL_STATES = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}


@dataclass(frozen=True)
class AnswerResult:
    """What a person is told, and how it was made."""

    question: str
    answer: str
    version: str | None
    seconds: float
    job_id: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainStatus:
    """A snapshot of a train job: its rq state, progress meta, and result or error when it ends."""

    job_id: str
    state: str
    meta: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def reply_to(self) -> ReplyTo | None:
        where = self.meta.get("reply_to")
        return ReplyTo(**where) if isinstance(where, dict) else None


def _last_line(result: Result | None) -> str:
    """The last line of a failed job's traceback ("module.Error: message"), or ""."""
    text = (result.exc_string if result is not None else None) or ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _failure_kind(result: Result | None) -> str | None:
    """The exception's class name, from the traceback's last line."""
    head = _last_line(result).split(":", 1)[0]
    return head.rsplit(".", 1)[-1] if head.replace(".", "").replace("_", "").isalnum() else None


def failure_text(result: Result | None, job: Job) -> str:
    """The last line of the job's exception, or rq's reason."""
    if job.meta.get("error"):
        return str(job.meta["error"])
    last = _last_line(result)
    if not last:
        return f"the job ended as {job.get_status()}"
    return last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].replace(".", "").isidentifier() else last


def return_value(job: Job, result: Result | None, unanswered: Exception) -> Any:
    """A finished job's return value; `unanswered` if no result came (a job still queued is withdrawn); JobFailed."""
    if result is None:
        with contextlib.suppress(NoSuchJobError, InvalidJobOperation, RedisError):  # it may have expired already
            if job.get_status(refresh=True) == JobStatus.QUEUED:
                job.cancel()  # nobody is waiting for it any more
        raise unanswered
    if result.type != Result.Type.SUCCESSFUL:
        job.refresh()
        raise JobFailed(failure_text(result, job), kind=_failure_kind(result))
    return result.return_value


WORKER_SOCKET_TIMEOUT = 600  # above rq's longest blocking dequeue (worker_ttl - 15 = 405 s)


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def connect(url: str, socket_timeout: float, max_connections: int | None = None) -> Redis:
    """A Redis connection whose reads outlast the blocking calls made on it (redis-py's default is 5 s); its pool holds
    `max_connections` (redis-py's default: 100)."""
    return Redis.from_url(
        url, socket_connect_timeout=5, socket_timeout=socket_timeout, health_check_interval=30, max_connections=max_connections
    )


RETRY_MAX_S = 5.0  # the clients' longest pause between tries while Redis is away (following a fine-tune, an answer)


def _redis_retry(what: str, give_up_s: float | None, first: float, max_pause: float) -> dict[str, Any]:
    """tenacity's settings for the one retry policy: Redis errors only, backoff from `first` doubling to `max_pause`,
    a warning per retry, the last error re-raised after `give_up_s` (never, when None)."""

    def warn(state: RetryCallState) -> None:
        pause = state.next_action.sleep if state.next_action else 0.0
        logger.warning("%s: Redis unreachable (%s); retrying in %.1f s", what, state.outcome.exception(), pause)

    return {
        "retry": retry_if_exception_type(RedisError),
        "wait": wait_exponential(multiplier=first, min=first, max=max_pause),
        "stop": stop_never if give_up_s is None else stop_before_delay(give_up_s),
        "before_sleep": warn,
        "reraise": True,
    }


def retrying(action: Callable[[], T], what: str, give_up_s: float | None = None, max_pause: float = 10.0) -> T:
    """Run `action` until Redis answers (backoff 0.5 s doubling to `max_pause`); re-raise after `give_up_s`.
    The one retry helper of the workers and the client (tenacity)."""
    return Retrying(**_redis_retry(what, give_up_s, 0.5, max_pause))(action)


async def retrying_async(
    action: Callable[[], Awaitable[T]], what: str, give_up_s: float | None = None, first: float = 0.5, max_pause: float = 10.0
) -> T:
    """`retrying` for a coroutine (the bots' event loop is never blocked while Redis is away)."""

    async def attempt() -> T:  # a coroutine function: tenacity awaits only those (a lambda's coroutine it would return)
        return await action()

    return await AsyncRetrying(**_redis_retry(what, give_up_s, first, max_pause))(attempt)
