"""The unanswered inbox in a real Redis: counting, bounds, ids, concurrent workers, answers to deliver."""

from __future__ import annotations

import hashlib
import threading

from redis import Redis

from qabot import inbox, notices
from qabot.dataset import normalize_question
from qabot.shapes import InboxKind, Place


def test_a_question_is_counted_once_however_it_is_written(redis_url):
    r = Redis.from_url(redis_url)
    first = inbox.record(r, "Who rules  the kingdom of Zarnak?", place=("telegram", "-100"), now=1000.0)
    for text, place, now in [
        ("who rules the kingdom of zarnak", ("discord", "700000000000000004"), 1010.0),
        ("WHO RULES THE KINGDOM OF ZARNAK!!", ("telegram", "-100"), 1020.0),
        ("Who rules the kingdom of Zarnak ?", None, 1030.0),  # asked from the CLI: no chat
    ]:
        assert inbox.record(r, text, place=place, now=now).id == first.id
    items, total = inbox.open_items(r)
    assert total == 1
    (item,) = items
    assert (item.text, item.count, item.first_asked, item.last_asked) == ("Who rules the kingdom of Zarnak?", 4, 1000.0, 1030.0)
    assert item.places == (Place("telegram", "-100", 1020.0), Place("discord", "700000000000000004", 1010.0))
    assert item.kind == InboxKind.DECLINED and item.answer is None
    assert inbox.get(r, f"#{item.id.upper()} ") == item  # as an admin may type it
    assert inbox.get(r, "nothex") is None and inbox.get(r, "") is None


def test_a_question_keeps_its_most_recent_chats_only(redis_url):
    r = Redis.from_url(redis_url)
    for chat in range(inbox.MAX_PLACES + 5):
        inbox.record(r, "Where is Quorvath?", place=("telegram", str(chat)), now=1000.0 + chat)
    (item,), _ = inbox.open_items(r)
    assert len(item.places) == inbox.MAX_PLACES and item.places[0].chat == str(inbox.MAX_PLACES + 4)


def test_a_full_inbox_drops_the_least_recently_asked(redis_url):
    r = Redis.from_url(redis_url)
    for n, text in enumerate(["Who is Ana?", "Who is Bo?", "Who is Cy?"]):
        inbox.record(r, text, size=3, now=1000.0 + n)
    inbox.record(r, "who is ana", size=3, now=1100.0)  # asked again: now the most recent
    inbox.record(r, "Who is Dee?", size=3, now=1200.0)
    items, total = inbox.open_items(r)
    assert total == 3 and sorted(i.text for i in items) == ["Who is Ana?", "Who is Cy?", "Who is Dee?"]
    assert not r.exists(inbox.PREFIX + inbox.inbox_id("Who is Bo?"))  # its record went with it
    assert items[0].text == "Who is Ana?"  # most asked first


def test_a_new_question_enters_an_inbox_full_of_questions_asked_more_often(redis_url):
    r = Redis.from_url(redis_url)
    for n, text in enumerate(["Who is Ana?", "Who is Bo?", "Who is Cy?"] * 2):
        inbox.record(r, text, size=3, now=1000.0 + n)
    first = inbox.record(r, "Who is Dee?", size=3, now=1100.0)
    assert first.open and first.count == 1  # the asker hears it was passed on: it was
    assert inbox.record(r, "Who is Dee?", size=3, now=1200.0).count == 2  # and it counts up from there
    items, total = inbox.open_items(r)
    assert total == 3 and sorted(i.text for i in items) == ["Who is Bo?", "Who is Cy?", "Who is Dee?"]


def test_one_off_junk_never_flushes_a_question_many_people_asked(redis_url):
    """The audit's case: a question asked 50 times was evicted after about 485 one-off questions."""
    r = Redis.from_url(redis_url)
    for n in range(50):
        inbox.record(r, "When is the next tournament?", place=("telegram", str(n)), now=1000.0 + n)
    for n in range(600):  # from many chats, so the per-chat share does not catch them first
        inbox.record(r, f"junk question number {n}?", place=("discord", f"c{n % 60}"), size=500, now=2000.0 + n)
    items, total = inbox.open_items(r)
    assert total == 500 and items[0].text == "When is the next tournament?" and items[0].count == 50


