"""Load through the fake Telegram server: 200 questions from 20 users within a few seconds.

One answer worker (a real `qabot worker answer` process) with a tiny model fine-tuned here, real Redis,
the real python-telegram-bot. Every question must get an answer or a rate-limit reply (counted: none
missing). Prints p50 and p95 from update to reply, and the ratio to one question asked on an idle bot.
The pieces (the tiny home, the bot on the fake server, sending a plan, reading the replies) serve
`bench.load` too.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bench.common import machine, quiet
from bench.queue import start_redis
from bots.core import BotCore
from bots.telegram_bot import build_application
from engine.versions import ModelStore
from qabot.settings import Settings
from tests.conftest import TINY_PAIRS, _build, release_tiny, write_pairs
from tests.fake_telegram import FakeTelegram
from tests.test_faults_answer import start_worker

TOKEN = "1:bench"
RATE_LIMITED = "You're asking quickly"
TINY_BASE, TINY_DATA = "tiny-gpt2", "tiny.json"  # beside the home, in the root given to tiny_home


def tiny_home(root: Path) -> Path:
    """A QABOT_HOME under `root` whose live model (v0001) is a tiny GPT-2 fine-tuned on TINY_PAIRS; its base model
    and data stay in `root` (TINY_BASE, TINY_DATA) for a fine-tune of its own."""
    base = _build("gpt2", root / TINY_BASE)
    data = write_pairs(root / TINY_DATA, TINY_PAIRS)
    store = ModelStore(root / "home" / "models")
    release_tiny(store, data, base, root)
    return root / "home"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def first_replies(fake: FakeTelegram) -> dict[int, dict[str, Any]]:
    """The bot's first reply to each message, by the message's id (one pass over what the bot sent)."""
    found: dict[int, dict[str, Any]] = {}
    for message in fake.sent.values():
        found.setdefault(message.get("reply_to_message_id"), message)
    return found


@asynccontextmanager
async def bot_on_fake(settings: Settings) -> AsyncIterator[FakeTelegram]:
    """The real Telegram bot, polling a fake Bot API server on 127.0.0.1 (yielded)."""
    fake = FakeTelegram(TOKEN)
    await fake.start()
    app = build_application(settings.model_copy(update={"telegram_api_url": fake.url}), BotCore(settings))
    await app.initialize()
    await app.start()
    await app.updater.start_polling(poll_interval=0.0, timeout=1)
    try:
        yield fake
    finally:
        await app.updater.stop()
        await app.stop()
        await app.shutdown()
        await fake.stop()


async def warm_and_idle(fake: FakeTelegram, question: str, warm_timeout: float = 120) -> float:
    """Ask once so the worker has loaded its model, then once more on the idle bot: that one's seconds to the reply."""
    warm = fake.send_text(1, 1, question)
    await fake.wait_for(lambda: fake.replies_to(warm), timeout=warm_timeout)
    first = fake.send_text(2, 2, question)
    sent = time.monotonic()
    await fake.wait_for(lambda: fake.replies_to(first), timeout=60)
    return fake.replies_to(first)[0]["sent_at"] - sent


async def send_plan(fake: FakeTelegram, plan: list[tuple[int, str]], spread_s: float) -> dict[int, float]:
    """Send each (user, question) at an even pace over `spread_s` seconds; the send time of each message, by id."""
    sent_at: dict[int, float] = {}
    started = time.monotonic()
    for i, (user_id, question) in enumerate(plan):
        await asyncio.sleep(max(0.0, started + i * spread_s / len(plan) - time.monotonic()))
        sent_at[fake.send_text(user_id, user_id, question)] = time.monotonic()
    return sent_at


async def wait_replies(fake: FakeTelegram, asked: list[int], timeout: float) -> dict[int, dict[str, Any]]:
    """Wait (polling twice a second) until every asked message has a reply or `timeout` passes; the replies found."""
    deadline = time.monotonic() + timeout
    while True:
        replies = first_replies(fake)
        if all(m in replies for m in asked) or time.monotonic() >= deadline:
            return {m: replies[m] for m in asked if m in replies}
        await asyncio.sleep(0.5)


async def run(settings: Settings, users: int, per_user: int, spread_s: float) -> None:
    async with bot_on_fake(settings) as fake:
        idle = await warm_and_idle(fake, TINY_PAIRS[1].prompt)
        plan = [(100 + u, TINY_PAIRS[(u + i) % len(TINY_PAIRS)].prompt) for u in range(users) for i in range(per_user)]
        random.Random(0).shuffle(plan)
        started = time.monotonic()
        sent_at = await send_plan(fake, plan, spread_s)
        asked = list(sent_at)
        replies = await wait_replies(fake, asked, timeout=300)
        total = time.monotonic() - started
        missing = [m for m in asked if m not in replies]
        limited = [m for m, r in replies.items() if r["text"].startswith(RATE_LIMITED)]
        answered = [m for m in replies if m not in limited]
        latency = [replies[m]["sent_at"] - sent_at[m] for m in replies]
        answer_latency = [replies[m]["sent_at"] - sent_at[m] for m in answered]
        p = percentile
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
    worker = start_worker(home, url, root / "worker.log", max_new_tokens="24", log_level="WARNING")
    settings = Settings(home=home, redis_url=url, telegram_token=TOKEN, answer_wait=120)
    try:
        asyncio.run(run(settings, args.users, args.per_user, args.spread))
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        redis_proc.terminate()


if __name__ == "__main__":
    main()
