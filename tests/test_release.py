"""The release gate: both models are asked the same union of questions, each counted once."""

from __future__ import annotations

import json
from pathlib import Path

from engine.heldout import heldout_for
from engine.release import GATE_SAMPLE, GATE_UNKNOWN, gate_questions
from engine.versions import ModelStore
from qabot.dataset import QAPair
from qabot.heldout import HeldoutItem, read_heldout
from qabot.merge import UploadMode, merge_pairs, would_drop
from tests.conftest import TINY_PAIRS, release_tiny, write_pairs

LIVE = [QAPair(f"Who guards gate {i}?", f"Warden {i} guards gate {i}.") for i in range(160)]
UPLOAD = [QAPair("Who guards the Luminary Stone?", "Elara guards it."), *LIVE[:5]]


def test_a_small_upload_is_added_by_default_and_says_what_replacing_would_drop():
    added = merge_pairs(LIVE, UPLOAD)
    assert (len(added.pairs), added.added, added.kept, added.dropped) == (161, 1, 160, 0)
    assert would_drop(LIVE, UPLOAD) == 155
    replaced = merge_pairs(LIVE, UPLOAD, UploadMode.REPLACE)
    assert (len(replaced.pairs), replaced.dropped) == (6, 155)
    changed = merge_pairs(LIVE, [QAPair("who guards gate 3", "Nobody now.")])
    assert changed.updated == 1 and len(changed.pairs) == 160
    assert [p.response for p in changed.pairs if p.prompt.casefold().rstrip("?") == "who guards gate 3"] == ["Nobody now."]


def test_the_gate_asks_kept_new_and_still_answered_heldout_questions():
    heldout = [
        HeldoutItem("Which warden keeps gate 1?", ("Warden 1",), LIVE[1].response),
        HeldoutItem("Which warden keeps gate 150?", ("Warden 150",), LIVE[150].response),
    ]
    merged = merge_pairs(LIVE, UPLOAD).pairs
    union = gate_questions(LIVE, merged, heldout, seed=1)
    assert GATE_SAMPLE < len(LIVE) - 1
    # the 160 kept are sampled, not dropped
    assert (len(union.kept), len(union.new), len(union.heldout)) == (GATE_SAMPLE, 1, 2)
    assert union.new[0].prompt == "Who guards the Luminary Stone?"
    replaced = gate_questions(LIVE, UPLOAD, heldout, seed=1)  # replace: a dropped pair's held-out question goes too
    assert (len(replaced.kept), len(replaced.new), len(replaced.heldout), replaced.left_out) == (5, 1, 1, 1)
    assert replaced.describe() == (
        "7 questions (5 kept, 1 new, 1 held-out); 1 held-out question left out: this dataset does not hold its answer"
    )
    # no held-out question at all: rewrites of the training questions in users' style stand in, judged like them
    alone = gate_questions([], merged, [], seed=1)
    new = min(GATE_SAMPLE, len(merged))
    assert len(alone.rewrites) == new
    assert alone.describe() == f"{2 * new} questions (0 kept, {new} new, 0 held-out, {new} rewrites in users' style)"
    by_question = {p.prompt: p.response for p in merged}
    assert all(r.response in by_question.values() and r.prompt not in by_question for r in alone.rewrites)


# A second world, in a FAQ's style: nothing of the tiny lore's held-out questions belongs to it.
FAQ = [
    QAPair("how do i reset my password", "Open Settings, then Account, then Reset password."),
    QAPair("Is pebble cloud free?", "Pebble Cloud is free for up to 3 projects."),
    QAPair("Which languages does the API support?", "The API has clients for Python and Go."),
    QAPair("Where do I report a bug?", "Open an issue on the tracker at example.org/issues."),
]


