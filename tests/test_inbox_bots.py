"""The unanswered inbox end to end: real answer and admin workers, the real Telegram and Discord libraries against
the fake servers, the CLI. A grounded tiny model declines questions about names its data never mentions."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis import Redis

from bots.core import REFUSAL
from bots.feedback import ALREADY_REPORTED, HOW_TO_FLAG
from bots.render import PASSED_ON, REPORTED, render_notice
from bots.telegram_admin import NO_PRIVATE_CHAT, SENT_PRIVATELY
from bots.telegram_bot import NOT_AN_ANSWER
from engine.versions import ModelStore
from qabot import inbox
from qabot.questions import clean_question
from qabot.settings import Settings
from qabot.shapes import InboxKind
from tests.conftest import TINY_PAIRS, qabot_env, qabot_workers, release_tiny, write_pairs
from tests.fake_discord import ADMIN_ROLE_ID, CHANNEL_ID, FakeDiscord, discord_bot_on_fake
from tests.fake_telegram import FakeTelegram
from tests.test_telegram import run_bot, stop_bot, texts

TOKEN = "123456:TEST-secret-token-never-logged"
DISCORD_TOKEN = "discord-secret-token-never-logged"
ADMIN = 4242
DISCORD_ADMIN = 5151


@dataclass
class Stack:
    settings: Settings  # the bots' (no store)
    store: ModelStore  # the workers' (the tests look at it)
    env: dict[str, str]  # for `qabot` commands
    plain: str  # a plain version that answers the tiny world's questions
    grounded: str  # a grounded version: it declines names its data never mentions


@pytest.fixture(scope="module")
def stack(trained_tiny, tiny_gpt2, redis_server, tmp_path_factory):
    """A store with the plain tiny model and a grounded one (live), an answer worker and an admin worker."""
    store, _ = trained_tiny
    home = tmp_path_factory.mktemp("inbox-home")
    shutil.copytree(store.root, home / "models")
    models = ModelStore(home / "models")
    plain = models.current_name()
    data = write_pairs(home / "tiny.json", TINY_PAIRS)
    grounded = release_tiny(models, data, tiny_gpt2, home / "cache", grounded=True, epochs=1).version.name
    models.promote(grounded)
    url = redis_server.replace("/0", "/4")
    Redis.from_url(url).flushdb()
    env = qabot_env({"QABOT_HOME": str(home), "QABOT_REDIS_URL": url, "QABOT_DEVICE": "cpu", "QABOT_MAX_NEW_TOKENS": "24"})
    settings = Settings(
        home=home / "bot-has-no-store",
        redis_url=url,
        telegram_token=TOKEN,
        telegram_admins=[ADMIN],
        discord_token=DISCORD_TOKEN,
        discord_admins=[DISCORD_ADMIN],
        discord_admin_roles=[int(ADMIN_ROLE_ID)],
        answer_wait=60,
        admin_wait=30,
    )
    with qabot_workers(env, home, ("answer", "admin"), ready=True):
        yield Stack(settings, models, env, plain, grounded)


@pytest.fixture
def redis(stack) -> Redis:
    """The stack's Redis with an empty inbox (the workers' own keys stay)."""
    connection = Redis.from_url(stack.settings.redis_url)
    for pattern in ("qabot:inbox:*", "qabot:notify:*", "qabot:sent:*", "qabot:reported:*"):
        for key in connection.scan_iter(pattern):
            connection.delete(key)
    return connection


@pytest.fixture
async def telegram(stack):
    fake = FakeTelegram(TOKEN)
    await fake.start()
    app = await run_bot(stack.settings, fake)
    yield fake
    await stop_bot(app)
    await fake.stop()


@pytest.fixture
async def discord_fake(stack, monkeypatch):
    async with discord_bot_on_fake(stack.settings, monkeypatch) as fake:
        yield fake


@contextlib.contextmanager
def live(stack: Stack, version: str):
    """Make `version` live for a while (the answer worker switches before its next batch)."""
    before = stack.store.current_name()
    stack.store.promote(version)
    try:
        yield
    finally:
        stack.store.promote(before)


async def say(fake: FakeTelegram, chat: int, user: int, text: str, **options) -> str:
    """A Telegram message and the bot's (first) reply to it."""
    sent = fake.send_text(chat, user, text, **options)
    return (await fake.wait_for(lambda: texts(fake, sent), timeout=60))[0]


