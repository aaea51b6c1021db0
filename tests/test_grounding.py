"""Grounded answering: the example builder, a grounded model's answers with sources, and notes that follow the data."""

from __future__ import annotations

import pytest

from engine.grounding import DECLINE, build_examples
from engine.offtopic import OFF_TOPIC
from engine.retrieval import Embedder, PairIndex
from engine.textformat import HEADS, NOTE_CHARS, NOTE_PREFIX, NOTE_WORDS, HeadRule, format_grounded
from qabot.dataset import QAPair, read_dataset
from tests.conftest import DATA_DIR, TINY_PAIRS, write_pairs


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder("minilm")  # the lighter of the two (engine.embedders); what is tested here holds for both


def notes_of(prompt: str) -> list[str]:
    return [line.removeprefix(NOTE_PREFIX) for line in prompt.splitlines() if line.startswith(NOTE_PREFIX)]


def question_of(prompt: str) -> str:
    return prompt.rsplit("Question: ", 1)[1].removesuffix("\nAnswer:")


def test_long_answers_are_learnt_and_shown_by_their_heads(embedder):
    """Issue 14, item 7: pebble's long answers made each example about 370 tokens. A grounded prompt shows each note's
    first NOTE_WORDS words, within NOTE_CHARS characters, and the model learns its note's head."""
    pairs = read_dataset(DATA_DIR / "faq.json")
    index = PairIndex.build(pairs, embedder)
    whole = build_examples(pairs, index, embedder, notes=3, seed=1)
    heads = build_examples(pairs, index, embedder, notes=3, seed=1, heads=HEADS)
    assert [question_of(p) for p, _ in heads] == [question_of(p) for p, _ in whole]  # the same examples, shorter
    shown = [note for prompt, _ in heads for note in notes_of(prompt)] + [a for _, a in heads]
    assert all(len(note.split()) <= NOTE_WORDS for note in shown)
    assert all(len(note) <= NOTE_CHARS or " " not in note for note in shown)  # one word longer than that stays whole
    long = [(p, a) for (p, a), (_, full) in zip(heads, whole, strict=True) if len(full.split()) > NOTE_WORDS]
    assert long and all(a in notes_of(p) or a == DECLINE for p, a in long)  # the head is copied from the notes
    assert sum(len(p) + len(a) for p, a in heads) < 0.4 * sum(len(p) + len(a) for p, a in whole)


def test_a_note_head_is_the_notes_first_words_within_its_characters():
    """Links and Markdown cost several tokens a word: a head stops at NOTE_CHARS characters, so that a FAQ's heads
    cost about what prose heads cost. A head is always the note's first words, at least one."""
    link = "See https://pebble.example.org/docs/install/linux#from-source for the steps, then run `pebble serve`."
    head = HEADS.head(link)
    assert head == "See https://pebble.example.org/docs/install/linux#from-source" and len(head) <= NOTE_CHARS
    words = HeadRule(NOTE_WORDS)  # a version from before the cap
    assert words.head(link) == " ".join(link.split()[:NOTE_WORDS])
    assert HEADS.head("x" * 100 + " and more") == "x" * 100
    short = "Elara guards the Luminary Stone."
    assert HEADS.head(short) == short == HeadRule().head(short)
    assert HEADS.head(" \n ") == ""  # a blank note has an empty head
    faq = [p.response for p in read_dataset(DATA_DIR / "faq.json")]
    sample = [p.response for p in read_dataset(DATA_DIR / "sample.json")]

    def mean_chars(notes: list[str], rule: HeadRule) -> float:
        return sum(len(rule.head(n)) for n in notes) / len(notes)

    assert mean_chars(faq, words) > 1.3 * mean_chars(sample, words)  # heads of words: the FAQ's cost far more
    assert mean_chars(faq, HEADS) < 1.15 * mean_chars(sample, HEADS)


