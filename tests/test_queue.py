"""Answer jobs through a real Redis and a real batching answer worker running a tiny model."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time

import pytest
from redis import Redis
from rq import Queue
from rq.job import JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from engine.generate import Answerer
from engine.models import load_model
from engine.serving import load_version
from engine.versions import ModelStore
from qabot.errors import AnswerTimeout, JobFailed, VersionError
from qabot.settings import Settings
from tests.conftest import TINY_PAIRS, qabot_env, wait_for_exit, wait_until
from worker.answer_worker import AnswerWorker
from worker.client import QueueClient
from worker.jobs import ADMIN_QUEUE, ANSWER_QUEUE
from worker.rq_seam import AdminWorker

QUESTIONS = [p.prompt for p in TINY_PAIRS]


def make_settings(home, redis_url, **overrides) -> Settings:
    values = {"home": home, "redis_url": redis_url, "device": "cpu", "max_new_tokens": 24, "answer_wait": 5} | overrides
    return Settings(**values)


def make_worker(settings: Settings) -> AnswerWorker:
    connection = Redis.from_url(settings.redis_url)
    return AnswerWorker([Queue(ANSWER_QUEUE, connection=connection)], connection=connection, settings=settings)


def test_waiting_questions_are_answered_in_one_batch_like_one_by_one(home, redis_url):
    settings = make_settings(home, redis_url)
    client = QueueClient(settings)
    jobs = [client.enqueue_answer(q, asker=f"user{i}", channel="general") for i, q in enumerate(QUESTIONS)]
    worker = make_worker(settings)
    worker.work(burst=True)
    assert worker.answerer.generate_calls == 1 and list(worker.batches) == [len(QUESTIONS)]

    loaded, _ = load_version(ModelStore(settings.models_dir), device="cpu")
    alone = Answerer(loaded.model, loaded.tokenizer, max_new_tokens=24)
    results = [client.wait_answer(job, timeout=2) for job in jobs]
    assert [r.answer for r in results] == [alone.answer([q])[0].text for q in QUESTIONS]
    assert sum(r.answer == p.response for r, p in zip(results, TINY_PAIRS, strict=True)) >= len(TINY_PAIRS) - 1
    assert {r.version for r in results} == {"v0001"}
    assert len(FinishedJobRegistry(ANSWER_QUEUE, connection=client.connection)) == len(QUESTIONS)
    first = jobs[0].latest_result().return_value
    assert first["batch_size"] == len(QUESTIONS) and jobs[0].kwargs["asker"] == "user0"


def test_batch_size_caps_the_questions_decoded_together(home, redis_url):
    """At most 3 at once: the others join the running batch as answers leave it, and get the answers they would get
    alone."""
    settings = make_settings(home, redis_url, answer_batch_size=3)
    client = QueueClient(settings)
    jobs = [client.enqueue_answer(q) for q in QUESTIONS]
    worker = make_worker(settings)
    worker.work(burst=True)
    assert list(worker.batches) == [3]  # one running batch, never more than 3 rows
    assert worker.answerer.generate_calls > 1  # the later questions were prefilled as they joined
    assert all(job.get_status(refresh=True) == JobStatus.FINISHED for job in jobs)
    assert all(job.latest_result().return_value["batch_size"] <= 3 for job in jobs)
    loaded, _ = load_version(ModelStore(settings.models_dir), device="cpu")
    alone = Answerer(loaded.model, loaded.tokenizer, max_new_tokens=24)
    assert [client.wait_answer(job, timeout=2).answer for job in jobs] == [alone.answer([q])[0].text for q in QUESTIONS]


def test_a_bad_question_fails_alone(home, redis_url):
    settings = make_settings(home, redis_url, max_question_chars=100)
    client = QueueClient(settings)
    good, empty, long, other = (client.enqueue_answer(q) for q in [QUESTIONS[0], "   ", "why? " * 40, QUESTIONS[1]])
    make_worker(settings).work(burst=True)
    assert client.wait_answer(good).answer == TINY_PAIRS[0].response
    assert client.wait_answer(other).answer == TINY_PAIRS[1].response
    with pytest.raises(JobFailed, match="the question is empty"):
        client.wait_answer(empty)
    with pytest.raises(JobFailed, match="please keep it under 100"):
        client.wait_answer(long)
    assert set(FailedJobRegistry(ANSWER_QUEUE, connection=client.connection).get_job_ids()) == {empty.id, long.id}


def test_an_answer_past_its_timeout_fails_with_a_message(tiny_llama, tmp_path, redis_url):
    home = tmp_path / "home"
    store = ModelStore(home / "models")
    staging = store.staging_dir()
    loaded = load_model(str(tiny_llama), device="cpu")
    loaded.model.config.max_position_embeddings = 8192  # room for 2048 new tokens (answers stop at the context)
    loaded.model.save_pretrained(staging)
    loaded.tokenizer.save_pretrained(staging)
    store.promote(store.commit(staging, {"note": "untrained, never says EOS"}).name)
    # Untrained and greedy, the tiny Llama loops without EOS: 2048 tokens take longer than 1 s.
    precheck = Answerer(loaded.model, loaded.tokenizer, max_new_tokens=300).answer([QUESTIONS[0]])[0]
    assert precheck.stop.value == "length"
    settings = make_settings(home, redis_url, max_new_tokens=2048, answer_timeout=1)
    client = QueueClient(settings)
    job = client.enqueue_answer(QUESTIONS[0])
    make_worker(settings).work(burst=True)
    with pytest.raises(JobFailed, match="took longer than 1 s"):
        client.wait_answer(job)
    assert job.get_status(refresh=True) == JobStatus.FAILED


def test_no_worker_means_a_timeout_and_the_question_is_withdrawn(home, redis_url):
    client = QueueClient(make_settings(home, redis_url))
    job = client.enqueue_answer(QUESTIONS[0])
    with pytest.raises(AnswerTimeout, match="are the answer workers running"):
        client.wait_answer(job, timeout=1)
    assert job.get_status(refresh=True) == JobStatus.CANCELED


def worker_process(settings: Settings, kind: str = "answer") -> subprocess.Popen:
    """A real `qabot worker` process in burst mode, configured through the environment."""
    env = settings_env(settings) | {"QABOT_MAX_NEW_TOKENS": str(settings.max_new_tokens)}
    return subprocess.Popen(
        [sys.executable, "-m", "qabot", "worker", kind, "--burst"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def test_async_ask_does_not_block_the_event_loop(home, redis_url):
    settings = make_settings(home, redis_url, answer_wait=60)
    client = QueueClient(settings)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    asking = asyncio.create_task(client.ask(QUESTIONS[2], asker="u", channel="c"))
    await asyncio.sleep(0.3)
    proc = worker_process(settings)
    result = await asking
    task.cancel()
    assert proc.wait(timeout=60) == 0, proc.stdout.read()
    assert result.answer == TINY_PAIRS[2].response
    assert ticks >= 20


def settings_env(settings: Settings) -> dict[str, str]:
    return qabot_env({"QABOT_HOME": str(settings.home), "QABOT_REDIS_URL": settings.redis_url, "QABOT_DEVICE": "cpu"})


def test_cli_ask_remote_and_status(home, redis_url):
    settings = make_settings(home, redis_url)
    env = settings_env(settings)
    asking = subprocess.Popen(
        [sys.executable, "-m", "qabot", "ask", "--remote", QUESTIONS[3]],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    worker = worker_process(settings)
    out, err = asking.communicate(timeout=120)
    assert asking.returncode == 0, err
    assert out.strip() == TINY_PAIRS[3].response
    wait_for_exit(worker, timeout=60)

    status = subprocess.run([sys.executable, "-m", "qabot", "status"], env=env, capture_output=True, text=True, timeout=60)
    report = json.loads(status.stdout)
    assert report["live_version"] == "v0001" and report["live_pairs"] == len(TINY_PAIRS)
    assert report["current_dataset"] == report["live_dataset"]  # nothing waiting to be trained
    assert report["queues"]["answer"] == {"waiting": 0, "running": 0, "failed": 0} and report["training"] is None

    down = env | {"QABOT_REDIS_URL": "redis://:s3cret@127.0.0.1:1/0"}
    failed = subprocess.run(
        [sys.executable, "-m", "qabot", "status", "--quiet"], env=down, capture_output=True, text=True, timeout=60
    )
    assert failed.returncode == 1 and "unreachable" in failed.stderr
    assert "s3cret" not in failed.stderr and "Traceback" not in failed.stderr


def test_a_version_that_will_not_load_leaves_the_old_model_serving(home, redis_url):
    settings = make_settings(home, redis_url)
    store = ModelStore(settings.models_dir)
    client = QueueClient(settings)
    worker = make_worker(settings)
    first = client.enqueue_answer(QUESTIONS[0])
    worker.work(burst=True)
    assert client.wait_answer(first).version == "v0001"
    staging = store.staging_dir()
    (staging / "config.json").write_text("{ this is not a model")
    broken = store.commit(staging, {"note": "broken"}).name
    with pytest.raises(VersionError, match=f"{broken} cannot be loaded: its config.json is missing or damaged"):
        store.promote(broken)  # promotion checks the files first
    assert store.current_name() == "v0001"
    # weights damaged once live (a disk, a hand edit): the running worker keeps serving what it has, and says so
    staging = store.staging_dir()
    shutil.copytree(store.get("v0001").path, staging, dirs_exist_ok=True)
    damaged = store.promote(store.commit(staging, {"note": "a copy of v0001"}).name)
    weights = damaged.path / "model.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])
    later = client.enqueue_answer(QUESTIONS[1])
    worker.work(burst=True)
    result = client.wait_answer(later)
    assert (result.answer, result.version) == (TINY_PAIRS[1].response, "v0001")
    assert result.details["fallback_from"] == damaged.name


def test_a_question_that_expired_unanswered_is_a_timeout(home, redis_url):
    client = QueueClient(make_settings(home, redis_url, answer_wait=1))
    job = client.enqueue_answer(QUESTIONS[0])  # its ttl (1 s) runs out before the wait (2 s) ends
    with pytest.raises(AnswerTimeout):
        client.wait_answer(job, timeout=2)


def test_a_question_too_long_in_tokens_fails_alone_with_a_clear_message(home, redis_url):
    """150 emoji fit the 500-character limit but not the tiny GPT-2's 256 positions (they used to raise IndexError)."""
    settings = make_settings(home, redis_url)
    client = QueueClient(settings)
    emoji = "\U0001f409" * 150
    good, flood = (client.enqueue_answer(q) for q in [QUESTIONS[0], emoji])
    worker = make_worker(settings)
    worker.work(burst=True)
    assert client.wait_answer(good).answer == TINY_PAIRS[0].response
    with pytest.raises(JobFailed, match=r"too long for this model \(\d+ tokens, the limit is 232\)") as failed:
        client.wait_answer(flood)
    assert failed.value.kind == "QuestionError"
    assert list(worker.batches) == [1]  # the long one never reached the model
    later = client.enqueue_answer(QUESTIONS[2])
    worker.work(burst=True)
    assert client.wait_answer(later).answer == TINY_PAIRS[2].response  # the worker goes on


