"""Faults on the answer path, with the real thing: `qabot worker answer` processes killed with SIGKILL or stopped,
a redis-server of this module's own restarted with and without its append-only file, the real Telegram library on
the fake Bot API. The tests assert what the askers and the admins see."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue, Worker

from bots.admin import ADMIN_APOLOGY
from bots.core import ANSWER_DOWN_ALERT, APOLOGY, BUSY, FALLBACK_ALERT, BotCore
from engine.models import load_model
from engine.versions import ModelStore
from qabot import inbox
from qabot.settings import Settings
from qabot.shapes import ReplyTo
from tests.conftest import TINY_PAIRS, qabot_env, qabot_workers, release_tiny, wait_until, write_pairs
from tests.fake_telegram import FakeTelegram
from tests.test_telegram import run_bot, stop_bot, texts
from worker.answer_worker import AnswerWorker
from worker.client import WAITERS, QueueClient
from worker.jobs import ADMIN_QUEUE, ANSWER_DOWN_KEY, ANSWER_QUEUE
from worker.localredis import free_port, start_redis_server, stop_redis_server
from worker.results import AnswerResult

TOKEN = "123456:TEST-secret-token-never-logged"
ADMIN = 4242
QUESTIONS = [p.prompt for p in TINY_PAIRS]


@pytest.fixture(scope="module")
def slow_home(tiny_llama, tmp_path_factory) -> Path:
    """A QABOT_HOME whose live model never says EOS and has room for 8192 tokens: its answers last as long as
    QABOT_MAX_NEW_TOKENS asks, so a test can act while a batch is in the model."""
    home = tmp_path_factory.mktemp("slow-home")
    store = ModelStore(home / "models")
    staging = store.staging_dir()
    loaded = load_model(str(tiny_llama), device="cpu")
    loaded.model.config.max_position_embeddings = 8192
    loaded.model.save_pretrained(staging)
    loaded.tokenizer.save_pretrained(staging)
    store.promote(store.commit(staging, {"note": "untrained, never says EOS"}).name)
    return home


def start_worker(home: Path, url: str, log: Path, **env: str) -> subprocess.Popen:
    """A real `qabot worker answer` (not burst), logging to `log`."""
    values = {"QABOT_HOME": str(home), "QABOT_REDIS_URL": url, "QABOT_DEVICE": "cpu", "QABOT_LOG_LEVEL": "INFO"}
    out = log.open("a")
    return subprocess.Popen(
        [sys.executable, "-m", "qabot", "worker", "answer"],
        env=qabot_env(values | {f"QABOT_{k.upper()}": v for k, v in env.items()}),
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def ask_in_threads(client: QueueClient, jobs: list) -> tuple[list, threading.Thread]:
    """Each asker waits on its own question, as a bot does; the results (or errors) land in the list, in order."""
    results: list = [None] * len(jobs)

    def wait(index: int) -> None:
        try:
            results[index] = client.wait_answer(jobs[index])
        except Exception as exc:  # noqa: BLE001 - the test looks at what the asker got
            results[index] = exc

    threads = [threading.Thread(target=wait, args=(i,), daemon=True) for i in range(len(jobs))]
    for thread in threads:
        thread.start()

    def joined() -> None:
        for thread in threads:
            thread.join()

    waiter = threading.Thread(target=joined, daemon=True)
    waiter.start()
    return results, waiter


def test_questions_of_a_worker_killed_mid_batch_are_answered_by_the_next_worker(slow_home, redis_url, tmp_path):
    """Point 1: SIGKILL while a batch is in the model; the next worker answers them all, long before the wait ends."""
    log = tmp_path / "workers.log"
    client = QueueClient(Settings(home=slow_home, redis_url=redis_url, answer_wait=120))
    queue = Queue(ANSWER_QUEUE, connection=client.connection)
    first = start_worker(slow_home, redis_url, log, max_new_tokens="2048", answer_batch_size="16")
    try:
        wait_until(lambda: client.live_answer_workers(), 60, "the first worker registers", log)
        jobs = [client.enqueue_answer(q, asker=f"u{i}", channel="tg:1") for i, q in enumerate(QUESTIONS[:6])]
        results, waiter = ask_in_threads(client, jobs)
        wait_until(lambda: queue.count == 0, 60, "the worker takes the whole batch", log)
        time.sleep(1.0)  # well inside the model: 2048 tokens take many seconds
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed_at = time.monotonic()
        assert all(r is None for r in results), results  # nobody was answered by the killed worker
        # Meanwhile someone looks at the registry as rq tools do (len() runs rq's cleanup, which fails expired entries
        # as abandoned): the dead worker's questions must be put back before their entries could expire.
        looking = threading.Event()

        def look() -> None:
            while not looking.wait(0.2):
                len(queue.started_job_registry)

        looker = threading.Thread(target=look, daemon=True)
        looker.start()
        second = start_worker(slow_home, redis_url, log, max_new_tokens="4")
        try:
            waiter.join(timeout=90)
            took = time.monotonic() - killed_at
        finally:
            looking.set()
            stop(second)
    finally:
        stop(first)
    assert all(r is not None and not isinstance(r, Exception) for r in results), results
    assert all(r.answer and r.version == "v0001" for r in results)
    assert took < 60, f"the questions were answered {took:.0f} s after the kill"
    assert queue.count == 0 and len(queue.started_job_registry) == 0 and not queue.intermediate_queue.get_job_ids()


def test_a_slow_batch_is_split_so_no_question_fails_for_its_neighbours(slow_home, redis_url, tmp_path):
    """Point 6: the worker loses the CPU mid-batch past QABOT_ANSWER_TIMEOUT; its questions are answered anyway."""
    log = tmp_path / "worker.log"
    client = QueueClient(Settings(home=slow_home, redis_url=redis_url, answer_wait=120, answer_timeout=8))
    queue = Queue(ANSWER_QUEUE, connection=client.connection)
    # 1200 tokens: the whole batch takes 2 to 6 s on this project's machines, inside its 8 s (a single answer stays
    # inside it on a loaded machine too), so only the stop below makes it late. The stop waits half a second after
    # the worker took the questions: stopped at once, it was once stopped before the batch's clock started (the
    # batch then ran its 1 s after the stop, on time, and nothing was split); at 300 tokens a quick run had ended the
    # batch before the stop came
    worker = start_worker(slow_home, redis_url, log, max_new_tokens="1200")
    try:
        wait_until(lambda: client.live_answer_workers(), 60, "the worker registers", log)
        jobs = [client.enqueue_answer(q) for q in QUESTIONS]
        results, waiter = ask_in_threads(client, jobs)
        wait_until(lambda: queue.count == 0, 60, "the worker takes the whole batch", log)
        time.sleep(0.5)  # the batch is in the model
        worker.send_signal(signal.SIGSTOP)  # as if other work took the CPU: the batch outlives its time limit
        time.sleep(9)
        worker.send_signal(signal.SIGCONT)
        waiter.join(timeout=100)
    finally:
        stop(worker)
    failed = [r for r in results if r is None or isinstance(r, Exception)]
    assert not failed, f"{failed}\n{log.read_text()[-3000:]}"
    assert "answering it in halves" in log.read_text()  # the batch in hand ran past its limit and was split
    assert all(r.answer for r in results), [r.details for r in results]


def test_a_question_asked_while_a_batch_decodes_joins_it_and_the_first_answer_leaves_first(slow_home, redis_url):
    """Issue 16: a question that arrives while the worker decodes a long answer starts at the next step, beside it
    (one running batch of 2), instead of waiting for that answer to end; each answer is the one it gets alone, and
    the first one is handed in the moment it ends, while the second still decodes."""
    from engine.generate import Answerer
    from engine.serving import load_version

    settings = Settings(home=slow_home, redis_url=redis_url, answer_wait=120, max_new_tokens=800)
    client = QueueClient(settings)
    queue = Queue(ANSWER_QUEUE, connection=client.connection)
    first = client.enqueue_answer(QUESTIONS[0])
    later: list = []

    def ask_while_it_decodes() -> None:
        wait_until(lambda: queue.count == 0 and first.get_status(refresh=True) == "started", 120, "the first is taken")
        later.append(client.enqueue_answer(QUESTIONS[1]))

    asker = threading.Thread(target=ask_while_it_decodes, daemon=True)
    asker.start()
    worker = AnswerWorker([queue], connection=client.connection, settings=settings)
    worker.work(burst=True)  # rq's worker needs the main thread (its signals); burst: it ends once the queue is empty
    asker.join(timeout=5)
    assert later, "the second question was never asked"
    one, two = client.wait_answer(first, timeout=5), client.wait_answer(later[0], timeout=5)
    assert list(worker.batches) == [2] and two.details["batch_size"] == 2  # it joined the running batch
    assert first.latest_result().created_at < later[0].latest_result().created_at  # the first left as it ended
    loaded, _ = load_version(ModelStore(settings.models_dir), device="cpu")
    alone = Answerer(loaded.model, loaded.tokenizer, max_new_tokens=800)
    assert [one.answer, two.answer] == [alone.answer([q])[0].text for q in QUESTIONS[:2]]


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own (the test restarts it), with its append-only file."""
    port = free_port()
    folder = tmp_path / "redis"
    servers = [start_redis_server(port, folder, appendonly=True)]

    def restart(appendonly: bool = True, down_s: float = 2.0) -> None:
        stop_redis_server(servers[-1])  # SIGTERM: Redis writes its append-only file
        time.sleep(down_s)
        where = folder if appendonly else tmp_path / f"redis-empty-{len(servers)}"
        servers.append(start_redis_server(port, where, appendonly=appendonly))

    yield f"redis://127.0.0.1:{port}/0", restart
    stop_redis_server(servers[-1])


