"""Grounded answers: notes retrieved from the dataset go before the question; the model answers from them or declines.

Retrieval-augmented fine-tuning (Zhang et al. 2024, RAFT): each training question gets `notes` notes
holding its own answer among retrieved distractors; a share of the examples get notes WITHOUT their
answer and learn the decline text. Most of those negatives are the nearest other pairs (mostly other
facts of the same entity: the hard case), the rest random pairs. Notes hold answers only, never
questions, so a training question is never a verbatim copy of a note (the shortcut the issue measured).

Measured with the bundled model on the sample (3 epochs): with the gold note at a random place, the model
often copied another fact of the same entity although retrieval had put the right pair nearest for 160/160
training questions and 58/60 paraphrases; so the notes are laid out as at answering time, nearest next to
the question, and the gold note sits there in most examples.

Before the model, `Grounding.reason_to_decline` turns away what the data cannot hold: a question far from
every pair, one that names something the data never mentions, or one that names something its nearest pair is not
about.
"""

from __future__ import annotations

import difflib
import math
import random
import re
from dataclasses import dataclass, field
from typing import Any

from engine.answer_checks import ANSWER_KINDS, echo_reason
from engine.lexical import WRITTEN_WORD, word_key, words
from engine.offtopic import OFF_TOPIC, complaints, offtopic_closeness, subjects
from engine.retrieval import Embedder, Hit, PairIndex
from engine.textformat import WHOLE_NOTES, HeadRule, fitted_notes, format_answer, format_grounded
from qabot.dataset import QAPair
from qabot.rewrites import rewrite

DECLINE = "I don't know."  # what a grounded model learns to say when its notes lack the answer
# Below this score (mean cosine over a pair's views, engine.retrieval) nothing in the data is about the question. Each
# version calibrates its own on its dataset (engine.calibration: 0.26 on the lore sample, 0.18 on the pebble FAQ); this
# is the floor of a version from before calibration and of a Grounding built without one.
MIN_SCORE = 0.25
# A grounded model may start its decline only when it gives the decline's first token at least this probability;
# otherwise it answers from its notes. Measured on the sample (bundled model, 4 epochs): paraphrases it declined
# although their pair was nearest had 0.48-0.93 (median 0.64), unknown facts it declined 0.65-0.98 (median 0.89).
DECLINE_CONFIDENCE = 0.7
GOLD_NEAREST = 0.8  # share of training examples whose own note sits where retrieval puts the nearest pair
HARD_NEGATIVES = 0.75  # share of negatives whose notes are the nearest other pairs rather than random ones
REWRITTEN = 0.3  # share of positives whose question is rewritten as users type it
OFF_TOPIC_SHARE = 0.1  # off-topic examples, as a share of the pairs (at most all of engine.offtopic's)
CLOSE_NAME = 0.8  # difflib ratio above which a name counts as a misspelling of a word of the data
# The name and number/time rules read English: they apply to a dataset whose words are at least this share English
# (words of the embedder's English vocabulary: 82% on the lore sample, 87% on the pebble FAQ; 38-41% for German,
# French and Italian FAQ text).
ENGLISH_SHARE = 0.6
_SENTENCE_END = re.compile(r"[.!?:;]\s*$|\n\s*$")  # what ends the text before a word that starts a sentence


def _mentioned(word: str, known: set[str]) -> bool:
    """A word of `known` (casefolded words), or a near-miss spelling of one."""
    key = word_key(word)
    return key in known or word.casefold() in known or bool(difflib.get_close_matches(key, known, n=1, cutoff=CLOSE_NAME))


def learnt_answers(pairs: list[QAPair]) -> frozenset[str]:
    """The answers a version was fine-tuned on, whitespace folded (`Grounding.learnt`)."""
    return frozenset(" ".join(p.response.split()) for p in pairs)


def decline_token(tokenizer: Any, decline: str) -> int:
    """The first token of the decline as the model produces it after `Answer:`: what the decline gate watches."""
    return tokenizer(format_answer(decline), add_special_tokens=False)["input_ids"][0]


