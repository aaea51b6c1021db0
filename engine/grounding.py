"""Grounded answers: notes retrieved from the dataset go before the question; the model answers from them or declines.

Retrieval-augmented fine-tuning (Zhang et al. 2024, RAFT): each training question gets `notes` notes
holding its own answer at a random position among retrieved distractors; a share of the examples get
notes WITHOUT their answer and learn the decline text. Half of those negatives are the nearest other
pairs (mostly other facts of the same entity: the hard case), half are random pairs. Notes hold answers
only, never questions, so a training question is never a verbatim copy of a note (the shortcut the
issue measured).
"""

from __future__ import annotations

import difflib
import random
import re
from dataclasses import dataclass, field

from engine.retrieval import Embedder, Hit, PairIndex
from qabot.dataset import QAPair

DECLINE = "I don't know."  # what a grounded model learns to say when its notes lack the answer
NOTE_PREFIX = "Note: "
# Below this cosine similarity to the nearest pair, nothing in the data is about the question (all-MiniLM-L6-v2;
# measured on the sample world: answerable paraphrases >= 0.69, off-topic questions 0.16-0.53).
MIN_SCORE = 0.5
CLOSE_NAME = 0.8  # difflib ratio above which a name counts as a misspelling of a word of the data
_POSSESSIVE = re.compile(r"['’]s?$")
_WORD = re.compile(r"[^\W\d_][\w'’-]*")


def words(text: str) -> list[str]:
    """The words of a text, as written."""
    return _WORD.findall(text)


def format_grounded(question: str, notes: list[str]) -> str:
    """Notes, then the question, in the `Question: ...\\nAnswer:` format the model continues."""
    lines = "".join(f"{NOTE_PREFIX}{' '.join(note.split())}\n" for note in notes)
    return f"{lines}Question: {question.strip()}\nAnswer:"


@dataclass
class Grounding:
    """What a grounded answerer needs: the index of the dataset it answers from and its embedder."""

    index: PairIndex
    embedder: Embedder
    notes: int = 3
    decline: str = DECLINE
    min_score: float = MIN_SCORE
    _vocabulary: set[str] | None = field(default=None, repr=False, compare=False)

    def vocabulary(self) -> set[str]:
        """Every word of the dataset's questions and answers, casefolded (computed once per index)."""
        if self._vocabulary is None:
            self._vocabulary = {w.casefold() for p in self.index.pairs for w in words(f"{p.prompt} {p.response}")}
        return self._vocabulary

    def unknown_names(self, question: str) -> list[str]:
        """Names in the question that the data never mentions: capitalised words past the first, neither a word of
        the data (nor a near-miss spelling of one) nor a common word of the embedder's English vocabulary."""
        known, common = self.vocabulary(), self.embedder.vocabulary
        found = []
        for word in words(question)[1:]:
            key = _POSSESSIVE.sub("", word.casefold())
            if not word[0].isupper() or len(key) < 3 or key in known or key in common or word.casefold() in known:
                continue
            if not difflib.get_close_matches(key, known, n=1, cutoff=CLOSE_NAME):
                found.append(word)
        return found

    def reason_to_decline(self, question: str, hits: list[Hit]) -> str | None:
        """Why the data cannot answer the question, judged before asking the model; None when the model should try."""
        if not hits or hits[0].score < self.min_score:
            return "nothing in the data is close to the question"
        names = self.unknown_names(question)
        if names:
            return f"the data never mentions {', '.join(names)}"
        return None

    def prompts(self, questions: list[str], fits=lambda prompt: True) -> tuple[list[str], list[list[Hit]]]:
        """Grounded prompts (the farthest notes dropped until `fits`), and the retrieved pairs each was given."""
        hits = self.index.search(self.embedder, questions, k=self.notes)
        prompts = []
        for question, found in zip(questions, hits, strict=True):
            notes = [h.pair.response for h in reversed(found)]  # the nearest note sits next to the question
            while notes and not fits(format_grounded(question, notes)):
                notes.pop(0)
            prompts.append(format_grounded(question, notes))
        return prompts, hits


def build_examples(
    pairs: list[QAPair],
    index: PairIndex,
    embedder: Embedder,
    *,
    notes: int = 3,
    negative_share: float = 0.25,
    seed: int = 42,
    decline: str = DECLINE,
) -> list[tuple[str, str]]:
    """(prompt, answer) training examples: one positive per pair, plus negatives for a share of the pairs."""
    rng = random.Random(seed)
    nearest = index.search(embedder, [p.prompt for p in pairs], k=min(len(pairs), notes + 1))
    examples = []
    for pair, found in zip(pairs, nearest, strict=True):
        others = [h.pair.response for h in found if h.pair.response != pair.response]
        distractors = others[: notes - 1]
        positive = [*distractors, pair.response]
        rng.shuffle(positive)  # the gold note at a varying position
        examples.append((format_grounded(pair.prompt, positive), pair.response))
        if len(pairs) > notes and rng.random() < negative_share:
            if rng.random() < 0.5:  # hard: the nearest other facts, often of the same entity
                negative = others[:notes]
            else:  # easy: notes about something else entirely
                negative = [p.response for p in rng.sample(pairs, notes + 1) if p.response != pair.response][:notes]
            rng.shuffle(negative)
            examples.append((format_grounded(pair.prompt, negative), decline))
    return examples
