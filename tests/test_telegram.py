"""The real python-telegram-bot against a fake Bot API server, with real Redis and real workers."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import subprocess
import sys

import aiohttp
import pytest
from redis import Redis

from bots.commands import ADMIN as ADMIN_COMMANDS
from bots.commands import PUBLIC
from bots.core import APOLOGY, HELP_TEXT, REFUSAL, BotCore
from bots.telegram_bot import build_application
from bots.telegram_delivery import MESSAGE_LIMIT
from engine.models import load_model
from engine.versions import ModelStore
from qabot.dataset import QAPair
from qabot.settings import Settings
from tests.conftest import TINY_CONFIG, TINY_PAIRS, _free_port, qabot_env, qabot_workers
from tests.fake_telegram import BOT_USERNAME, FakeTelegram

TOKEN = "123456:TEST-secret-token-never-logged"
ADMIN = 4242


@pytest.fixture(scope="module")
def stack(trained_tiny, redis_server, tmp_path_factory, tiny_gpt2):
    """A QABOT_HOME with the trained tiny model live, and real answer and train workers on Redis."""
    store, _ = trained_tiny
    home = tmp_path_factory.mktemp("tg-home")
    shutil.copytree(store.root, home / "models")
    url = redis_server.replace("/0", "/2")
    Redis.from_url(url).flushdb()
    env = qabot_env(
        {
            "QABOT_HOME": str(home),
            "QABOT_REDIS_URL": url,
            "QABOT_DEVICE": "cpu",
            "QABOT_MAX_NEW_TOKENS": "2048",
            "QABOT_BASE_MODEL": str(tiny_gpt2),
            "QABOT_GROUNDED": "false",  # the live tiny model is plain; a plain retrain is compared like for like
            "QABOT_TRAIN_EPOCHS": str(TINY_CONFIG["epochs"]),
            "QABOT_TRAIN_LEARNING_RATE": str(TINY_CONFIG["learning_rate"]),
            "QABOT_TRAIN_BATCH_SIZE": "4",
        }
    )
    # The bots' settings name no QABOT_HOME: they never see the store. Two admin workers: concurrent admin changes must
    # not be lost between them.
    with qabot_workers(env, home, ("answer", "train", "admin", "admin"), ready=True):
        yield Settings(
            home=home / "bot-has-no-store",
            redis_url=url,
            telegram_token=TOKEN,
            telegram_admins=[ADMIN],
            answer_wait=60,
            rate_limit=5,
        )


async def run_bot(settings: Settings, fake: FakeTelegram):
    core = BotCore(settings)
    core.edit_delay = 0.2
    core.follow_poll = 0.05  # tiny fine-tunes pass through their stages in moments
    core.delivery_poll = 0.5
    app = build_application(settings.model_copy(update={"telegram_api_url": fake.url}), core)
    await app.initialize()
    await app.post_init(app)  # as run_polling does
    await app.start()
    await app.updater.start_polling(poll_interval=0.0, timeout=1)
    return app


async def stop_bot(app) -> None:
    await app.updater.stop()
    await app.stop()
    await app.post_stop(app)
    await app.shutdown()


def store_of(settings: Settings) -> ModelStore:
    """The workers' store (the test looks at it; the bot cannot)."""
    return ModelStore(settings.home.parent / "models")


@pytest.fixture
async def telegram(stack):
    fake = FakeTelegram(TOKEN)
    await fake.start()
    app = await run_bot(stack, fake)
    yield fake
    await stop_bot(app)
    await fake.stop()


def texts(fake: FakeTelegram, message_id: int) -> list[str]:
    return [m["text"] for m in fake.replies_to(message_id) if "text" in m]


async def test_private_question_gets_the_answer_as_a_reply_with_typing(telegram):
    asked = telegram.send_text(chat_id=101, user_id=101, text=TINY_PAIRS[0].prompt)
    assert await telegram.wait_for(lambda: texts(telegram, asked)) == [TINY_PAIRS[0].response]
    assert "typing" in telegram.actions(101)


