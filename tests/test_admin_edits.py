"""One-pair edits (/addqa, /forget, /undo) on a store, as the admin worker runs them: what admins read back, and
what is left in the dataset the bot answers from."""

from __future__ import annotations

import pytest

from bots.render import render_added, render_undone
from engine.versions import ModelStore
from qabot.dataset import QAPair
from worker.admin import add_pair_as, forget_pair, undo_edit


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("QABOT_HOME", str(tmp_path / "home"))
    return ModelStore(tmp_path / "home" / "models")


def _make_current(store: ModelStore, pairs: list[QAPair]) -> None:
    """What a promoted upload does: its dataset becomes current, journaling nothing."""
    with store.lock():
        digest, _ = store.store_dataset(pairs)
        store.set_current_dataset(digest)


def test_sending_the_same_pair_again_changes_nothing_and_says_so(store):
    from worker.admin import Settings

    first = add_pair_as(Settings(), "Who tends the Moon Gate?", "Ilsa tends it.")
    add_pair_as(Settings(), "Who rings the bell?", "Mira does.")
    before, journal = store.current_digest(), len(store.edits())
    again = add_pair_as(Settings(), "Who tends the Moon Gate?", "Ilsa tends it.")
    assert again.unchanged and not again.replaced and store.current_digest() == before and len(store.edits()) == journal
    assert render_added(again).startswith("'Who tends the Moon Gate?' already has that answer: nothing changed")
    assert [p.prompt for p in store.current_pairs()] == [first.question, "Who rings the bell?"]  # nothing moved
    changed = add_pair_as(Settings(), "who tends the moon gate", "Nobody does.")
    assert changed.replaced and render_added(changed).startswith("Updated the answer to")


def test_forget_removes_every_wording_of_the_question(store):
    twins = [QAPair("Who is Ilsa?", "The gate keeper."), QAPair("who is ilsa", "The gate keeper."), QAPair("Q?", "A.")]
    _make_current(store, twins)
    forgotten = forget_pair("who is Ilsa?")
    assert forgotten.done and store.current_pairs() == [QAPair("Q?", "A.")]


def test_questions_ending_in_any_scripts_punctuation_are_one_question(store):
    from worker.admin import Settings

    add_pair_as(Settings(), "東京はどこ？", "関東です。")
    updated = add_pair_as(Settings(), "東京はどこ?", "日本の首都です。")
    assert updated.replaced and [(p.prompt, p.response) for p in store.current_pairs()] == [("東京はどこ?", "日本の首都です。")]
    assert forget_pair("東京はどこ。").done and store.current_pairs() == []


def test_undo_never_overwrites_what_an_upload_changed_since(store):
    from worker.admin import Settings

    add_pair_as(Settings(), "Who tends the Moon Gate?", "Ilsa tends it, typo and all.")
    fixed = QAPair("Who tends the Moon Gate?", "Ilsa tends it.")
    _make_current(store, [fixed, QAPair("Who rings the bell?", "Mira does.")])  # an upload fixed it, then went live
    before = store.current_digest()
    undone = undo_edit()
    assert not undone.done and store.current_digest() == before and fixed in store.current_pairs()
    said = render_undone(undone)
    assert "no longer in effect" in said and "'Who tends the Moon Gate?' was changed since" in said, said
    # an edit still in effect is undone as before
    add_pair_as(Settings(), "Who sweeps the hall?", "Bram does.")
    assert undo_edit().done and [p.prompt for p in store.current_pairs()] == [fixed.prompt, "Who rings the bell?"]


def test_a_superscript_digit_is_no_number_of_find_nor_a_page(store):
    """ "²" is a digit to str.isdigit but not to int(): /forget ² and /unanswered ² once failed with int()'s error."""
    import asyncio

    from bots.admin import AdminCommands

    _make_current(store, [QAPair("Q?", "A."), QAPair("R?", "B.")])
    missed = forget_pair("²")
    assert not missed.done and missed.what == "²" and len(store.current_pairs()) == 2
    assert forget_pair("#2").done and store.current_pairs() == [QAPair("Q?", "A.")]
    assert asyncio.run(AdminCommands().inbox("²")).startswith("Usage: /unanswered [page]")
