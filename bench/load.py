"""Load (issues 9, 16): 1,000 questions from 100 people over one minute through the fake Telegram server, one answer worker.

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

Short questions behind long ones (issue 16): the figures are also given for the questions whose answer in --data is
at most the median length in words ("short"). --baseline REV runs the same plan first against an answer worker of
commit REV (a git worktree), then against this tree's, each with its own redis-server and bot, and prints the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import baseline_tree, machine, quiet
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
from tests.conftest import TINY_PAIRS, qabot_env
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


def start_answer_worker(home: Path, url: str, log: Path, tree: Path | None, **env: str) -> subprocess.Popen:
    """`qabot worker answer` from this tree, or from `tree` (a baseline checkout)."""
    if tree is None:
        return start_worker(home, url, log, **env)
    values = {"QABOT_HOME": str(home), "QABOT_REDIS_URL": url, "QABOT_DEVICE": "cpu", "PYTHONPATH": str(tree)}
    values |= {f"QABOT_{k.upper()}": v for k, v in env.items()}
    out = log.open("a")
    command = [sys.executable, "-m", "qabot", "worker", "answer"]
    return subprocess.Popen(command, cwd=tree, env=qabot_env(values), stdout=out, stderr=subprocess.STDOUT)


def make_plan(questions: list[str], total: int, people: int) -> list[tuple[int, str]]:
    """`total` (person, question) pairs, as evenly spread over `people` as they go, in a shuffled order."""
    plan = [(FIRST_USER + i % people, questions[i % len(questions)]) for i in range(total)]
    random.Random(0).shuffle(plan)
    return plan


async def run(settings: Settings, questions: list[str], short: set[str], args: argparse.Namespace, worker_pid: int) -> dict:
    """Send the plan through the bot, print the figures; the figures (`ok`: every target was met)."""
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
    figures = {"per_s": per_s}
    asked = dict(zip(sent_at, (question for _, question in plan), strict=True))
    short_latency = [replies[m]["sent_at"] - sent_at[m] for m in answered if asked[m] in short]
    for name, chosen in (("all", latency), ("short", short_latency)):
        if chosen:
            p50, p95 = percentile(chosen, 0.5), percentile(chosen, 0.95)
            figures[name] = (p50, p95)
            print(
                f"message -> answer, {name} ({len(chosen)}): p50 {p50:.2f} s, p95 {p95:.2f} s; idle bot, one question: "
                f"{idle * 1000:.0f} ms -> p50 {p50 / idle:.1f}x, p95 {p95 / idle:.1f}x idle"
            )
    print(f"answers per second: {per_s:.2f} ({len(answered)} answers, first message to last answer)")
    flat = abs(ratio - 1) <= 0.05
    print(
        f"answer worker RSS: {rss_start:.0f} MiB after a first full batch, {rss_end:.0f} MiB at the end -> ratio {ratio:.3f} "
        f"(target within 5%): {'PASS' if flat else 'FAIL'}"
    )
    return figures | {"ok": everyone and flat}


def measure(home: Path, questions: list[str], short: set[str], args: argparse.Namespace, tree: Path | None, root: Path) -> dict:
    """One whole run: its own redis-server, an answer worker (of `tree`, or of this checkout) and the bot."""
    redis_proc, url = start_redis()
    env = {"answer_wait": str(args.answer_wait)} | ({"max_new_tokens": str(args.tokens)} if args.tokens else {})
    log = root / f"worker-{tree.name if tree else 'here'}.log"
    worker = start_answer_worker(home, url, log, tree, log_level="WARNING", **env)
    per_person = math.ceil(args.questions / args.people)
    settings = Settings(home=home, redis_url=url, telegram_token=TOKEN, answer_wait=args.answer_wait, rate_limit=per_person + 5)
    try:
        return asyncio.run(run(settings, questions, short, args, worker.pid))
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        stop_redis_server(redis_proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="QABOT_HOME with a trained bundled model (default: a tiny model built here)")
    parser.add_argument("--data", type=Path, default=Path("data/sample.json"), help="the questions asked, with --home")
    parser.add_argument("--questions", type=int, default=1000)
    parser.add_argument("--people", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds over which the questions are sent")
    parser.add_argument("--answer-wait", type=int, default=1800, help="seconds an asker (and the bot) waits for an answer")
    parser.add_argument("--max-new-tokens", type=int, help="answer length (default: 24 tiny, the data's with --home)")
    parser.add_argument("--baseline", metavar="REV", help="also run the plan against the answer worker of commit REV, first")
    args = parser.parse_args()
    quiet()
    print(f"machine: {machine()}")
    root = Path(tempfile.mkdtemp(prefix="qabot-load-"))
    if args.home is not None:
        live = ModelStore(args.home / "models").current_name()
        if live is None:
            raise SystemExit(f"{args.home} has no live model: train one, e.g. `python -m bench.quality --home {args.home}`")
        home, pairs, args.tokens = args.home, read_dataset(args.data), args.max_new_tokens
        print(f"model: {home} (live version {live}), questions from {args.data.name}")
    else:
        home, pairs = tiny_home(root), TINY_PAIRS
        args.tokens = args.max_new_tokens or 24
        print("model: the TINY model (a 2-layer GPT-2 fine-tuned here), not the bundled one; pass --home for that")
    questions = [p.prompt for p in pairs]
    median = statistics.median(len(p.response.split()) for p in pairs)
    short = {p.prompt for p in pairs if len(p.response.split()) <= median}
    print(f"short questions: the {len(short)} of {len(pairs)} whose answer has at most {median:g} words (the median)")
    runs = {}
    if args.baseline:
        print(f"-- before: the answer worker of {args.baseline}")
        runs["before"] = measure(home, questions, short, args, baseline_tree(args.baseline), root)
        print("-- after: this checkout's answer worker")
    runs["after"] = measure(home, questions, short, args, None, root)
    if args.baseline:
        before, after = runs["before"], runs["after"]
        if "short" in before and "short" in after:
            p95 = after["short"][1] / before["short"][1]
            print(
                f"short questions' p95: {before['short'][1]:.2f} s before, {after['short'][1]:.2f} s after -> "
                f"{p95:.2f}x (target <= 0.5x): {'PASS' if p95 <= 0.5 else 'FAIL'}"
            )
        rate = after["per_s"] / before["per_s"]
        print(
            f"answers per second: {before['per_s']:.2f} before, {after['per_s']:.2f} after -> {rate:.2f}x (target >= 1x): "
            f"{'PASS' if rate >= 1 else 'FAIL'}"
        )
    raise SystemExit(0 if all(r["ok"] for r in runs.values()) else 1)


if __name__ == "__main__":
    main()
