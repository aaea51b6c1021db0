"""Fine-tunes under faults, with real processes: `qabot worker train` killed with SIGKILL mid-epoch (whole, or its parent
alone), a run that lost its lock, Redis restarted mid-run; `qabot dev` restarting a child killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import RedisError
from rq import Worker

from bots.render import render_result
from engine.pipeline import TrainRequest, load_base, validate_file
from engine.release import Policy, release
from engine.training import TrainConfig
from engine.versions import ModelStore
from qabot.errors import TrainingError
from tests.conftest import TINY_CONFIG, exit_code, wait_until
from tests.test_deploy import assert_all_stopped, interrupt, start_dev
from tests.test_queue import make_settings, settings_env
from worker.client import QueueClient
from worker.dev import MAX_FAST_CRASHES, STABLE_SECONDS, Child
from worker.jobs import ADMIN_QUEUE, TRAIN_LOCK
from worker.localredis import free_port, start_redis_server, stop_redis_server
from worker.train_reaper import ALIVE_KEY, DIED, LEASE_TTL_S, reap_dead_training
from worker.train_worker import LOST

LONG = 3000  # epochs: far more than a test waits for, so each kill lands mid-run


def request_for(data, base, **hyper) -> dict:
    return {"dataset": str(data), "base_model": str(base), "hyperparameters": TINY_CONFIG | hyper, "force": True}


def train_worker(settings, log: Path, burst: bool = True) -> subprocess.Popen:
    """A real `qabot worker train`, its output in `log` (a pipe nobody reads would fill up and stall it)."""
    command = [sys.executable, "-m", "qabot", "worker", "train", *(["--burst"] if burst else [])]
    return subprocess.Popen(command, env=settings_env(settings), stdout=log.open("a"), stderr=subprocess.STDOUT)


def training_at(client: QueueClient, job_id: str, step: int):
    """True once the job reports a training step of at least `step`."""
    meta = client.training_status(job_id).meta
    return meta.get("stage") == "training" and (meta.get("step") or 0) >= step


def horse_of(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def assert_nothing_published(store: ModelStore) -> None:
    assert store.current_name() == "v0001" and [v.name for v in store.list()] == ["v0001"]
    assert list(store.versions_dir.glob(".staging-*")) == []


@pytest.fixture
def running(home, redis_url, tiny_gpt2, tiny_data, tmp_path):
    """A long fine-tune under a real train worker, caught mid-epoch: (settings, client, job, worker, horse pid, log)."""
    settings = make_settings(home, redis_url)
    client = QueueClient(settings)
    job = client.start_training(request_for(tiny_data, tiny_gpt2, epochs=LONG))
    log = tmp_path / "worker.log"
    worker = train_worker(settings, log)
    wait_until(lambda: training_at(client, job.id, 3), 90, "training under way", log)
    horse = horse_of(worker.pid)
    yield settings, client, job, worker, horse, log
    for pid in (worker.pid, horse):
        if not dead(pid):
            os.kill(pid, signal.SIGKILL)
    worker.wait()


def test_a_worker_killed_whole_frees_the_lock_and_its_job_fails_clearly(running):
    settings, client, job, worker, horse, log = running
    os.kill(worker.pid, signal.SIGKILL)
    os.kill(horse, signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: client.running_training() is None, LEASE_TTL_S + 2, "the training lock freed")
    assert time.monotonic() - killed <= LEASE_TTL_S + 1
    # No train worker runs again: the admin's follow loop (or a bot's delivery scan) fails the job itself and ends with:
    status = client.training_status(job.id)
    assert status.done and status.state == "failed"
    assert render_result(status) == f"Training failed: {DIED}"
    assert client.training_status(job.id).state == "failed"  # once: the next look finds it ended
    again = train_worker(settings, log)  # the next train worker starts cleanly and finds nothing to reap
    assert exit_code(again, 60, log) == 0, log.read_text()[-3000:]
    assert reap_dead_training(client.connection) == []
    assert_nothing_published(ModelStore(settings.models_dir))


def test_the_fine_tune_dies_with_its_parent_and_never_publishes(running):
    settings, client, job, worker, horse, _ = running
    os.kill(worker.pid, signal.SIGKILL)  # the parent alone: rq's horse has its own process group
    wait_until(lambda: dead(horse), 3, "the fine-tune dying with its parent")
    lock_ms, alive_ms = client.connection.pttl(TRAIN_LOCK), client.connection.pttl(ALIVE_KEY.format(job.id))
    assert 0 < lock_ms <= LEASE_TTL_S * 1000 and 0 < alive_ms <= LEASE_TTL_S * 1000  # both lapse within the bound
    assert reap_dead_training(client.connection) == []  # not before its lease lapses (the other test waits for that)
    assert_nothing_published(ModelStore(settings.models_dir))


def test_dev_backs_off_and_gives_up_only_on_repeated_fast_crashes():
    child = Child("worker admin", ["worker", "admin"])
    delays = [child.ended(1.0) for _ in range(MAX_FAST_CRASHES)]  # each run lasted 1 s (started at 0)
    assert delays == [1, 2, 4, 8, 16] and child.ended(1.0) is None
    child.fast_crashes = 3
    assert child.ended(STABLE_SECONDS + 1) == 1  # a run that lasted starts a fresh count


def test_a_run_that_lost_its_lock_stops_and_publishes_nothing(running):
    settings, client, job, worker, _, log = running
    client.connection.set(TRAIN_LOCK, "someone-else")  # as if it had been declared dead and a new run had started
    assert exit_code(worker, 30, log) == 0, log.read_text()[-3000:]
    status = client.training_status(job.id)
    assert status.state == "failed" and render_result(status) == f"Training failed: {LOST}"
    assert client.connection.get(TRAIN_LOCK) == b"someone-else"  # the other run's lock is left alone
    assert_nothing_published(ModelStore(settings.models_dir))


def test_a_refused_guard_commits_nothing(home, tiny_gpt2, tiny_data, tmp_path):
    store = ModelStore(home / "models")
    calls = []

    def guard() -> None:
        calls.append(store.current_name())
        raise TrainingError(LOST)

    train = TrainConfig(**(TINY_CONFIG | {"epochs": 2}))
    base = load_base(str(tiny_gpt2), tmp_path / "cache", train.max_length)
    request = TrainRequest(str(tiny_gpt2), train, source=tiny_data.name)
    with pytest.raises(TrainingError, match="declared failed"):
        release(store, validate_file(tiny_data, base), base, request, Policy(device="cpu"), guard=guard)
    assert calls == ["v0001"]  # asked once, right before the commit
    assert_nothing_published(store)


def test_the_train_worker_rides_out_a_redis_restart(home, tiny_gpt2, tiny_data, tmp_path):
    folder, port = tmp_path / "redis", free_port()
    redis = start_redis_server(port, folder, appendonly=True)
    try:
        settings = make_settings(home, f"redis://127.0.0.1:{port}/0")
        client = QueueClient(settings)
        # long enough, on a fast machine too, to be caught mid-run and to meet the outage (no early stop: no evaluation)
        job = client.start_training(request_for(tiny_data, tiny_gpt2, epochs=240, eval_questions=0))
        log = tmp_path / "worker.log"
        worker = train_worker(settings, log)
        wait_until(lambda: training_at(client, job.id, 3), 90, "training under way", log)
        stop_redis_server(redis)  # SIGTERM: the append-only file is flushed, as `docker restart` does
        time.sleep(6)  # longer than the parent's monitoring interval: it meets the outage
        redis = start_redis_server(port, folder, appendonly=True)
        assert exit_code(worker, 600, log) == 0, log.read_text()[-3000:]  # 240 epochs: minutes on a busy 2-core machine
        status = client.training_status(job.id)
        assert status.state == "finished", (status.error, log.read_text()[-3000:])
        assert status.result["promoted"] and ModelStore(settings.models_dir).current_name() == "v0002"
        text = log.read_text()
        assert client.running_training() is None and "unhandled exception" not in text
        assert "heartbeat skipped" in text, text[-3000:]  # the parent met the outage and carried on
    finally:
        stop_redis_server(redis)


def server_pid(url: str) -> int | None:
    try:
        return Redis.from_url(url, socket_connect_timeout=1).info("server")["process_id"]
    except RedisError:
        return None


def test_dev_restarts_a_worker_and_redis_killed_with_sigkill(home):
    proc, url, output = start_dev(home)
    connection = Redis.from_url(url)

    def admin_pids() -> set[int]:
        return {w.pid for w in Worker.all(connection=connection) if ADMIN_QUEUE in w.queue_names()}

    try:
        (killed,) = wait_until(admin_pids, 60, "the admin worker registered")
        os.kill(killed, signal.SIGKILL)
        wait_until(lambda: admin_pids() - {killed}, 30, "a new admin worker registered")
        first = server_pid(url)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: server_pid(url) not in (None, first), 30, "redis-server restarted")
        assert proc.poll() is None
    finally:
        output += interrupt(proc)
    assert "worker admin restarted" in output and "redis-server exited with -9; restarting it" in output
    assert_all_stopped(proc, output, url)  # the restarted ones too