async def slash(fake: FakeDiscord, user: int, name: str, options: dict | None = None, **extra) -> str:
    """A Discord slash command and the bot's (first) answer to it."""
    token = await fake.slash(user, name, options, **extra)
    return (await fake.wait_for(lambda: [m["content"] for m in fake.followups(token)], timeout=60))[0]


def notices(fake: FakeTelegram, chat: int) -> list[str]:
    return [m["text"] for m in fake.sent.values() if m["chat"]["id"] == chat and m.get("text", "").startswith("An admin")]


def open_items(redis: Redis):
    return inbox.open_items(redis)[0]


async def test_declined_questions_reach_the_inbox_once_and_an_admin_answers_them_on_telegram(stack, redis, telegram):
    declined = f"{stack.settings.decline_text} {PASSED_ON}"
    question = "Who rules the kingdom of Zarnak?"
    assert await say(telegram, 201, 201, question) == declined
    assert await say(telegram, -700, 202, "/ask Who  rules the kingdom of Zarnak", chat_type="group") == declined
    assert await say(telegram, 201, 201, "WHO RULES the kingdom of Zarnak!") == declined
    (item,) = open_items(redis)
    assert (item.text, item.count, item.kind) == (question, 3, InboxKind.DECLINED)
    assert {(p.platform, p.chat) for p in item.places} == {("telegram", "201"), ("telegram", "-700")}
    stored = [v.decode() for v in redis.hgetall(inbox.PREFIX + item.id).values()]
    # who asked in the group is not kept (as a number of its own: timestamps may hold the digits 202)
    assert not any(re.search(r"(?<![\d.])202(?![\d.])", value) for value in stored), stored

    for command in ("/unanswered", f"/answer {item.id} Queen Mira rules it.", f"/dismiss {item.id}"):
        assert await say(telegram, 203, 203, command) == REFUSAL
    assert open_items(redis) == [item]

    listing = await say(telegram, ADMIN, ADMIN, "/unanswered")
    assert listing.startswith("Unanswered questions: 1 open") and f'{item.id}: "{question}", asked 3 times' in listing
    assert "Unanswered questions: 1; /unanswered lists them." in await say(telegram, ADMIN, ADMIN, "/status")
    pairs_before = len(stack.store.current_pairs())
    bad = await say(telegram, ADMIN, ADMIN, f"/answer {item.id} Queen Mira.\nQuestion: and who else?")
    assert bad.startswith("That answer has 1 problem(s); nothing was changed") and "stays open" in bad
    assert open_items(redis)[0].count == 3 and len(stack.store.current_pairs()) == pairs_before
    unknown = await say(telegram, ADMIN, ADMIN, "/answer ffffff Someone.")
    assert unknown == "No open question has the id 'ffffff'; /unanswered lists them."

    done = await say(telegram, ADMIN, ADMIN, f"/answer {item.id.upper()} Queen Mira rules Zarnak.")
    assert done.startswith(f"Added '{question}'") and "The question is closed" in done and "2 chat(s)" in done
    expected = render_notice(question, "Queen Mira rules Zarnak.")
    for chat in (201, -700):
        assert await telegram.wait_for(lambda chat=chat: notices(telegram, chat)) == [expected]
    assert open_items(redis) == [] and (await say(telegram, ADMIN, ADMIN, "/unanswered")).endswith("the inbox is empty.")
    assert "Unanswered questions" not in await say(telegram, ADMIN, ADMIN, "/status")
    assert any(p.prompt == question and p.response == "Queen Mira rules Zarnak." for p in stack.store.current_pairs())
    # The answer worker takes the new dataset's notes before its next batch: the pair is found at once.
    from worker.client import QueueClient

    again = await QueueClient(stack.settings).ask("Who rules the kingdom of Zarnak?", timeout=60)
    assert again.details["sources"][0] == question
    await asyncio.sleep(1.0)
    assert notices(telegram, 201) == [expected]  # delivered once