def test_the_answer_worker_rides_out_redis_restarts(home, own_redis, tmp_path):
    """Point 2: Redis restarts under a running worker (with AOF, then without); it never exits, registers again, and
    a question queued before a restart is answered after it, its asker waiting through the restart."""
    url, restart = own_redis
    log = tmp_path / "worker.log"
    client = QueueClient(Settings(home=home, redis_url=url, answer_wait=90))
    worker = start_worker(home, url, log, max_new_tokens="24")
    try:
        wait_until(lambda: client.live_answer_workers(), 60, "the worker registers", log)
        assert client.ask_sync(QUESTIONS[0]).answer == TINY_PAIRS[0].response

        worker.send_signal(signal.SIGSTOP)  # it cannot take the next question before Redis goes down
        job = client.enqueue_answer(QUESTIONS[1])
        results, waiter = ask_in_threads(client, [job])
        time.sleep(0.5)
        restart(appendonly=True)
        worker.send_signal(signal.SIGCONT)
        waiter.join(timeout=60)
        assert not isinstance(results[0], Exception) and results[0].answer == TINY_PAIRS[1].response, results
        assert worker.poll() is None, log.read_text()[-3000:]

        restart(appendonly=False, down_s=1.0)  # Redis comes back empty: the worker's record is gone
        wait_until(lambda: client.live_answer_workers() == 1, 30, "the worker registers again", log)
        assert client.ask_sync(QUESTIONS[2]).answer == TINY_PAIRS[2].response
        assert worker.poll() is None, log.read_text()[-3000:]
    finally:
        stop(worker)


