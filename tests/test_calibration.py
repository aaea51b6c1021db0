"""Declines calibrated on the dataset being trained: each dataset gets its own floor, and rules that its own data
contradicts, or that read a language it is not written in, do not apply."""

from __future__ import annotations

import pytest

from engine.calibration import Calibration, calibrate
from engine.grounding import Grounding
from engine.retrieval import Embedder, PairIndex
from qabot.dataset import QAPair, read_dataset
from qabot.heldout import read_heldout
from tests.conftest import DATA_DIR


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder("minilm")  # the lighter of the two (engine.embedders); what is tested here holds for both


@pytest.fixture(scope="module")
def calibrated(embedder):
    """Each example dataset's index and calibration, built once for the module's tests."""
    found = {}

    def get(data: str) -> tuple[PairIndex, Calibration]:
        if data not in found:
            pairs = read_dataset(DATA_DIR / f"{data}.json")
            index = PairIndex.build(pairs, embedder)
            found[data] = (index, calibrate(pairs, index, embedder))
        return found[data]

    return get


@pytest.mark.parametrize("data", ["sample", "faq"])
def test_each_dataset_gets_a_floor_that_lets_its_users_wording_through(embedder, calibrated, data):
    index, calibration = calibrated(data)
    grounding = Grounding(index, embedder, min_score=calibration.min_score)
    heldout = [h.question for h in read_heldout(DATA_DIR / f"{data}.heldout.json")]
    floored = [q for q, hits in zip(heldout, index.search(embedder, heldout), strict=True) if hits[0].score < grounding.min_score]
    assert len(floored) <= 0.02 * len(heldout), floored  # unseen user questions are not turned away before the model
    assert calibration.min_score <= calibration.offtopic_quantile and calibration.min_score <= calibration.rewrites_floor


@pytest.mark.parametrize(
    ("data", "message"), [("faq", "bitcoin price today"), ("sample", "How many planets are in our solar system?")]
)
def test_a_message_nearer_off_topic_chatter_than_the_data_is_declined_before_the_model(embedder, calibrated, data, message):
    """Off-topic messages that score above the floor (they share a word or two with the data) are declined when an
    off-topic message is nearer them than anything in the data; the margin is calibrated so users' wording passes."""
    index, calibration = calibrated(data)
    assert calibration.offtopic_margin is not None and calibration.offtopic_margin >= 0
    grounding = Grounding(index, embedder, min_score=calibration.min_score, offtopic_margin=calibration.offtopic_margin)
    hits = index.search(embedder, [message])[0]
    assert hits[0].score >= grounding.min_score  # the floor lets it through
    assert "nearer" in grounding.reason_to_decline(message, hits, grounding.offtopic_closeness([message])[0])
    heldout = [h.question for h in read_heldout(DATA_DIR / f"{data}.heldout.json")]
    near = grounding.offtopic_closeness(heldout)
    turned = [
        q
        for q, found, n in zip(heldout, index.search(embedder, heldout), near, strict=True)
        if "nearer" in (grounding.reason_to_decline(q, found, n) or "")
    ]
    assert len(turned) <= 0.02 * len(heldout), turned


def test_the_off_topic_messages_are_none_of_the_questions_the_bot_is_measured_on(embedder):
    """engine.offtopic's messages calibrate the floor, teach the model to decline and turn messages away before it: one
    that is an evaluation question reworded ("who painted the mona lisa" for the sample's "Who painted the Mona Lisa?")
    would score the bot on what it was taught. None comes within 0.7 cosine of any question of data/ or bench/fresh/
    (their training, held-out and unanswerable questions); greetings and insults of the same kind stay below it."""
    import json

    from engine.offtopic import OFF_TOPIC

    files = sorted([*DATA_DIR.glob("*.json"), *(DATA_DIR.parent / "bench" / "fresh").glob("*.json")])
    assert len(files) >= 12, files
    asked = [item.get("question") or item["prompt"] for path in files for item in json.loads(path.read_text("utf-8"))]
    nearest = (embedder.encode(list(OFF_TOPIC)) @ embedder.encode(asked).T).max(dim=1)
    close = [(m, asked[i], round(float(s), 2)) for m, s, i in zip(OFF_TOPIC, *nearest, strict=True) if s >= 0.7]
    assert close == [], close


def test_floors_differ_with_the_data(calibrated):
    floors = {data: calibrated(data)[1].min_score for data in ("sample", "faq")}
    assert floors["sample"] - floors["faq"] > 0.03, floors  # one constant would fit one of them only