async def test_a_broken_inbox_never_fails_an_answer(stack, redis, telegram):
    redis.set(inbox.OPEN, "not a sorted set")  # every record now fails (WRONGTYPE)
    try:
        assert await say(telegram, 205, 205, "Who rules the kingdom of Vossmark?") == stack.settings.decline_text
    finally:
        redis.delete(inbox.OPEN)
    assert await say(telegram, 205, 205, "Who rules the kingdom of Vossmark?") == f"{stack.settings.decline_text} {PASSED_ON}"


async def test_discord_admins_list_refuse_and_dismiss(stack, redis, discord_fake):
    declined = f"{stack.settings.decline_text} {PASSED_ON}"
    assert await slash(discord_fake, 401, "ask", {"question": "Where does the Quorvath fleet sail?"}) == declined
    assert {"unanswered", "answer", "dismiss"} <= {c["name"] for c in discord_fake.commands}
    (item,) = open_items(redis)
    for name, options in (("unanswered", {}), ("answer", {"id": item.id, "answer": "North."}), ("dismiss", {"id": item.id})):
        assert await slash(discord_fake, 402, name, options) == REFUSAL
    assert open_items(redis) == [item]
    listing = await slash(discord_fake, 403, "unanswered", roles=[ADMIN_ROLE_ID])
    assert f'{item.id}: "Where does the Quorvath fleet sail?", asked once' in listing
    too_long = await slash(discord_fake, DISCORD_ADMIN, "answer", {"id": item.id, "answer": "It sails north. " * 100})
    assert too_long.startswith("That answer has 1 problem(s); nothing was changed") and "stays open" in too_long
    assert "tokens, over the" in too_long and "shorten the answer by about" in too_long and "pair 1" not in too_long
    assert open_items(redis) == [item]
    dismissed = await slash(discord_fake, DISCORD_ADMIN, "dismiss", {"id": item.id})
    assert dismissed.startswith('Dismissed "Where does the Quorvath fleet sail?"')
    assert open_items(redis) == []
    # Asked again soon after: still declined, not passed on again (an admin chose to drop it).
    again = await slash(discord_fake, 404, "ask", {"question": "Where does the Quorvath fleet sail?"})
    assert again == stack.settings.decline_text and open_items(redis) == []


async def test_an_answer_reaches_the_askers_on_the_other_platform(stack, redis, telegram, discord_fake):
    declined = f"{stack.settings.decline_text} {PASSED_ON}"
    question = "Who forged the crown of Belmuth?"
    assert await say(telegram, 301, 301, question) == declined
    asked = await discord_fake.say(302, question.removesuffix("?"), mention=True)
    assert await discord_fake.wait_for(lambda: discord_fake.replies_to(asked), timeout=60) == [declined]
    other = "Who sings in the halls of Tervane?"
    assert await say(telegram, 303, 303, other) == declined
    items = {i.text: i for i in open_items(redis)}
    assert items[question].count == 2 and set(items) == {question, other}

    # Through the CLI: list, an unknown id, then the answer; both platforms' chats get it.
    listing = await asyncio.to_thread(run_qabot, stack, "inbox", "list")
    assert listing.returncode == 0 and f'{items[question].id}: "{question}", asked 2 times' in listing.stdout
    assert "qabot inbox answer ID" in listing.stdout
    missing = await asyncio.to_thread(run_qabot, stack, "inbox", "dismiss", "abcdef")
    assert missing.returncode == 1 and "No open question has the id 'abcdef'; qabot inbox list lists them." in missing.stdout
    answered = await asyncio.to_thread(run_qabot, stack, "inbox", "answer", items[question].id, "The smith Oda forged it.")
    assert answered.returncode == 0 and f"Added '{question}'" in answered.stdout, answered.stderr
    expected = render_notice(question, "The smith Oda forged it.")
    assert await telegram.wait_for(lambda: notices(telegram, 301)) == [expected]
    posted = await discord_fake.wait_for(lambda: [m for m in discord_fake.messages.values() if m["content"] == expected])
    assert posted[0]["channel_id"] == CHANNEL_ID
    body = next(b for m, p, b in discord_fake.calls if m == "POST" and b and b.get("content") == expected)
    assert body["allowed_mentions"]["parse"] == []

    # Asked on Telegram, answered on Discord: the Telegram chat gets it.
    done = await slash(discord_fake, DISCORD_ADMIN, "answer", {"id": items[other].id, "answer": "The choir of Tervane."})
    assert done.startswith(f"Added '{other}'") and "1 chat(s)" in done
    assert await telegram.wait_for(lambda: notices(telegram, 303)) == [render_notice(other, "The choir of Tervane.")]
    assert open_items(redis) == []


