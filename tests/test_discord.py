"""The real discord.py against a fake Discord REST API and gateway, with real Redis and real workers."""

from __future__ import annotations

import asyncio
import json

import discord
import pytest

from bots.commands import ADMIN as ADMIN_COMMANDS
from bots.commands import COMMANDS
from bots.core import REFUSAL
from bots.discord_delivery import MESSAGE_LIMIT
from bots.render import REPORTED
from tests.conftest import TINY_PAIRS
from tests.fake_discord import (
    ADMIN_ROLE_ID,
    CHANNEL_ID,
    OTHER_CHANNEL_ID,
    OTHER_THREAD_ID,
    THREAD_ID,
    discord_bot_on_fake,
)
from tests.test_telegram import long_answer_version, stack, store_of  # noqa: F401 - the shared worker stack fixture

ADMIN = 5151
TOKEN = "discord-secret-token-never-logged"


@pytest.fixture
async def discord_bot(stack, monkeypatch):  # noqa: F811
    settings = stack.model_copy(
        update={
            "discord_token": TOKEN,
            "discord_admins": [ADMIN],
            "discord_admin_roles": [int(ADMIN_ROLE_ID)],
            "discord_channels": [int(CHANNEL_ID)],
        }
    )
    async with discord_bot_on_fake(settings, monkeypatch, edit_delay=0.2, follow_poll=0.05) as fake:
        yield fake


async def test_slash_commands_are_synced_at_start(discord_bot):
    """The one command table: every command, its help as the description; admin commands hidden from members
    without Manage Server (default_member_permissions), public ones shown to everyone."""
    synced = {c["name"]: c for c in discord_bot.commands}
    assert set(synced) == {c.name for c in COMMANDS}
    manage_guild = str(discord.Permissions(manage_guild=True).value)
    for command in COMMANDS:
        assert synced[command.name]["description"] == command.help
        hidden = synced[command.name].get("default_member_permissions")
        assert (None if hidden is None else str(hidden)) == (manage_guild if command.admin else None)


async def test_non_admins_are_refused_every_admin_command(discord_bot, stack):  # noqa: F811
    before = ([v.name for v in store_of(stack).list()], store_of(stack).current_pairs())
    for command in ADMIN_COMMANDS:
        options = {"question": "q?", "answer": "a."} if command.name == "addqa" else {}
        options |= {"question": "q?"} if command.name == "forget" else {}
        options |= {"query": "q"} if command.name == "find" else {}
        options |= {"id": "x", "answer": "a."} if command.name == "answer" else {}
        options |= {"id": "x"} if command.name == "dismiss" else {}
        token = await discord_bot.slash(307, command.name, options)
        await discord_bot.wait_for(lambda token=token: discord_bot.followups(token))
        assert [m["content"] for m in discord_bot.followups(token)] == [REFUSAL], command.name
    assert ([v.name for v in store_of(stack).list()], store_of(stack).current_pairs()) == before


async def test_slash_ask_is_deferred_then_answered(discord_bot):
    token = await discord_bot.slash(301, "ask", {"question": TINY_PAIRS[0].prompt})
    follow = await discord_bot.wait_for(lambda: [m["content"] for m in discord_bot.followups(token)])
    assert follow == [TINY_PAIRS[0].response]
    assert discord_bot.callbacks[0]["type"] == 5  # deferred first, within Discord's 3 s


async def test_mentions_and_replies_get_answers_with_typing(discord_bot):
    asked = await discord_bot.say(302, TINY_PAIRS[1].prompt, mention=True)
    assert await discord_bot.wait_for(lambda: discord_bot.replies_to(asked)) == [TINY_PAIRS[1].response]
    assert discord_bot.typing_in(CHANNEL_ID) >= 1
    bot_reply = next(
        m["id"] for m in discord_bot.messages.values() if str((m.get("message_reference") or {}).get("message_id")) == asked
    )
    follow = await discord_bot.say(303, TINY_PAIRS[4].prompt, reply_to=bot_reply)
    assert await discord_bot.wait_for(lambda: discord_bot.replies_to(follow)) == [TINY_PAIRS[4].response]
    ignored = await discord_bot.say(304, TINY_PAIRS[2].prompt)
    elsewhere = await discord_bot.say(305, TINY_PAIRS[2].prompt, mention=True, channel_id=OTHER_CHANNEL_ID)
    await asyncio.sleep(1.0)
    assert discord_bot.replies_to(ignored) == [] and discord_bot.replies_to(elsewhere) == []


