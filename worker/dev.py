"""`qabot dev`: Redis (started if needed), both workers and chosen bots as local processes, for hosts without Docker."""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import time
from urllib.parse import urlparse

from redis import Redis
from redis.exceptions import RedisError

from qabot.errors import ServiceUnavailable
from qabot.settings import Settings
from worker.client import redacted

logger = logging.getLogger(__name__)

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
STOP_GRACE_SECONDS = 20


def _reachable(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2).ping())
    except RedisError:
        return False


def ensure_redis(settings: Settings) -> subprocess.Popen | None:
    """Return None if Redis answers; else start a local redis-server for the URL and return its process."""
    if _reachable(settings.redis_url):
        return None
    parsed = urlparse(settings.redis_url)
    exe = shutil.which("redis-server")
    if parsed.hostname not in LOCAL_HOSTS or exe is None:
        raise ServiceUnavailable(
            f"Redis at {redacted(settings.redis_url)} is unreachable and cannot be started here: "
            "install redis-server (apt-get install redis-server) or set QABOT_REDIS_URL"
        )
    folder = settings.home / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    args = [
        exe,
        "--port",
        str(parsed.port or 6379),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--dir",
        str(folder),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    for _ in range(100):
        if _reachable(settings.redis_url):
            return proc
        time.sleep(0.1)
    proc.kill()
    raise ServiceUnavailable(f"redis-server did not start on port {parsed.port or 6379}")


def run(settings: Settings, bots: list[str], echo=print) -> int:
    """Start everything, wait until one process ends or Ctrl-C, then stop them all; returns an exit code."""
    redis = ensure_redis(settings)
    commands = [["worker", "answer"], ["worker", "train"], *[["bot", name] for name in bots]]
    children = [(" ".join(c), subprocess.Popen([sys.executable, "-m", "qabot", *c])) for c in commands]
    where = "started here" if redis else "already running"
    echo(f"qabot dev: Redis {redacted(settings.redis_url)} ({where}); " + ", ".join(f"{n} (pid {p.pid})" for n, p in children))
    echo("Ctrl-C stops everything.")

    def stop_on_term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop_on_term)
    code = 0
    try:
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
        signal.signal(signal.SIGTERM, previous)
        _stop([p for _, p in children] + ([redis] if redis else []))
    return code


def _stop(processes: list[subprocess.Popen]) -> None:
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # rq workers finish the job in hand (warm shut-down)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for proc in processes:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