async def test_two_bots_of_one_platform_post_an_answer_once(stack, redis):
    fake = FakeTelegram(TOKEN)
    await fake.start()
    apps = [await run_bot(stack.settings, fake), await run_bot(stack.settings, fake)]
    try:
        recorded = inbox.record(redis, "Who keeps the Ember Vault?", place=("telegram", "901"))
        inbox.record(redis, "Who keeps the Ember Vault?", place=("telegram", "902"))
        answered = await asyncio.to_thread(run_qabot, stack, "inbox", "answer", recorded.id, "Warden", "Hale", "keeps", "it.")
        assert answered.returncode == 0, answered.stdout + answered.stderr
        for chat in (901, 902):
            await fake.wait_for(lambda chat=chat: notices(fake, chat))
        await asyncio.sleep(1.5)  # both bots polled several times meanwhile
        assert len(notices(fake, 901)) == 1 and len(notices(fake, 902)) == 1
    finally:
        for app in apps:
            await stop_bot(app)
        await fake.stop()


async def test_people_flag_wrong_answers_on_both_platforms(stack, redis, telegram, discord_fake):
    with live(stack, stack.plain):
        question, answer = TINY_PAIRS[0].prompt, TINY_PAIRS[0].response
        asked = telegram.send_text(-800, 501, f"/ask {question}", chat_type="group")
        assert await telegram.wait_for(lambda: texts(telegram, asked), timeout=60) == [answer]
        bot_answer = telegram.replies_to(asked)[0]["message_id"]
        # the bot remembers an answer right after sending it; on a loaded machine that can lag the reply itself
        await telegram.wait_for(lambda: inbox.recall_answer(redis, "telegram", "-800", str(bot_answer)))
        assert await say(telegram, -800, 502, "Wrong!", chat_type="group", reply_to=bot_answer) == REPORTED
        (item,) = open_items(redis)
        # a flag is counted as a flag, not as an asking (the question was answered, never declined)
        assert (item.text, item.kind, item.answer, item.count, item.flags) == (question, InboxKind.WRONG, answer, 0, 1)
        assert [(p.platform, p.chat) for p in item.places] == [("telegram", "-800")]
        assert await say(telegram, -800, 502, "wrong", chat_type="group", reply_to=bot_answer) == ALREADY_REPORTED
        assert await say(telegram, -800, 503, "WRONG.", chat_type="group", reply_to=bot_answer) == REPORTED
        assert open_items(redis)[0].flags == 2
        flag = telegram.send_text(-800, 503, "wrong", chat_type="group", reply_to=bot_answer)
        ack = (await telegram.wait_for(lambda: telegram.replies_to(flag)))[0]["message_id"]  # a bot message, no answer
        assert await say(telegram, -800, 504, "wrong", chat_type="group", reply_to=ack) == NOT_AN_ANSWER
        # "wrong" replying to nothing (a private chat takes any text as a question) flags nothing and asks nothing
        assert await say(telegram, 505, 505, "Wrong!") == HOW_TO_FLAG
        assert [i.text for i in open_items(redis)] == [question]

        said = await discord_fake.say(601, TINY_PAIRS[4].prompt, mention=True)
        assert await discord_fake.wait_for(lambda: discord_fake.replies_to(said), timeout=60) == [TINY_PAIRS[4].response]
        reply_id = next(
            m["id"] for m in discord_fake.messages.values() if str((m.get("message_reference") or {}).get("message_id")) == said
        )
        bare = await discord_fake.say(604, "wrong", mention=True)
        (how,) = await discord_fake.wait_for(lambda: discord_fake.replies_to(bare), timeout=60)
        assert how.startswith("To tell the admins one of my answers was wrong, react to that answer with")
        await discord_fake.react(602, reply_id, "\N{THUMBS UP SIGN}")  # not a complaint
        await discord_fake.react(602, reply_id)
        assert await discord_fake.wait_for(lambda: discord_fake.replies_to(reply_id)) == [REPORTED]
        await discord_fake.react(603, reply_id, "\N{THUMBS DOWN SIGN}\N{EMOJI MODIFIER FITZPATRICK TYPE-4}")
        await discord_fake.wait_for(lambda: any(i.flags == 2 for i in open_items(redis)) or None)
        await asyncio.sleep(0.5)
        assert discord_fake.replies_to(reply_id) == [REPORTED]  # acknowledged once under the answer
        flagged = next(i for i in open_items(redis) if i.text == TINY_PAIRS[4].prompt)
        assert (flagged.kind, flagged.answer, flagged.flags) == (InboxKind.WRONG, TINY_PAIRS[4].response, 2)
        listing = await say(telegram, ADMIN, ADMIN, "/unanswered")
        assert f'flagged wrong 2 times, last just now; the answer was "{TINY_PAIRS[4].response}"' in listing


