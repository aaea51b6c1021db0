"""An answer that only restates its question, or states what none of its notes says, is not shown as an answer."""

from __future__ import annotations

import pytest

from engine.answer_checks import echo_reason
from qabot.dataset import read_dataset
from tests.conftest import DATA_DIR

NOTES = ["Orlenmoor trades in silver crescents.", "Port Callow is a fishing town on the Grey Coast."]


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("Why is Port Callow well known?", "Port Callow well known."),
        ("What does the Ember Lantern do?", "The Ember Lantern does."),
        ("Who is Queen Ysolde's daughter?", "Queen Ysolde's daughter is Queen Ysolde's daughter."),
        ("pebble cloud pricing?", "pebble cloud pricing."),
    ],
)
def test_echoes_measured_on_the_lore_set_are_caught(question, answer):
    assert echo_reason(question, answer, NOTES) == "the answer only restates the question"


def test_an_answer_that_says_nothing_is_caught():
    assert echo_reason("Who rules Orlenmoor?", "", NOTES) == "the answer says nothing"
    assert echo_reason("Who rules Orlenmoor?", "It is.", NOTES) == "the answer says nothing"


def test_an_answer_none_of_its_notes_says_is_caught():
    reason = echo_reason("Who rules Orlenmoor?", "Orlenmoor is ruled by King Aldric the Bold since the Long Winter.", NOTES)
    assert reason == "the answer states what none of its notes says"
    # a right answer copied from a note, worded as the question, passes
    assert echo_reason("What does Orlenmoor trade in?", "Orlenmoor trades in silver crescents.", NOTES) is None


@pytest.mark.parametrize(
    ("question", "answer"),
    [("Is the shop open on Sundays?", "No."), ("Is the app free or paid?", "Free."), ("Windows or Linux?", "Windows and Linux.")],
)
def test_a_short_answer_that_is_its_note_word_for_word_is_shown(question, answer):
    assert echo_reason(question, answer, [*NOTES, answer]) is None
    assert echo_reason(question, f"  {answer.lower()} ", [*NOTES, answer]) is None  # spacing and case folded
    assert echo_reason(question, answer, NOTES) is not None  # made up by the model, it is still caught


@pytest.mark.parametrize("data", ["sample", "faq"])
def test_no_answer_of_the_data_fails_the_checks_with_its_own_note(data):
    pairs = read_dataset(DATA_DIR / f"{data}.json")
    assert [p.prompt for p in pairs if echo_reason(p.prompt, p.response, [p.response])] == []