def test_one_chat_cannot_fill_the_inbox(redis_url):
    r = Redis.from_url(redis_url)
    inbox.record(r, "Who runs the raffle?", place=("telegram", "1"), size=100, now=1000.0)
    for n in range(300):
        inbox.record(r, f"spam {n}?", place=("telegram", "666"), size=100, now=2000.0 + n)
    items, total = inbox.open_items(r)
    spam = [i.text for i in items if i.text.startswith("spam")]
    assert len(spam) == 10 and spam[-1] == "spam 290?"  # its newest tenth of the inbox stays
    assert "Who runs the raffle?" in [i.text for i in items] and total == 11


def test_two_workers_recording_at_once_count_every_asking(redis_url):
    def ask(times: int) -> None:
        own = Redis.from_url(redis_url)
        for _ in range(times):
            inbox.record(own, "Who guards the north gate?", place=("discord", "1"))

    threads = [threading.Thread(target=ask, args=(50,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (item,), total = inbox.open_items(Redis.from_url(redis_url))
    assert total == 1 and item.count == 200


def test_ids_grow_longer_when_two_questions_share_a_prefix(redis_url):
    seen: dict[str, str] = {}
    n = 0
    while True:  # about 4,000 tries find two questions whose hashes share 6 hex digits
        text = f"What is rune {n}?"
        prefix = hashlib.sha1(normalize_question(text).encode()).hexdigest()[:6]
        if prefix in seen:
            break
        seen[prefix] = text
        n += 1
    r = Redis.from_url(redis_url)
    one, two = inbox.record(r, seen[prefix]), inbox.record(r, text)
    assert one.id == prefix and two.id.startswith(prefix) and len(two.id) == 8
    assert inbox.get(r, one.id).text == seen[prefix] and inbox.get(r, two.id).text == text


def test_wrong_reports_keep_the_answer_and_dismissed_questions_stay_closed(redis_url):
    r = Redis.from_url(redis_url)
    inbox.record(r, "Who guards the Luminary Stone?", place=("telegram", "5"))
    wrong = inbox.record(r, "Who guards the Luminary Stone?", kind=InboxKind.WRONG, answer="Malvek.", place=("telegram", "5"))
    item = inbox.get(r, wrong.id)
    # asked once and flagged once: "asked once", not "asked 2 times" (the audit's case)
    assert (item.kind, item.answer, item.count, item.flags, len(item.places)) == (InboxKind.WRONG, "Malvek.", 1, 1, 1)
    assert inbox.close(r, wrong.id, dismissed=True) and not inbox.close(r, wrong.id)
    again = inbox.record(r, "who guards the luminary stone")
    assert not again.open and inbox.get(r, wrong.id) is None and inbox.open_items(r) == ([], 0)
    assert 0 < r.ttl(inbox.PREFIX + wrong.id) <= inbox.DISMISSED_KEEP_S


def test_notices_are_taken_once_and_put_back_a_few_times(redis_url):
    r = Redis.from_url(redis_url)
    notices.push_notices(
        r, "Who?", "Ana.", [Place("telegram", "1", 0.0), Place("discord", "2", 0.0), Place("telegram", "3", 0.0)]
    )
    taken = notices.pop_notices(r, "telegram")
    assert [n.chat for n in taken] == ["1", "3"] and notices.pop_notices(r, "telegram") == []
    notice = taken[0]
    for _ in range(notices.NOTIFY_TRIES - 1):
        assert notices.retry_notice(r, "telegram", notice)
        (notice,) = notices.pop_notices(r, "telegram")
    assert not notices.retry_notice(r, "telegram", notice) and notices.pop_notices(r, "telegram") == []
    assert [n.chat for n in notices.pop_notices(r, "discord")] == ["2"]


def test_an_answer_can_be_flagged_once_per_person_whichever_of_its_messages_they_flag(redis_url):
    r = Redis.from_url(redis_url)
    inbox.remember_answer(r, "telegram", "9", ["11", "12"], "Who?", "Ana.")
    assert inbox.recall_answer(r, "telegram", "9", "12") == ("Who?", "Ana.")
    assert inbox.recall_answer(r, "telegram", "9", "13") is None
    assert inbox.count_report(r, "telegram", "9", "11", "tg:1") == 1
    assert inbox.count_report(r, "telegram", "9", "11", "tg:1") == 0
    assert inbox.count_report(r, "telegram", "9", "11", "tg:2") == 2
    inbox.uncount_report(r, "telegram", "9", "11", "tg:2")
    assert inbox.count_report(r, "telegram", "9", "11", "tg:2") == 2
    # a long answer split over two messages is one answer: its second part flags the same answer
    assert inbox.count_report(r, "telegram", "9", "12", "tg:1") == 0
    assert inbox.count_report(r, "telegram", "9", "12", "tg:3") == 3
    inbox.uncount_report(r, "telegram", "9", "12", "tg:3")
    assert inbox.count_report(r, "telegram", "9", "11", "tg:3") == 3
    stored = b" ".join(k + b" " + (r.get(k) or b"") if r.type(k) == b"string" else k for k in r.keys("qabot:*"))
    assert b"tg:1" not in stored and b"tg:2" not in stored  # who reported is kept as a hash only


def test_user_text_in_the_inbox_and_notices_shows_literally_on_discord(redis_url):
    """The audit's case: a masked link in a question rendered as a link in /unanswered and the public notice."""
    from dataclasses import replace

    import discord

    from bots.render import render_notice
    from bots.render_inbox import CHAT_HINTS, render_inbox
    from qabot.shapes import InboxListResult

    r = Redis.from_url(redis_url)
    question = "Is this legit? [verify](https://evil.example/login) **now**"
    inbox.record(r, question)
    items, total = inbox.open_items(r)
    hints = replace(CHAT_HINTS, escape=discord.utils.escape_markdown)  # what bots.discord_bot wires into its core
    listing = render_inbox(InboxListResult(tuple(items), total), hints)
    assert "legit? \\[verify](https://evil.example/login) \\*\\*now\\*\\*" in listing  # an escaped [ is no link
    notice = render_notice(question, "Yes, it is.", hints.escape)
    assert "legit? \\[verify](" in notice and notice.endswith("— Yes, it is.")
    assert "[verify](https://evil.example/login)" in render_inbox(InboxListResult(tuple(items), total))  # Telegram: plain


def test_the_admin_replies_about_a_pair_show_its_question_literally_on_discord():
    """/answer's "Added '...'" and /forget's reply quote a user's question (and its answer): on Discord a masked link in
    them is escaped, so it is no link; elsewhere they are plain text."""
    from dataclasses import replace

    import discord

    from bots.render import render_forgotten
    from bots.render_inbox import CHAT_HINTS, render_inbox_answer
    from qabot.shapes import AddPairResult, EditResult, InboxAnswerResult

    link = "[Verify your account](https://evil.example/login)"
    hints = replace(CHAT_HINTS, escape=discord.utils.escape_markdown)
    added = AddPairResult(question=link, added=True, pairs=9, dataset="abc")
    answered = render_inbox_answer(InboxAnswerResult("a1b2c3", True, link, added), hints)
    assert f"'{link}" not in answered and "'\\[Verify your account](https://evil.example/login)" in answered
    assert link in render_inbox_answer(InboxAnswerResult("a1b2c3", True, link, added))  # Telegram: plain text
    forgot = render_forgotten(EditResult(True, what=link, answer=link, pairs=8, dataset="abd"), hints.escape)
    missing = render_forgotten(EditResult(False, what="x", suggestions=(link,)), hints.escape)
    assert (
        f"'{link}" not in forgot + missing
        and f": {link}" not in forgot
        and forgot.count("\\[Verify") == 2
        and "\\[Verify" in missing
    )


async def test_answers_taken_but_not_posted_when_the_bot_stops_go_back_first_in_line(redis_url):
    """A bot stopped (its delivery task cancelled) while it posts admins' answers: the one being posted and the ones
    after it go back to the front of the line, in order, for the next bot."""
    import asyncio

    from bots.feedback import deliver_notices
    from qabot.settings import Settings
    from worker.client import QueueClient

    r = Redis.from_url(redis_url)
    places = [Place("telegram", chat, 0.0) for chat in ("1", "2", "3")]
    notices.push_notices(r, "Who?", "Ana.", places)
    posted, stuck = [], asyncio.Event()

    async def notify(chat: str, text: str) -> None:
        if chat == "2":
            stuck.set()
            await asyncio.Event().wait()  # the platform hangs; the bot is told to stop
        posted.append(chat)

    client = QueueClient(Settings(redis_url=redis_url))
    task = asyncio.create_task(deliver_notices(client, "telegram", notify))
    await asyncio.wait_for(stuck.wait(), 10)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    notices.push_notices(r, "When?", "Now.", [Place("telegram", "4", 0.0)])
    assert posted == ["1"]
    assert [(n.chat, n.question) for n in notices.pop_notices(r, "telegram")] == [
        ("2", "Who?"),
        ("3", "Who?"),
        ("4", "When?"),
    ]