def test_examples_hold_the_answer_at_varying_places_and_negatives_teach_the_decline(embedder):
    pairs = read_dataset(DATA_DIR / "sample.json")
    examples = build_examples(pairs, PairIndex.build(pairs, embedder), embedder, notes=3, negative_share=0.25, seed=1)
    by_answer = {p.response: p for p in pairs}
    positives = [(prompt, answer) for prompt, answer in examples if answer != DECLINE]
    offtopic = [(prompt, answer) for prompt, answer in examples if question_of(prompt) in OFF_TOPIC]
    negatives = [(prompt, answer) for prompt, answer in examples if answer == DECLINE and (prompt, answer) not in offtopic]
    assert len(positives) == len(pairs) and 0.15 * len(pairs) <= len(negatives) <= 0.35 * len(pairs)
    # chit-chat and errands with their retrieved notes teach the decline too: a tenth as many as the pairs
    assert len(offtopic) == len(pairs) // 10 and all(answer == DECLINE for _, answer in offtopic)
    # about 30% of the positives ask their question as users type it (lower case, a typo, keywords)
    rewritten = [prompt for prompt, answer in positives if question_of(prompt) != by_answer[answer].prompt]
    assert 0.2 * len(pairs) <= len(rewritten) <= 0.4 * len(pairs)
    assert all(question_of(prompt) == question_of(prompt).lower() for prompt in rewritten)
    places = [notes_of(prompt).index(answer) for prompt, answer in positives]
    assert set(places) == {0, 1, 2}  # the gold note is not always in the same place...
    assert places.count(2) >= 0.7 * len(places)  # ...but mostly where answering puts the nearest pair, next to the question
    assert all(len(notes_of(prompt)) == 3 for prompt, _ in examples)
    for prompt, _ in negatives:
        gold = next(p for p in pairs if p.prompt == question_of(prompt))
        assert gold.response not in notes_of(prompt)  # no answer among the notes: the target is the decline
    for prompt, answer in examples:
        assert by_answer.get(answer) is None or by_answer[answer].prompt not in "".join(
            notes_of(prompt)
        )  # notes hold answers only
    hard = sum(
        any(word in " ".join(notes_of(prompt)) for word in ("Luminary", "Elara", "Aurelhaven", "Malvek"))
        for prompt, _ in negatives
    )
    assert hard >= 1


def test_format_keeps_a_note_on_one_line():
    assert format_grounded("Who?", ["Line one\nline two"]) == f"{NOTE_PREFIX}Line one line two\nQuestion: Who?\nAnswer:"


