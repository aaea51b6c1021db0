"""`qabot dev`: Redis (started if needed), the three workers and chosen bots as local processes, for hosts without Docker.

A child that dies is restarted after 1 s, then 2, 4, ... up to 30 s while it keeps dying within a minute of its start;
after MAX_FAST_CRASHES such restarts in a row, `qabot dev` stops everything and exits with the child's code.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
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
POLL_SECONDS = 0.5
RESTART_FIRST_SECONDS = 1.0  # a child that died is restarted after 1 s, then 2, 4, ... while it keeps dying fast
RESTART_MAX_SECONDS = 30.0
STABLE_SECONDS = 60.0  # a child that ran this long before it died starts a fresh count of fast crashes
MAX_FAST_CRASHES = 5  # restarts in a row of a child that dies within STABLE_SECONDS; one more and dev gives up


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


@dataclass
class Child:
    """One supervised process of `qabot dev`: restarted when it dies, unless it keeps dying fast."""

    name: str
    command: list[str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    fast_crashes: int = 0  # consecutive runs shorter than STABLE_SECONDS
    restart_at: float | None = None

    def start(self) -> None:
        # Its own process group: Ctrl-C in a terminal reaches only `qabot dev`, and each child then
        # gets exactly one SIGTERM (an rq worker takes a second signal as "kill the job in hand").
        self.proc = subprocess.Popen([sys.executable, "-m", "qabot", *self.command], process_group=0)
        self.started, self.restart_at = time.monotonic(), None

    def ended(self, now: float) -> float | None:
        """After this child exited: the delay before its restart, or None when it crashed too often too fast."""
        self.fast_crashes = self.fast_crashes + 1 if now - self.started < STABLE_SECONDS else 1
        if self.fast_crashes > MAX_FAST_CRASHES:
            return None
        return min(RESTART_MAX_SECONDS, RESTART_FIRST_SECONDS * 2 ** (self.fast_crashes - 1))


def run(settings: Settings, bots: list[str], echo=print) -> int:
    """Start everything and keep it running (a child that dies is restarted, with a backoff) until Ctrl-C, SIGTERM,
    SIGHUP or a child that keeps crashing right after its start; then stop them all. Returns an exit code."""
    # Installed explicitly: a shell that runs us in the background sets SIGINT to SIG_IGN, and Python then installs
    # no KeyboardInterrupt handler of its own. Children started after this get the default disposition back.
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    redis: list[subprocess.Popen] = []  # the redis-server started here, if any (replaced when it is restarted)
    children = [Child(" ".join(c), list(c)) for c in [*WORKERS, *(["bot", name] for name in bots)]]
    code = 0
    try:
        redis.extend(filter(None, [ensure_redis(settings)]))
        for child in children:
            child.start()
        where = "started here" if redis else "already running"
        echo(
            f"qabot dev: Redis {redacted(settings.redis_url)} ({where}); "
            + ", ".join(f"{c.name} (pid {c.proc.pid})" for c in children)
        )
        echo("Ctrl-C stops everything.")
        code = _supervise(children, echo, redis, lambda: ensure_redis(settings))
    except KeyboardInterrupt:
        echo("qabot dev: stopping")
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not leave children running
        try:
            _stop([c.proc for c in children if c.proc is not None])
            if redis:
                stop_redis_server(redis[0])  # last: the workers finish their jobs against it
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    return code


def _supervise(children: list[Child], echo, redis: list[subprocess.Popen], start_redis) -> int:
    """Restart children (and the redis-server started here) that exit; return an exit code once a child crashed
    MAX_FAST_CRASHES times in a row, fast."""
    while True:
        if redis and redis[0].poll() is not None:  # its append-only file keeps the queues; the workers wait for it
            echo(f"qabot dev: redis-server exited with {redis[0].returncode}; restarting it")
            restarted = start_redis()
            if restarted is None:  # another Redis answers on that port now: not ours to watch
                redis.clear()
            else:
                redis[0] = restarted
        now = time.monotonic()
        for child in children:
            if child.restart_at is not None and now >= child.restart_at:
                child.start()
                echo(f"qabot dev: {child.name} restarted (pid {child.proc.pid})")
            elif child.restart_at is None and child.proc.poll() is not None:
                delay = child.ended(now)
                if delay is None:
                    echo(
                        f"qabot dev: {child.name} exited with {child.proc.returncode} ({child.fast_crashes} times in a row, "
                        f"each within {STABLE_SECONDS:.0f} s of its start); stopping everything"
                    )
                    return child.proc.returncode or 1
                echo(f"qabot dev: {child.name} exited with {child.proc.returncode}; restarting it in {delay:.0f} s")
                child.restart_at = now + delay
        time.sleep(POLL_SECONDS)


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