async def test_a_mention_deleted_while_it_is_answered_still_gets_its_answer(discord_bot):
    asked = await discord_bot.say(306, TINY_PAIRS[3].prompt, mention=True)
    discord_bot.deleted.add(asked)  # a moderator or AutoMod removes it: a reply cannot point at it any more

    def in_channel():
        return [m["content"] for m in discord_bot.messages.values() if m["author"]["id"] != "306" and m.get("content")]

    assert TINY_PAIRS[3].response in await discord_bot.wait_for(
        lambda: [c for c in in_channel() if c == TINY_PAIRS[3].response], timeout=60
    )


async def test_threads_of_an_allowed_channel_are_answered_and_threads_of_other_channels_are_not(discord_bot):
    """Under a channel allow-list a thread counts as its channel: a mention, /ask and a 👎 on an answer in a thread of
    an allowed channel work (they were all refused: a thread has its own id); a thread of another channel stays
    refused."""
    asked = await discord_bot.say(308, TINY_PAIRS[1].prompt, mention=True, channel_id=THREAD_ID)
    assert await discord_bot.wait_for(lambda: discord_bot.replies_to(asked)) == [TINY_PAIRS[1].response]
    token = await discord_bot.slash(308, "ask", {"question": TINY_PAIRS[0].prompt}, channel_id=THREAD_ID)
    follow = await discord_bot.wait_for(lambda: [m["content"] for m in discord_bot.followups(token)])
    assert follow == [TINY_PAIRS[0].response]
    answer = next(
        m["id"] for m in discord_bot.messages.values() if str((m.get("message_reference") or {}).get("message_id")) == asked
    )
    await discord_bot.react(309, answer)
    assert await discord_bot.wait_for(lambda: discord_bot.replies_to(answer)) == [REPORTED]
    elsewhere = await discord_bot.say(308, TINY_PAIRS[2].prompt, mention=True, channel_id=OTHER_THREAD_ID)
    answered = len(discord_bot.callbacks)
    await discord_bot.slash(308, "ask", {"question": TINY_PAIRS[2].prompt}, channel_id=OTHER_THREAD_ID)
    (refused,) = await discord_bot.wait_for(lambda: discord_bot.callbacks[answered:])
    assert refused["data"]["content"] == "I don't answer in this channel."
    await asyncio.sleep(1.0)
    assert discord_bot.replies_to(elsewhere) == []


async def test_a_long_answer_is_split_under_2000_characters(discord_bot, stack, tiny_llama):  # noqa: F811
    store = store_of(stack)
    live = store.current_name()
    store.promote(long_answer_version(store, tiny_llama))
    try:
        token = await discord_bot.slash(306, "ask", {"question": "Tell me everything about the Stone?"})
        await discord_bot.wait_for(lambda: len(discord_bot.followups(token)) >= 3, timeout=60)
        parts = [m["content"] for m in discord_bot.followups(token)]
        assert all(0 < len(p) <= MESSAGE_LIMIT for p in parts)
    finally:
        store.promote(live)


async def test_non_admin_is_refused(discord_bot, stack):  # noqa: F811
    before = [v.name for v in store_of(stack).list()]
    token = await discord_bot.slash(307, "retrain", attachment=("d.json", b"[]"))
    await discord_bot.wait_for(lambda: discord_bot.followups(token))
    assert [m["content"] for m in discord_bot.followups(token)] == [REFUSAL]
    assert [v.name for v in store_of(stack).list()] == before