async def test_a_flagged_question_is_kept_as_the_worker_read_it_so_an_admin_can_answer_it(stack, redis, telegram):
    """A question written with the prompt's own marker ("Question: ...") is answered as cleaned; flagged, it reaches
    the inbox in that cleaned form, which /answer can add (the raw text was refused by the validator for ever)."""
    with live(stack, stack.plain):
        written = f"Question: {TINY_PAIRS[2].prompt}"
        asked = telegram.send_text(-830, 531, f"/ask {written}", chat_type="group")
        await telegram.wait_for(lambda: texts(telegram, asked), timeout=60)
        bot_answer = telegram.replies_to(asked)[0]["message_id"]
        await telegram.wait_for(lambda: inbox.recall_answer(redis, "telegram", "-830", str(bot_answer)))
        assert await say(telegram, -830, 532, "wrong", chat_type="group", reply_to=bot_answer) == REPORTED
        (item,) = open_items(redis)
        assert item.text == clean_question(written) != written
        done = await say(telegram, ADMIN, ADMIN, f"/answer {item.id} Cleaned questions are kept.")
        assert done.startswith(f"Added '{clean_question(written)}'"), done


SUBJECTS = ("the Ember Vault", "the Glass Sea", "Mount Orrow", "the Salt Road", "the Iron Choir", "the Moon Wells")
SUBJECTS += ("Harrow Keep", "the Red Fens", "the Bone Bridge", "Lake Tessaly", "the Ninth Gate")
FLEET, SHIPS = "Where does the Quorvath fleet sail?", "Where do the Quorvath ships sail?"
WHEN = "When does the Quorvath fleet sail?"


def private(fake: FakeTelegram, chat: int, start: str) -> list[str]:
    """Bot messages in a private chat that begin with `start` (sent there, not as a reply in the group)."""
    return [m["text"] for m in fake.sent.values() if m["chat"]["id"] == chat and m.get("text", "").startswith(start)]


