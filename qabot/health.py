"""Whether a service runs on this host, for the health checks: rq workers by their records, bots by heartbeat keys.

An rq worker's record lives while it beats (rq lets it expire otherwise) and goes when it stops. The bots have no such
record, so each SETs `qabot:alive:<service>:<hostname>` with a TTL once a round of `BotCore.keep_delivering`: a fresh
key means that bot's event loop runs and reaches Redis. No torch, nothing of `engine/` or the workers.
"""

from __future__ import annotations

import os
import socket
import time

from redis import Redis
from rq import Queue, Worker

KEY = "qabot:alive:{service}:{host}"
BOT_BEAT_TTL_S = 60  # four of the bots' delivery rounds (bots.core.DELIVERY_POLL_SECONDS, 15 s): one late round is fine


def bot_service(platform: str) -> str:
    """The service name a bot beats as: `bot-telegram`, `bot-discord`."""
    return f"bot-{platform}"


def key(service: str, host: str | None = None) -> str:
    """The heartbeat key of `service` on `host` (default: this host)."""
    return KEY.format(service=service, host=host or socket.gethostname())


def beat(connection: Redis, service: str, ttl_s: int) -> None:
    """Say that `service` is alive on this host for the next `ttl_s` seconds (the value: when, in Unix seconds)."""
    connection.set(key(service), f"{time.time():.0f}", ex=ttl_s)


def alive(connection: Redis, service: str) -> bool:
    """Whether `service` on this host has beaten within its TTL."""
    return bool(connection.exists(key(service)))


def workers_here(connection: Redis, queue: str) -> list[Worker]:
    """rq workers of `queue` with a live record from this host: registered, this hostname, their process running.

    The pid check catches a worker killed outright (SIGKILL, out of memory) whose record has not expired yet (rq's
    worker TTL is minutes); it assumes the check runs in the worker's pid namespace, as compose's health checks do.
    """
    host = socket.gethostname()
    workers = Worker.all(queue=Queue(queue, connection=connection))
    return [w for w in workers if w.hostname == host and running(w.pid)]


def running(pid: int | None) -> bool:
    """Whether process `pid` exists (in this pid namespace)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True