def test_a_grounded_model_answers_with_sources_and_declines_and_its_notes_follow_the_data(tiny_gpt2, tmp_path, redis_url):
    from engine.versions import ModelStore
    from tests.conftest import release_tiny
    from tests.test_queue import make_settings, make_worker
    from worker.client import QueueClient

    store = ModelStore(tmp_path / "home" / "models")
    release_tiny(store, write_pairs(tmp_path / "tiny.json", TINY_PAIRS), tiny_gpt2, tmp_path / "cache", grounded=True, epochs=60)
    grounding = {"notes": 3, "decline": DECLINE, "embedder": "mpnet", "note_words": NOTE_WORDS, "note_chars": NOTE_CHARS}
    assert store.current().meta["grounding"] == grounding
    from engine.serving import version_grounding

    calibration = store.current().meta["calibration"]  # calibrated on this dataset and model, kept with the version
    assert 0 <= calibration["min_score"] <= calibration["offtopic_quantile"] and calibration["decline_confidence"] >= 0.7
    assert version_grounding(store, store.current()).min_score == pytest.approx(calibration["min_score"], abs=1e-4)
    overridden = version_grounding(store, store.current(), min_score=0.42, decline_confidence=0.9)  # the settings win
    assert (overridden.min_score, overridden.decline_confidence) == (0.42, 0.9)
    assert overridden.heads == HEADS  # its heads, as it learnt them
    assert overridden.embedder.name == "mpnet"  # the default embedder, and the one it was trained and calibrated with
    older = store.current()
    del older.meta["grounding"]["note_chars"]  # a version from before NOTE_CHARS learnt heads of whole words
    del older.meta["grounding"]["embedder"]  # and from before the choice of embedder: MiniLM's notes, its own index
    old = version_grounding(store, older)
    assert (old.heads, old.embedder.name) == (HeadRule(NOTE_WORDS), "minilm")
    assert store.index_path(store.current_digest(), "minilm").is_file()
    settings = make_settings(tmp_path / "home", redis_url, max_new_tokens=24)
    client, worker = QueueClient(settings), make_worker(settings)
    known, absent = client.enqueue_answer(TINY_PAIRS[0].prompt), client.enqueue_answer("Who rules the kingdom of Zarnak?")
    worker.work(burst=True)
    answer = client.wait_answer(known)
    assert answer.answer == TINY_PAIRS[0].response and not answer.details["declined"]
    assert answer.details["sources"][0] == TINY_PAIRS[0].prompt and answer.details["score"] > 0.8
    assert client.wait_answer(absent).details["declined"]
    # A pair added to the dataset (as /addqa does) is among the notes of the next batch, before any retraining.
    new = QAPair("Who carved the Moon Gate?", "Ilsa carved the Moon Gate.")
    digest, _ = store.store_dataset([*TINY_PAIRS, new])
    store.set_current_dataset(digest)
    asked = client.enqueue_answer("Who made the Moon Gate?")
    worker.work(burst=True)
    assert client.wait_answer(asked).details["sources"][0] == new.prompt
    assert store.index_path(digest, "mpnet").is_file()
    # Answers the version learnt are chosen among its notes; a question whose notes hold a corrected answer is decoded
    # and never gets the old answer from the weights (this tiny model declines it; the bundled one mostly gives the
    # new answer: bench/forget.py).
    changed = f"Update: {TINY_PAIRS[1].response}"
    digest, _ = store.store_dataset([TINY_PAIRS[0], QAPair(TINY_PAIRS[1].prompt, changed), *TINY_PAIRS[2:], new])
    store.set_current_dataset(digest)
    corrected = client.enqueue_answer(TINY_PAIRS[1].prompt)
    worker.work(burst=True)
    assert client.wait_answer(corrected).answer in (changed, DECLINE)


def test_plain_versions_stay_plain(trained_tiny):
    store, _ = trained_tiny
    from engine.serving import version_grounding

    assert version_grounding(store, store.current()) is None


def test_grounded_prompts_run_on_both_tiny_architectures_and_fit_a_1024_token_context(tiny_model, embedder):
    from engine.formatting import longest_answer, tokenize_example
    from engine.generate import Answerer
    from engine.grounding import Grounding
    from engine.models import load_model
    from engine.textformat import answer_budget

    loaded = load_model(str(tiny_model), device="cpu")
    grounding = Grounding(PairIndex.build(TINY_PAIRS, embedder), embedder)
    answers = Answerer(loaded.model, loaded.tokenizer, max_new_tokens=8, grounding=grounding).answer(
        [TINY_PAIRS[3].prompt, "Who rules Zarnak?"]
    )
    assert [len(a.sources) for a in answers] == [3, 3] and answers[0].sources[0] == TINY_PAIRS[3].prompt
    pairs = read_dataset(DATA_DIR / "sample.json")
    examples = build_examples(pairs, PairIndex.build(pairs, embedder), embedder)
    longest = max(len(tokenize_example(p, a, loaded.tokenizer, 10**6)["input_ids"]) for p, a in examples)
    budget = answer_budget(longest_answer(loaded.tokenizer, [p.response for p in pairs]), 1024)
    assert longest + budget <= 1024, (longest, budget)  # gpt2-medium's context holds the example and the answer budget