def test_an_unreadable_question_fails_alone_and_its_batch_is_answered(home, redis_url):
    """A lone surrogate (what `qabot ask` gets from bytes the terminal could not decode) passed the character checks,
    then broke the tokenizer with a TypeError that failed every question of its batch."""
    settings = make_settings(home, redis_url)
    client = QueueClient(settings)
    good, broken = (client.enqueue_answer(q) for q in [QUESTIONS[0], "who \udcff is it"])
    worker = make_worker(settings)
    worker.work(burst=True)
    assert client.wait_answer(good).answer == TINY_PAIRS[0].response
    with pytest.raises(JobFailed, match="could not be read") as failed:
        client.wait_answer(broken)
    assert failed.value.kind == "QuestionError"


def test_any_rq_worker_answers_a_question_and_a_failed_one_can_be_requeued(home, redis_url):
    """The answer job is real (issue 16): a plain `rq worker answer` (rq's own CLI, forking a work horse per job)
    answers it alone with the live version; a job that failed is requeued with rq's public API and answered again."""
    settings = make_settings(home, redis_url)
    client = QueueClient(settings)
    asked = client.enqueue_answer(QUESTIONS[2], asker="u1", channel="general")
    env = qabot_env({"QABOT_HOME": str(home), "QABOT_REDIS_URL": redis_url, "QABOT_DEVICE": "cpu", "QABOT_MAX_NEW_TOKENS": "24"})
    plain = [sys.executable, "-m", "rq.cli", "worker", "--burst", "--url", redis_url, ANSWER_QUEUE]
    done = subprocess.run(plain, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = client.wait_answer(asked, timeout=5)
    assert result.answer == TINY_PAIRS[2].response and result.version == "v0001" and result.details["batch_size"] == 1

    pointer = ModelStore(settings.models_dir).pointer
    live = pointer.read_text()
    pointer.unlink()  # no live version for a moment: the question fails with the reason
    try:
        failed = client.enqueue_answer(QUESTIONS[3], asker="u2", channel="general")
        subprocess.run(plain, env=env, capture_output=True, text=True, timeout=300, check=True)
        assert failed.get_status(refresh=True) == JobStatus.FAILED
    finally:
        pointer.write_text(live)
    FailedJobRegistry(ANSWER_QUEUE, connection=client.connection).requeue(failed.id)  # what rq-dashboard's retry does
    make_worker(settings).work(burst=True)  # the batching worker answers a requeued job like any other
    assert client.wait_answer(failed, timeout=5).answer == TINY_PAIRS[3].response


@pytest.mark.parametrize("kind", ["answer", "admin"])
def test_a_worker_stops_at_once_even_when_its_pubsub_thread_has_gone_back_to_waiting(home, redis_url, kind):
    """rq's teardown stops its pub/sub thread; redis-py 8.2 waits for that thread, which rq runs with a 60 s wait: when
    the thread had read the unsubscribe reply before it was told to stop, a burst end or a SIGTERM hung for a minute."""
    settings = make_settings(home, redis_url)
    connection = Redis.from_url(settings.redis_url)
    worker = make_worker(settings) if kind == "answer" else AdminWorker([ADMIN_QUEUE], connection=connection)
    worker.subscribe()
    wait_until(lambda: worker.pubsub.subscribed, 5, "the worker subscribed")
    worker.pubsub.unsubscribe()  # the thread reads the reply and waits for a subscription again, as in the race
    wait_until(lambda: not worker.pubsub.subscribed, 5, "the thread read the unsubscribe reply")
    time.sleep(0.2)
    stopping = threading.Thread(target=worker.unsubscribe, daemon=True)
    stopping.start()
    stopping.join(timeout=10)
    assert not stopping.is_alive(), "the worker's teardown waited for its pub/sub thread"