async def test_a_question_deleted_while_it_is_answered_still_gets_its_answer(telegram):
    asked = telegram.send_text(-510, 105, f"/ask {TINY_PAIRS[2].prompt}", chat_type="group")
    telegram.deleted.add(asked)  # a group's anti-spam bot deletes commands: the reply cannot quote it

    def in_chat():
        return [m["text"] for m in telegram.sent.values() if m["chat"]["id"] == -510 and m.get("text")]

    assert await telegram.wait_for(in_chat) == [TINY_PAIRS[2].response]


async def test_groups_answer_ask_mentions_and_replies_only(telegram):
    plain = telegram.send_text(-500, 102, "Just chatting about dinner", chat_type="group")
    asked = telegram.send_text(-500, 102, f"/ask {TINY_PAIRS[1].prompt}", chat_type="group")
    assert await telegram.wait_for(lambda: texts(telegram, asked)) == [TINY_PAIRS[1].response]
    mention = telegram.send_text(-500, 103, f"@{BOT_USERNAME} {TINY_PAIRS[4].prompt}", chat_type="group")
    assert await telegram.wait_for(lambda: texts(telegram, mention)) == [TINY_PAIRS[4].response]
    bot_message = telegram.replies_to(mention)[0]["message_id"]
    follow_up = telegram.send_text(-500, 104, TINY_PAIRS[3].prompt, chat_type="group", reply_to=bot_message)
    assert await telegram.wait_for(lambda: texts(telegram, follow_up)) == [TINY_PAIRS[3].response]
    assert telegram.replies_to(plain) == []


async def test_start_help_and_empty_ask(telegram):
    start = telegram.send_text(105, 105, "/start")
    assert (await telegram.wait_for(lambda: texts(telegram, start)))[0] == HELP_TEXT
    empty = telegram.send_text(105, 105, "/ask")
    assert (await telegram.wait_for(lambda: texts(telegram, empty)))[0] == HELP_TEXT
    helped = telegram.send_text(ADMIN, ADMIN, "/help")
    assert "/retrain" in (await telegram.wait_for(lambda: texts(telegram, helped)))[0]


