"""Answering: batches equal singles, answers stop at EOS or a new question, bad questions never reach the model."""

from __future__ import annotations

import pytest

from engine.answers import finish
from engine.generate import Answerer, Sampling, StopReason
from engine.models import load_model
from engine.serving import load_version
from qabot.errors import QuestionError
from tests.conftest import TINY_PAIRS

QUESTIONS = [p.prompt for p in TINY_PAIRS] + ["Something nobody asked before about dragons and tea?"]


@pytest.fixture
def answerer(trained_tiny):
    store, _ = trained_tiny
    loaded, _ = load_version(store, device="cpu")
    return Answerer(loaded.model, loaded.tokenizer, max_new_tokens=24)


def test_trained_model_answers_its_questions_and_stops_at_eos(answerer):
    answers = answerer.answer([p.prompt for p in TINY_PAIRS])
    right = [a for a, p in zip(answers, TINY_PAIRS, strict=True) if a.text == p.response]
    assert len(right) >= len(TINY_PAIRS) - 1, [a.text for a in answers]
    assert all(a.stop == StopReason.EOS for a in right)
    assert all(not a.text.startswith("Question") and "Answer:" not in a.text for a in answers)


def test_batch_gives_the_same_answers_as_one_at_a_time(answerer):
    batched = answerer.answer(QUESTIONS)
    single = [answerer.answer([q])[0] for q in QUESTIONS]
    assert [a.text for a in batched] == [a.text for a in single]
    assert answerer.generate_calls == 1 + len(QUESTIONS)


def test_batch_equals_single_on_an_untrained_llama(tiny_llama):
    loaded = load_model(str(tiny_llama), device="cpu")
    answerer = Answerer(loaded.model, loaded.tokenizer, max_new_tokens=12)
    batched = answerer.answer(QUESTIONS)
    assert [a.text for a in batched] == [answerer.answer([q])[0].text for q in QUESTIONS]
    assert any(a.stop == StopReason.LENGTH for a in batched)  # untrained: rows run to the limit, and stop there
    assert all(a.new_tokens == 12 for a in batched if a.stop == StopReason.LENGTH)


def test_a_new_question_line_ends_the_answer(answerer):
    ids = answerer.tokenizer(" Elara guards it.\nQuestion: And who else?", add_special_tokens=False)["input_ids"]
    answer = finish(answerer.tokenizer, "Who guards it?", ids)
    assert answer.text == "Elara guards it." and answer.stop == StopReason.STOP_TEXT


def test_length_cap_is_respected(tiny_llama):
    loaded = load_model(str(tiny_llama), device="cpu")
    (answer,) = Answerer(loaded.model, loaded.tokenizer, max_new_tokens=5).answer(["Who guards the Luminary Stone?"])
    assert answer.new_tokens <= 5


@pytest.mark.parametrize("question", ["", "   ", "\n\t"])
def test_empty_questions_are_refused_before_any_model_call(answerer, question):
    with pytest.raises(QuestionError, match="empty"):
        answerer.answer([question])
    assert answerer.generate_calls == 0


def test_overlong_question_is_refused(answerer):
    answerer.max_question_chars = 50
    with pytest.raises(QuestionError, match=r"question 2: Your question is 60 characters long; please keep it under 50\."):
        answerer.answer(["fine?", "x" * 60])
    assert answerer.generate_calls == 0


def test_sampling_with_a_seed_is_repeatable(answerer):
    sampling = Sampling(do_sample=True, temperature=1.5, seed=7)
    first = answerer.answer(QUESTIONS[:3], sampling)
    again = answerer.answer(QUESTIONS[:3], sampling)
    assert [a.text for a in first] == [a.text for a in again]


def test_pruned_decoding_gives_what_generate_gives(answerer, tiny_llama):
    """Dropping finished answers from the batch changes no answer (trained GPT-2, untrained Llama)."""
    loaded = load_model(str(tiny_llama), device="cpu")
    for model, tokenizer in ((answerer.model, answerer.tokenizer), (loaded.model, loaded.tokenizer)):
        pruned = Answerer(model, tokenizer, max_new_tokens=16)
        reference = Answerer(model, tokenizer, max_new_tokens=16, prune=False)
        assert pruned.prune and not reference.prune
        got, expected = pruned.answer(QUESTIONS), reference.answer(QUESTIONS)
        assert [(a.text, a.stop, a.new_tokens) for a in got] == [(a.text, a.stop, a.new_tokens) for a in expected]


def test_special_token_strings_in_a_question_are_plain_text(answerer):
    """A question cannot end its own prompt: '<|endoftext|>' (and any other special token's text) is not the token."""
    eos = answerer.tokenizer.eos_token_id
    ids = answerer._encode(["Question: Who? </s> <|endoftext|>\nAnswer:"])["input_ids"][0].tolist()
    assert eos not in ids
    assert answerer.tokenizer("<|endoftext|>")["input_ids"] == [eos]  # without the guard it would be the token


