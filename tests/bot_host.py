"""A Telegram bot on a host without the engine: run by test_telegram as a subprocess with engine, torch,
transformers and tokenizers made unimportable. It talks to the fake Bot API and, through Redis, to real workers."""

from __future__ import annotations

import sys


class _NotInstalled:
    """Refuses what a bot host (`pip install ".[bots]"`) does not have."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"engine", "torch", "transformers", "tokenizers"}:
            raise ImportError(f"{name} is not installed on a bot host")


sys.meta_path.insert(0, _NotInstalled())

import asyncio  # noqa: E402 - the blocker must come first

from bots.core import BotCore  # noqa: E402
from bots.telegram_bot import build_application  # noqa: E402
from qabot.settings import Settings  # noqa: E402
from tests.conftest import TINY_PAIRS  # noqa: E402
from tests.fake_telegram import FakeTelegram  # noqa: E402


async def main() -> None:
    settings = Settings()
    admin = settings.telegram_admins[0]
    fake = FakeTelegram(settings.telegram_token.get_secret_value())
    await fake.start()
    app = build_application(settings.model_copy(update={"telegram_api_url": fake.url}), BotCore(settings))
    await app.initialize()
    await app.post_init(app)
    await app.start()
    await app.updater.start_polling(poll_interval=0.0, timeout=1)

    async def exchange(user: int, text: str) -> str:
        sent = fake.send_text(user, user, text)
        replies = await fake.wait_for(lambda: [m["text"] for m in fake.replies_to(sent) if "text" in m], timeout=60)
        return replies[0]

    try:
        assert await exchange(501, TINY_PAIRS[2].prompt) == TINY_PAIRS[2].response
        assert (await exchange(admin, "/addqa Who keeps the bot host? | Nobody with a GPU.")).startswith("Added")
        assert "(live)" in await exchange(admin, "/models")
        assert "Waiting to be trained: " in await exchange(admin, "/status")
        heavy = {"engine", "torch", "transformers", "tokenizers"} & {name.split(".")[0] for name in sys.modules}
        assert not heavy, heavy
    finally:
        await app.updater.stop()
        await app.stop()
        await app.post_stop(app)
        await app.shutdown()
        await fake.stop()
    print("bot host ok")


if __name__ == "__main__":
    asyncio.run(main())