async def test_a_long_inbox_pages_groups_wordings_and_reaches_the_admin_privately(stack, redis, telegram, discord_fake):
    """/unanswered pages by 10; the same question in other words is one entry (worker.lookup), and answering it tells
    every wording's chats; the list quotes people, so it goes to the admin's private chat, never to the group."""
    for n, subject in enumerate(SUBJECTS):
        inbox.record(redis, f"Who built {subject}?", place=("telegram", str(-910 - n)))
        inbox.record(redis, f"How deep is {subject}?", place=("telegram", str(-930 - n)))
    for _ in range(3):
        inbox.record(redis, FLEET, place=("telegram", "-901"))
    inbox.record(redis, SHIPS, place=("telegram", "-902"))
    inbox.record(redis, WHEN, place=("telegram", "-903"))  # close in words, another question: never merged
    ids = {i.text: i.id for i in open_items(redis)}

    telegram.unreachable.add(ADMIN)  # the admin never opened a private chat with the bot: nothing leaks to the group
    assert await say(telegram, -950, ADMIN, "/unanswered", chat_type="group") == NO_PRIVATE_CHAT
    telegram.unreachable.clear()
    assert await say(telegram, -950, ADMIN, "/unanswered", chat_type="group") == SENT_PRIVATELY
    (first,) = await telegram.wait_for(lambda: private(telegram, ADMIN, "Unanswered questions"))
    lines = first.splitlines()
    assert lines[0] == "Unanswered questions: 25 open, most asked first, page 1 of 3:"
    assert lines[1].startswith(f'{ids[FLEET]}: "{FLEET}", asked 4 times, last just now; also asked as "{SHIPS}" ({ids[SHIPS]})')
    assert len(lines) == 1 + 10 + 2 and lines[-1] == "Next page: /unanswered 2."
    assert not any(FLEET in t for t in texts_in(telegram, -950))
    last = await say(telegram, ADMIN, ADMIN, "/unanswered 3")
    assert last.splitlines()[0].endswith("page 3 of 3:") and last.splitlines()[-1] == "Previous page: /unanswered 2."
    assert len(last.splitlines()) == 1 + 4 + 2 and f'also asked as "{WHEN}"' not in first + last  # not FLEET's wording
    assert (await say(telegram, ADMIN, ADMIN, "/unanswered two")).startswith("Usage: /unanswered [page]")

    # Discord: the page option, and the reply is ephemeral (flag 64): only the admin sees it.
    token = await discord_fake.slash(DISCORD_ADMIN, "unanswered", {"page": 2})
    (reply,) = await discord_fake.wait_for(lambda: discord_fake.followups(token), timeout=60)
    assert "page 2 of 3" in reply["content"] and reply["flags"] & 64

    done = await say(telegram, ADMIN, ADMIN, f"/answer {ids[FLEET]} They sail north to the Ice Reach.")
    assert "The question is closed with its 1 other wording(s)" in done and "2 chat(s)" in done
    for chat in (-901, -902):
        assert await telegram.wait_for(lambda chat=chat: notices(telegram, chat))
    remaining = {i.text for i in open_items(redis)}
    assert FLEET not in remaining and SHIPS not in remaining and WHEN in remaining and len(remaining) == 23
    assert notices(telegram, -903) == []


def texts_in(fake: FakeTelegram, chat: int) -> list[str]:
    return [m.get("text", "") for m in fake.sent.values() if m["chat"]["id"] == chat]


async def test_admins_find_pairs_and_forget_one_by_number(stack, redis, telegram, discord_fake):
    """/find lists the nearest pairs with their numbers and origin, privately; /forget takes a number; /undo restores."""
    before = stack.store.current_pairs()
    assert await say(telegram, 203, 203, "/find Elara") == REFUSAL
    assert await slash(discord_fake, 402, "find", {"query": "Elara"}) == REFUSAL
    number = before.index(TINY_PAIRS[3]) + 1
    found = (await say(telegram, ADMIN, ADMIN, "/find who taught elara")).splitlines()
    assert found[0] == f'The 5 pairs nearest to "who taught elara", of {len(before)}:'
    assert found[1].startswith(f'#{number} "{TINY_PAIRS[3].prompt}" → {TINY_PAIRS[3].response} (similarity 0.')
    assert "from tiny.json" in found[1] and found[-1].startswith("/forget <number> removes a pair")
    token = await discord_fake.slash(DISCORD_ADMIN, "find", {"query": "who taught elara"})
    (reply,) = await discord_fake.wait_for(lambda: discord_fake.followups(token), timeout=60)
    assert reply["flags"] & 64 and f"#{number} " in reply["content"]

    gone = await say(telegram, ADMIN, ADMIN, f"/forget {number}")
    assert gone.startswith(f"Forgot '{TINY_PAIRS[3].prompt}'") and TINY_PAIRS[3] not in stack.store.current_pairs()
    out_of_range = f"Nothing was forgotten: the dataset has pairs 1 to {len(before) - 1}; /find shows numbers."
    assert await say(telegram, ADMIN, ADMIN, "/forget 99") == out_of_range
    assert (await slash(discord_fake, DISCORD_ADMIN, "undo")).startswith(f"Undid the forget of '{TINY_PAIRS[3].prompt}'")
    assert sorted(stack.store.current_pairs(), key=before.index) == before


def run_qabot(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qabot", *args], env=stack.env, capture_output=True, text=True, timeout=120, cwd=Path.cwd()
    )
