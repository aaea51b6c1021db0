"""Fine-tuning speed: our recipe against the original one, same model, same data, same run.

Original recipe: `padding="max_length"` to 128, labels = input ids (pads, which are EOS, included),
random batches. Ours: answer-only labels, EOS after each answer, dynamic padding, length-grouped
batches. Prints seconds per epoch, the ratio, and the answer accuracy of both after the same epochs.
Target: at least 3x faster.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import transformers
from transformers import Trainer, default_data_collator

from bench.common import bundled_folder, machine, quiet, settings
from engine.evaluate import evaluate_heldout, evaluate_pairs
from engine.generate import Answerer
from engine.models import load_model
from engine.training import TrainConfig, _training_args, fine_tune
from qabot.dataset import read_dataset
from qabot.heldout import read_heldout


def original_features(pairs, tokenizer, max_length: int = 128):
    """The seed's tokenization: fixed-length padding, labels copied from input ids."""
    texts = [f"Question: {p.prompt}\nAnswer: {p.response}" for p in pairs]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length)
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": list(ids)}
        for ids, mask in zip(enc["input_ids"], enc["attention_mask"], strict=True)
    ]


def accuracy(model, tokenizer, pairs, heldout) -> tuple[float, float, int]:
    model.eval()
    answerer = Answerer(model, tokenizer, max_new_tokens=64)
    recall, held = evaluate_pairs(answerer, pairs), evaluate_heldout(answerer, heldout)
    return recall.accuracy, held.accuracy, recall.runaway + held.runaway


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    quiet()
    s = settings()
    source = str(bundled_folder(s))
    pairs, heldout = read_dataset(s.dataset), read_heldout(s.eval_data)
    config = TrainConfig(epochs=args.epochs, checkpoints=False, early_stopping_patience=0, eval_questions=0, grounded=False)
    print(f"machine: {machine()}")
    print(f"data: {len(pairs)} pairs, {args.epochs} epochs, lr {config.learning_rate}, batch {config.batch_size}")

    with TemporaryDirectory() as tmp:
        loaded = load_model(source, device=s.device, dtype="float32")
        loaded.tokenizer.padding_side = "right"
        features = original_features(pairs, loaded.tokenizer)
        loaded.tokenizer.padding_side = "left"
        train_args = _training_args(config, Path(tmp) / "orig", len(features), loaded.device)
        train_args.train_sampling_strategy = "random"
        trainer = Trainer(model=loaded.model, args=train_args, train_dataset=features, data_collator=default_data_collator)
        trainer.remove_callback(transformers.PrinterCallback)
        started = time.monotonic()
        loaded.model.train()
        trainer.train()
        original_s = (time.monotonic() - started) / args.epochs
        original_acc = accuracy(loaded.model, loaded.tokenizer, pairs, heldout)
        del trainer, loaded

        loaded = load_model(source, device=s.device, dtype="float32")
        started = time.monotonic()
        model, _ = fine_tune(loaded.model, loaded.tokenizer, pairs, config=config, run_dir=Path(tmp) / "ours")
        ours_s = (time.monotonic() - started) / args.epochs
        ours_acc = accuracy(model, loaded.tokenizer, pairs, heldout)

    for name, secs, acc in (("original recipe", original_s, original_acc), ("qabot recipe", ours_s, ours_acc)):
        print(
            f"{name + ':':16} {secs:.1f} s/epoch; after {args.epochs} epochs training {acc[0]:.1%}, "
            f"heldout {acc[1]:.1%}, {acc[2]} ran to the limit"
        )
    ratio = original_s / ours_s
    print(f"speed-up: {ratio:.2f}x (target >= 3x): {'PASS' if ratio >= 3 else 'FAIL'}")


if __name__ == "__main__":
    main()
