"""Decline thresholds calibrated on the dataset being trained, when it is trained, and stored with the version.

The cosine floor: below it nothing in the data is about the question and the model is not asked. How close "nothing
to do with us" comes depends on the data: off-topic messages (engine.offtopic) scored up to 0.51 against the lore
sample's index and up to 0.35 against the pebble FAQ's, while a user's "heic support?" scored 0.14 against its own
FAQ pair. So the floor is read off the dataset's own index: the FLOOR_QUANTILE quantile of the off-topic messages'
scores, and never above the score of all but REWRITES_LOST of the training questions rewritten as users type them
(qabot.rewrites). Past the floor, a question nearer one of the off-topic messages than to the data (its cosine to the
nearest message above the data's score by more than the margin) is declined: the margin is the most that all but
REWRITES_LOST of the rewrites reach, and never below 0 (on the pebble FAQ this turned away "bitcoin price today" and
"translate good morning to japanese", which scored above its floor). What passes both is left to the model, which
learnt to decline off-topic messages with its notes (engine.grounding.build_examples). Complaints that name what the
data is about (engine.offtopic.complaints: "pebble is garbage") are scored the same way with a margin of their own, at
least COMPLAINT_MARGIN: they share the data's words, so they pass the floor and are nearer the data than any message.

The decline confidence is the fine-tuned model's: after training, the model reads (with the notes retrieval gives
them) questions it must answer, users' rewrites of its training questions, and questions it must decline: the same
questions with their own pair taken out of the notes (an unknown fact of a known subject) and off-topic messages.
The gate's threshold is the probability of the decline's first token that best separates the two (most declines of the
second kind, fewer of the first), with at most WRONG_DECLINES of the answerable ones above it, never below
GATE_FLOOR, and above what the model gives any of the dataset's own questions asked as they were taught (so the model
declines none of them). A setting overrides it (QABOT_DECLINE_CONFIDENCE). The English-only rules (names, numbers and
times) are judged against the notes' dataset itself each time it changes (Grounding.rules_that_hold).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from engine.formatting import length_batches
from engine.grounding import DECLINE_CONFIDENCE, MIN_SCORE, Grounding, decline_token
from engine.offtopic import OFF_TOPIC, complaints, offtopic_closeness, subjects
from engine.retrieval import Embedder, PairIndex
from engine.steering import first_logits
from engine.textformat import fitted_prompt
from qabot.dataset import QAPair
from qabot.rewrites import user_rewrites

# Most plain off-topic messages are turned away before the model, which declines them far less reliably than the floor
# does when its notes are long. Higher, the floor met the tail of off-topic scores and turned away real users' wording
# (the 90th percentile: 5 of pebble's 100 held-out questions; here: 1, and none of the sample's).
FLOOR_QUANTILE = 0.85
REWRITES_LOST = 0.01  # the floor may turn away at most this share of users' rewrites of the training questions
REWRITES_ASKED = 400  # rewrites scored at most (a few seconds of embedding)
GATE_ASKED = 32  # questions of each kind the model reads to calibrate its decline gate (one forward pass each)
# Users' rewrites the gate reads: the share above the threshold must be measured finely. With 32, the pebble FAQ's gate
# came out at 0.88, which declined 10 of 180 rewrites (5.6%) and 12 of its 100 held-out questions.
GATE_ANSWERABLE = 128
# The lowest gate calibration may choose. Users' rewrites (lower case, typos, keywords) are declined far less often than
# paraphrases in other words, so the gate they choose is too low for the latter: on the sample's heads model a gate of
# 0.7 declined 1 of 40 rewrites but 8 of its 60 held-out paraphrases (51/60 right); 0.9 declined none of either (58/60
# right) and 2 fewer of its 48 unanswerable questions (41 to 39). Pebble's whole-note models: 0.88 gave 78/100 held-out
# right, 0.95 86/100; its heads model declines nothing at 0.7 or above.
GATE_FLOOR = 0.9
WRONG_DECLINES = 0.03  # share of answerable questions the gate may let the model decline
# The least margin of the complaint rule. Users' rewrites are near their own pair, so they leave the margin at 0, but
# users' own questions that name the subject sit far nearer a complaint: "who owns this server" and "server ip pls"
# 0.12 and 0.09 nearer "server sucks" than to their club FAQ, "why is reverb so laggy" 0.04; the complaints of four
# FAQs of bench/fresh/ 0.17 to 0.37 ("reverb devs are clowns", "this server sucks"). Measured on the seven sets of
# data/ and bench/fresh/ then (session 19), with no held-out question within 0.03 of it.
COMPLAINT_MARGIN = 0.15


@dataclass(frozen=True)
class Calibration:
    """Thresholds for one version's declines, and what they were read from."""

    min_score: float = MIN_SCORE
    decline_confidence: float = DECLINE_CONFIDENCE
    offtopic_quantile: float | None = None  # the off-topic messages' FLOOR_QUANTILE score against the index
    rewrites_floor: float | None = None  # the score that all but REWRITES_LOST of the rewrites reach
    # A question nearer an off-topic message than to the data by more than this is declined; None: no such rule
    offtopic_margin: float | None = None
    complaint_margin: float | None = None  # the same for the complaints about the data (engine.offtopic); None: off

    def to_meta(self) -> dict[str, float | None]:
        return {k: None if v is None else round(v, 4) for k, v in asdict(self).items()}

    def overridden(
        self,
        min_score: float | None = None,
        decline_confidence: float | None = None,
        offtopic_margin: float | None = None,
        complaint_margin: float | None = None,
    ) -> Calibration:
        """These thresholds with the settings' overrides (QABOT_MIN_SCORE, QABOT_DECLINE_CONFIDENCE,
        QABOT_OFFTOPIC_MARGIN, QABOT_COMPLAINT_MARGIN) where given."""
        return replace(
            self,
            min_score=self.min_score if min_score is None else min_score,
            decline_confidence=self.decline_confidence if decline_confidence is None else decline_confidence,
            offtopic_margin=self.offtopic_margin if offtopic_margin is None else offtopic_margin,
            complaint_margin=self.complaint_margin if complaint_margin is None else complaint_margin,
        )

    @classmethod
    def from_meta(cls, meta: dict | None) -> Calibration:
        """A version's stored calibration; a version from before calibration keeps the old constants."""
        known = {k: float(v) for k, v in (meta or {}).items() if k in cls.__dataclass_fields__ and v is not None}
        return cls(**known)


