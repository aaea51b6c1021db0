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

Sentence embeddings also barely read what a question asks for: all-MiniLM-L6-v2 put "Who founded Starfall Academy?" at
0.973 of "When was Starfall Academy founded?", whose answer ("... founded in the year 402") was nearer than the right
one, so that the sample's own training question came second and was answered with a year. A question's first words say
what kind of thing it asks for (`asked_kind`: who a person, when a time, where a place, why a reason, how many or how
much an amount). A pair whose stored question asks for another kind than the user's loses KIND_PENALTY (both must ask
for one: "which", "what" and yes/no questions ask for none, so "In which shipyard was it built?" still finds "Where was
it built?"). Measured (2026-12-04, right pair nearest / among the 3 nearest): sample held-out 58/60 -> 59/60 and its
training questions 159 -> 160 nearest, the pebble FAQ unchanged (92/99 held-out, 60/60 training), and the same figures
for every penalty from 0.02 to 0.1: it breaks near-ties between facts of one subject and moves nothing else. The two
datasets of bench/fresh (measured once, after the penalty was chosen) are unchanged. The words are English: in
another language no question has a kind and nothing moves.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter

import torch

LEXICAL_WEIGHT = 0.2
KIND_PENALTY = 0.05
# A misspelt rare word still counts for the pairs that hold it (`Coverage.spelled`): a question's word the data lacks
# counts as the data's word it is closest to, if their difflib ratio is at least CLOSE_SPELLING (as engine.grounding
# reads names). Measured (2026-12-05, right pair nearest of the held-out questions): pebble FAQ 94 -> 95 of 100, the
# sample 59 of 60, and of bench/fresh's four sets ship 48 -> 49 and velmora 51 -> 52 of 60, the others unchanged.
CLOSE_SPELLING = 0.8
TYPO_LETTERS = 5
_WORD = re.compile(r"\w+")
WRITTEN_WORD = re.compile(r"[^\W\d_][\w'’-]*")  # a word as written: a letter first, then letters, digits, ' and -
_POSSESSIVE = re.compile(r"['’]s?$")
_LETTERS = re.compile(r"[^\W\d_]+")
_KINDS = {
    "who": "person",
    "whom": "person",
    "whose": "person",
    "when": "time",
    "where": "place",
    "why": "reason",
    "how many": "amount",
    "how much": "amount",
}
KIND_LEAD = 2  # the kind is read from a question's first two words ("who ...", "so who ...", "and how many ...")


def words(text: str) -> list[str]:
    """The words of a text, as written (names, subjects: engine.grounding, engine.offtopic)."""
    return WRITTEN_WORD.findall(text)


def word_key(word: str) -> str:
    """A word as names and subjects are compared: casefolded, without a possessive ending."""
    return _POSSESSIVE.sub("", word.casefold())


def word_set(text: str) -> set[str]:
    """A text's distinct words, casefolded (letters and digits of any script)."""
    return set(_WORD.findall(text.casefold()))


def asked_kind(question: str) -> str | None:
    """What kind of thing a question asks for, from its first words (see the module's docstring); None: no kind."""
    words = _LETTERS.findall(question.casefold())[: KIND_LEAD + 1]
    for start in range(min(KIND_LEAD, len(words))):
        for size in (2, 1):
            kind = _KINDS.get(" ".join(words[start : start + size]))
            if kind is not None:
                return kind
    return None


class Kinds:
    """The kinds the pairs' stored questions ask for; `conflicts(questions)` is questions x pairs: 1 where both ask
    for a kind and the kinds differ, else 0."""

    def __init__(self, prompts: list[str]) -> None:
        self.names = sorted(set(_KINDS.values()))
        codes = [self.names.index(kind) if (kind := asked_kind(prompt)) else -1 for prompt in prompts]
        self.codes = torch.tensor(codes, dtype=torch.long)  # -1: asks for no kind

    def conflicts(self, questions: list[str]) -> torch.Tensor:
        found = torch.zeros(len(questions), len(self.codes))
        for row, question in enumerate(questions):
            if (kind := asked_kind(question)) is not None:
                found[row] = ((self.codes >= 0) & (self.codes != self.names.index(kind))).float()
        return found


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
        self._words: dict[str, list[str]] = {}  # the data's words by their first letter, which a slip seldom hits
        for word in sorted(w for w in postings if w.isalpha() and len(w) >= TYPO_LETTERS - 1):
            self._words.setdefault(word[0], []).append(word)
        self._spelled: dict[str, str] = {}

    def _idf(self, count: int) -> float:
        return math.log(1 + (self.size - count + 0.5) / (count + 0.5))  # BM25's, always above 0

    def spelled(self, word: str) -> str:
        """A word of the question as the data spells it: itself if the data has it, else the word of the data with the
        same first letter that it is closest to (a slip of the keyboard or another form of it: "requirments",
        "instal", "langauges"), if within CLOSE_SPELLING, else itself. Words of fewer than TYPO_LETTERS letters are
        left as they are."""
        if word in self.postings or len(word) < TYPO_LETTERS or not word.isalpha():
            return word
        if (found := self._spelled.get(word)) is None:
            close = difflib.get_close_matches(word, self._words.get(word[0], []), n=1, cutoff=CLOSE_SPELLING)
            found = close[0] if close else word
            if len(self._spelled) < 65536:
                self._spelled[word] = found
        return found

    def of(self, questions: list[str]) -> torch.Tensor:
        found = torch.zeros(len(questions), self.size)
        for row, question in enumerate(questions):
            words = {self.spelled(w) for w in word_set(question)}
            total = sum(self.idf.get(w, self.unseen) for w in words)
            for word in words:
                if word in self.postings:
                    found[row, self.postings[word]] += self.idf[word] / total
        return found
