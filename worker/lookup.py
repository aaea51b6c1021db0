"""The admin jobs' uses of the embedding model: /find over the answers' own index, and grouping the inbox's questions.

The admin worker is a SimpleWorker (one process), so the embedder is loaded once, on the first /find or
/unanswered, and torch is imported only then: the worker starts, and serves /addqa or /status, without it.

Two inbox questions are "the same question in other words" when their embeddings (the live version's embedder, as retrieval
uses) are at least as close as `same_question_threshold`: closer than 99 of 100 pairs of *different* questions in
the current dataset are to their nearest neighbour, and never below SAME_FLOOR. A community's own questions are
the best evidence of how close two different questions get ("Who founded X?" and "When was X founded?" are 0.97
apart in the sample; the FAQ's nearest different questions reach 0.89), so the bar follows the dataset. Grouping
is leader-first: the most asked question of a group leads it, and a question joins the first leader it is that close
to (no chains of "close to something close"). Answering or dismissing a group's id answers or dismisses all of it, so
a wrong merge costs more than a missed one: embeddings barely tell "When does the fleet sail?" from "Where does the
fleet sail?" (0.96), so two English questions that ask with different question words (who, when, where, ...) are
never merged. In other languages the embedding alone decides.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from qabot.dataset import QAPair, pair_key
from qabot.shapes import FoundPair, InboxItem

if TYPE_CHECKING:
    from engine.retrieval import Embedder, PairIndex
    from engine.versions import ModelStore

SAME_FLOOR = 0.9  # with fewer than MIN_CALIBRATION questions, or a dataset of very different ones, this bar holds
SAME_QUANTILE = 0.99
MIN_CALIBRATION = 20
_VECTORS_KEPT = 5000  # inbox texts whose embeddings stay cached
QUESTION_WORDS = re.compile(r"\b(who|whom|whose|what|when|where|why|which|how)\b", re.IGNORECASE)


def live_embedder(store: ModelStore) -> Embedder:
    """The embedder of the live version's notes (engine.embedders; loaded once per process), so that /find and the
    inbox's groups rank as its answers do; with no grounded version live, the default."""
    from engine.embedders import version_embedder
    from engine.retrieval import shared_embedder

    info = store.current()
    return shared_embedder(version_embedder(info.meta.get("grounding") if info is not None else None))


def current_index(store: ModelStore, embedder: Embedder) -> PairIndex | None:
    """The retrieval index of the current dataset, as the answer worker uses it (built and saved if missing)."""
    from engine.retrieval import ensure_index

    digest = store.current_digest()
    return ensure_index(store, digest, embedder) if digest else None


def find(
    index: PairIndex | None, embedder: Embedder, query: str, limit: int, origin: dict[QAPair, dict[str, str]]
) -> tuple[FoundPair, ...]:
    """The `limit` pairs nearest to `query`, numbered by their place in the dataset (and in /export's file)."""
    if index is None or not index.pairs:
        return ()
    numbers = {pair_key(p): n for n, p in enumerate(index.pairs, 1)}
    (hits,) = index.search(embedder, [query], k=limit)
    return tuple(
        FoundPair(numbers[pair_key(h.pair)], h.pair.prompt, h.pair.response, round(h.score, 3), origin.get(h.pair, {}))
        for h in hits
    )


def same_question_threshold(index: PairIndex | None) -> float:
    """How close two questions' embeddings must be to count as one question (see the module's docstring)."""
    if index is None or len(index.pairs) < MIN_CALIBRATION:
        return SAME_FLOOR
    questions = index.vectors[:, 0]  # the question view of each pair
    similar = questions @ questions.T
    similar.fill_diagonal_(-1.0)
    nearest = similar.max(dim=1).values
    return max(SAME_FLOOR, float(nearest.quantile(SAME_QUANTILE)))


_vectors: dict[tuple[str, str], object] = {}  # (embedder, text) -> its embedding


def _encode(texts: list[str], embedder: Embedder):
    import torch

    missing = [t for t in dict.fromkeys(texts) if (embedder.name, t) not in _vectors]
    if missing:
        if len(_vectors) + len(missing) > _VECTORS_KEPT:
            _vectors.clear()
        _vectors.update(zip(((embedder.name, t) for t in missing), embedder.encode(missing), strict=True))
    return torch.stack([_vectors[embedder.name, t] for t in texts]) if texts else torch.empty(0, embedder.recipe.dimensions)


def group(items: list[InboxItem], threshold: float, embedder: Embedder) -> list[list[InboxItem]]:
    """Open questions in groups of the same question, each led by its most asked one (`items` come most asked
    first); groups in that order too."""
    if not items:
        return []
    vectors = _encode([i.text for i in items], embedder)
    similar = vectors @ vectors.T
    asks = [{w.casefold() for w in QUESTION_WORDS.findall(i.text)} for i in items]
    leaders: list[int] = []
    groups: dict[int, list[InboxItem]] = {}
    for n, item in enumerate(items):
        lead = next(
            (m for m in leaders if float(similar[n, m]) >= threshold and (not asks[n] or not asks[m] or asks[n] == asks[m])),
            None,
        )
        if lead is None:
            leaders.append(n)
            groups[n] = [item]
        else:
            groups[lead].append(item)
    return [groups[m] for m in leaders]
