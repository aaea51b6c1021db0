"""`qabot dev`: Redis (started if needed), the three workers and chosen bots as local processes, for hosts without Docker."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from urllib.parse import unquote, urlparse

from redis import Redis
from redis.exceptions import RedisError

from qabot.errors import ServiceUnavailable
from qabot.settings import Settings
from worker.localredis import start_redis_server, stop_redis_server
from worker.results import redacted

logger = logging.getLogger(__name__)

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
STOP_GRACE_SECONDS = 20
COLD_STOP_SECONDS = 5
WORKERS = (["worker", "answer"], ["worker", "train"], ["worker", "admin"])
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _reachable(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2).ping())
    except RedisError:
        return False


def ensure_redis(settings: Settings) -> subprocess.Popen | None:
    """Return None if Redis answers; else start a local redis-server for the URL (its port and password) and return it."""
    if _reachable(settings.redis_url):
        return None
    parsed = urlparse(settings.redis_url)
    if parsed.hostname not in LOCAL_HOSTS:
        raise ServiceUnavailable(
            f"Redis at {redacted(settings.redis_url)} is unreachable and is not local, so it cannot be started here: "
            "start it or set QABOT_REDIS_URL"
        )
    # Its own process group: a terminal's Ctrl-C reaches only `qabot dev`, which stops Redis after the workers.
    password = unquote(parsed.password) if parsed.password else None  # as redis-py reads the URL
    return start_redis_server(
        parsed.port or 6379, settings.home / "redis", appendonly=True, password=password, own_process_group=True
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(settings: Settings, bots: list[str], echo=print) -> int:
    """Start everything, wait until one process ends or Ctrl-C (or SIGTERM, SIGHUP), then stop them all; returns an exit code."""
    # Installed explicitly: a shell that runs us in the background sets SIGINT to SIG_IGN, and Python then installs
    # no KeyboardInterrupt handler of its own. Children started after this get the default disposition back.
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    redis: subprocess.Popen | None = None
    children: list[tuple[str, subprocess.Popen]] = []
    code = 0
    try:
        redis = ensure_redis(settings)
        for command in [*WORKERS, *(["bot", name] for name in bots)]:
            # Each child in its own process group: Ctrl-C in a terminal reaches only us, and each child then
            # gets exactly one SIGTERM (an rq worker takes a second signal as "kill the job in hand").
            proc = subprocess.Popen([sys.executable, "-m", "qabot", *command], process_group=0)
            children.append((" ".join(command), proc))
        where = "started here" if redis else "already running"
        echo(
            f"qabot dev: Redis {redacted(settings.redis_url)} ({where}); " + ", ".join(f"{n} (pid {p.pid})" for n, p in children)
        )
        echo("Ctrl-C stops everything.")
        while True:
            ended = [(n, p) for n, p in children if p.poll() is not None]
            if ended:
                name, proc = ended[0]
                echo(f"qabot dev: {name} exited with {proc.returncode}; stopping the rest")
                code = proc.returncode or 1
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        echo("qabot dev: stopping")
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not leave children running
        try:
            _stop([p for _, p in children])
            if redis is not None:
                stop_redis_server(redis)  # last: the workers finish their jobs against it
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    return code


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM (an rq worker finishes the job in hand); after the grace a second one (rq kills its work horse); then SIGKILL."""
    steps = ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGTERM, COLD_STOP_SECONDS), (signal.SIGKILL, None))
    for step, (sig, grace) in enumerate(steps):
        running = [p for p in processes if p.poll() is None]
        if not running:
            return
        if step:
            logger.warning("pids %s still running; sending %s", [p.pid for p in running], sig.name)
        for proc in running:
            proc.send_signal(sig)
        deadline = None if grace is None else time.monotonic() + grace
        for proc in running:
            try:
                proc.wait(timeout=None if deadline is None else max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