async def test_a_question_too_long_gets_the_answer_workers_one_check(telegram, stack):
    """The answer worker checks each question once, wherever it came from; the bot passes on its message."""
    limit = stack.max_question_chars
    long = telegram.send_text(106, 106, "why " * (limit // 4) + "is the sky blue?")
    reply = (await telegram.wait_for(lambda: texts(telegram, long)))[0]
    assert re.fullmatch(rf"Your question is \d+ characters long; please keep it under {limit}\.", reply), reply


async def test_the_command_menus_show_admin_commands_in_admin_chats_only(telegram):
    """setMyCommands at start: everyone's menu has the public commands, the admin's private chat all of them."""
    public = [c.name for c in PUBLIC]
    everyone = json.dumps({"type": "default"}, sort_keys=True)
    admin_chat = json.dumps({"type": "chat", "chat_id": ADMIN}, sort_keys=True)
    menus = await telegram.wait_for(lambda: telegram.menus if admin_chat in telegram.menus else None)
    assert menus[everyone] == public == ["ask", "help"]
    assert menus[admin_chat] == public + [c.name for c in ADMIN_COMMANDS] and "retrain" in menus[admin_chat]
    assert len(menus) == 2  # no other chat has the admin commands
    for command in ADMIN_COMMANDS:  # the menu hides them; the bot still refuses them to everyone else
        asked = telegram.send_text(105, 105, f"/{command.name}")
        assert (await telegram.wait_for(lambda asked=asked: texts(telegram, asked)))[0] == REFUSAL


async def test_long_question_is_refused_and_flood_is_rate_limited(telegram):
    long = telegram.send_text(106, 106, "why " * 200)
    assert "please keep it under 500" in (await telegram.wait_for(lambda: texts(telegram, long)))[0]
    flood = [telegram.send_text(107, 107, TINY_PAIRS[i % 8].prompt) for i in range(7)]
    replies = await telegram.wait_for(lambda: all(texts(telegram, m) for m in flood) and [texts(telegram, m)[0] for m in flood])
    limited = [r for r in replies if r.startswith("You're asking quickly: please try again in")]
    assert len(limited) == 2 and len(replies) == 7


LONG_ANSWER = "The Luminary Stone is guarded by Elara in the Sanctum of Veyra. " * 90


def long_answer_version(store: ModelStore, tiny_llama) -> str:
    """A tiny Llama with a long context that learnt one answer of about 5,800 characters."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.training import TrainConfig, fine_tune
    from qabot.dataset import QAPair

    tokenizer = load_model(str(tiny_llama), device="cpu").tokenizer
    config = AutoConfig.from_pretrained(tiny_llama)
    config.max_position_embeddings = 4096
    model = AutoModelForCausalLM.from_config(config)
    pair = QAPair("Tell me everything about the Stone?", LONG_ANSWER.strip())
    train = TrainConfig(
        epochs=40, learning_rate=3e-3, batch_size=1, max_length=2048, checkpoints=False, eval_questions=0, grounded=False
    )
    model, _ = fine_tune(model, tokenizer, [pair], config=train, run_dir=store.root / "runs" / "long")
    staging = store.staging_dir()
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    return store.commit(staging, {"note": "one long answer"}).name


async def test_a_long_answer_arrives_split(telegram, stack, tiny_llama):
    store = store_of(stack)
    live = store.current_name()
    store.promote(long_answer_version(store, tiny_llama))
    try:
        asked = telegram.send_text(108, 108, "Tell me everything about the Stone?")
        parts = await telegram.wait_for(lambda: texts(telegram, asked), timeout=60)
        with contextlib.suppress(AssertionError):
            await telegram.wait_for(lambda: len(texts(telegram, asked)) >= 2 or None, timeout=5)
        parts = texts(telegram, asked)
        assert len(parts) >= 2 and all(0 < len(p) <= MESSAGE_LIMIT for p in parts), [len(p) for p in parts]
        assert " ".join(parts).startswith(LONG_ANSWER[:500])
    finally:
        store.promote(live)


async def test_non_admin_cannot_retrain_or_administer(telegram, stack):
    before = [v.name for v in store_of(stack).list()]
    for command in ("/retrain", "/addqa Who? | Me.", "/status", "/models", "/rollback"):
        sent = telegram.send_text(109, 109, command)
        assert await telegram.wait_for(lambda sent=sent: texts(telegram, sent)) == [REFUSAL]
    doc = telegram.send_document(109, 109, "data.json", json.dumps([{"prompt": "a?", "response": "b"}]).encode())
    assert await telegram.wait_for(lambda: texts(telegram, doc)) == [REFUSAL]
    assert [v.name for v in store_of(stack).list()] == before
    assert Redis.from_url(stack.redis_url).llen("rq:queue:train") == 0


async def test_a_bad_dataset_gets_its_problems_and_changes_nothing(telegram, stack):
    store = store_of(stack)
    before = (store.current_name(), [v.name for v in store.list()], store.current_dataset())
    bad = json.dumps(
        [{"prompt": "Who guards it?", "response": "Elara."}, {"prompt": "who guards it", "response": "Malvek."}, {"prompt": ""}]
    )
    doc = telegram.send_document(ADMIN, ADMIN, "bad.json", bad.encode())
    (reply,) = await telegram.wait_for(lambda: [t for t in texts(telegram, doc) if "problem" in t], timeout=60)
    assert reply.startswith("That dataset has 3 problem(s); nothing was changed:")
    assert "pair 2, 'who guards it': the same question as pair 1 with a different answer" in reply
    assert "pair 3: missing 'response'" in reply
    assert (store.current_name(), [v.name for v in store.list()], store.current_dataset()) == before
    progress = next(m for m in telegram.replies_to(doc) if m.get("edits"))  # nothing started, so nothing "stopped"
    assert progress["text"] == "Nothing was trained: what is wrong with the file follows."


async def test_hostile_uploads_get_a_clear_reply_and_change_nothing(telegram, stack):
    store = store_of(stack)
    before = (store.current_name(), [v.name for v in store.list()], store.current_dataset())
    hostile = {
        "deep.json": (b"[" * 200_000, "not valid JSON: nested too deeply"),
        "empty.json": (b"[" + b"{}, " * 100_000 + b"{}]", "more than 49 problem(s)"),
        "number.json": (b'[{"prompt": "How many?", "response": ' + b"9" * 5000 + b"}]", "a number with more than"),
    }
    for name, (data, expected) in hostile.items():
        doc = telegram.send_document(ADMIN, ADMIN, name, data)
        (reply,) = await telegram.wait_for(lambda doc=doc: [t for t in texts(telegram, doc) if "problem" in t], timeout=60)
        assert reply.startswith("That dataset has") and expected in reply, reply
    assert (store.current_name(), [v.name for v in store.list()], store.current_dataset()) == before


async def test_admin_retrains_with_an_attached_dataset_and_the_live_model_switches(telegram, stack):
    store = store_of(stack)
    live_before = store.current_name()
    pairs = [{"prompt": p.prompt, "response": p.response} for p in TINY_PAIRS]
    pairs.append({"prompt": "Who forged the Luminary Stone?", "response": "Veyra forged the Stone."})
    doc = telegram.send_document(ADMIN, ADMIN, "eldoria.json", json.dumps(pairs).encode())
    result = await telegram.wait_for(
        lambda: [t for t in texts(telegram, doc) if "Training done" in t or "Training failed" in t], timeout=240
    )
    replies = telegram.replies_to(doc)
    progress = replies[0]
    assert progress["edits"][-1] == "Training finished." and any(e.startswith("Training: epoch") for e in progress["edits"])
    assert len(progress["edits"]) >= 3 and any(e.startswith("Training: epoch") and " left" in e for e in progress["edits"])
    assert result[0].startswith("eldoria.json: 9 pairs; 1 added to the 8 of the dataset (9 pairs).")
    assert "Training done: v0" in result[0] and "is now live" in result[0]
    new_version = store.current_name()
    assert new_version != live_before
    photos = await telegram.wait_for(lambda: [m for m in telegram.replies_to(doc) if "photo" in m])
    assert photos[0]["photo_bytes"][:8] == b"\x89PNG\r\n\x1a\n"
    asked = telegram.send_text(110, 110, "Who forged the Luminary Stone?")
    assert await telegram.wait_for(lambda: texts(telegram, asked), timeout=60) == ["Veyra forged the Stone."]

    listing = telegram.send_text(ADMIN, ADMIN, "/models")
    assert f"{new_version} (live)" in (await telegram.wait_for(lambda: texts(telegram, listing)))[0]
    status = telegram.send_text(ADMIN, ADMIN, "/status")
    report = (await telegram.wait_for(lambda: texts(telegram, status)))[0]
    assert report.startswith(f"Live model: {new_version}, trained just now.") and "Training: none running" in report
    assert "It learnt 9 pairs from eldoria.json (dataset " in report and "No newer dataset is waiting to be trained." in report
    assert "admin 0 waiting, 0 running" in report  # the /status job does not count itself
    back = telegram.send_text(ADMIN, ADMIN, "/rollback")
    assert (await telegram.wait_for(lambda: texts(telegram, back)))[0].startswith(f"Rolled back: {live_before} is live again")
    assert store.current_name() == live_before


async def test_addqa_stores_a_new_dataset_version(telegram, stack):
    store = store_of(stack)
    added = telegram.send_text(ADMIN, ADMIN, "/addqa What do dragons eat? | Dragons eat moonstones.")
    reply = (await telegram.wait_for(lambda: texts(telegram, added)))[0]
    assert reply.startswith("Added 'What do dragons eat?'. The dataset now has")
    assert {"prompt": "What do dragons eat?", "response": "Dragons eat moonstones."} in json.loads(
        store.current_dataset().read_text()
    )
    again = telegram.send_text(ADMIN, ADMIN, "/addqa What do dragons eat? | Gold.")
    assert (await telegram.wait_for(lambda: texts(telegram, again)))[0].startswith("Updated the answer to 'What do dragons eat?'")
    status = telegram.send_text(ADMIN, ADMIN, "/status")
    waiting = (await telegram.wait_for(lambda: texts(telegram, status)))[0]
    changed = rf"Waiting to be trained: \d+ pairs \(dataset \w+\), last changed with /addqa by telegram:{ADMIN} just now;"
    assert re.search(changed, waiting), waiting
    typed = telegram.send_text(ADMIN, ADMIN, "/addqa\nWhat do owls eat? | Mice.")  # a new line after the command
    assert (await telegram.wait_for(lambda: texts(telegram, typed)))[0].startswith("Added 'What do owls eat?'.")
    usage = telegram.send_text(ADMIN, ADMIN, "/addqa no separator")
    assert (await telegram.wait_for(lambda: texts(telegram, usage)))[0] == "Usage: /addqa question | answer"
    marker = telegram.send_text(ADMIN, ADMIN, "/addqa Who rules? | Answer: the queen")
    reply = (await telegram.wait_for(lambda: texts(telegram, marker)))[0]
    assert reply.startswith("That pair has 1 problem(s); nothing was changed") and "starting with 'Answer:'" in reply


async def test_forget_removes_a_pair_and_undo_brings_it_back(telegram, stack):
    store = store_of(stack)
    added = telegram.send_text(ADMIN, ADMIN, "/addqa Who keeps the ferry? | Old Marta keeps the ferry.")
    assert (await telegram.wait_for(lambda: texts(telegram, added)))[0].startswith("Added")
    before = store.current_pairs()
    gone = telegram.send_text(ADMIN, ADMIN, "/forget who keeps the ferry")  # matched as /addqa matches
    reply = (await telegram.wait_for(lambda: texts(telegram, gone)))[0]
    assert reply.startswith("Forgot 'Who keeps the ferry?' (its answer was: Old Marta keeps the ferry.)")
    assert f"now has {len(before) - 1} pairs" in reply
    assert all(p.prompt != "Who keeps the ferry?" for p in store.current_pairs())
    unknown = telegram.send_text(ADMIN, ADMIN, "/forget Who keeps the ferri")
    assert (await telegram.wait_for(lambda: texts(telegram, unknown)))[0] == ("No pair has the question 'Who keeps the ferri'.")
    undone = telegram.send_text(ADMIN, ADMIN, "/undo")
    assert (await telegram.wait_for(lambda: texts(telegram, undone)))[0].startswith("Undid the forget of 'Who keeps the ferry?'")
    assert store.current_pairs() == before
    # each edit is journaled with who made it, where and when (provenance; a rollback replays them)
    forget, undo = store.edits()[-2:]
    assert (forget["action"], forget["platform"], forget["by"]) == ("forget", "telegram", str(ADMIN))
    assert undo["action"] == "undo" and forget["removed"] == [["Who keeps the ferry?", "Old Marta keeps the ferry."]]
    again = telegram.send_text(ADMIN, ADMIN, "/undo")  # then the /addqa itself
    assert "Undid the addqa of 'Who keeps the ferry?'" in (await telegram.wait_for(lambda: texts(telegram, again)))[0]
    assert all(p.prompt != "Who keeps the ferry?" for p in store.current_pairs())


async def test_export_edit_upload_replace_round_trip_changes_exactly_what_was_edited(telegram, stack):
    store = store_of(stack)
    live_before, pairs_before = store.current_name(), store.current_pairs()
    added = telegram.send_text(ADMIN, ADMIN, "/addqa Who bakes the bread? | Hanne bakes the bread.")
    assert (await telegram.wait_for(lambda: texts(telegram, added)))[0].startswith("Added")
    asked = telegram.send_text(ADMIN, ADMIN, "/export")
    sent = (await telegram.wait_for(lambda: telegram.replies_to(asked)))[0]
    assert sent["caption"].startswith(f"The current dataset: {len(store.current_pairs())} pairs")
    rows = json.loads(sent["document_bytes"])
    assert [(r["prompt"], r["response"]) for r in rows] == [(p.prompt, p.response) for p in store.current_pairs()]
    bread = next(r for r in rows if r["prompt"] == "Who bakes the bread?")
    assert (bread["added_with"], bread["added_by"]) == ("addqa", f"telegram:{ADMIN}")  # provenance rides along
    refused = telegram.send_text(105, 105, "/export")
    assert (await telegram.wait_for(lambda: texts(telegram, refused)))[0] == REFUSAL
    # the admin edits one answer and removes one pair, then sends the file back with /retrain replace
    bread["response"] = "Hanne and her son bake the bread."
    edited = [r for r in rows if r["prompt"] != rows[0]["prompt"]]
    expected = [(r["prompt"], r["response"]) for r in edited]
    doc = telegram.send_document(ADMIN, ADMIN, "edited.json", json.dumps(edited).encode(), caption="/retrain replace force")
    await telegram.wait_for(lambda: any("is now live" in t for t in texts(telegram, doc)), timeout=240)
    assert [(p.prompt, p.response) for p in store.current_pairs()] == expected
    # provenance survives the round trip: each row's optional fields come back as they were sent
    asked = telegram.send_text(ADMIN, ADMIN, "/export")
    again = json.loads((await telegram.wait_for(lambda: telegram.replies_to(asked)))[0]["document_bytes"])
    assert again == edited
    # the forced replace is undone by /rollback: the version that was live, its dataset, the admin's /addqa pair kept
    back = telegram.send_text(ADMIN, ADMIN, "/rollback")
    reply = (await telegram.wait_for(lambda: texts(telegram, back)))[0]
    assert reply.startswith(f"Rolled back: {live_before} is live again") and f"({len(pairs_before) + 1} pairs" in reply
    assert store.current_pairs() == [*pairs_before, QAPair("Who bakes the bread?", "Hanne bakes the bread.")]
    asked = telegram.send_text(106, 106, rows[0]["prompt"])  # the pair the replace dropped is answered again
    assert await telegram.wait_for(lambda: texts(telegram, asked), timeout=60) == [rows[0]["response"]]


async def test_eight_admins_adding_at_once_keep_all_eight_pairs(telegram, stack):
    import asyncio

    store = store_of(stack)
    before = len(store.current_pairs())
    sent = [
        telegram.send_text(ADMIN, ADMIN, f"/addqa Which gate is number {i}? | Gate {i} is the gate of {i}.") for i in range(8)
    ]
    replies = await telegram.wait_for(lambda: all(texts(telegram, m) for m in sent) and [texts(telegram, m)[0] for m in sent])
    assert all(r.startswith("Added") for r in replies), replies
    await asyncio.sleep(0.2)
    questions = {p.prompt for p in store.current_pairs()}
    assert {f"Which gate is number {i}?" for i in range(8)} <= questions and len(questions) == before + 8


async def test_workers_down_gives_an_apology_and_the_bot_keeps_running(stack, caplog):
    caplog.set_level(logging.DEBUG)
    fake = FakeTelegram(TOKEN)
    await fake.start()
    idle_db = stack.redis_url.replace("/2", "/3")  # Redis is up but no worker serves this database
    app = await run_bot(stack.model_copy(update={"redis_url": idle_db, "answer_wait": 2}), fake)
    try:
        first = fake.send_text(111, 111, TINY_PAIRS[0].prompt)
        assert await fake.wait_for(lambda: texts(fake, first), timeout=20) == [APOLOGY]
        second = fake.send_text(111, 111, TINY_PAIRS[1].prompt)
        assert await fake.wait_for(lambda: texts(fake, second), timeout=20) == [APOLOGY]
    finally:
        await stop_bot(app)
    dead = FakeTelegram(TOKEN)
    await dead.start()
    app = await run_bot(stack.model_copy(update={"redis_url": f"redis://127.0.0.1:{_free_port()}/0"}), dead)
    try:
        asked = dead.send_text(112, 112, TINY_PAIRS[0].prompt)
        assert await dead.wait_for(lambda: texts(dead, asked), timeout=20) == [APOLOGY]
    finally:
        await stop_bot(app)
        await fake.stop()
        await dead.stop()
    assert TOKEN not in caplog.text and TOKEN.split(":")[1] not in caplog.text


async def test_webhook_mode_rejects_a_wrong_secret(stack):
    fake = FakeTelegram(TOKEN)
    await fake.start()
    core = BotCore(stack)
    app = build_application(stack.model_copy(update={"telegram_api_url": fake.url}), core)
    port = _free_port()
    await app.initialize()
    await app.start()
    await app.updater.start_webhook(
        listen="127.0.0.1",
        port=port,
        url_path="telegram",
        secret_token="right-secret",
        webhook_url=f"http://127.0.0.1:{port}/telegram",
    )
    update = {
        "update_id": 1,
        "message": {
            "message_id": 1,
            "date": 0,
            "chat": {"id": 113, "type": "private"},
            "from": {"id": 113, "is_bot": False, "first_name": "u"},
            "text": TINY_PAIRS[2].prompt,
        },
    }
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/telegram"
            wrong = await session.post(url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "wrong"})
            assert wrong.status == 403
            right = await session.post(url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "right-secret"})
            assert right.status == 200
        assert await fake.wait_for(lambda: texts(fake, 1), timeout=60) == [TINY_PAIRS[2].response]
        assert next(p for m, p in fake.calls if m == "setWebhook")["secret_token"] == "right-secret"
    finally:
        await stop_bot(app)
        await fake.stop()


async def test_an_oversize_upload_is_refused_before_download(stack):
    fake = FakeTelegram(TOKEN)
    await fake.start()
    app = await run_bot(stack.model_copy(update={"upload_max_bytes": 1024}), fake)
    try:
        data = json.dumps([{"prompt": f"Question {i}?", "response": "An answer."} for i in range(60)]).encode()
        doc = fake.send_document(ADMIN, ADMIN, "big.json", data)
        assert await fake.wait_for(lambda: texts(fake, doc)) == [f"big.json is {len(data)} bytes; the limit is 1024."]
        assert "getFile" not in [m for m, _ in fake.calls]
    finally:
        await stop_bot(app)
        await fake.stop()


async def test_an_edited_question_is_not_answered_again(telegram):
    import asyncio

    asked = telegram.send_text(114, 114, TINY_PAIRS[5].prompt)
    assert await telegram.wait_for(lambda: texts(telegram, asked)) == [TINY_PAIRS[5].response]
    telegram.edit_text(asked, TINY_PAIRS[6].prompt)
    await asyncio.sleep(2.0)
    assert texts(telegram, asked) == [TINY_PAIRS[5].response]


async def test_a_rejected_token_is_never_shown_logged_or_saved(stack, tmp_path):
    import asyncio
    import os
    import stat

    fake = FakeTelegram("999:another-token-the-server-knows")  # so the bot's token is rejected with 401
    await fake.start()
    home = tmp_path / "bot-home"
    env = qabot_env(
        {"QABOT_HOME": str(home), "QABOT_TELEGRAM_TOKEN": TOKEN, "QABOT_TELEGRAM_API_URL": fake.url, "QABOT_LOG_LEVEL": "DEBUG"}
    )
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "qabot", "bot", "telegram", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        await fake.stop()
    shown = (out + err).decode()
    assert proc.returncode == 1 and "error:" in shown and "rejected" in shown, shown
    saved = home / "last-error.txt"
    assert stat.S_IMODE(os.stat(saved).st_mode) == 0o600
    for secret in (TOKEN, TOKEN.split(":")[1]):
        assert secret not in shown and secret not in saved.read_text()


async def test_an_outcome_is_delivered_once_by_the_bot_running_when_training_ends(stack):
    """The admin's bot restarts while a fine-tune runs: the next bot to run delivers the result, once."""
    import asyncio

    fake = FakeTelegram(TOKEN)
    await fake.start()
    app = await run_bot(stack, fake)
    try:
        pairs = [{"prompt": "Who carved the Moon Gate?", "response": "Ilsa carved the Moon Gate."}]
        doc = fake.send_document(ADMIN, ADMIN, "gate.json", json.dumps(pairs).encode())
        await fake.wait_for(lambda: texts(fake, doc), timeout=60)  # "Training queued..."
    finally:
        await stop_bot(app)  # the bot goes away mid-training
    client = Redis.from_url(stack.redis_url)
    for _ in range(480):  # the fine-tune goes on without any bot
        if not client.exists("qabot:train:lock"):
            break
        await asyncio.sleep(0.5)
    apps = [await run_bot(stack, fake), await run_bot(stack, fake)]  # two bots start: one delivers
    try:
        final = await fake.wait_for(lambda: [t for t in texts(fake, doc) if "Training done" in t], timeout=60)
        await asyncio.sleep(2.0)
        assert len([t for t in texts(fake, doc) if "Training done" in t]) == 1
        assert final[0].startswith("gate.json: 1 pairs; 1 added")
        photos = [m for m in fake.sent.values() if "photo" in m and m["chat"]["id"] == ADMIN]
        assert len(photos) == 1 and photos[0]["photo_bytes"][:4] == b"\x89PNG"
    finally:
        for each in apps:
            await stop_bot(each)
        await fake.stop()


async def test_an_outcome_the_platform_fails_to_take_is_sent_again_by_the_delivery_loop(stack):
    """Telegram refuses the message that carries a fine-tune's result (a 500): the result is not lost, the delivery
    loop sends it on a later round, once."""
    import asyncio

    fake = FakeTelegram(TOKEN)
    await fake.start()
    refused: list[str] = []

    def result_message(method: str, params: dict) -> bool:
        refused.extend([params.get("text", "")] if "Training done" in str(params.get("text", "")) else [])
        return bool(refused)

    fake.fail_once = result_message
    app = await run_bot(stack, fake)
    try:
        pairs = [{"prompt": "Who painted the Moon Gate?", "response": "Orla painted the Moon Gate."}]
        doc = fake.send_document(ADMIN, ADMIN, "paint.json", json.dumps(pairs).encode())
        final = await fake.wait_for(lambda: [t for t in texts(fake, doc) if "Training done" in t], timeout=240)
        await asyncio.sleep(2.0)  # the delivery loop polls every 0.5 s here: a second copy would have come
        assert refused and final[0] == refused[0] and len([t for t in texts(fake, doc) if "Training done" in t]) == 1
        assert final[0].startswith("paint.json: 1 pairs; 1 added")
    finally:
        await stop_bot(app)
        await fake.stop()


def test_the_bot_runs_on_a_host_without_the_engine(stack):
    """Questions and admin commands through a bot process that cannot import engine, torch or transformers."""
    env = qabot_env({"QABOT_REDIS_URL": stack.redis_url, "QABOT_TELEGRAM_TOKEN": TOKEN, "QABOT_TELEGRAM_ADMINS": str(ADMIN)})
    result = subprocess.run([sys.executable, "-m", "tests.bot_host"], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0 and "bot host ok" in result.stdout, result.stderr[-3000:]