def test_a_long_grounded_example_keeps_its_answer_and_long_notes_never_overflow_the_context(tiny_gpt2, embedder):
    from engine.formatting import IGNORE_INDEX, tokenize_example
    from engine.generate import Answerer
    from engine.grounding import Grounding
    from engine.models import load_model

    loaded = load_model(str(tiny_gpt2), device="cpu")
    long_notes = [f"The {n} tower of Eldoria is {' very' * 60} tall." for n in ("north", "south", "east")]
    features = tokenize_example(format_grounded("How tall is the north tower?", long_notes), "Very tall.", loaded.tokenizer, 64)
    answer_ids = loaded.tokenizer(" Very tall.", add_special_tokens=False)["input_ids"]
    assert len(features["input_ids"]) <= 64
    assert [t for t in features["labels"] if t != IGNORE_INDEX] == [*answer_ids, loaded.tokenizer.eos_token_id]
    for very, shown in ((25, 1), (60, 0)):  # a note of about 90 tokens, then of about 190
        notes = [f"The {n} tower of Eldoria is {' very' * very} tall." for n in ("north", "south", "east")]
        pairs = [QAPair(f"How tall is the {n} tower?", note) for n, note in zip(("north", "south", "east"), notes, strict=True)]
        grounding = Grounding(PairIndex.build(pairs, embedder), embedder)
        answerer = Answerer(loaded.model, loaded.tokenizer, max_new_tokens=128, grounding=grounding)
        (answer,) = answerer.answer(["How tall is the north tower?"])  # 128 positions for the prompt: the farthest go
        assert answer.new_tokens <= 128
        # its sources are the notes the model was shown (the nearest that fit), not the ones dropped
        assert answer.sources == tuple(p.prompt for p in pairs[:shown])


def test_questions_about_names_the_data_never_mentions_or_far_from_every_pair_are_declined_without_the_model(tiny_gpt2, embedder):
    from engine.generate import Answerer
    from engine.grounding import Grounding
    from engine.models import load_model
    from qabot.heldout import read_heldout

    pairs = read_dataset(DATA_DIR / "sample.json")
    grounding = Grounding(PairIndex.build(pairs, embedder), embedder)
    paraphrases = [item.question for item in read_heldout(DATA_DIR / "sample.heldout.json")]
    typos = ["Who guards the Luminery Stone?", "where does elara keep the stone?", "Who Protects The Luminary Stone?"]
    absent = ["Who rules the kingdom of Zarnak?", "What is the capital of France?", "How do I bake a chocolate cake?"]
    questions = [*paraphrases, *typos, *absent]
    hits = grounding.index.search(embedder, questions, k=3)
    reasons = [grounding.reason_to_decline(q, found) for q, found in zip(questions, hits, strict=True)]
    assert reasons[:-3] == [None] * (len(paraphrases) + len(typos))  # what the data knows goes to the model
    assert "Zarnak" in reasons[-3] and "nothing in the data" in reasons[-1]
    assert "France" in reasons[-2]  # a capitalised common word in a sentence-case question is a name
    loaded = load_model(str(tiny_gpt2), device="cpu")
    answerer = Answerer(loaded.model, loaded.tokenizer, max_new_tokens=8, grounding=grounding)
    answers = answerer.answer(["Who rules the kingdom of Zarnak?", "How do I bake a chocolate cake?"])
    assert [(a.text, a.declined) for a in answers] == [(DECLINE, True), (DECLINE, True)]
    assert answerer.generate_calls == 0 and "Zarnak" in answers[0].reason and answers[0].sources


def test_words_that_start_a_sentence_and_i_contractions_are_not_names(embedder):
    from engine.grounding import Grounding

    pairs = read_dataset(DATA_DIR / "sample.json")
    grounding = Grounding(PairIndex.build(pairs, embedder), embedder)
    chatty = [
        "What is the Luminary Stone, I'm curious?",
        "who guards the Luminary Stone, I've forgotten",
        "Hi! Tell me: who guards the Luminary Stone?",
        "Sorry, new here. Quick question: who guards the Luminary Stone?",
    ]
    hits = grounding.index.search(embedder, chatty, k=3)
    assert [grounding.reason_to_decline(q, found) for q, found in zip(chatty, hits, strict=True)] == [None] * len(chatty)
    # a name the data lacks is still one at the start of a sentence, and a common word in sentence case mid-sentence
    assert grounding.names("Hello. Zarnak is where? Tell me.") == ["Zarnak"]
    assert grounding.names("What is the capital of France?") == ["France"]


