"""Queue benchmarks with the bundled model: batching throughput, queue overhead, worker memory.

Starts its own redis-server on a free port. Uses the live model of QABOT_HOME (train one with
`qabot train` or `python -m bench.quality --home DIR` first). Targets: batch >= 16 answers at least
6x more questions per second than batch 1; p50 added latency under 10 ms; RSS after 1000 jobs within
5% of after 10.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from redis import Redis
from rq import Queue

from bench.common import machine, quiet
from qabot.dataset import read_dataset
from qabot.errors import ServiceUnavailable
from qabot.heldout import read_heldout
from qabot.settings import Settings
from worker.answer_worker import AnswerWorker
from worker.client import QueueClient
from worker.jobs import ANSWER_QUEUE
from worker.localredis import free_port, start_redis_server, stop_redis_server


def start_redis() -> tuple[subprocess.Popen, str]:
    port = free_port()
    try:
        proc = start_redis_server(port, Path(tempfile.mkdtemp(prefix="qabot-bench-redis-")), appendonly=False)
    except ServiceUnavailable as exc:
        raise SystemExit(str(exc)) from exc
    return proc, f"redis://127.0.0.1:{port}/0"


def make_worker(settings: Settings) -> AnswerWorker:
    connection = Redis.from_url(settings.redis_url)
    worker = AnswerWorker([Queue(ANSWER_QUEUE, connection=connection)], connection=connection, settings=settings)
    worker.refresh_model()
    return worker


def throughput(settings: Settings, questions: list[str], batch_size: int) -> float:
    settings = settings.model_copy(update={"answer_batch_size": batch_size})
    worker = make_worker(settings)
    client = QueueClient(settings)
    client.connection.flushall()
    started = time.monotonic()
    jobs = [client.enqueue_answer(q) for q in questions]
    worker.work(burst=True, logging_level="WARNING")
    assert all(j.get_status(refresh=True) == "finished" for j in jobs)
    return len(questions) / (time.monotonic() - started)


def overhead(settings: Settings, questions: list[str]) -> tuple[float, float]:
    worker = make_worker(settings)
    direct = []
    for q in questions:
        started = time.monotonic()
        worker.answerer.answer([q])
        direct.append(time.monotonic() - started)
    del worker
    env = {**os.environ, "QABOT_HOME": str(settings.home), "QABOT_REDIS_URL": settings.redis_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "qabot", "worker", "answer"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    client = QueueClient(settings)
    try:
        client.ask_sync(questions[0], timeout=120)  # the worker has loaded the model
        through, added = [], []
        for q in questions:
            started = time.monotonic()
            result = client.ask_sync(q, timeout=60)
            through.append(time.monotonic() - started)
            added.append(through[-1] - result.details["generate_s"])  # all but the model's own time
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return statistics.median(direct), statistics.median(through), statistics.median(added)


def memory(settings: Settings, questions: list[str], total: int) -> tuple[float, float]:
    worker = make_worker(settings)
    client = QueueClient(settings)
    client.connection.flushall()
    rss = psutil.Process().memory_info

    def run(n: int) -> None:
        for i in range(n):
            client.enqueue_answer(questions[i % len(questions)])
        worker.work(burst=True, logging_level="WARNING")

    run(10)
    after_10 = rss().rss
    run(total - 10)
    return after_10 / 2**20, rss().rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()
    quiet()
    redis_proc, url = start_redis()
    settings = Settings(redis_url=url)
    held = [i.question for i in read_heldout(settings.eval_data)]
    asked = [p.prompt for p in read_dataset(settings.dataset)]
    questions = (held + asked)[:64]
    print(f"machine: {machine()}")
    try:
        one = throughput(settings, questions, 1)
        many = throughput(settings, questions, args.batch)
        print(
            f"throughput, 64 questions: batch 1 {one:.2f}/s, batch {args.batch} {many:.2f}/s -> {many / one:.2f}x"
            " (target >= 6x): "
            f"{'PASS' if many / one >= 6 else 'FAIL'}"
        )
        direct, through, added = overhead(settings, held[:30])
        added_ms = added * 1000
        print(
            f"latency p50, 30 questions: direct {direct * 1000:.1f} ms, through Redis and the worker {through * 1000:.1f} ms "
            f"-> {added_ms:.1f} ms added (target < 10 ms): {'PASS' if added_ms < 10 else 'FAIL'}"
        )
        after_10, after_n = memory(settings, questions, args.jobs)
        growth = after_n / after_10 - 1
        print(
            f"worker RSS: {after_10:.0f} MiB after 10, {after_n:.0f} MiB after {args.jobs} -> {growth:+.1%} (target within 5%): "
            f"{'PASS' if abs(growth) <= 0.05 else 'FAIL'}"
        )
    finally:
        stop_redis_server(redis_proc)


if __name__ == "__main__":
    main()