async def test_admin_role_retrains_with_an_attachment(discord_bot, stack):  # noqa: F811
    store = store_of(stack)
    live_before = store.current_name()
    pairs = [{"prompt": p.prompt, "response": p.response} for p in TINY_PAIRS]
    pairs.append({"prompt": "Who mined the first moonstone?", "response": "Brenna mined it."})
    await discord_bot.slash(308, "retrain", roles=[ADMIN_ROLE_ID], attachment=("more.json", json.dumps(pairs).encode()))
    done = await discord_bot.wait_for(
        lambda: [m for m in discord_bot.messages.values() if "Training done" in m["content"]], timeout=240
    )
    assert "is now live" in done[0]["content"] and done[0]["files"]  # the loss curve is attached
    assert done[0]["content"].startswith("more.json: 9 pairs; 1 added to the 8 of the dataset (9 pairs).")
    progress = next(m for m in discord_bot.messages.values() if m["content"] == "Training finished.")
    assert len(progress["edits"]) >= 2 and "webhook" not in progress  # a channel message: no 15-minute token
    assert store.current_name() != live_before
    await discord_bot.slash(ADMIN, "retrain", attachment=("bad.json", b'[{"prompt": "x"}]'))
    reply = await discord_bot.wait_for(
        lambda: [m["content"] for m in discord_bot.messages.values() if m["content"].startswith("That dataset")], timeout=60
    )
    assert reply[0].startswith("That dataset has 1 problem(s)") and "pair 1, 'x': missing 'response'" in reply[0]
    back = await discord_bot.slash(ADMIN, "rollback")
    assert (await discord_bot.wait_for(lambda: [m["content"] for m in discord_bot.followups(back)]))[0].startswith("Rolled back")
    assert store.current_name() == live_before


async def test_no_message_the_bot_sends_can_mention_anyone(discord_bot, stack):  # noqa: F811
    asked = await discord_bot.say(309, "@everyone <@&" + ADMIN_ROLE_ID + "> who guards the stone?", mention=True)
    await discord_bot.wait_for(lambda: discord_bot.replies_to(asked), timeout=60)
    token = await discord_bot.slash(310, "ask", {"question": "@everyone " + TINY_PAIRS[0].prompt})
    await discord_bot.wait_for(lambda: discord_bot.followups(token), timeout=60)
    sent = [body for method, path, body in discord_bot.calls if method == "POST" and ("messages" in path or "webhooks" in path)]
    assert len(sent) >= 2
    for body in sent:
        mentions = body.get("allowed_mentions")
        assert mentions is not None and mentions.get("parse") == [] and not mentions.get("roles") and not mentions.get("users")


async def test_addqa_keeps_a_bar_in_the_question(discord_bot, stack):  # noqa: F811
    token = await discord_bot.slash(ADMIN, "addqa", {"question": "Is it A|B or C?", "answer": "It is A|B."})
    reply = await discord_bot.wait_for(lambda: [m["content"] for m in discord_bot.followups(token)], timeout=60)
    assert reply[0].startswith("Added 'Is it A\\|B or C?'")  # Markdown escaped: Discord shows A|B
    assert any(p.prompt == "Is it A|B or C?" and p.response == "It is A|B." for p in store_of(stack).current_pairs())


async def test_forget_and_undo_on_discord(discord_bot, stack):  # noqa: F811
    store = store_of(stack)
    before = store.current_pairs()
    token = await discord_bot.slash(ADMIN, "forget", {"question": before[0].prompt})
    reply = await discord_bot.wait_for(lambda: [m["content"] for m in discord_bot.followups(token)], timeout=60)
    assert reply[0].startswith(f"Forgot '{before[0].prompt}'") and store.current_pairs() == before[1:]
    token = await discord_bot.slash(ADMIN, "undo")
    reply = await discord_bot.wait_for(lambda: [m["content"] for m in discord_bot.followups(token)], timeout=60)
    assert reply[0].startswith(f"Undid the forget of '{before[0].prompt}'")
    assert sorted(store.current_pairs(), key=lambda p: p.prompt) == sorted(before, key=lambda p: p.prompt)


