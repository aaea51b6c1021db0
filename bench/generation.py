"""Generation throughput: 32 questions answered one at a time against one batch, same model, same run.

Uses the live model version if there is one (QABOT_HOME), else the bundled base model.
Target: at least 8x more answers per second in one batch.
"""

from __future__ import annotations

import argparse
import time

from bench.common import bundled_folder, machine, quiet, settings
from engine.generate import Answerer
from engine.models import load_model
from engine.versions import ModelStore
from qabot.dataset import read_heldout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=32)
    args = parser.parse_args()
    quiet()
    s = settings()
    current = ModelStore(s.models_dir).current()
    source = str(current.path) if current else str(bundled_folder(s))
    loaded = load_model(source, device=s.device, dtype=s.dtype)
    answerer = Answerer(loaded.model, loaded.tokenizer, max_new_tokens=s.max_new_tokens)
    questions = [i.question for i in read_heldout(s.eval_data)]
    questions = (questions * (args.questions // len(questions) + 1))[: args.questions]
    print(f"machine: {machine()}")
    name = current.name if current else "bundled base model"
    print(f"model: {name} on {loaded.device} ({loaded.model.dtype}), {len(questions)} questions")
    answerer.answer(questions[:2])  # warm-up

    started = time.monotonic()
    single = [answerer.answer([q])[0] for q in questions]
    single_s = time.monotonic() - started
    started = time.monotonic()
    batched = answerer.answer(questions)
    batch_s = time.monotonic() - started

    reference = Answerer(loaded.model, loaded.tokenizer, max_new_tokens=s.max_new_tokens, prune=False)
    started = time.monotonic()
    reference.answer(questions)
    generate_s = time.monotonic() - started

    same = sum(a.text == b.text for a, b in zip(single, batched, strict=True))
    tokens = sum(a.new_tokens for a in batched)
    print(f"one at a time: {len(questions) / single_s:.2f} answers/s ({single_s:.1f} s)")
    print(f"one batch:     {len(questions) / batch_s:.2f} answers/s ({batch_s:.1f} s, {tokens} new tokens)")
    print(f"(model.generate, one batch, no pruning: {len(questions) / generate_s:.2f} answers/s, {generate_s:.1f} s)")
    print(f"identical answers: {same}/{len(questions)}")
    ratio = single_s / batch_s
    print(f"speed-up: {ratio:.2f}x (target >= 8x): {'PASS' if ratio >= 8 else 'FAIL'}")


if __name__ == "__main__":
    main()
