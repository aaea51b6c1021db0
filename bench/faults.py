"""Faults lose nothing (issue 9): each fault --runs times with questions in flight, real processes throughout.

Its own redis-server (append-only file on, free 127.0.0.1 port), real `qabot worker answer`/`train` processes, tiny
models built here: a fine-tuned tiny GPT-2, and a "slow" untrained tiny Llama that never says EOS, so an answer lasts
QABOT_MAX_NEW_TOKENS tokens (sized from the speed measured at the start) and a fault lands mid-batch.

- kill: the answer worker gets SIGKILL mid-batch, a second one starts; bound: its questions are back in the queue
  within 12 s (LIVE_TTL_SECONDS + BEAT_SECONDS), all answered.
- redis: redis-server restarted (SIGTERM, down 2 s, same port and folder), one batch in the model, more queued: all
  answered.
- noworker: no answer worker; a bot's client (no_worker_wait=5) raises AnswerTimeout with a message in about 5 s;
  then a worker starts and answers.
- stall: the worker SIGSTOPped mid-batch past QABOT_ANSWER_TIMEOUT (8 s), then SIGCONT: all answered (in halves).
- train: `qabot worker train` killed whole (SIGKILL to parent and horse) mid-fine-tune: the lock is free within
  LEASE_TTL_S + 1 s and the next train worker fails the job with a clear message.

Per fault: asked, answered, failed with a message, lost (neither: must be 0), and the seconds from the end of the fault
(kill; Redis back; worker started; SIGCONT; kill) to the first answer after it (train: to the lock being free), with
the ratio to the first answer with no fault, measured at the start. Exit 1 if anything was lost or a check failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rq import Queue

from bench.common import machine, quiet
from bench.telegram_load import TINY_BASE, TINY_DATA, tiny_home
from bots.render import render_result
from engine.models import load_model
from engine.versions import ModelStore
from qabot.errors import AnswerTimeout
from qabot.settings import Settings
from tests.conftest import TINY_PAIRS, _build, wait_until
from tests.test_faults_answer import ask_in_threads, start_worker, stop
from tests.test_faults_training import LONG, dead, horse_of, request_for, train_worker, training_at
from tests.test_queue import make_settings
from worker.client import QueueClient
from worker.jobs import ANSWER_QUEUE
from worker.liveness import BEAT_SECONDS, LIVE_TTL_SECONDS
from worker.localredis import free_port, start_redis_server, stop_redis_server
from worker.results import AnswerResult
from worker.train_reaper import DIED, LEASE_TTL_S

logger = logging.getLogger(__name__)

NO_WORKER_WAIT_S = 5
STALL_TIMEOUT_S = 8  # QABOT_ANSWER_TIMEOUT in the stall fault; the worker is stopped a second longer
REDIS_DOWN_S = 2.0
ANSWER_WAIT_S = 120
PROBE_TOKENS = 64  # the baseline's answer length; its batch time sizes the answers of the redis and stall faults
BATCH_SECONDS = {"redis": 4.0, "stall": STALL_TIMEOUT_S * 0.3}  # how long one batch takes in these faults, no fault
QUESTIONS = [p.prompt for p in TINY_PAIRS]


def slow_home(root: Path) -> Path:
    """A QABOT_HOME whose live model is an untrained tiny Llama with room for 8192 tokens (as the tests' `slow_home`)."""
    store = ModelStore(root / "slow-home" / "models")
    staging = store.staging_dir()
    loaded = load_model(str(_build("llama", root / "tiny-llama")), device="cpu")
    loaded.model.config.max_position_embeddings = 8192
    loaded.model.save_pretrained(staging)
    loaded.tokenizer.save_pretrained(staging)
    store.promote(store.commit(staging, {"note": "untrained, never says EOS"}).name)
    return root / "slow-home"


@dataclass
class Outcome:
    asked: int = 0
    answered: int = 0
    failed: int = 0
    lost: int = 0
    recovery_s: float | None = None  # end of the fault -> first answer after it
    ok: bool = True
    notes: set[str] = field(default_factory=set)
    told_s: float | None = None  # noworker: seconds until the askers were told


def tally(results: list, asked_at: float, since: float) -> Outcome:
    """Count what the askers got; the first answer completed after `since` gives the recovery time."""
    out, done = Outcome(asked=len(results)), []
    for result in results:
        if isinstance(result, AnswerResult):
            out.answered += 1
            done.append(asked_at + result.seconds)
        elif isinstance(result, Exception) and str(result):
            out.failed += 1
            out.notes.add(f"failed: {type(result).__name__}: {str(result)[:50]}")
        else:
            out.lost += 1  # no answer and no failure (or one without a word of why)
    after = [t - since for t in done if t >= since]
    out.recovery_s = min(after) if after else None
    out.ok = out.lost == 0 and out.answered == out.asked
    return out


class Bench:
    """The redis-server (restartable, its append-only file kept), the models, every process started (for cleanup)."""

    def __init__(self, root: Path, questions: int) -> None:
        self.questions = QUESTIONS[:questions]
        self.port, self.folder = free_port(), root / "redis"
        self.server = start_redis_server(self.port, self.folder, appendonly=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.procs: list[subprocess.Popen] = []
        self.horses: list[int] = []
        self.log = root / "workers.log"
        self.tiny, self.slow = tiny_home(root / "tiny"), slow_home(root)
        self.tokens = {"redis": 300, "stall": 300}  # sized by `baseline`

    def client(self, home: Path, no_worker_wait: float | None = None, **settings: int) -> QueueClient:
        values = {"answer_wait": ANSWER_WAIT_S} | settings
        return QueueClient(Settings(home=home, redis_url=self.url, **values), no_worker_wait=no_worker_wait)

    def worker(self, home: Path, **env: str) -> subprocess.Popen:
        self.procs.append(start_worker(home, self.url, self.log, **env))
        return self.procs[-1]

    def ask(self, client: QueueClient) -> tuple[list, Callable[[], None], float]:
        """Enqueue every question and wait on each in its own thread: (results, join, when asked)."""
        asked_at = time.monotonic()
        jobs = [client.enqueue_answer(q, asker=f"u{i}", channel="tg:1") for i, q in enumerate(self.questions)]
        results, waiter = ask_in_threads(client, jobs)
        return results, lambda: waiter.join(timeout=ANSWER_WAIT_S + 30), asked_at

    def wait_registered(self, client: QueueClient) -> None:
        wait_until(client.live_answer_workers, 90, "an answer worker registers", self.log)

    def wait_taken(self, client: QueueClient, left: int = 0) -> None:
        queue = Queue(ANSWER_QUEUE, connection=client.connection)
        wait_until(lambda: queue.count <= left, 60, "the worker takes a batch", self.log)

    def end_run(self) -> None:
        """Kill what the run started and empty Redis."""
        for proc in self.procs:
            stop(proc)
        for pid in self.horses:
            if not dead(pid):
                os.kill(pid, signal.SIGKILL)
        self.procs, self.horses = [], []
        self.client(self.tiny).connection.flushall()

    def close(self) -> None:
        try:
            self.end_run()
        finally:
            stop_redis_server(self.server)


def baseline(b: Bench) -> float:
    """The first answer's seconds after asking, no fault (slow model, PROBE_TOKENS); sizes the faults' answers."""
    client = b.client(b.slow)
    b.worker(b.slow, max_new_tokens=str(PROBE_TOKENS))
    b.wait_registered(client)
    client.ask_sync(QUESTIONS[0])  # the model is loaded
    results, join, asked_at = b.ask(client)
    join()
    out = tally(results, asked_at, asked_at)
    assert out.ok and out.recovery_s is not None, results
    batch_s = max(r.details["generate_s"] for r in results)  # longer answers cost more than linearly: at most 4x
    b.tokens = {k: max(16, min(4 * PROBE_TOKENS, round(PROBE_TOKENS * s / batch_s))) for k, s in BATCH_SECONDS.items()}
    return out.recovery_s


def kill(b: Bench) -> Outcome:
    client = b.client(b.slow)
    first = b.worker(b.slow, max_new_tokens="2048", answer_batch_size="16")
    b.wait_registered(client)
    results, join, asked_at = b.ask(client)
    b.wait_taken(client)
    time.sleep(1.0)  # well inside the model: 2048 tokens take many seconds
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    killed = time.monotonic()
    b.worker(b.slow, max_new_tokens="4")
    join()
    return tally(results, asked_at, killed)


def redis_restart(b: Bench) -> Outcome:
    client = b.client(b.slow)
    b.worker(b.slow, max_new_tokens=str(b.tokens["redis"]), answer_batch_size="4")
    b.wait_registered(client)
    results, join, asked_at = b.ask(client)
    b.wait_taken(client, left=max(0, len(b.questions) - 4))
    waiting = Queue(ANSWER_QUEUE, connection=client.connection).count
    down = time.monotonic()
    stop_redis_server(b.server)  # SIGTERM: Redis writes its append-only file
    time.sleep(REDIS_DOWN_S)
    b.server = start_redis_server(b.port, b.folder, appendonly=True)
    back = time.monotonic()
    join()
    out = tally(results, asked_at, back)
    late = sum(isinstance(r, AnswerResult) and asked_at + r.seconds > down for r in results)
    out.notes.add(f"{len(b.questions) - waiting} taken, {waiting} queued, {late} answered after Redis went down")
    out.notes.add(f"{b.tokens['redis']} tokens")
    return out


def no_worker(b: Bench) -> Outcome:
    bot = b.client(b.tiny, no_worker_wait=NO_WORKER_WAIT_S)
    wait_until(lambda: bot.live_answer_workers() == 0, LIVE_TTL_SECONDS + 5, "no answer worker is alive")
    results, join, asked_at = b.ask(bot)
    join()
    out = tally(results, asked_at, asked_at)
    out.told_s = time.monotonic() - asked_at
    clear = all(isinstance(r, AnswerTimeout) and "no answer worker is running" in str(r) for r in results)
    started = time.monotonic()
    b.worker(b.tiny, max_new_tokens="24")
    b.wait_registered(bot)
    bot.ask_sync(QUESTIONS[0])  # raises if it is not answered
    out.asked, out.answered, out.recovery_s = out.asked + 1, out.answered + 1, time.monotonic() - started
    out.ok = out.lost == 0 and clear and out.told_s <= NO_WORKER_WAIT_S + 3
    return out


def stall(b: Bench) -> Outcome:
    client = b.client(b.slow, answer_timeout=STALL_TIMEOUT_S)
    seen = b.log.stat().st_size if b.log.exists() else 0  # the log of earlier runs
    worker = b.worker(b.slow, max_new_tokens=str(b.tokens["stall"]))
    b.wait_registered(client)
    results, join, asked_at = b.ask(client)
    b.wait_taken(client)
    worker.send_signal(signal.SIGSTOP)  # as if other work took the CPU: the batch outlives its time limit
    time.sleep(STALL_TIMEOUT_S + 1)
    worker.send_signal(signal.SIGCONT)
    resumed = time.monotonic()
    join()
    out = tally(results, asked_at, resumed)
    split = "answering it in halves" in b.log.read_bytes()[seen:].decode(errors="replace")
    out.notes.add(f"{b.tokens['stall']} tokens, {'split in halves' if split else 'NOT split'}")
    return out


def train_kill(b: Bench) -> Outcome:
    settings = make_settings(b.tiny, b.url)
    client = QueueClient(settings)
    root = b.tiny.parent
    job = client.start_training(request_for(root / TINY_DATA, root / TINY_BASE, epochs=LONG))
    worker = train_worker(settings, b.log)
    b.procs.append(worker)
    wait_until(lambda: training_at(client, job.id, 3), 120, "training under way", b.log)
    b.horses.append(horse_of(worker.pid))
    os.kill(worker.pid, signal.SIGKILL)
    os.kill(b.horses[-1], signal.SIGKILL)
    killed = time.monotonic()
    worker.wait(timeout=10)
    wait_until(lambda: client.running_training() is None, LEASE_TTL_S + 10, "the training lock is free", b.log)
    freed = time.monotonic() - killed
    b.procs.append(train_worker(settings, b.log))  # compose or `qabot dev` restarts it; it fails the dead run
    b.procs[-1].wait(timeout=120)
    status = client.training_status(job.id)
    text = render_result(status) if status.done else ""
    out = Outcome(asked=1, failed=int(bool(status.done and status.error)), recovery_s=freed, notes={repr(text[:70])})
    out.lost = 1 - out.failed
    out.ok = text == f"Training failed: {DIED}" and freed <= LEASE_TTL_S + 1
    return out


FAULTS: dict[str, Callable[[Bench], Outcome]] = dict(
    kill=kill, redis=redis_restart, noworker=no_worker, stall=stall, train=train_kill
)
BOUNDS = dict(kill=f"{LIVE_TTL_SECONDS + BEAT_SECONDS:.0f} s + answer", noworker=f"told <= {NO_WORKER_WAIT_S + 3} s")
BOUNDS["train"] = f"lock <= {LEASE_TTL_S + 1} s"


def print_table(rows: list[tuple[str, list[Outcome]]], normal: float) -> None:
    print("| fault | runs | asked | answered | failed (msg) | lost | recovery s, max | x no-fault | bound | check | notes |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, outs in rows:
        times = [o.recovery_s for o in outs if o.recovery_s is not None]
        told = [o.told_s for o in outs if o.told_s is not None]
        notes = sorted({n for o in outs for n in o.notes} | ({f"told after <= {max(told):.1f} s"} if told else set()))
        cells = [name, len(outs), *(sum(getattr(o, k) for o in outs) for k in ("asked", "answered", "failed", "lost"))]
        cells += [f"{max(times):.1f}" if times else "-", f"{max(times) / normal:.1f}x" if times and name != "train" else "-"]
        cells += [BOUNDS.get(name, "-"), "PASS" if all(o.ok for o in outs) else "FAIL", "; ".join(notes)]
        print("| " + " | ".join(map(str, cells)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="times each fault is run")
    parser.add_argument("--questions", type=int, default=len(QUESTIONS), help=f"questions in flight, 1 to {len(QUESTIONS)}")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated, from: " + ", ".join(FAULTS))
    args = parser.parse_args()
    chosen = [name.strip() for name in args.faults.split(",") if name.strip()]
    if unknown := set(chosen) - set(FAULTS):
        parser.error(f"unknown fault(s) {', '.join(sorted(unknown))}; choose from {', '.join(FAULTS)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("worker.client").setLevel(logging.ERROR)  # its retries while Redis restarts are expected
    quiet()
    print(f"machine: {machine()}")
    started = time.monotonic()
    bench = Bench(Path(tempfile.mkdtemp(prefix="qabot-faults-")), max(1, min(args.questions, len(QUESTIONS))))
    rows: list[tuple[str, list[Outcome]]] = []
    try:
        normal = baseline(bench)
        bench.end_run()
        print(f"no fault: first of {len(bench.questions)} answers {normal:.2f} s after asking ({PROBE_TOKENS} tokens)")
        for name in chosen:
            outcomes = []
            for _ in range(args.runs):
                try:
                    outcomes.append(FAULTS[name](bench))
                except Exception as exc:  # the next run goes on; the row says this one failed
                    logger.exception("fault %s: the run could not be carried out (worker log: %s)", name, bench.log)
                    outcomes.append(Outcome(ok=False, notes={f"error: {str(exc).splitlines()[0][:60]}"}))
                finally:
                    bench.end_run()
            rows.append((name, outcomes))
    finally:
        bench.close()
    print_table(rows, normal)
    lost = sum(o.lost for _, outs in rows for o in outs)
    ok = all(o.ok for _, outs in rows for o in outs)
    print(f"all runs took {time.monotonic() - started:.0f} s; worker log: {bench.log}")
    print(f"lost == 0 everywhere: {'yes' if lost == 0 else f'NO ({lost} lost)'}; checks: {'PASS' if ok else 'FAIL'}")
    raise SystemExit(0 if lost == 0 and ok else 1)


if __name__ == "__main__":
    main()