async def test_export_is_an_attachment_only_the_admin_sees(discord_bot, stack):  # noqa: F811
    token = await discord_bot.slash(ADMIN, "export")
    (message,) = await discord_bot.wait_for(lambda: discord_bot.followups(token), timeout=60)
    assert message["content"].startswith(f"The current dataset: {len(store_of(stack).current_pairs())} pairs")
    assert message["flags"] & 64  # ephemeral: the dataset is not posted to the channel
    (data,) = message["files"].values()
    pairs = [(p.prompt, p.response) for p in store_of(stack).current_pairs()]
    assert [(r["prompt"], r["response"]) for r in json.loads(data)] == pairs


async def test_a_busy_retrain_says_so_once(discord_bot, stack):  # noqa: F811
    """While a fine-tune holds the training lock, /retrain gets one message: that one is running (no "Retraining...")."""
    from redis import Redis

    from worker.jobs import TRAIN_LOCK
    from worker.train_client import LOCK_MARGIN_S

    redis = Redis.from_url(stack.redis_url)
    redis.set(TRAIN_LOCK, "a-fine-tune-being-enqueued", ex=stack.train_timeout + LOCK_MARGIN_S)
    try:
        token = await discord_bot.slash(ADMIN, "retrain")
        (said,) = await discord_bot.wait_for(lambda: [m["content"] for m in discord_bot.followups(token)], timeout=60)
        await asyncio.sleep(0.5)
        assert said.startswith("A training run is already in progress") and len(discord_bot.followups(token)) == 1
        assert not any(m["content"].startswith("Retraining") for m in discord_bot.messages.values())
    finally:
        redis.delete(TRAIN_LOCK)


async def test_a_forced_replace_is_undone_by_rollback_with_its_dataset(discord_bot, stack):  # noqa: F811
    """Issue 15's case on Discord: `/retrain mode:replace force:True` with a small file goes live with that file's
    pairs alone; `/rollback` brings back the version that was live and the dataset it answers from."""
    store = store_of(stack)
    live_before, pairs_before = store.current_name(), store.current_pairs()
    old = next(p for p in pairs_before if p in TINY_PAIRS[4:])
    small = [{"prompt": p.prompt, "response": p.response} for p in TINY_PAIRS[:2]]
    await discord_bot.slash(
        ADMIN, "retrain", {"mode": "replace", "force": True}, attachment=("small.json", json.dumps(small).encode())
    )
    done = await discord_bot.wait_for(
        lambda: [m["content"] for m in discord_bot.messages.values() if "Training done" in m["content"]], timeout=240
    )
    assert done[0].startswith(f"small.json replaced the dataset: 2 pairs, {len(pairs_before) - 2} dropped.")
    assert "is now live" in done[0] and [(p.prompt, p.response) for p in store.current_pairs()] == [
        (r["prompt"], r["response"]) for r in small
    ]
    lost = await discord_bot.say(311, old.prompt, mention=True)  # the replace dropped it: the bot no longer knows it
    assert await discord_bot.wait_for(lambda: discord_bot.replies_to(lost), timeout=60) != [old.response]
    back = await discord_bot.slash(ADMIN, "rollback")
    said = (await discord_bot.wait_for(lambda: [m["content"] for m in discord_bot.followups(back)]))[0]
    assert said.startswith(f"Rolled back: {live_before} is live again") and f"({len(pairs_before)} pairs" in said
    assert store.current_name() == live_before and store.current_pairs() == pairs_before
    asked = await discord_bot.say(311, old.prompt, mention=True)  # a pair the replace dropped is answered again
    assert await discord_bot.wait_for(lambda: discord_bot.replies_to(asked), timeout=60) == [old.response]