async def test_the_follow_loop_survives_a_restart_and_a_request_nobody_takes_is_cancelled(own_redis):
    """Points 2 and 4: no train worker runs; Redis restarts while the bot follows the request; after
    QABOT_TRAIN_START_WAIT the request is cancelled, the admin is told why and may ask again."""
    url, restart = own_redis
    settings = Settings(redis_url=url, train_start_wait=6)
    core = BotCore(settings)
    core.follow_poll = 0.1
    seen: list[str] = []

    async def send(text: str) -> str:
        seen.append(text)
        return "handle"

    async def edit(handle: str, text: str) -> None:
        seen.append(text)

    where = ReplyTo("telegram", str(ADMIN), str(ADMIN), "1")
    retrain = asyncio.create_task(core.retrain(where, None, send, edit))
    await asyncio.sleep(1.0)
    await asyncio.to_thread(restart, True, 2.0)
    outcome = await asyncio.wait_for(retrain, 60)
    assert outcome is not None, seen
    assert outcome.text.startswith("Training failed: no train worker took the request within 6 s, so it was cancelled")
    assert seen[0] == "Training queued..." and seen[-1] == "Training stopped."
    again = await asyncio.to_thread(core.client.start_training, {"mode": "add"}, where, None)  # the lock was freed
    assert again.get_status() == "queued"