@dataclass
class Grounding:
    """What a grounded answerer needs: the index of the dataset it answers from and its embedder."""

    index: PairIndex
    embedder: Embedder
    notes: int = 3
    decline: str = DECLINE
    min_score: float = MIN_SCORE
    decline_confidence: float = DECLINE_CONFIDENCE
    offtopic_margin: float | None = None  # engine.calibration; None: the off-topic rule is off
    complaint_margin: float | None = None  # the same rule's margin for complaints about the data; None: off
    heads: HeadRule = WHOLE_NOTES  # how much of each note the prompt shows, as the version learnt it (HEADS)
    # The answers the version was fine-tuned on (whitespace folded); None: unknown. A question whose notes are all among
    # them is answered by the model's choice among its notes; one with a note added or changed since (/addqa, an
    # edit) is decoded, so a note that begins otherwise than the model learnt still wins (bench/forget.py: a choice
    # gave 13 of 20 corrected sample answers, decoding and matching 20 of 20).
    learnt: frozenset[str] | None = field(default=None, repr=False, compare=False)
    # Computed once per grounding from its index; not init fields, so `dataclasses.replace(g, index=...)` (a grounding
    # with other notes: engine.release.without) starts without them instead of reading the old dataset's words.
    _vocabulary: set[str] | None = field(default=None, init=False, repr=False, compare=False)
    _rules: tuple[bool, tuple[str, ...]] | None = field(default=None, init=False, repr=False, compare=False)
    _complaints: Any = field(default=None, init=False, repr=False, compare=False)
    _subjects: tuple[str, ...] | None = field(default=None, init=False, repr=False, compare=False)

    def vocabulary(self) -> set[str]:
        """Every word of the dataset's questions and answers, casefolded (computed once per index)."""
        if self._vocabulary is None:
            self._vocabulary = {w.casefold() for p in self.index.pairs for w in words(f"{p.prompt} {p.response}")}
        return self._vocabulary

    def rules_that_hold(self) -> tuple[bool, tuple[str, ...]]:
        """(the name rule applies, the answer kinds that apply), judged on the dataset itself, once per index.

        Both rules read English, so they apply only to an English dataset. An answer kind applies only if every pair of
        the data whose question asks for it has an answer that holds it: a FAQ that answers "How much does it cost?"
        with "nothing, it is open source" must not have that rule decline its own answer.
        """
        if self._rules is None:
            vocabulary, common = self.vocabulary(), self.embedder.vocabulary
            every = [w.casefold() for p in self.index.pairs for w in words(f"{p.prompt} {p.response}")]
            english = bool(every) and sum(w in common for w in every) / len(every) >= ENGLISH_SHARE
            kinds = tuple(
                kind
                for asks, holds, kind in ANSWER_KINDS
                if english and all(holds.search(p.response) for p in self.index.pairs if asks.match(p.prompt.strip()))
            )
            self._rules = (english and bool(vocabulary), kinds)
        return self._rules

    def names(self, question: str) -> list[str]:
        """The names in a question: capitalised words past the first (three letters or more). In a question written
        in sentence case a capitalised common word is a name ("the capital of France"); in Title Case ("Who Protects
        The Stone?") capitals say nothing, so there only words outside the embedder's common English vocabulary are.
        Nor do they at the start of a later sentence ("Hi! Tell me: ...", "Sorry, new here. Quick question: ..."),
        and "I'm", "I've", "I'd", "I'll" are never names."""
        common = self.embedder.vocabulary
        later = list(WRITTEN_WORD.finditer(question))[1:]
        sentence_case = any(m.group()[0].islower() for m in later if len(m.group()) >= 3)
        found = []
        for match in later:
            word = match.group()
            if not word[0].isupper() or len(key := word_key(word)) < 3 or key.startswith(("i'", "i’")):
                continue
            starts_sentence = _SENTENCE_END.search(question, 0, match.start()) is not None
            if key not in common or (sentence_case and not starts_sentence):
                found.append(word)
        return found

    def unknown_names(self, question: str) -> list[str]:
        """Names in the question that the data never mentions: neither a word of the data nor a near-miss spelling of
        one."""
        known = self.vocabulary()
        return [word for word in self.names(question) if not _mentioned(word, known)]

    def names_elsewhere(self, question: str, pair: QAPair) -> list[str]:
        """The question's names, when `pair` (the nearest) mentions none of them: the question is about something else
        than the answer it would get ("How many people live in Port Marrowick?" nearest to "How many people live in
        Aurelhaven?"). A near-miss spelling of a word of the pair counts as mentioned. One name mentioned is enough: a
        name many pairs share (the world's, the product's: "Eldoria" is in 36 of the sample's 160 pairs) is often
        added to a question ("In Eldoria, who guards the Luminary Stone?") whose answer does not repeat it. Nor is the
        data's own subject (engine.offtopic.subjects) alone such a name: "How many years old is the queen of Ashkarra?"
        is about the queen, and her pair need not name the city that all the data is about."""
        text = {word_key(w) for w in words(f"{pair.prompt} {pair.response}")}
        names = self.names(question)
        missing = [word for word in names if not _mentioned(word, text)]
        return [word for word in missing if word_key(word) not in self.subjects()] if len(missing) == len(names) else []

    def subjects(self) -> tuple[str, ...]:
        """What the whole dataset is about (engine.offtopic.subjects), found once per index: for the name rule and the
        complaints."""
        if self._subjects is None:
            self._subjects = tuple(subjects(self.index.pairs, self.embedder.vocabulary))
        return self._subjects

    def offtopic_closeness(self, questions: list[str], encoded: Any = None) -> list[float | None]:
        """Each question's similarity to the nearest off-topic message, where the off-topic rule is on (`encoded`:
        the questions as the embedder gave them, when the caller has them).

        Where the complaint rule is on too (it rides on the off-topic rule), a complaint about the data
        (engine.offtopic.complaints) counts among those messages, shifted by the difference of the two margins: a
        question is declined when it is nearer a complaint than to the data by more than `complaint_margin`."""
        if self.offtopic_margin is None:
            return [None] * len(questions)
        encoded = self.embedder.encode(questions) if encoded is None and questions else encoded
        near = offtopic_closeness(self.embedder, questions, encoded)
        complained = self.complaint_vectors()
        if complained is None or not len(complained) or not questions:
            return near
        shift = self.complaint_margin - self.offtopic_margin
        closest = (encoded @ complained.T).max(dim=1).values.tolist()
        return [max(n, c - shift) for n, c in zip(near, closest, strict=True)]

    def complaint_vectors(self) -> Any:
        """The dataset's complaints, embedded once per index; None where the rule is off (or the off-topic rule it rides
        on is) or does not hold (not English)."""
        if self.complaint_margin is None or self.offtopic_margin is None or not self.rules_that_hold()[0]:
            return None
        if self._complaints is None:
            self._complaints = self.embedder.encode(complaints(self.subjects()))
        return self._complaints

    def reason_to_decline(self, question: str, hits: list[Hit], offtopic: float | None = None) -> str | None:
        """Why the data cannot answer the question, judged before asking the model; None when the model should try.
        `offtopic` is the question's `offtopic_closeness`."""
        if not hits or hits[0].score < self.min_score:
            return "nothing in the data is close to the question"
        if offtopic is not None and self.offtopic_margin is not None and offtopic - hits[0].score > self.offtopic_margin:
            return "the question is nearer a message the data does not answer (chatter, a complaint) than to the data"
        if not self.rules_that_hold()[0]:
            return None
        if names := self.unknown_names(question):
            return f"the data never mentions {', '.join(names)}"
        if names := self.names_elsewhere(question, hits[0].pair):
            return f"the nearest answer in the data is not about {', '.join(names)}"
        return None

    def reason_to_reject(self, question: str, answer: str, notes: list[str] | None = None) -> str | None:
        """Why the model's answer does not answer the question: it lacks the number or time asked for, it only
        restates the question, or it states what none of its `notes` says (engine.answer_checks); None if fine."""
        kinds = self.rules_that_hold()[1]
        for asks, holds, kind in ANSWER_KINDS:
            if kind in kinds and asks.match(question.strip()) and not holds.search(answer):
                return f"the question asks for a {kind} and the answer has none"
        return echo_reason(question, answer, notes or [])

    def prompts(
        self, questions: list[str], fits=lambda prompt: True, encoded: Any = None
    ) -> tuple[list[str], list[list[Hit]], list[list[Hit]]]:
        """Grounded prompts (the farthest notes dropped until `fits`), the retrieved pairs each was given, and those
        its prompt shows as notes, nearest first (`encoded`: the questions as the embedder gave them, when the caller
        has them)."""
        hits = self.index.search(self.embedder, questions, k=self.notes, encoded=encoded)
        prompts, shown = [], []
        for question, found in zip(questions, hits, strict=True):
            notes = [h.pair.response for h in reversed(found)]  # the nearest note sits next to the question
            kept = fitted_notes(question, notes, fits, self.heads)
            prompts.append(format_grounded(question, kept, self.heads))
            shown.append(found[: len(kept)])
        return prompts, hits, shown