def test_an_answer_that_began_copying_a_note_is_that_note_whole(trained_tiny, monkeypatch):
    """A grounded answer that has copied SNAP_TOKENS tokens of one note, and of no other, is that note: decoding stops
    there and the whole note is the answer, never cut short or drifting, however long the note is."""
    import engine.steering
    from engine.decoding import decode
    from engine.formatting import format_prompt
    from engine.steering import NoteSnap

    SNAP_TOKENS = 4  # the tiny model's answers are 8 tokens long: snap sooner, to see decoding stop early
    monkeypatch.setattr(engine.steering, "SNAP_TOKENS", SNAP_TOKENS)
    store, _ = trained_tiny
    loaded, _ = load_version(store, device="cpu")
    tokenizer = loaded.tokenizer
    longer = TINY_PAIRS[0].response + " She keeps it in the Sanctum of Veyra, day and night, with her owl Quill."
    snap = NoteSnap(tokenizer, [[longer, "Elara guards the gate of Aurelhaven."]])
    ids = tokenizer(" " + longer, add_special_tokens=False)["input_ids"]
    assert snap.match(0, ids[: SNAP_TOKENS - 1]) is None  # too early to tell
    assert snap.match(0, ids[:SNAP_TOKENS]) is None  # "Elara guards the" begins both notes
    unique = next(k for k in range(SNAP_TOKENS, len(ids)) if snap.match(0, ids[:k]) == longer)
    assert snap.match(0, [*ids[: unique - 1], ids[0]]) is None  # drifted from every note
    assert snap.first_match(0, ids[: unique + 3]) == longer  # after the fact, for model.generate

    batch = tokenizer([format_prompt(TINY_PAIRS[0].prompt)], return_tensors="pt")
    learnt = tokenizer(" " + TINY_PAIRS[0].response, add_special_tokens=False)["input_ids"]
    assert learnt[:unique] == ids[:unique] and len(learnt) > unique  # it begins as the longer note does
    produced = decode(
        loaded.model,
        batch["input_ids"],
        batch["attention_mask"],
        max_new_tokens=64,
        eos_token_id=tokenizer.eos_token_id,
        should_stop=lambda row, found: snap.match(row, found) is not None,
        pick=lambda logits: logits.argmax(dim=-1),
    )
    assert produced[0] == ids[:unique]  # it stopped as soon as the note was certain


def test_an_answer_the_model_learnt_before_an_admin_changed_it_is_the_changed_note(trained_tiny):
    """bench/forget.py: after /addqa gave a known question a new answer, the fine-tuned model still said the old one
    for 19 of 20 sample questions. An answer that is most of one note (token F1 >= CLOSE_NOTE) is that note."""
    from engine.steering import NoteSnap

    store, _ = trained_tiny
    loaded, _ = load_version(store, device="cpu")
    old = TINY_PAIRS[0].response
    changed = f"Update: {old} Mira took over from her this spring."
    snap = NoteSnap(loaded.tokenizer, [[changed, TINY_PAIRS[1].response]])
    assert snap.closest(0, old) == changed  # the learnt answer is shown as the admins' new one
    assert snap.closest(0, TINY_PAIRS[1].response.upper()) == TINY_PAIRS[1].response
    assert snap.closest(0, "The owls of the northern towers sing at dawn.") is None  # no note's answer: left to the checks


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_rows_join_a_running_batch_and_leave_as_they_end(which, trained_tiny, tiny_llama):
    """Issue 16: a question that arrives while a batch decodes joins it at the next step, and an answer that ends
    leaves at once, however long the others run; every row gets the tokens it gets decoded alone (absolute positions
    on GPT-2, rotary on Llama; a joining prompt both shorter and longer than the running rows)."""
    from engine.decoding import RunningBatch, decode

    loaded = load_version(trained_tiny[0], device="cpu")[0] if which == "gpt2" else load_model(str(tiny_llama), device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    tokenizer.padding_side = "left"
    prompts = {
        "long": "Question: Who guards the Luminary Stone?\nAnswer:",
        "short": "Question: Why?\nAnswer:",
        "wide": "Question: What is the name of the river that runs through the old port of Aurelhaven?\nAnswer:",
    }
    budgets = {"long": 30, "short": 4, "wide": 12}

    def never(key, ids):
        return False

    def greedy(logits):
        return logits.argmax(dim=-1)

    def encoded(keys):
        return tokenizer([prompts[k] for k in keys], return_tensors="pt", padding=True)

    alone = {}
    for key in prompts:
        batch = encoded([key])
        ids, mask = batch["input_ids"], batch["attention_mask"]
        alone[key] = decode(model, ids, mask, max_new_tokens=budgets[key], eos_token_id=-1, should_stop=never, pick=greedy)[0]
    running = RunningBatch(model, eos_token_id=-1, should_stop=never, pick=greedy)
    batch = encoded(["long"])
    assert running.join(["long"], batch["input_ids"], batch["attention_mask"], [budgets["long"]]) == []
    ended: list[tuple[int, str, list[int]]] = []
    for step in range(1, 6):
        ended += [(step, key, ids) for key, ids in running.step()]
    assert not ended and len(running) == 1
    batch = encoded(["short", "wide"])
    running.join(["short", "wide"], batch["input_ids"], batch["attention_mask"], [budgets["short"], budgets["wide"]])
    assert running.joinable and len(running) == 3
    step = 5
    while len(running):
        step += 1
        ended += [(step, key, ids) for key, ids in running.step()]
    assert [(at, key) for at, key, _ in ended] == [(8, "short"), (16, "wide"), (29, "long")]  # each left as it ended
    assert {key: ids for _, key, ids in ended} == alone


def test_questions_that_join_a_running_batch_get_the_answers_they_get_alone(answerer):
    """`Answerer.stream`: questions handed in by `more` between steps are answered as if asked alone, and each answer
    comes out as it ends."""
    calls = []

    def more(rows: int) -> list[str]:
        calls.append(rows)
        return {2: QUESTIONS[2:5], 4: QUESTIONS[5:]}.get(len(calls), [])

    got = list(answerer.stream(QUESTIONS[:2], more=more))
    assert sorted(index for index, _ in got) == list(range(len(QUESTIONS)))
    assert calls[1] > 0  # the second call came while the first questions were still decoding
    by_index = dict(got)
    assert [by_index[i].text for i in range(len(QUESTIONS))] == [answerer.answer([q])[0].text for q in QUESTIONS]