def test_the_decline_may_start_only_where_the_model_is_sure_of_it():
    import torch

    from engine.steering import DeclineGate

    unsure, sure = torch.log(torch.tensor([0.6, 0.3, 0.1])), torch.log(torch.tensor([0.9, 0.05, 0.05]))
    gated = DeclineGate(token_id=0, confidence=0.7).gate(torch.stack([unsure, sure]))
    assert gated.argmax(-1).tolist() == [1, 0]  # the unsure row answers from its notes, the sure one declines
    at_first_step = DeclineGate(0, 0.7, prompt_length=5)
    assert at_first_step(torch.zeros(1, 5, dtype=torch.long), unsure[None].clone()).argmax(-1).item() == 1
    later = at_first_step(torch.zeros(1, 6, dtype=torch.long), unsure[None].clone())
    assert later.argmax(-1).item() == 0  # later steps are untouched


def test_an_answer_without_the_number_time_or_colour_its_question_asks_for_is_a_decline(embedder):
    from engine.grounding import Grounding

    pairs = read_dataset(DATA_DIR / "sample.json")
    grounding = Grounding(PairIndex.build(pairs, embedder), embedder)
    # the model copied a note about the same queen: it answers another question
    assert "number" in grounding.reason_to_reject("How old is Queen Isolde?", "Queen Isolde lives in the Sunspire Palace.")
    assert "time" in grounding.reason_to_reject("When did the rebellion happen?", "It is remembered as the Tidewater Rebellion.")
    scales = grounding.reason_to_reject(
        "What color are the dragon Ignatharax's scales?", "The dragon Ignatharax has slept for 800 years."
    )
    assert "colour" in scales
    right = [
        ("What colour are the dragon's scales?", "Its scales are a deep copper."),
        ("Which color is the banner of Stormhold?", "Stormhold flies a grey-green banner."),
        ("How old is Queen Isolde?", "She is forty-two years old."),
        ("How many moons does Eldoria have?", "Eldoria has two moons."),
        ("When did the war end?", "It ended after the Siege of Aurelhaven."),
        ("Who guards the Luminary Stone?", "Elara guards it."),  # other questions are not checked
    ]
    assert [grounding.reason_to_reject(q, a) for q, a in right] == [None] * len(right)
    # every answer of the sample's pairs answers its own question
    assert [p.prompt for p in pairs if grounding.reason_to_reject(p.prompt, p.response)] == []


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_the_model_declines_only_where_the_declines_first_token_wins_past_the_gate(which, tiny_gpt2, tiny_llama):
    """`model_declines` reads each left-padded prompt once (prompts of different lengths in one batch): a decline whose
    first token wins the first step past the gate is a decline, at the row that gives it; below the gate's confidence
    it never is."""
    import torch

    from engine.models import load_model
    from engine.steering import DeclineGate, model_declines

    loaded = load_model(str(tiny_gpt2 if which == "gpt2" else tiny_llama), device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    prompts = [format_grounded(p.prompt, [q.response for q in TINY_PAIRS[i : i + 3]]) for i, p in enumerate(TINY_PAIRS[:4])]
    prompts[1] = format_grounded("Why?", ["Yes."])
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, split_special_tokens=True)
    with torch.inference_mode():
        alone = [model(**tokenizer(p, return_tensors="pt", split_special_tokens=True)).logits[0, -1].float() for p in prompts]
    likeliest = int(alone[0].argmax())  # taken as the decline's first token: it wins the first step at any confidence
    sure, never = DeclineGate(likeliest, confidence=0.0), DeclineGate(likeliest, confidence=1.1)
    assert model_declines(model, batch["input_ids"], batch["attention_mask"], never) == [False] * len(prompts)
    picked = model_declines(model, batch["input_ids"], batch["attention_mask"], sure)
    assert picked[0] and picked == [int(first.argmax()) == likeliest for first in alone]