def test_held_out_questions_belong_to_a_dataset_only_if_it_holds_their_answers():
    lore = [
        HeldoutItem("Who protects the Luminary Stone?", ("Elara",), TINY_PAIRS[0].response),
        HeldoutItem("Which city is the capital?", ("aurelhaven",), "Aurelhaven is the capital, of course."),  # one pair has it
        HeldoutItem("Who taught Elara, and where is the Stone?", ("Orrin Vale", "Sanctum of Veyra")),  # two pairs hold it
        HeldoutItem("Who taught Elara where?", ("Orrin Vale", "Sanctum of Veyra"), "Orrin Vale, in the Sanctum of Veyra."),
        HeldoutItem("What does pebble cloud cost?", ("free",), FAQ[1].response),
    ]
    assert [i.question for i in heldout_for(TINY_PAIRS, lore)] == [lore[0].question, lore[1].question, lore[2].question]
    without_capital = [p for p in TINY_PAIRS if p is not TINY_PAIRS[4]]
    assert [i.question for i in heldout_for(without_capital, lore)] == [lore[0].question, lore[2].question]
    assert [i.question for i in heldout_for(FAQ, lore)] == [lore[4].question]
    assert heldout_for(FAQ, lore[:4]) == []


def test_a_new_dataset_is_never_judged_on_another_datasets_held_out_questions(tiny_gpt2, tiny_data, tiny_heldout, tmp_path):
    """The newcomer's path: a first version on dataset A with A's held-out file, then a release of dataset B alone."""
    store = ModelStore(tmp_path / "models")
    first = release_tiny(store, tiny_data, tiny_gpt2, tmp_path / "cache", eval_data=tiny_heldout)
    assert first.promoted and first.version.meta["eval_data"] == str(tiny_heldout)
    assert "2 held-out questions" in first.reason and "heldout_accuracy" in first.metrics

    faq = release_tiny(store, write_pairs(tmp_path / "faq.json", FAQ), tiny_gpt2, tmp_path / "cache")
    assert "0 held-out" in faq.reason and "rewrites in users' style" in faq.reason, faq.reason
    assert "2 held-out questions left out: this dataset does not hold their answers" in faq.reason
    # no question of A's held-out file was asked: not by the fine-tune's early stopping, not by the gate, to either model
    assert faq.version.meta["eval_data"] is None
    assert not any(k.startswith("heldout") for k in faq.trained.result.metrics), faq.trained.result.metrics
    assert "heldout_accuracy" not in faq.metrics and "heldout_accuracy" not in faq.live_metrics
    assert "rewrites_accuracy" in faq.metrics and "rewrites_accuracy" in faq.live_metrics


def test_a_carried_held_out_file_is_narrowed_to_the_pairs_still_there(tiny_gpt2, tiny_data, tiny_heldout, tmp_path):
    store = ModelStore(tmp_path / "models")
    release_tiny(store, tiny_data, tiny_gpt2, tmp_path / "cache", eval_data=tiny_heldout)
    without_capital = write_pairs(tmp_path / "seven.json", [p for p in TINY_PAIRS if p is not TINY_PAIRS[4]])
    second = release_tiny(store, without_capital, tiny_gpt2, tmp_path / "cache")  # no file given: the live one's, narrowed
    assert "on 8 questions (7 kept, 0 new, 1 held-out); 1 held-out question left out" in second.reason, second.reason
    narrowed = second.version.meta["eval_data"]
    assert narrowed is not None and narrowed != str(tiny_heldout)
    assert [i.question for i in read_heldout(Path(narrowed))] == [json.loads(tiny_heldout.read_text())[0]["question"]]
    assert second.trained.result.metrics["heldout_n"] == 1  # the fine-tune's early stopping asked only that one


def _release(store, pairs, tiny_gpt2, tmp_path, name, progress=None, **policy):
    from engine.pipeline import TrainRequest, load_base
    from engine.release import Policy, release
    from engine.training import TrainConfig
    from tests.conftest import TINY_CONFIG

    config = TrainConfig(**(TINY_CONFIG | {"epochs": 2}))
    base = load_base(str(tiny_gpt2), tmp_path / "cache", config.max_length)
    request = TrainRequest(str(tiny_gpt2), config, source=name)
    return release(store, pairs, base, request, Policy(device="cpu", **policy), progress=progress)


def _add(store: ModelStore, pair: QAPair) -> None:
    """What /addqa does to the store (worker.admin.add_pair_as)."""
    with store.lock():
        store.edit_dataset(merge_pairs(store.current_pairs(), [pair]).pairs)


