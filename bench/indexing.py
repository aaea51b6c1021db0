"""Indexing a dataset: its views embedded in batches of similar length, against batches in the views' own order.

What `qabot train` (and the answer worker, for new notes) spends building a dataset's index with the default embedder.
Baseline: the views in their own order (question, answer, both, pair after pair), each batch padded to its longest
text, as engine.retrieval embedded them before. Ours: `Embedder.encode`, batches of similar length. Both run in turns,
`--rounds` times each, in the same process. Prints seconds, the ratio, and the largest difference between the vectors
(float rounding: the same index).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.common import machine, quiet
from engine.embedders import DEFAULT_EMBEDDER
from engine.retrieval import EMBED_BATCH, Embedder, PairIndex, views
from qabot.dataset import read_dataset


def in_order(embedder: Embedder, texts: list[str]) -> torch.Tensor:
    """The baseline: batches of EMBED_BATCH texts in their given order, each padded to its longest (`encode` of one
    batch's texts makes one batch of them)."""
    return torch.cat([embedder.encode(texts[start : start + EMBED_BATCH]) for start in range(0, len(texts), EMBED_BATCH)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", help="Datasets (default: data/faq.json and data/sample.json).")
    parser.add_argument("--embedder", default=DEFAULT_EMBEDDER)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    quiet()
    embedder = Embedder(args.embedder)
    print(f"machine: {machine()}; embedder {embedder.name}")
    for data in args.data or [Path("data/faq.json"), Path("data/sample.json")]:
        pairs = read_dataset(data)
        texts = [text for p in pairs for text in views(p)]
        tokens = sum(len(ids) for ids in embedder.tokenizer(texts, truncation=True)["input_ids"])
        seconds: dict[str, list[float]] = {"in order": [], "by length": []}
        worst = 0.0
        for _ in range(args.rounds):
            started = time.perf_counter()
            before = in_order(embedder, texts)
            seconds["in order"].append(time.perf_counter() - started)
            started = time.perf_counter()
            after = PairIndex.build(pairs, embedder).vectors.reshape(len(texts), -1)
            seconds["by length"].append(time.perf_counter() - started)
            worst = max(worst, float((before - after).abs().max()))
        print(f"{data}: {len(pairs)} pairs, {len(texts)} views, {tokens} tokens")
        for name, figures in seconds.items():
            print(f"  {name:9}: {', '.join(f'{s:.1f} s' for s in figures)}")
        ratio = sum(seconds["in order"]) / sum(seconds["by length"])
        print(f"  speed-up: {ratio:.2f}x; largest vector difference {worst:.1e}")


if __name__ == "__main__":
    main()