def calibrate(pairs: list[QAPair], index: PairIndex, embedder: Embedder, *, seed: int = 0) -> Calibration:
    """The floor for this dataset, from its index: see the module's docstring."""
    if not pairs:
        return Calibration()
    offtopic = index.scores(embedder, list(OFF_TOPIC)).max(dim=1).values
    rewrites = [r.question for r in user_rewrites(pairs, limit=REWRITES_ASKED, seed=seed)] or [pairs[0].prompt]
    encoded = embedder.encode(rewrites)  # once: for the index and for the off-topic messages
    answerable = index.scores(embedder, rewrites, encoded).max(dim=1).values
    high_offtopic = float(offtopic.quantile(FLOOR_QUANTILE))
    low_answerable = float(answerable.quantile(REWRITES_LOST))
    nearer_offtopic = torch.tensor(offtopic_closeness(embedder, rewrites, encoded)) - answerable
    complaint_margin = None  # no subject (engine.offtopic.subjects), no complaints
    if said := complaints(subjects(pairs, embedder.vocabulary)):
        nearer_complaint = (encoded @ embedder.encode(said).T).max(dim=1).values - answerable
        complaint_margin = max(COMPLAINT_MARGIN, float(nearer_complaint.quantile(1 - REWRITES_LOST)))
    return Calibration(
        min_score=max(0.0, min(high_offtopic, low_answerable)),
        offtopic_quantile=high_offtopic,
        rewrites_floor=low_answerable,
        offtopic_margin=max(0.0, float(nearer_offtopic.quantile(1 - REWRITES_LOST))),
        complaint_margin=complaint_margin,
    )