def test_a_version_and_its_notes_move_together_through_replace_refusal_and_rollback(tiny_gpt2, tmp_path):
    store = ModelStore(tmp_path / "models")
    first = _release(store, TINY_PAIRS, tiny_gpt2, tmp_path, "lore.json")
    assert first.promoted and store.current_pairs() == TINY_PAIRS

    # a candidate that is not promoted leaves the live version's notes alone
    small = [TINY_PAIRS[0], QAPair("Who sells lanterns?", "Old Brannoc sells lanterns.")]
    refused = _release(store, small, tiny_gpt2, tmp_path, "small.json", promote=False)
    assert not refused.promoted and store.current_name() == first.version.name
    assert store.current_pairs() == TINY_PAIRS

    # a replace that goes live brings its own dataset; pairs added afterwards are carried over by a rollback
    forced = _release(store, small, tiny_gpt2, tmp_path, "small.json", force=True)
    assert forced.promoted and store.current_pairs() == small
    added = QAPair("Who mends the bridge?", "Tomas mends the bridge.")
    _add(store, added)
    back = store.rollback()
    assert back.name == first.version.name
    assert store.current_pairs() == [*TINY_PAIRS, added]  # the dropped pairs are back, the admin's pair stays

    # promoting the forced version again restores its notes, with the pair added since its training carried
    store.promote(forced.version.name)
    assert store.current_pairs() == [*small, added]
    changed = QAPair(added.prompt, "Nobody mends it any more.")
    _add(store, changed)  # a new answer to a carried question replaces it wherever the edits are replayed
    assert store.rollback().name == first.version.name
    assert store.current_pairs() == [*TINY_PAIRS, changed]


def test_pairs_added_while_a_candidate_trains_are_carried_onto_its_dataset(tiny_gpt2, tmp_path):
    store = ModelStore(tmp_path / "models")
    _release(store, TINY_PAIRS, tiny_gpt2, tmp_path, "lore.json")
    candidate = _release(store, TINY_PAIRS[:3], tiny_gpt2, tmp_path, "three.json", promote=False)
    during = QAPair("Who rings the bell?", "Mira rings the bell.")
    _add(store, during)  # as if /addqa ran while the candidate trained
    store.promote(candidate.version.name)
    assert store.current_pairs() == [*TINY_PAIRS[:3], during]


def test_a_candidate_is_judged_against_the_version_live_when_it_ends_not_when_it_began(tiny_gpt2, tmp_path):
    """An admin rolls back while a fine-tune runs: the candidate is scored against the version live now, and its
    reason names that one (it was scored against the version rolled away from, and could undo the rollback)."""
    store = ModelStore(tmp_path / "models")
    _release(store, TINY_PAIRS, tiny_gpt2, tmp_path, "lore.json")
    _release(store, TINY_PAIRS, tiny_gpt2, tmp_path, "again.json", force=True)
    assert store.current_name() == "v0002"
    rolled: list[str] = []

    def rollback_once(p) -> None:
        if p.stage == "training" and not rolled:
            rolled.append(store.rollback().name)  # /rollback while the third trains

    third = _release(store, TINY_PAIRS[:3], tiny_gpt2, tmp_path, "three.json", progress=rollback_once)
    assert rolled == ["v0001"] and third.live == "v0001" and "v0002" not in third.reason, third.reason
    assert store.current_name() == ("v0003" if third.promoted else "v0001")


