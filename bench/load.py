"""Load (issue 9): 1,000 questions from 100 people over one minute through the fake Telegram server, one answer worker.

A real `qabot worker answer` process, its own redis-server, the real python-telegram-bot polling a fake Bot API on
127.0.0.1 (`bench.telegram_load`'s pieces). The rate limit is raised above what one person asks, so every question is
meant to be answered. Targets: 0 lost (every message gets the model's reply: no silence, no apology, no error); the
answer worker's RSS (VmRSS) at the end within 5% of the start (after a first full batch of 16). Prints p50 and p95 from message
to reply with their ratio to one question on the idle bot (the baseline, same run), and answers per second.

The model: --home PATH, a QABOT_HOME whose live model is the bundled one fine-tuned (`python -m bench.quality --home
PATH` makes one), asked the questions of data/sample.json; by default a tiny GPT-2 fine-tuned here (the output says
so), asked its own 8 questions. With the bundled 135M model on 2 CPU cores the worker answers about 2 to 15 questions
a second, so 1,000 questions in a minute queue up (the bot also holds at most 256 in flight); that is what this
measures. Askers and the bot wait --answer-wait seconds (default 1800), so nothing times out unless the worker stalls.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import machine, quiet
from bench.queue import start_redis
from bench.telegram_load import (
    RATE_LIMITED,
    TOKEN,
    bot_on_fake,
    percentile,
    send_plan,
    tiny_home,
    wait_replies,
    warm_and_idle,
)
from bots.core import APOLOGY
from engine.versions import ModelStore
from qabot.dataset import read_dataset
from qabot.settings import Settings
from tests.conftest import TINY_PAIRS
from tests.test_faults_answer import start_worker
from worker.localredis import stop_redis_server

FAILED = (APOLOGY, "Sorry, something went wrong")  # replies that are not the model's answer
FIRST_USER = 1000
WARM_USER = 900  # the warm-up batch's askers (FIRST_USER on are the load's)
WARM_BATCH = 16  # QABOT_ANSWER_BATCH_SIZE's default


def rss_mib(pid: int) -> float:
    """VmRSS of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def make_plan(questions: list[str], total: int, people: int) -> list[tuple[int, str]]:
    """`total` (person, question) pairs, as evenly spread over `people` as they go, in a shuffled order."""
    plan = [(FIRST_USER + i % people, questions[i % len(questions)]) for i in range(total)]
    random.Random(0).shuffle(plan)
    return plan


async def run(settings: Settings, questions: list[str], args: argparse.Namespace, worker_pid: int) -> bool:
    """Send the plan through the bot, print the figures; True if every target was met."""
    async with bot_on_fake(settings) as fake:
        idle = await warm_and_idle(fake, questions[0], warm_timeout=300)
        # The start is after one full batch of the longest questions: the allocator's high-water mark of a batch is
        # part of the worker's working set, not growth.
        warm = sorted(questions, key=len)[-WARM_BATCH:]
        warm_sent = await send_plan(fake, [(WARM_USER + i, q) for i, q in enumerate(warm)], 0.0)
        await wait_replies(fake, list(warm_sent), timeout=600)
        rss_start = rss_mib(worker_pid)
        plan = make_plan(questions, args.questions, args.people)
        started = time.monotonic()
        sent_at = await send_plan(fake, plan, args.seconds)
        sent_s = time.monotonic() - started
        replies = await wait_replies(fake, list(sent_at), timeout=args.answer_wait + 60)
        rss_end = rss_mib(worker_pid)
    lost = [m for m in sent_at if m not in replies]
    limited = [m for m, r in replies.items() if r["text"].startswith(RATE_LIMITED)]
    failed = [m for m, r in replies.items() if r["text"].startswith(FAILED)]
    answered = [m for m in replies if m not in limited and m not in failed]
    latency = [replies[m]["sent_at"] - sent_at[m] for m in answered]
    last = max((replies[m]["sent_at"] for m in answered), default=started)
    per_s = len(answered) / max(last - started, 1e-9)
    ratio = rss_end / rss_start
    everyone = len(answered) == len(sent_at)
    print(f"{len(sent_at)} questions from {args.people} people sent over {sent_s:.1f} s; last answer {last - started:.1f} s in")
    print(
        f"answered {len(answered)}, rate-limited {len(limited)}, failed {len(failed)} (apology or error), "
        f"lost {len(lost)} (no reply): {'PASS' if everyone else 'FAIL'}"
    )
    if latency:
        p50, p95 = percentile(latency, 0.5), percentile(latency, 0.95)
        print(
            f"message -> answer: p50 {p50:.2f} s, p95 {p95:.2f} s; idle bot, one question: {idle * 1000:.0f} ms "
            f"-> p50 {p50 / idle:.1f}x, p95 {p95 / idle:.1f}x idle"
        )
    print(f"answers per second: {per_s:.2f} ({len(answered)} answers, first message to last answer)")
    flat = abs(ratio - 1) <= 0.05
    print(
        f"answer worker RSS: {rss_start:.0f} MiB after a first full batch, {rss_end:.0f} MiB at the end -> ratio {ratio:.3f} "
        f"(target within 5%): {'PASS' if flat else 'FAIL'}"
    )
    return everyone and flat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="QABOT_HOME with a trained bundled model (default: a tiny model built here)")
    parser.add_argument("--questions", type=int, default=1000)
    parser.add_argument("--people", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds over which the questions are sent")
    parser.add_argument("--answer-wait", type=int, default=1800, help="seconds an asker (and the bot) waits for an answer")
    parser.add_argument("--max-new-tokens", type=int, help="the worker's answer length (default: 24 tiny, 64 with --home)")
    args = parser.parse_args()
    quiet()
    print(f"machine: {machine()}")
    root = Path(tempfile.mkdtemp(prefix="qabot-load-"))
    if args.home is not None:
        live = ModelStore(args.home / "models").current_name()
        if live is None:
            raise SystemExit(f"{args.home} has no live model: train one, e.g. `python -m bench.quality --home {args.home}`")
        home, questions, tokens = args.home, [p.prompt for p in read_dataset(Settings().dataset)], args.max_new_tokens
        print(f"model: {home} (live version {live}), questions from {Settings().dataset.name}")
    else:
        home, questions = tiny_home(root), [p.prompt for p in TINY_PAIRS]
        tokens = args.max_new_tokens or 24
        print("model: the TINY model (a 2-layer GPT-2 fine-tuned here), not the bundled one; pass --home for that")
    redis_proc, url = start_redis()
    env = {"answer_wait": str(args.answer_wait)} | ({"max_new_tokens": str(tokens)} if tokens else {})
    worker = start_worker(home, url, root / "worker.log", log_level="WARNING", **env)
    per_person = math.ceil(args.questions / args.people)
    settings = Settings(home=home, redis_url=url, telegram_token=TOKEN, answer_wait=args.answer_wait, rate_limit=per_person + 5)
    try:
        ok = asyncio.run(run(settings, questions, args, worker.pid))
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        stop_redis_server(redis_proc)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