def decline_probabilities(model: Any, tokenizer: Any, prompts: list[str], token_id: int, batch: int = 16) -> list[float]:
    """The probability a model gives `token_id` as the first token of its answer to each grounded prompt, read as the
    answer path reads it (engine.steering.first_logits: a left-padded row gets the positions it gets alone). Prompts
    of similar length share a batch: about 10% less time on the sample's calibration (26-28 s against 24 s on 2 cores),
    with the same threshold."""
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    ids = tokenizer(list(prompts), split_special_tokens=True)["input_ids"] if prompts else []
    found = [0.0] * len(ids)
    for chosen in length_batches(ids, batch):
        encoded = tokenizer.pad({"input_ids": [ids[i] for i in chosen]}, return_tensors="pt")
        logits = first_logits(model, encoded["input_ids"].to(device), encoded["attention_mask"].to(device))
        for i, p in zip(chosen, logits.softmax(-1)[:, token_id].tolist(), strict=True):
            found[i] = p
    return found


def calibrate_decline(
    model: Any, tokenizer: Any, grounding: Grounding, pairs: list[QAPair], *, prompt_tokens: int, seed: int = 0
) -> float:
    """The decline gate's threshold for this fine-tuned model and dataset: see the module's docstring. Prompts keep
    at most `prompt_tokens` tokens (the farthest notes go first), as when answering."""
    rng = random.Random(seed)
    asked = rng.sample(pairs, min(GATE_ASKED, len(pairs)))
    if len(pairs) <= grounding.notes or not asked:
        return DECLINE_CONFIDENCE

    def fits(prompt: str) -> bool:
        return len(tokenizer(prompt, split_special_tokens=True)["input_ids"]) <= prompt_tokens

    rewrites = user_rewrites(pairs, limit=GATE_ANSWERABLE, seed=seed)
    answerable, _, _ = grounding.prompts([r.question for r in rewrites], fits)
    hits = grounding.index.search(grounding.embedder, [p.prompt for p in asked], k=grounding.notes + 1)
    unknown = [
        fitted_prompt(
            p.prompt,
            [h.pair.response for h in reversed(found) if h.pair != p][-grounding.notes :],
            fits,
            grounding.heads,
        )
        for p, found in zip(asked, hits, strict=True)
    ]
    offtopic, _, _ = grounding.prompts(rng.sample(OFF_TOPIC, min(GATE_ASKED // 2, len(OFF_TOPIC))), fits)
    token = decline_token(tokenizer, grounding.decline)
    model.eval()
    keep = decline_probabilities(model, tokenizer, answerable, token)
    drop = decline_probabilities(model, tokenizer, unknown + offtopic, token)
    # Never decline a question the model was taught, asked word for word with the notes it gets then. The fine-tune's
    # randomness decides how sure the model is on a few of its own pairs: over 8 seeds of batch order, pebble's models
    # declined 0 to 3 of their 60 training questions past a gate of 0.9 ("How can I help translate pebble?", whose
    # note's head ends before its link), and with them users' questions about the same pair.
    own, _, _ = grounding.prompts([p.prompt for p in pairs], fits)
    lowest = max(GATE_FLOOR, min(0.999, max(decline_probabilities(model, tokenizer, own, token)) + 1e-4))
    best, best_gap = None, -1.0
    for threshold in sorted({lowest, *(min(0.999, p + 1e-4) for p in keep + drop)}):
        if threshold < lowest:
            continue
        wrong = sum(p >= threshold for p in keep) / len(keep)
        if wrong > WRONG_DECLINES:
            continue
        gap = sum(p >= threshold for p in drop) / len(drop) - wrong
        if gap > best_gap:
            best, best_gap = threshold, gap
    return round(best if best is not None else 0.999, 4)