def test_a_rule_its_own_answers_break_does_not_apply(embedder):
    pairs = [
        QAPair("How much does pebble cost?", "Nothing: pebble is open source, and you host it yourself."),
        QAPair("When is the next release?", "A feature release ships every six weeks."),
        QAPair("What is pebble?", "A self-hosted photo library."),
        QAPair("Who runs the project?", "The Pebble Photos Foundation."),
    ]
    grounding = Grounding(PairIndex.build(pairs, embedder), embedder)
    names, kinds = grounding.rules_that_hold()
    assert names and "time" in kinds and "number" not in kinds  # "how much" answered without a number: that rule is off
    assert grounding.reason_to_reject("how much does it cost", pairs[0].response) is None
    assert grounding.reason_to_reject("When does it ship?", "Pebble ships from the Foundation.") is not None


def test_english_rules_do_not_apply_to_a_german_dataset(embedder):
    pairs = [
        QAPair("Wie installiere ich pebble?", "Die Installation erfolgt über Docker Compose und dauert etwa zehn Minuten."),
        QAPair("Welche Sprachen werden unterstützt?", "Die Oberfläche gibt es auf Deutsch, Englisch und Französisch."),
        QAPair("Was kostet pebble cloud?", "Der kleinste Tarif kostet drei Euro im Monat."),
        QAPair("Wo bekomme ich Hilfe?", "Im Forum und im Matrix-Raum der Gemeinschaft."),
    ]
    grounding = Grounding(PairIndex.build(pairs, embedder), embedder)
    assert grounding.rules_that_hold() == (False, ())
    question = "Wie lange dauert die Installation auf einem Raspberry?"  # capitalised nouns are not unknown names
    hits = grounding.index.search(embedder, [question])[0]
    assert grounding.reason_to_decline(question, hits) is None


def test_the_gate_is_calibrated_on_the_probabilities_the_answer_path_reads(tiny_model):
    """Calibration reads the decline's probability in left-padded batches: each prompt, batched beside a longer one,
    must get what it gets alone, as on the answer path (on GPT-2's absolute positions a padded row read shifted
    positions, so the gate was chosen on probabilities that answering never sees)."""
    from engine.calibration import decline_probabilities
    from engine.models import load_model

    loaded = load_model(str(tiny_model), device="cpu", dtype="float32")
    prompts = [
        "Note: Elara guards the Luminary Stone.\nQuestion: who guards it\nAnswer:",
        "Note: The Luminary Stone is kept inside the Sanctum of Veyra, below the old tower.\nNote: Seren is the larger "
        "moon.\nQuestion: Where is the Luminary Stone kept, and who keeps it?\nAnswer:",
    ]
    token = loaded.tokenizer(" I", add_special_tokens=False)["input_ids"][0]
    together = decline_probabilities(loaded.model, loaded.tokenizer, prompts, token)
    alone = [decline_probabilities(loaded.model, loaded.tokenizer, [p], token)[0] for p in prompts]
    assert together == pytest.approx(alone, rel=1e-4, abs=1e-7)


def test_the_model_never_declines_a_question_it_was_taught(tiny_gpt2, embedder, tmp_path):
    """The fine-tune's randomness can leave a model sure it knows nothing of one of its own pairs (pebble: up to 3 of
    its 60 training questions declined past a gate of 0.9, over 8 seeds). The gate is set above what the model gives
    any question it was taught, so that asked word for word, each gets its answer (one pair of 40: its users' rewrites
    are too few of those the gate reads to move it)."""
    from engine.calibration import GATE_FLOOR, calibrate_decline, decline_probabilities
    from engine.generate import Answerer
    from engine.grounding import DECLINE, decline_token, learnt_answers
    from engine.models import load_model
    from engine.training import TrainConfig, fine_tune

    places = ["Aurelhaven", "Thornmere", "Greywatch", "Port Callow", "Blackspire", "Orlenmoor", "Veyra", "Stormhold"]
    things = [("gate", "Elara"), ("library", "Orrin"), ("harbour", "Malvek"), ("mill", "Seren"), ("forge", "Tobias")]
    pairs = [QAPair(f"Who keeps the {t} of {p}?", f"{k} of {p} keeps the {t}.") for t, k in things for p in places]
    loaded = load_model(str(tiny_gpt2), device="cpu", dtype="float32")
    model, tokenizer = loaded.model, loaded.tokenizer
    grounding = Grounding(PairIndex.build(pairs, embedder), embedder, min_score=0.0)
    prompts, _, _ = grounding.prompts([p.prompt for p in pairs])
    taught = [(prompts[0], DECLINE)] * 8 + [(p, pair.response) for p, pair in zip(prompts, pairs, strict=True)][1:]
    config = TrainConfig(epochs=40, learning_rate=3e-3, checkpoints=False, eval_questions=0, trained_share=1.0)
    fine_tune(model, tokenizer, pairs, config=config, run_dir=tmp_path, examples=taught)
    model.eval()
    own = decline_probabilities(model, tokenizer, prompts, decline_token(tokenizer, DECLINE))
    assert own[0] > GATE_FLOOR  # the model learnt to decline its first pair's own question
    gate = calibrate_decline(model, tokenizer, grounding, pairs, prompt_tokens=512)
    assert gate > max(own)
    grounding.decline_confidence, grounding.learnt = gate, learnt_answers(pairs)  # as a released version
    answer = Answerer(model, tokenizer, max_new_tokens=16, grounding=grounding).answer([pairs[0].prompt])[0]
    assert not answer.declined and answer.text == pairs[0].response


