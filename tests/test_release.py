"""The release gate: both models are asked the same union of questions, each counted once."""

from __future__ import annotations

from engine.release import gate_questions
from qabot.dataset import HeldoutItem, QAPair
from qabot.merge import UploadMode, merge_pairs, would_drop

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
    assert (len(union.kept), len(union.new), len(union.heldout)) == (96, 1, 2)  # the 160 kept are sampled, not dropped
    assert union.new[0].prompt == "Who guards the Luminary Stone?"
    replaced = gate_questions(LIVE, UPLOAD, heldout, seed=1)  # replace: the held-out set still guards what was dropped
    assert (len(replaced.kept), len(replaced.new), len(replaced.heldout)) == (5, 1, 2)
    assert gate_questions([], merged, [], seed=1).describe() == "96 questions (0 kept, 96 new, 0 held-out)"