def build_examples(
    pairs: list[QAPair],
    index: PairIndex,
    embedder: Embedder,
    *,
    notes: int = 3,
    negative_share: float = 0.25,
    seed: int = 42,
    decline: str = DECLINE,
    heads: HeadRule = WHOLE_NOTES,
) -> list[tuple[str, str]]:
    """(prompt, answer) training examples: one positive per pair, negatives for a share of the pairs, and off-topic
    messages.

    Notes are laid out as at answering time (the nearest next to the question), and the gold note sits there in
    GOLD_NEAREST of the positives (elsewhere in the rest, so the model still reads every note). REWRITTEN of the
    positives ask their question as a user would type it (qabot.rewrites: lower case, a typo, keywords only), so that
    such questions are answered, not declined. Of the negatives, HARD_NEGATIVES are the nearest other pairs (mostly
    other facts of the same entity), the rest random pairs. OFF_TOPIC_SHARE (as many examples as that share of the
    pairs) are messages no dataset is about (engine.offtopic: chit-chat, errands, insults) with the notes retrieval
    gives them, answered with the decline: whatever passes the calibrated floor is declined by the model.
    """
    rng = random.Random(seed)
    nearest = index.search(embedder, [p.prompt for p in pairs], k=min(len(pairs), notes + 1))
    examples = []
    for pair, found in zip(pairs, nearest, strict=True):
        others = [h.pair.response for h in found if h.pair.response != pair.response]
        positive = [*reversed(others[: notes - 1]), pair.response]  # farthest first, as `Grounding.prompts` lays them out
        if rng.random() >= GOLD_NEAREST:
            rng.shuffle(positive)
        question = pair.prompt
        if rng.random() < REWRITTEN and (forms := rewrite(pair.prompt, rng)):
            question = rng.choice(forms)[1]
        examples.append((format_grounded(question, positive, heads), heads.head(pair.response)))
        if len(pairs) > notes and rng.random() < negative_share:
            if rng.random() < HARD_NEGATIVES:
                negative = list(reversed(others[:notes]))
            else:
                negative = [p.response for p in rng.sample(pairs, notes + 1) if p.response != pair.response][:notes]
            examples.append((format_grounded(pair.prompt, negative, heads), decline))
    count = min(len(OFF_TOPIC), math.ceil(len(pairs) * OFF_TOPIC_SHARE)) if len(pairs) >= notes else 0
    messages = rng.sample(OFF_TOPIC, count)
    for message, found in zip(messages, index.search(embedder, messages, k=notes), strict=True):
        shown = [h.pair.response for h in reversed(found)]
        examples.append((format_grounded(message, shown, heads), decline))
    return examples