def test_a_grounded_candidate_is_also_asked_what_it_must_decline(tiny_gpt2, tiny_data, tmp_path):
    """A grounded version answers a learnt question with its nearest note unless the model declines, so the gate also
    asks users' rewrites of some of its questions with their own pair taken out of the notes: right only if declined."""
    from engine.grounding import Grounding
    from engine.release import without
    from engine.retrieval import Embedder, PairIndex

    questions = gate_questions(LIVE, LIVE, [], seed=1, grounded=True)
    unknown = min(GATE_UNKNOWN, len(LIVE) // 4)  # up to a quarter of the pairs
    assert len(questions.unknown) == unknown
    assert f"{unknown} to decline, their answer left out of the notes" in questions.describe()
    assert gate_questions(LIVE, LIVE, [], seed=1).unknown == []  # a plain candidate: nothing it could decline
    embedder = Embedder("minilm")
    same_answer = [QAPair(f"Which warden watches gate {i}?", p.response) for i, p in enumerate(LIVE[:40])]  # reworded
    notes = Grounding(PairIndex.build([*LIVE[:40], *same_answer], embedder), embedder)
    left = without(notes, [r.pair for r in questions.unknown])
    asked = [r for r in questions.unknown if r.pair in LIVE[:40]]
    hits = left.index.search(embedder, [r.question for r in asked], k=3)
    given = [[h.pair.response for h in found] for found in hits]
    assert asked and all(r.pair.response not in answers for r, answers in zip(asked, given, strict=True))
    # what the grounding had worked out about its dataset's words stays with it: the copy reads its own notes
    gone = TINY_PAIRS[6]  # the only pair that names Malvek
    whole = Grounding(PairIndex.build(TINY_PAIRS, embedder), embedder)
    assert whole.unknown_names("Where does Malvek live?") == []  # reads (and keeps) the words of all its pairs
    assert without(whole, [gone]).unknown_names("Where does Malvek live?") == ["Malvek"]

    store = ModelStore(tmp_path / "models")
    release_tiny(store, tiny_data, tiny_gpt2, tmp_path / "cache", grounded=True, epochs=4)
    second = release_tiny(store, tiny_data, tiny_gpt2, tmp_path / "cache", grounded=True, epochs=4)
    assert "2 to decline, their answer left out of the notes" in second.reason, second.reason
    assert "unknown_accuracy" in second.metrics and "unknown_accuracy" in second.live_metrics


def test_a_forget_made_while_an_upload_that_changed_its_answer_trained_stays_forgotten(tiny_gpt2, tmp_path):
    store = ModelStore(tmp_path / "models")
    _release(store, TINY_PAIRS, tiny_gpt2, tmp_path, "lore.json")
    asked = TINY_PAIRS[3]
    upload = [*TINY_PAIRS[:3], QAPair(asked.prompt, "Orrin Vale and the Silver Guard trained her."), *TINY_PAIRS[4:]]
    candidate = _release(store, upload, tiny_gpt2, tmp_path, "fix.json", promote=False)
    with store.lock():  # what /forget does while the candidate trains (worker.admin)
        store.edit_dataset([p for p in store.current_pairs() if p != asked])
    store.promote(candidate.version.name)
    assert asked.prompt not in [p.prompt for p in store.current_pairs()]


def test_an_edit_cut_off_as_it_was_written_is_skipped_and_the_next_edit_is_kept(tiny_gpt2, tmp_path, caplog):
    from engine.datastore import EDITS_FILE

    store = ModelStore(tmp_path / "models")
    first = _release(store, TINY_PAIRS, tiny_gpt2, tmp_path, "lore.json")
    before, after = QAPair("Who rings the bell?", "Mira rings the bell."), QAPair("Who mends the bridge?", "Tomas does.")
    _add(store, before)
    with open(store.datasets_dir / EDITS_FILE, "a", encoding="utf-8") as handle:
        handle.write('{"added": [["Who sweeps the')  # a crash mid-append: that edit never became current
    _add(store, after)
    assert [e["added"] for e in store.edits()] == [[[before.prompt, before.response]], [[after.prompt, after.response]]]
    assert "not a whole edit" in caplog.text
    assert store.rollback(first.version.name).name == first.version.name  # replays the journal: no error
    assert store.current_pairs() == [*TINY_PAIRS, before, after]


def test_a_pair_added_as_a_retrain_job_reads_the_dataset_is_carried_onto_its_version(tiny_gpt2, tmp_path):
    from engine.pipeline import TrainRequest, load_base
    from engine.release import Policy, release
    from engine.training import TrainConfig
    from tests.conftest import TINY_CONFIG
    from worker.training import _pairs

    store = ModelStore(tmp_path / "models")
    _release(store, TINY_PAIRS, tiny_gpt2, tmp_path, "lore.json")
    config = TrainConfig(**(TINY_CONFIG | {"epochs": 2}))
    base = load_base(str(tiny_gpt2), tmp_path / "cache", config.max_length)
    pairs, _, source, edits_from = _pairs(None, store, {}, base, None, None)  # /retrain with no file: the current data
    during = QAPair("Who rings the bell?", "Mira rings the bell.")
    _add(store, during)  # an /addqa that lands after the job read the dataset, before its fine-tune starts
    request = TrainRequest(str(tiny_gpt2), config, source=source, edits_from=edits_from)
    assert release(store, pairs, base, request, Policy(device="cpu", force=True)).promoted
    assert store.current_pairs() == [*TINY_PAIRS, during]