def test_a_batch_of_questions_is_embedded_once_for_its_notes_and_the_off_topic_rule(tiny_gpt2, embedder, monkeypatch):
    from engine.generate import Answerer
    from engine.grounding import Grounding
    from engine.models import load_model

    pairs = read_dataset(DATA_DIR / "sample.json")
    grounding = Grounding(PairIndex.build(pairs, embedder), embedder, min_score=0.0, offtopic_margin=0.0)
    loaded = load_model(str(tiny_gpt2), device="cpu")
    answerer = Answerer(loaded.model, loaded.tokenizer, max_new_tokens=4, grounding=grounding)
    questions = ["Who guards the Luminary Stone?", "what is the weather like today"]
    encoded, encode = [], embedder.encode
    monkeypatch.setattr(embedder, "encode", lambda texts: encoded.append(list(texts)) or encode(texts))
    answers = answerer.answer(questions)
    assert [texts for texts in encoded if texts == questions] == [questions]  # not a second time for the rule
    assert answers[0].sources and "nearer a message" in (answers[1].reason or "")


def test_a_question_about_something_its_nearest_answer_is_not_about_is_declined_before_the_model(embedder):
    from engine.grounding import Grounding
    from engine.retrieval import Hit

    pairs = [
        QAPair("How many people live in Aurelhaven?", "Aurelhaven is home to about 90,000 people."),
        QAPair("Where is Port Marrowick?", "Port Marrowick lies on the eastern coast, past the salt flats."),
        QAPair("Who rules Aurelhaven?", "Queen Isolde rules Aurelhaven from the Sunspire Palace."),
        QAPair("What does the Ember Lantern do?", "The Ember Lantern lights the way through the Greywood."),
        QAPair("How many moons does Eldoria have?", "Eldoria has two moons."),
    ]
    grounding = Grounding(PairIndex.build(pairs, embedder), embedder, min_score=0.0)
    questions = [
        "How many people live in Port Marrowick?",  # Port Marrowick is known, its population is not
        "How many people live in Aurelhaven?",
        "how many people live in aurelhaven",  # no capitals: nothing to compare
        "How many people live in Aurelhavn?",  # a typo of a word of the nearest pair
        "Who Rules Aurelhaven?",  # Title Case: common words are not names
        "In Eldoria, how many people live in Aurelhaven?",  # one name its answer holds is enough
    ]
    nearest = [Hit(pairs[0], 0.8)]  # as in the sample: Aurelhaven's population is the nearest answer to each
    reasons = [grounding.reason_to_decline(q, nearest) for q in questions]
    assert "not about Port, Marrowick" in reasons[0]
    assert reasons[1:] == [None] * 5


def test_the_name_all_the_data_is_about_does_not_make_a_question_about_something_else(embedder):
    """A lore set names its city in only some of its pairs (found on a set no rule was tuned on: "How many years old
    is the queen of Ashkarra?" was declined as not about Ashkarra, its queen's pair not naming the city); a place the
    data knows elsewhere still is such a name."""
    from engine.grounding import Grounding
    from engine.retrieval import Hit

    pairs = [
        QAPair("Who rules Ashvale?", "Ashvale is ruled by Queen Mira of the Dunes."),
        QAPair("How old is Queen Mira?", "Queen Mira is sixty-three years old."),
        QAPair("When was Ashvale founded?", "Ashvale was founded eleven hundred years ago."),
        QAPair("What does Ashvale trade?", "Ashvale trades salt, glass and spices."),
        QAPair("Where is Port Sel?", "Port Sel lies at the end of the long road from Ashvale."),
        QAPair("What is the Lamp of Sefer?", "The Lamp of Sefer is a bronze lamp whose flame never dies."),
    ]
    grounding = Grounding(PairIndex.build(pairs, embedder), embedder, min_score=0.0)
    nearest = [Hit(pairs[1], 0.8)]  # Queen Mira's age, which does not name the city
    assert grounding.reason_to_decline("How many years old is the queen of Ashvale?", nearest) is None
    assert "not about Port, Sel" in grounding.reason_to_decline("How many years old is the queen of Port Sel?", nearest)
    assert grounding.subjects() == ("ashvale",)


