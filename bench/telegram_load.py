"""Load through the fake Telegram server: 200 questions from 20 users within a few seconds.

One answer worker (a real `qabot worker answer` process) with a tiny model fine-tuned here, real Redis,
the real python-telegram-bot. Every question must get an answer or a rate-limit reply (counted: none
missing). Prints p50 and p95 from update to reply, and the ratio to one question asked on an idle bot.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine, quiet
from bench.queue import start_redis
from bots.core import BotCore
from bots.telegram_bot import build_application
from engine.versions import ModelStore
from qabot.settings import Settings
from tests.conftest import TINY_PAIRS, _build, release_tiny, write_pairs
from tests.fake_telegram import FakeTelegram

TOKEN = "1:bench"
RATE_LIMITED = "You're asking quickly"


def tiny_home(root: Path) -> Path:
    base = _build("gpt2", root / "tiny-gpt2")
    data = write_pairs(root / "tiny.json", TINY_PAIRS)
    store = ModelStore(root / "home" / "models")
    release_tiny(store, data, base, root)
    return root / "home"


async def run(settings: Settings, users: int, per_user: int, spread_s: float) -> None:
    fake = FakeTelegram(TOKEN)
    await fake.start()
    app = build_application(settings.model_copy(update={"telegram_api_url": fake.url}), BotCore(settings))
    await app.initialize()
    await app.start()
    await app.updater.start_polling(poll_interval=0.0, timeout=1)
    try:
        sent_at: dict[int, float] = {}
        warm = fake.send_text(1, 1, TINY_PAIRS[1].prompt)  # the worker has loaded its model once this is answered
        await fake.wait_for(lambda: fake.replies_to(warm), timeout=120)
        first = fake.send_text(2, 2, TINY_PAIRS[0].prompt)
        sent_at[first] = time.monotonic()
        await fake.wait_for(lambda: fake.replies_to(first), timeout=60)
        idle = fake.replies_to(first)[0]["sent_at"] - sent_at[first]

        plan = [(100 + u, TINY_PAIRS[(u + i) % len(TINY_PAIRS)].prompt) for u in range(users) for i in range(per_user)]
        random.Random(0).shuffle(plan)
        started = time.monotonic()
        for user_id, question in plan:
            message = fake.send_text(user_id, user_id, question)
            sent_at[message] = time.monotonic()
            await asyncio.sleep(spread_s / len(plan))
        asked = [m for m in sent_at if m != first]
        await fake.wait_for(lambda: all(fake.replies_to(m) for m in asked), timeout=300)
        total = time.monotonic() - started
        replies = {m: fake.replies_to(m) for m in asked}
        missing = [m for m, r in replies.items() if not r]
        limited = [m for m, r in replies.items() if r[0]["text"].startswith(RATE_LIMITED)]
        answered = [m for m in asked if m not in limited and m not in missing]
        latency = sorted(replies[m][0]["sent_at"] - sent_at[m] for m in asked)
        answer_latency = sorted(replies[m][0]["sent_at"] - sent_at[m] for m in answered)
        p = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
        print(f"{len(asked)} questions from {users} users sent in {spread_s:.1f} s; all replied after {total:.1f} s")
        print(
            f"answers {len(answered)}, rate-limit replies {len(limited)}, missing {len(missing)}: "
            f"{'PASS' if not missing and len(answered) + len(limited) == len(asked) else 'FAIL'}"
        )
        print(f"update -> reply, all: p50 {p(latency, 0.5) * 1000:.0f} ms, p95 {p(latency, 0.95) * 1000:.0f} ms")
        print(
            f"update -> answer: p50 {p(answer_latency, 0.5) * 1000:.0f} ms, p95 {p(answer_latency, 0.95) * 1000:.0f} ms; "
            f"idle bot, one question: {idle * 1000:.0f} ms -> p95 is {p(answer_latency, 0.95) / idle:.1f}x idle"
        )
        print(f"(median of answers: {statistics.median(answer_latency) * 1000:.0f} ms)")
    finally:
        await app.updater.stop()
        await app.stop()
        await app.shutdown()
        await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--per-user", type=int, default=10)
    parser.add_argument("--spread", type=float, default=3.0, help="seconds over which the questions are sent")
    args = parser.parse_args()
    quiet()
    print(f"machine: {machine()}")
    redis_proc, url = start_redis()
    root = Path(tempfile.mkdtemp(prefix="qabot-tg-bench-"))
    home = tiny_home(root)
    env = {**os.environ, "QABOT_HOME": str(home), "QABOT_REDIS_URL": url, "QABOT_DEVICE": "cpu", "QABOT_MAX_NEW_TOKENS": "24"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "qabot", "worker", "answer"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    settings = Settings(home=home, redis_url=url, telegram_token=TOKEN, answer_wait=120)
    try:
        asyncio.run(run(settings, args.users, args.per_user, args.spread))
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        redis_proc.terminate()


if __name__ == "__main__":
    main()
