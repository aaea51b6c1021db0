"""Start and stop a redis-server on 127.0.0.1: the one way `qabot dev`, the queue bench and the tests do it. No torch."""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import AuthenticationError, RedisError

from qabot.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 10.0
LOG_NAME = "redis-server.log"
INSTALL_HINT = "install it (apt-get install redis-server) or point QABOT_REDIS_URL at a running Redis"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis_server(
    port: int,
    folder: Path,
    *,
    appendonly: bool,
    password: str | None = None,
    own_process_group: bool = False,
    timeout: float = START_TIMEOUT_SECONDS,
) -> subprocess.Popen:
    """Start redis-server on 127.0.0.1:`port` with its files (and log) in `folder`; return it once it answers PING.

    No RDB snapshots; an append-only file when `appendonly`. The password travels on stdin, never on the
    command line. `own_process_group` keeps a terminal's Ctrl-C from reaching it (the caller stops it).
    Raises ServiceUnavailable (after killing the process) if it is not installed or does not answer in time.
    """
    exe = shutil.which("redis-server")
    if exe is None:
        raise ServiceUnavailable(f"redis-server is not installed: {INSTALL_HINT}")
    folder = folder.resolve()  # redis-server changes into --dir before it opens --logfile
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / LOG_NAME
    config = f"requirepass {_quoted(password)}\n" if password else ""
    args = [exe, "-", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(folder)]
    args += ["--appendonly", "yes" if appendonly else "no", "--logfile", str(log)]
    proc = subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        process_group=0 if own_process_group else None,
    )
    assert proc.stdin is not None
    proc.stdin.write(config)
    proc.stdin.close()
    client = Redis(host="127.0.0.1", port=port, password=password, socket_connect_timeout=1, socket_timeout=2)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                pid = client.info("server").get("process_id")
            except AuthenticationError as exc:
                raise ServiceUnavailable(f"port {port} is held by another Redis (it refused the password)") from exc
            except RedisError:
                time.sleep(0.05)
                continue
            if pid != proc.pid:
                raise ServiceUnavailable(f"port {port} is held by another Redis (pid {pid})")
            logger.info("redis-server started on 127.0.0.1:%d (pid %d, files in %s)", port, proc.pid, folder)
            return proc
    except BaseException:
        stop_redis_server(proc, timeout=0)
        raise
    finally:
        client.close()
    why = f"exited with {proc.returncode}" if proc.poll() is not None else f"did not answer PING within {timeout:.0f} s"
    stop_redis_server(proc, timeout=0)
    raise ServiceUnavailable(f"redis-server on port {port} {why}{_log_tail(log)}")


def stop_redis_server(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM (Redis flushes its append-only file), SIGKILL if still running after `timeout` s; timeout 0 kills at once."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM if timeout > 0 else signal.SIGKILL)
    try:
        proc.wait(timeout=max(timeout, 0.1))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _quoted(value: str) -> str:
    """A redis.conf string argument: double-quoted, every byte but letters and digits as a \\xhh escape."""
    return '"' + "".join(chr(b) if chr(b).isascii() and chr(b).isalnum() else f"\\x{b:02x}" for b in value.encode()) + '"'


def _log_tail(log: Path, lines: int = 5) -> str:
    try:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-lines:]
    except OSError:
        return ""
    return (":\n  " + "\n  ".join(tail)) if tail else ""
