"""Training steps: the vocabulary scored only where answers are learnt, against the model's own loss, same run.

The fine-tune's examples of a dataset (grounded, as `qabot train` builds them, in length-grouped batches of 8) on the
bundled model with the default top share of blocks trained. Baseline: batches padded on the right and the model's own
loss, which scores the whole vocabulary at every column. Ours: engine.formatting.AnswerCollator and tail_loss, which
score it only in the batch's last columns, where the answers lie. Each batch runs forward and backward both ways, in
turns, after one warm-up batch. Prints seconds per step, the ratio, and the largest difference between the two losses
(the same loss: it must stay at float rounding).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from bench.common import bundled_folder, machine, quiet, settings
from engine.formatting import AnswerCollator, PadCollator, tail_loss, tokenize_example
from engine.grounding import build_examples
from engine.models import blocks, context_length, load_model, train_top_layers
from engine.retrieval import Embedder, PairIndex
from engine.training import TrainConfig
from qabot.dataset import read_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/faq.json"))
    parser.add_argument("--batches", type=int, default=6, help="Batches timed each way (after one warm-up batch).")
    args = parser.parse_args()
    quiet()
    config = TrainConfig()
    pairs = read_dataset(args.data)
    embedder = Embedder()
    index = PairIndex.build(pairs, embedder)
    examples = build_examples(
        pairs,
        index,
        embedder,
        notes=config.notes,
        negative_share=config.negative_share,
        heads=config.heads,
    )
    loaded = load_model(str(bundled_folder(settings())), device="cpu", dtype="float32")
    model, tokenizer = loaded.model, loaded.tokenizer
    train_top_layers(model, max(1, math.ceil(len(blocks(model)) * config.trained_share)))
    model.eval()  # no dropout: both ways see the same network, so their losses must match (gradients flow all the same)
    limit = max(config.max_length, context_length(model.config))
    features = sorted((tokenize_example(p, a, tokenizer, limit) for p, a in examples), key=lambda f: len(f["input_ids"]))
    size = config.batch_size
    starts = [round(i * (len(features) - size) / args.batches) for i in range(args.batches + 1)]  # short to long
    batches = [features[start : start + size] for start in starts]
    right, ours = PadCollator(tokenizer.pad_token_id), AnswerCollator(tokenizer.pad_token_id)

    def own(chunk) -> torch.Tensor:
        return model(**right(chunk)).loss

    def tail(chunk) -> torch.Tensor:
        batch = ours(chunk)
        labels = batch.pop("labels")
        return tail_loss(model(**batch), labels)

    seconds = {own: 0.0, tail: 0.0}
    worst = 0.0
    print(f"machine: {machine()}")
    print(f"data: {args.data} ({len(pairs)} pairs, {len(features)} examples); {len(batches) - 1} batches of {size} timed")
    for number, chunk in enumerate(batches):
        losses = {}
        for step in (own, tail):
            model.zero_grad()
            started = time.perf_counter()
            loss = step(chunk)
            loss.backward()
            if number:
                seconds[step] += time.perf_counter() - started
            losses[step] = loss.item()
        worst = max(worst, abs(losses[own] - losses[tail]))
        print(f"  batch of {max(len(f['input_ids']) for f in chunk)} tokens: loss {losses[own]:.5f} / {losses[tail]:.5f}")
    steps = len(batches) - 1
    before, after = seconds[own] / steps, seconds[tail] / steps
    print(f"model's own loss (baseline): {before:.2f} s/step")
    print(f"answer columns only (ours):  {after:.2f} s/step")
    print(f"speed-up: {before / after:.2f}x; largest loss difference {worst:.2e}")


if __name__ == "__main__":
    main()
