"""Prometheus metrics, read over HTTP from real `qabot worker answer` and `qabot worker train` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue
from rq.job import JobStatus

from qabot.errors import JobFailed
from qabot.settings import Settings
from tests.conftest import TINY_CONFIG, qabot_env, wait_until
from tests.test_faults_answer import QUESTIONS, ask_in_threads, start_worker, stop
from tests.test_faults_answer import slow_home as slow_home  # the module-scoped fixture, re-exported for this module
from worker import metrics
from worker.client import QueueClient
from worker.jobs import ANSWER_QUEUE
from worker.localredis import free_port

ANSWERED = 'qabot_questions_total{outcome="answered"}'
FAILED = 'qabot_questions_total{outcome="failed"}'


def scrape(port: int) -> dict[str, float] | None:
    """Every sample of http://127.0.0.1:PORT/metrics as {'name{label="value",...}': value}; None if nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return samples_of(response.read().decode())
    except OSError:
        return None


def registry_samples() -> dict[str, float]:
    """This process's own metrics, as a scrape would see them."""
    return samples_of(generate_latest(metrics.REGISTRY).decode())


def samples_of(text: str) -> dict[str, float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return samples


def scrape_when(port: int, condition, what: str, log: Path, timeout: float = 30) -> dict[str, float]:
    """Scrape until `condition(samples)` holds (counters are incremented a moment after rq records the job)."""
    return wait_until(lambda: (s := scrape(port)) is not None and condition(s) and s, timeout, what, log)


def test_the_answer_worker_counts_questions_their_latency_batches_and_serves_its_version(home, redis_url, tmp_path):
    log = tmp_path / "worker.log"
    port = free_port()
    client = QueueClient(Settings(home=home, redis_url=redis_url, answer_wait=60))
    worker = start_worker(home, redis_url, log, max_new_tokens="24", answer_metrics_port=str(port))
    try:
        before = scrape_when(port, lambda s: 'qabot_model_version{version="v0001"}' in s, "the model is loaded", log, 60)
        assert before[ANSWERED] == before[FAILED] == 0 and before["qabot_answer_latency_seconds_count"] == 0
        assert f"metrics: serving http://127.0.0.1:{port}/metrics" in log.read_text()

        jobs = [client.enqueue_answer(q) for q in QUESTIONS[:3]]
        too_long = client.enqueue_answer("why? " * 200)  # past QABOT_MAX_QUESTION_CHARS: it fails alone
        assert all(client.wait_answer(job).answer for job in jobs)
        with pytest.raises(JobFailed):
            client.wait_answer(too_long)
        # a batch's size is recorded once its last answer is handed in: a moment after that answer is counted
        counted = lambda s: s[ANSWERED] + s[FAILED] == 4 and s["qabot_batch_size_sum"] >= 3  # noqa: E731
        after = scrape_when(port, counted, "all four are counted and the batch recorded", log)
    finally:
        stop(worker)
    assert (after[ANSWERED], after[FAILED]) == (3, 1)
    assert after['qabot_questions_total{outcome="timed_out"}'] == after['qabot_questions_total{outcome="declined"}'] == 0
    assert after["qabot_answer_latency_seconds_count"] == 3 and after["qabot_answer_latency_seconds_sum"] > 0
    assert after["qabot_batch_size_sum"] == 3 and after["qabot_batch_size_count"] >= 1  # the model saw the valid three
    assert after['qabot_model_version{version="v0001"}'] == 1
    assert after['qabot_queue_depth{queue="answer"}'] == 0
    assert after["qabot_questions_put_back_total"] == 0
    assert after["process_resident_memory_bytes"] > 0


def test_questions_put_back_after_a_worker_dies_show_on_the_next_workers_metrics(slow_home, redis_url, tmp_path):
    """SIGKILL while a batch is in the model: the next worker counts the questions it put back, then answers them."""
    log = tmp_path / "workers.log"
    client = QueueClient(Settings(home=slow_home, redis_url=redis_url, answer_wait=120))
    queue = Queue(ANSWER_QUEUE, connection=client.connection)
    first_port, second_port = free_port(), free_port()
    first = start_worker(slow_home, redis_url, log, max_new_tokens="2048", answer_metrics_port=str(first_port))
    try:
        wait_until(lambda: client.live_answer_workers(), 60, "the first worker registers", log)
        jobs = [client.enqueue_answer(q, asker=f"u{i}") for i, q in enumerate(QUESTIONS[:4])]
        results, waiter = ask_in_threads(client, jobs)
        wait_until(lambda: queue.count == 0, 60, "the worker takes the whole batch", log)
        time.sleep(1.0)  # well inside the model: 2048 tokens take many seconds
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        second = start_worker(slow_home, redis_url, log, max_new_tokens="4", answer_metrics_port=str(second_port))
        try:
            waiter.join(timeout=90)
            seen = scrape_when(second_port, lambda s: s[ANSWERED] == 4, "the second worker counts its answers", log)
        finally:
            stop(second)
    finally:
        stop(first)
    assert all(r is not None and not isinstance(r, Exception) for r in results), results
    assert seen["qabot_questions_put_back_total"] == 4
    assert seen["qabot_answer_latency_seconds_count"] == 4
    # each waited out the dead worker (its held questions count as dead LIVE_TTL_SECONDS, 10 s, after their last beat)
    assert seen['qabot_answer_latency_seconds_bucket{le="5.0"}'] == 0


def start_train_worker(home: Path, url: str, log: Path, port: int) -> subprocess.Popen:
    """A real `qabot worker train` (not burst) with its metrics on `port`."""
    env = {"QABOT_HOME": str(home), "QABOT_REDIS_URL": url, "QABOT_LOG_LEVEL": "INFO", "QABOT_TRAIN_METRICS_PORT": str(port)}
    return subprocess.Popen(
        [sys.executable, "-m", "qabot", "worker", "train"], env=qabot_env(env), stdout=log.open("a"), stderr=subprocess.STDOUT
    )


def test_the_train_worker_shows_a_fine_tune_running_and_counts_it_failed_when_its_process_is_killed(
    home, redis_url, tiny_gpt2, tiny_data, tmp_path
):
    """The fault of the train path: the forked fine-tune is killed (as the OOM killer would); the parent counts it."""
    log = tmp_path / "train.log"
    port = free_port()
    client = QueueClient(Settings(home=home, redis_url=redis_url))
    worker = start_train_worker(home, redis_url, log, port)
    try:
        idle = scrape_when(port, lambda s: True, "the train worker serves its metrics", log)
        assert idle["qabot_fine_tune_running"] == 0
        assert [idle[f'qabot_fine_tunes_total{{outcome="{o}"}}'] for o in ("promoted", "kept", "failed")] == [0, 0, 0]
        job = client.start_training({"dataset": str(tiny_data), "base_model": str(tiny_gpt2), "hyperparameters": TINY_CONFIG})
        scrape_when(port, lambda s: s["qabot_fine_tune_running"] == 1, "the fine-tune runs", log)
        horse = wait_until(lambda: children(worker.pid), 10, "the work horse is forked", log)
        os.kill(horse[0], signal.SIGKILL)
        seen = scrape_when(port, lambda s: s['qabot_fine_tunes_total{outcome="failed"}'] == 1, "the dead run is counted", log)
    finally:
        stop(worker)
    assert seen["qabot_fine_tune_running"] == 0
    assert seen['qabot_fine_tunes_total{outcome="promoted"}'] == seen['qabot_fine_tunes_total{outcome="kept"}'] == 0
    assert client.training_status(job.id).state == "failed"


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_a_finished_fine_tune_is_counted_by_what_its_result_says(trained_tiny):
    """The train worker's parent reads the job's final status and result (Release.to_dict plus the upload)."""
    _, release = trained_tiny
    result = release.to_dict() | {"upload": {}, "loss_png": None}
    before = registry_samples()
    outcomes = [
        metrics.fine_tune_ended(JobStatus.FINISHED, result),
        metrics.fine_tune_ended(JobStatus.FINISHED, result | {"promoted": False}),
        metrics.fine_tune_ended(JobStatus.FAILED, None),
        metrics.fine_tune_ended(None, None),  # Redis could not tell
    ]
    after = registry_samples()
    assert outcomes == ["promoted", "kept", "failed", "unknown"]
    for outcome in outcomes:
        key = f'qabot_fine_tunes_total{{outcome="{outcome}"}}'
        assert after[key] - before.get(key, 0) == 1, key
