"""The lexical half of retrieval: how much of a question's rare words a pair's text holds.

Sentence embeddings miss a rare word that decides the pair: "heic support?" scored 0.14 against the one pebble FAQ
answer that lists HEIC (all-MiniLM-L6-v2 splits the word into pieces that mean little), "can i import from flickr" was
nearer the Google Photos answer than the one naming Flickr. A question's coverage of a pair is the share of its words'
inverse document frequency (over the dataset's pairs, question and answer together) that the pair's text holds: a word
found in one pair weighs most, a word found in every pair nothing, a word found nowhere counts against every pair.

engine.retrieval adds LEXICAL_WEIGHT times the coverage to the mean cosine. Measured on both example datasets'
held-out questions (right pair nearest / among the 3 nearest), weight 0: pebble FAQ 87/96 of 100, sample 57/60 of 60;
0.1: 90/99, 57/60; 0.2: 92/99, 58/60; 0.3: 93/98, 55/60; 0.5: 91/98, 55/60. Users' rewrites of the training
questions (qabot.rewrites) kept improving up to 0.3 on both, so they cannot choose the weight: held-out wording can.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import torch

LEXICAL_WEIGHT = 0.2
_WORD = re.compile(r"\w+")


def word_set(text: str) -> set[str]:
    """A text's distinct words, casefolded (letters and digits of any script)."""
    return set(_WORD.findall(text.casefold()))


class Coverage:
    """An inverted index of the pairs' words; `of(questions)` is questions x pairs, each in [0, 1]."""

    def __init__(self, texts: list[str]) -> None:
        self.size = len(texts)
        postings: dict[str, list[int]] = {}
        for row, text in enumerate(texts):
            for word in word_set(text):
                postings.setdefault(word, []).append(row)
        self.postings = {word: torch.tensor(rows) for word, rows in postings.items()}
        counts = Counter({word: len(rows) for word, rows in postings.items()})
        self.idf = {word: self._idf(count) for word, count in counts.items()}
        self.unseen = self._idf(0)

    def _idf(self, count: int) -> float:
        return math.log(1 + (self.size - count + 0.5) / (count + 0.5))  # BM25's, always above 0

    def of(self, questions: list[str]) -> torch.Tensor:
        found = torch.zeros(len(questions), self.size)
        for row, question in enumerate(questions):
            words = word_set(question)
            total = sum(self.idf.get(w, self.unseen) for w in words)
            for word in words:
                if word in self.postings:
                    found[row, self.postings[word]] += self.idf[word] / total
        return found