async def test_no_answer_worker_gives_the_apology_at_once_and_tells_the_admin_once(home, redis_url, tmp_path):
    """Point 5: nobody answers; each asker gets the apology in seconds, the admin hears of it once; a worker that
    answers again ends the outage (the next one is told again). A question that failed on our side does not count
    against its asker's rate limit: they are asked to try again, and may."""
    settings = Settings(home=home / "bot", redis_url=redis_url, telegram_token=TOKEN, telegram_admins=[ADMIN], rate_limit=1)
    fake = FakeTelegram(TOKEN)
    await fake.start()
    app = await run_bot(settings, fake)
    worker = None
    try:
        started = time.monotonic()
        asked = [fake.send_text(300 + i, 300 + i, QUESTIONS[i]) for i in range(3)]
        replies = await fake.wait_for(lambda: all(texts(fake, m) for m in asked) and [texts(fake, m) for m in asked], 30)
        assert replies == [[APOLOGY]] * 3 and time.monotonic() - started < 15
        told = await fake.wait_for(lambda: [m["text"] for m in fake.sent.values() if m["chat"]["id"] == ADMIN], 10)
        await asyncio.sleep(1.0)
        assert [m["text"] for m in fake.sent.values() if m["chat"]["id"] == ADMIN] == told == [ANSWER_DOWN_ALERT]
        again = fake.send_text(300, 300, QUESTIONS[0])  # at once, with a limit of one question a minute
        assert await fake.wait_for(lambda: texts(fake, again), 30) == [APOLOGY]

        log = tmp_path / "worker.log"
        worker = start_worker(home, redis_url, log, max_new_tokens="24")
        client = QueueClient(settings)
        await asyncio.to_thread(wait_until, client.live_answer_workers, 60, "the worker registers", log)
        back = fake.send_text(310, 310, QUESTIONS[3])
        assert await fake.wait_for(lambda: texts(fake, back), 60) == [TINY_PAIRS[3].response]
        assert not Redis.from_url(redis_url).exists(ANSWER_DOWN_KEY)  # answers flow: the outage is over
    finally:
        if worker is not None:
            stop(worker)
        await stop_bot(app)
        await fake.stop()


async def test_discord_tells_the_admins_once_where_no_direct_message_reaches_them(redis_url, monkeypatch):
    """Point 5 on Discord: the fake server has no direct messages, so the alert goes to the asker's channel, once."""
    from tests.fake_discord import CHANNEL_ID, discord_bot_on_fake

    settings = Settings(redis_url=redis_url, discord_token="discord-secret-token-never-logged", discord_admins=[5151])
    async with discord_bot_on_fake(settings, monkeypatch) as fake:
        started = time.monotonic()
        asked = [await fake.say(600 + i, QUESTIONS[i], mention=True) for i in range(2)]
        replies = await fake.wait_for(lambda: all(fake.replies_to(m) for m in asked) and [fake.replies_to(m) for m in asked])
        assert replies == [[APOLOGY]] * 2 and time.monotonic() - started < 15
        await fake.wait_for(lambda: ANSWER_DOWN_ALERT in fake.contents(), 10)
        await asyncio.sleep(1.0)
        alerts = [m for m in fake.messages.values() if m["content"] == ANSWER_DOWN_ALERT]
        assert len(alerts) == 1 and alerts[0]["channel_id"] == CHANNEL_ID


def test_a_time_limit_a_library_rewraps_still_counts_as_a_timeout():
    """transformers' tokenizer turns rq's alarm into a ValueError when it strikes while tensors are built: the question
    must still be split off and, alone, fail with the time limit's message, not a confusing tensor error."""
    from rq.timeouts import JobTimeoutException

    from worker.answer_worker import _timed_out

    try:
        try:
            raise JobTimeoutException("late")
        except JobTimeoutException as alarm:
            raise ValueError("Unable to create tensor, you should probably activate truncation") from alarm
    except ValueError as rewrapped:
        assert _timed_out(rewrapped)
    assert not _timed_out(ValueError("Unable to create tensor"))


def test_one_client_waits_on_more_questions_than_redis_pys_default_pool(redis_url):
    """A bot under load waits on up to 256 questions at once, each blocking on its result with its own connection:
    past redis-py's default pool of 100 they used to fail with "Too many connections" (the asker got the apology)."""
    from concurrent.futures import ThreadPoolExecutor

    from qabot.errors import AnswerTimeout, ServiceUnavailable

    client = QueueClient(Settings(redis_url=redis_url, answer_wait=3))
    jobs = [client.enqueue_answer(f"question {i}?") for i in range(150)]  # no worker runs: each waits its 3 s

    def wait(job) -> str:
        try:
            client.wait_answer(job)
        except AnswerTimeout:
            return "timed out"
        except ServiceUnavailable as exc:
            return str(exc)
        return "answered"

    with ThreadPoolExecutor(max_workers=150) as pool:
        outcomes = list(pool.map(wait, jobs))
    assert outcomes == ["timed out"] * 150, {o for o in outcomes}