def test_a_complaint_that_names_what_the_data_is_about_is_declined_before_the_model(embedder, calibrated):
    """People post complaints in a community's chat ("pebble is garbage"). They share the data's own word, so they pass
    the floor and sit nearer the data than any off-topic message, and the model, reading notes about pebble, answered
    them. Complaints about the data's subject (engine.offtopic.complaints) turn them away, with a margin of their own
    that users' questions naming pebble stay within."""
    index, calibration = calibrated("faq")
    assert calibration.complaint_margin is not None and calibration.complaint_margin >= 0.15
    thresholds = {"min_score": calibration.min_score, "offtopic_margin": calibration.offtopic_margin}
    with_rule = Grounding(index, embedder, complaint_margin=calibration.complaint_margin, **thresholds)
    without = Grounding(index, embedder, **thresholds)
    messages = ["pebble is absolute trash", "honestly pebble sucks so much"]  # not the rule's own wording

    def turned_away(grounding: Grounding, questions: list[str]) -> list[str]:
        near = grounding.offtopic_closeness(questions)
        found = index.search(embedder, questions)
        return [q for q, hits, n in zip(questions, found, near, strict=True) if grounding.reason_to_decline(q, hits, n)]

    assert turned_away(without, messages) == []  # what the bot did before: both went to the model
    assert turned_away(with_rule, messages) == messages
    heldout = [h.question for h in read_heldout(DATA_DIR / "faq.heldout.json")]
    assert turned_away(with_rule, heldout) == turned_away(without, heldout)  # no user question of pebble's lost to it
    # a complaint about something the data answers is a question: it still gets its answer
    moaning = ["i hate that pebble has no dark mode", "pebble mobile is garbage at backing up in the background"]
    assert turned_away(with_rule, moaning) == []


def test_complaints_name_the_datasets_subject_and_hold_only_for_english(embedder):
    from engine.offtopic import complaints, subjects

    common = embedder.vocabulary
    assert subjects(read_dataset(DATA_DIR / "faq.json"), common) == ["pebble"]
    assert subjects(read_dataset(DATA_DIR / "sample.json"), common) == ["eldoria"]
    assert "pebble is garbage" in complaints(subjects(read_dataset(DATA_DIR / "faq.json"), common))
    tied = [
        QAPair("Is zorblax quick?", "zorblax and quibbit are both quick."),
        QAPair("Is quibbit old?", "quibbit is as old as zorblax."),
    ]
    assert subjects(tied, common) == subjects(tied[::-1], common) == ["quibbit"]  # a tie goes the same way in every process
    german = [
        QAPair("Was kostet pebble?", "pebble ist kostenlos und quelloffen; du betreibst es auf deinem eigenen Server."),
        QAPair("Wie installiere ich pebble?", "Lade die Compose-Datei herunter und starte sie mit Docker."),
        QAPair("Wo bekomme ich Hilfe?", "Frag im Forum oder im Chat der Gemeinschaft nach."),
        QAPair("Gibt es eine App?", "Ja, für Android und iOS, kostenlos in beiden Läden."),
    ]
    grounding = Grounding(PairIndex.build(german, embedder), embedder, offtopic_margin=0.0, complaint_margin=0.15)
    assert grounding.complaint_vectors() is None  # an English complaint says nothing about German data
