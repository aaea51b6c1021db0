"""Grounded answers: notes retrieved from the dataset go before the question; the model answers from them or declines.

Retrieval-augmented fine-tuning (Zhang et al. 2024, RAFT): each training question gets `notes` notes
holding its own answer at a random position among retrieved distractors; a share of the examples get
notes WITHOUT their answer and learn the decline text. Half of those negatives are the nearest other
pairs (mostly other facts of the same entity: the hard case), half are random pairs. Notes hold answers
only, never questions, so a training question is never a verbatim copy of a note (the shortcut the
issue measured).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from engine.retrieval import Embedder, Hit, PairIndex
from qabot.dataset import QAPair

DECLINE = "I don't know."  # what a grounded model learns to say when its notes lack the answer
NOTE_PREFIX = "Note: "


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