@pytest.fixture(scope="module")
def grounded_home(trained_tiny, tiny_gpt2, tmp_path_factory) -> Path:
    """A QABOT_HOME whose live version is grounded: it declines names its data never mentions."""
    store, _ = trained_tiny
    home = tmp_path_factory.mktemp("grounded-home")
    shutil.copytree(store.root, home / "models")
    models = ModelStore(home / "models")
    data = write_pairs(home / "tiny.json", TINY_PAIRS)
    models.promote(release_tiny(models, data, tiny_gpt2, home / "cache", grounded=True, epochs=1).version.name)
    return home


def test_declines_reach_the_inbox_when_redis_stops_as_their_batch_ends(grounded_home, own_redis, monkeypatch):
    """Audit finding: Redis stopped for 5 s just as a batch of declines was answered; each asker is still told the
    question was passed on, and the inbox holds every one of them."""
    url, restart = own_redis
    settings = Settings(home=grounded_home, redis_url=url, answer_wait=60, max_new_tokens=24)
    client = QueueClient(settings)
    names = ["Zarnak", "Vossmark", "Quorvath", "Belmuth", "Tervane", "Oskelund"]
    questions = [f"Who rules the kingdom of {name}?" for name in names]
    jobs = [client.enqueue_answer(q, asker=f"u{i}", channel=f"tg:{100 + i}") for i, q in enumerate(questions)]
    results, waiter = ask_in_threads(client, jobs)
    outage: list[threading.Thread] = []

    class RedisStopsAsTheBatchEnds(AnswerWorker):
        def _hand_in(self, job, queue, execution, give_up_s):
            if not outage:  # once: Redis goes away for 5 s, right after the model answered, before any hand-in
                outage.append(threading.Thread(target=restart, kwargs={"down_s": 5.0}, daemon=True))
                outage[0].start()
                time.sleep(0.5)
            return super()._hand_in(job, queue, execution, give_up_s)

    monkeypatch.setenv("QABOT_HOME", str(grounded_home))
    worker = RedisStopsAsTheBatchEnds([ANSWER_QUEUE], connection=client.connection, settings=settings)
    worker.work(burst=True)
    waiter.join(timeout=60)
    assert outage and all(isinstance(r, AnswerResult) for r in results), results
    assert all(r.details.get("declined") and r.details.get("inboxed") for r in results), [r.details for r in results]
    recorded = {item.text for item in inbox.open_items(Redis.from_url(url))[0]}
    assert recorded == set(questions)


async def test_admin_commands_never_wait_behind_questions_and_askers_past_capacity_hear_busy_at_once(home, redis_url):
    """Audit finding: with every waiting thread taken by askers whose answers are slow, /status used to queue behind
    them (119 s with 400 askers) and the asker past capacity waited for a thread before its own wait began. Now
    /status answers in seconds and that asker hears "busy" at once."""
    env = qabot_env({"QABOT_HOME": str(home), "QABOT_REDIS_URL": redis_url, "QABOT_DEVICE": "cpu"})
    settings = Settings(home=home / "bot", redis_url=redis_url, answer_wait=8, admin_wait=6)
    core = BotCore(settings, QueueClient(settings))  # waits the whole answer_wait: no answer worker comes
    client = QueueClient(settings)
    with qabot_workers(env, home, ("admin",)):
        await asyncio.to_thread(
            wait_until, lambda: Worker.all(queue=Queue(ADMIN_QUEUE, connection=client.connection)), 60, "an admin worker"
        )
        askers = [asyncio.create_task(core.ask(f"u{i}", f"question {i}?", "tg:1")) for i in range(WAITERS)]
        await asyncio.sleep(1.0)  # every waiting thread is taken
        started = time.monotonic()
        assert (await core.ask("late", "one more question?", "tg:1")).text == BUSY
        busy_after = time.monotonic() - started
        started = time.monotonic()
        status = await core.status()
        status_after = time.monotonic() - started
        replies = await asyncio.gather(*askers)
    assert busy_after < 1.0, f"the asker past capacity waited {busy_after:.1f} s"
    assert status_after < 4.0 and status != ADMIN_APOLOGY, f"/status took {status_after:.1f} s: {status}"
    assert {r.text for r in replies} == {APOLOGY}  # the others still get their answer or the apology, in their own time