def test_the_fine_tunes_own_evaluation_answers_as_the_released_version_does(tiny_gpt2, tmp_path):
    """A grounded version answers a learnt question with its nearest note unless the model declines; the accuracy its
    fine-tune reports (and early-stops on) is measured the same way, not by decoding, which a barely trained model
    cannot yet do."""
    from engine.evaluate import evaluate_pairs
    from engine.serving import load_version, make_answerer, version_grounding
    from engine.versions import ModelStore
    from tests.conftest import release_tiny

    store = ModelStore(tmp_path / "models")
    data = write_pairs(tmp_path / "tiny.json", TINY_PAIRS)
    outcome = release_tiny(store, data, tiny_gpt2, tmp_path / "cache", grounded=True, epochs=1, eval_questions=len(TINY_PAIRS))
    reported = outcome.trained.result.metrics["recall_accuracy"]
    info = store.current()
    loaded, _ = load_version(store, info.name, device="cpu")
    answerer = make_answerer(loaded, info, max_new_tokens=None, max_question_chars=500, grounding=version_grounding(store, info))
    assert reported == evaluate_pairs(answerer, TINY_PAIRS).accuracy == 1.0


def test_a_version_whose_data_names_another_models_special_token_loads_and_answers(tiny_gpt2, tmp_path):
    """GPT-2's only special token is <|endoftext|>: a pair that mentions SmolLM2's <|im_start|> is valid data for it.
    Serving once checked the version's stored dataset again with every model's tokens, so such a version never loaded."""
    from engine.serving import load_version, make_answerer, version_grounding
    from engine.versions import ModelStore
    from tests.conftest import release_tiny

    store = ModelStore(tmp_path / "models")
    marker = QAPair("How does SmolLM2 mark a turn?", "Each turn starts with <|im_start|> and a role.")
    data = write_pairs(tmp_path / "tiny.json", [*TINY_PAIRS, marker])
    assert release_tiny(store, data, tiny_gpt2, tmp_path / "cache", grounded=True, epochs=1).promoted
    info = store.current()
    grounding = version_grounding(store, info)
    assert grounding is not None and marker.response in grounding.learnt
    loaded, _ = load_version(store, info.name, device="cpu")
    answer = make_answerer(loaded, info, max_new_tokens=None, max_question_chars=500, grounding=grounding)
    assert answer.answer([TINY_PAIRS[0].prompt])[0].sources


def test_each_question_is_tokenised_once_and_its_prompt_gets_the_ids_of_the_whole_text(tiny_model, embedder):
    """A grounded question is counted for the length check and then given its notes: its text reaches the tokenizer
    once, and the prompt's ids, built from the notes' and the question's, are those of the whole prompt."""
    from engine.formatting import PromptTokens
    from engine.generate import Answerer
    from engine.grounding import Grounding
    from engine.models import load_model
    from qabot.heldout import read_heldout
    from qabot.questions import clean_question

    loaded = load_model(str(tiny_model), device="cpu")
    pairs = read_dataset(DATA_DIR / "faq.json")
    grounding = Grounding(PairIndex.build(pairs, embedder), embedder, min_score=0.0, heads=HeadRule(NOTE_WORDS))
    answerer = Answerer(loaded.model, loaded.tokenizer, max_new_tokens=4, grounding=grounding)
    seen: list[str] = []

    class Counting:
        def __call__(self, text, **kwargs):
            seen.append(text)
            return loaded.tokenizer(text, **kwargs)

    answerer.tokens.tokenizer = Counting()
    asked = [*(h.question for h in read_heldout(DATA_DIR / "faq.heldout.json")[:6]), "what about Question: x?"]
    answers = answerer.answer(asked)
    questions = [clean_question(q) for q in asked]  # as the model reads them (a "Question:" marker is neutralised)
    assert len(answers) == len(questions) and answerer.tokens.joins
    for question in questions:
        assert sum(question in text for text in seen) == 1, question
    prompts, _, _ = grounding.prompts(questions)
    tokens = PromptTokens(loaded.tokenizer)
    whole = [loaded.tokenizer(p, split_special_tokens=True)["input_ids"] for p in prompts]
    assert [tokens.question(q) for q in questions] == [
        len(loaded.tokenizer(f"Question: {q}\nAnswer:", split_special_tokens=True)["input_ids"]) for q in questions
    ]
    assert [tokens.ids(p) for p in prompts] == whole


