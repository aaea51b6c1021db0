"""Admin jobs through Redis and a real `qabot worker admin`: /addqa, /models and /find round trips, p50 and p95.

Starts its own redis-server and a store of its own holding the sample dataset (no model needed; /find loads the
embedding model and builds the index on its first call, shown apart).
Baseline, same run: the same job functions called in-process. Target: p95 round trip well under 1 s.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine
from bench.queue import start_redis
from engine.versions import ModelStore
from qabot.dataset import read_dataset
from qabot.settings import SAMPLE_DATA, Settings
from worker.client import QueueClient
from worker.localredis import stop_redis_server

ROUNDS = 50


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def summary(name: str, ms: list[float]) -> float:
    p95 = sorted(ms)[int(len(ms) * 0.95) - 1]
    print(f"  {name:28} p50 {statistics.median(ms):7.1f} ms, p95 {p95:7.1f} ms")
    return p95


def main() -> None:
    print(f"machine: {machine()}")
    home = Path(tempfile.mkdtemp(prefix="qabot-bench-admin-"))
    store = ModelStore(home / "models")
    store.set_current_dataset(store.store_dataset(read_dataset(SAMPLE_DATA))[0])
    redis, url = start_redis()
    os.environ["QABOT_HOME"] = str(home)
    env = os.environ | {"QABOT_HOME": str(home), "QABOT_REDIS_URL": url}
    command = [sys.executable, "-m", "qabot", "worker", "admin"]
    worker = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from worker import admin

        client = QueueClient(Settings(home=home, redis_url=url))
        client.admin_call("list_models")  # the worker is up
        print(f"{ROUNDS} rounds each, dataset of {len(store.current_pairs())} pairs:")
        queued_add = [
            timed(lambda i=i: client.admin_call("add_pair", f"Queued question {i}?", "An answer.")) for i in range(ROUNDS)
        ]
        queued_models = [timed(lambda: client.admin_call("list_models")) for _ in range(ROUNDS)]
        direct_add = [timed(lambda i=i: admin.add_pair(f"Direct question {i}?", "An answer.")) for i in range(ROUNDS)]
        first_find = timed(lambda: client.admin_call("find_pairs", "who guards the stone"))  # loads the embedder
        queued_find = [timed(lambda i=i: client.admin_call("find_pairs", f"who guards stone {i}")) for i in range(ROUNDS)]
        print(f"  {'first /find (loads the model)':28} {first_find:7.1f} ms")
        p95 = max(
            summary("/addqa through the queue", queued_add),
            summary("/models through the queue", queued_models),
            summary("/find through the queue", queued_find),
        )
        direct = summary("/addqa called in-process", direct_add)
        print(f"added by the queue: {statistics.median(queued_add) - statistics.median(direct_add):.1f} ms (p50)")
        print(f"p95 {p95:.0f} ms against 1000 ms: {'PASS' if p95 < 1000 else 'FAIL'} ({p95 / direct:.1f}x the in-process p95)")
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        stop_redis_server(redis)


if __name__ == "__main__":
    main()