async def test_on_telegram_the_asker_past_capacity_hears_busy_at_once(home, redis_url):
    """The same through python-telegram-bot: its own limit on updates handled at once (256 by default, the client's
    capacity) once held the next question back until an asker's wait ended, so it heard the apology 8 s later instead
    of "busy" at once."""
    settings = Settings(home=home / "bot", redis_url=redis_url, telegram_token=TOKEN, answer_wait=8)
    fake = FakeTelegram(TOKEN)
    await fake.start()
    app = await run_bot(settings, fake)  # no answer worker: every asker waits its whole answer_wait
    try:
        asked = [fake.send_text(10_000 + i, 10_000 + i, f"question {i}?") for i in range(WAITERS)]
        await fake.wait_for(lambda: len([c for c in fake.calls if c[0] == "sendChatAction"]) >= WAITERS, 30)
        started = time.monotonic()
        late = fake.send_text(99_999, 99_999, "one more question?")
        assert await fake.wait_for(lambda: texts(fake, late), 30) == [BUSY]
        busy_after = time.monotonic() - started
        replies = await fake.wait_for(lambda: all(texts(fake, m) for m in asked) and [texts(fake, m) for m in asked], 60)
    finally:
        await stop_bot(app)
        await fake.stop()
    assert busy_after < 3.0, f"the asker past capacity waited {busy_after:.1f} s"
    assert {text for each in replies for text in each} == {APOLOGY}


async def test_a_worker_started_while_the_live_weights_are_damaged_serves_the_last_version_that_loads(home, redis_url, tmp_path):
    """Audit finding: a worker restarted while the live version's weights were damaged failed every question
    ("invalid header length") until someone ran /rollback. Now it answers with the version live before, and says so:
    /status, the metrics, `qabot health answer`, and one message to the admins."""
    from tests.test_metrics import scrape

    store = ModelStore(home / "models")
    staging = store.staging_dir()
    shutil.copytree(store.get("v0001").path, staging, dirs_exist_ok=True)
    damaged = store.promote(store.commit(staging, {"note": "a copy of v0001"}).name)
    weights = damaged.path / "model.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])  # damaged once live: a disk, a copy, a hand edit
    port = free_port()
    env = qabot_env({"QABOT_HOME": str(home), "QABOT_REDIS_URL": redis_url, "QABOT_DEVICE": "cpu"})
    settings = Settings(home=home / "bot", redis_url=redis_url, telegram_token=TOKEN, telegram_admins=[ADMIN])
    fake = FakeTelegram(TOKEN)
    await fake.start()
    app = await run_bot(settings, fake)
    log = tmp_path / "worker.log"
    worker = start_worker(home, redis_url, log, max_new_tokens="24", answer_metrics_port=str(port))
    try:
        with qabot_workers(env, home, ("admin",)):
            client = QueueClient(settings)
            await asyncio.to_thread(wait_until, client.live_answer_workers, 60, "the worker registers", log)
            asked = [fake.send_text(500 + i, 500 + i, QUESTIONS[i]) for i in range(2)]
            replies = await fake.wait_for(lambda: all(texts(fake, m) for m in asked) and [texts(fake, m) for m in asked], 60)
            assert replies == [[TINY_PAIRS[0].response], [TINY_PAIRS[1].response]]
            told = await fake.wait_for(lambda: [m["text"] for m in fake.sent.values() if m["chat"]["id"] == ADMIN], 10)
            await asyncio.sleep(1.0)
            again = [m["text"] for m in fake.sent.values() if m["chat"]["id"] == ADMIN]
            assert again == told == [FALLBACK_ALERT.format(live=damaged.name, served="v0001")]  # once, not per answer
            status = fake.send_text(ADMIN, ADMIN, "/status")
            report = (await fake.wait_for(lambda: texts(fake, status), 30))[0]
            assert f"Warning: {damaged.name} does not load" in report and "answers with v0001" in report, report
            assert scrape(port)["qabot_model_fallback"] == 1.0
            healthy = subprocess.run([sys.executable, "-m", "qabot", "health", "answer"], env=env, timeout=60)
            assert healthy.returncode == 0
            # the admin does what the warning says: rolls back to the version served; the warning ends
            back = fake.send_text(ADMIN, ADMIN, "/rollback")
            assert (await fake.wait_for(lambda: texts(fake, back), 30))[0].startswith("Rolled back: v0001 is live again")
            after = fake.send_text(502, 502, QUESTIONS[2])  # the worker looks at the live version between batches
            assert await fake.wait_for(lambda: texts(fake, after), 60) == [TINY_PAIRS[2].response]
            status = fake.send_text(ADMIN, ADMIN, "/status")
            report = (await fake.wait_for(lambda: texts(fake, status), 30))[0]
            assert "does not load" not in report and scrape(port)["qabot_model_fallback"] == 0.0, report
    finally:
        stop(worker)
        await stop_bot(app)
        await fake.stop()