def test_a_tokenizer_that_cannot_join_prompt_parts_tokenises_each_prompt_whole():
    """SentencePiece puts a space before a text's first word: joined parts would differ from the whole prompt."""
    from tokenizers import SentencePieceBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from engine.formatting import PromptTokens

    pairs = read_dataset(DATA_DIR / "sample.json")
    trainer = SentencePieceBPETokenizer()
    trainer.train_from_iterator([f"{p.prompt} {p.response}" for p in pairs], vocab_size=400, show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=trainer, eos_token="</s>", pad_token="</s>")
    tokens = PromptTokens(tokenizer)
    assert not tokens.joins
    prompt = format_grounded("Who guards the Luminary Stone?", [pairs[0].response, pairs[1].response])
    tokens.question("Who guards the Luminary Stone?")
    assert tokens.ids(prompt) == tokenizer(prompt, split_special_tokens=True)["input_ids"]


def test_a_grounded_fine_tunes_held_out_loss_is_the_loss_of_what_it_learnt_given_its_notes(tiny_gpt2, tmp_path, tiny_heldout):
    """The held-out loss a grounded fine-tune logs (and plots beside its training loss, engine.plots) is measured as the
    model answers: the notes retrieval gives each held-out question, then the answer head it learnt. It was the loss of
    whole answers to bare questions, something a grounded model is never taught, so its curve sat above the training
    loss whatever the model learnt."""
    from engine.evaluate import answer_loss, examples_loss
    from engine.models import context_length
    from engine.serving import load_version, version_grounding
    from engine.versions import ModelStore
    from qabot.dataset import QAPair
    from qabot.heldout import read_heldout
    from tests.conftest import release_tiny

    store = ModelStore(tmp_path / "models")
    data = write_pairs(tmp_path / "tiny.json", TINY_PAIRS)
    outcome = release_tiny(
        store, data, tiny_gpt2, tmp_path / "cache", grounded=True, epochs=60, eval_from_epoch=60, eval_data=tiny_heldout
    )
    logged = [e["heldout_loss"] for e in outcome.trained.result.log_history if "heldout_loss" in e]
    assert len(logged) == 1  # the last epoch's, whose weights are the version's
    info = store.current()
    loaded, _ = load_version(store, info.name, device="cpu")
    grounding = version_grounding(store, info)
    held = read_heldout(tiny_heldout)
    prompts, _, _ = grounding.prompts([h.question for h in held])
    heads = [grounding.heads.head(h.answer) for h in held]
    learnt = list(zip(prompts, heads, strict=True))
    limit = context_length(loaded.model.config)
    assert logged[0] == pytest.approx(examples_loss(loaded.model, loaded.tokenizer, learnt, max_length=limit), abs=1e-3)
    bare = answer_loss(loaded.model, loaded.tokenizer, [QAPair(h.question, h.answer) for h in held])
    assert abs(logged[0] - bare) > 0.05  # what it logged before: whole answers to bare questions
