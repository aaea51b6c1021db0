"""Generation throughput: 32 questions answered one at a time against one batch, same model, same run.

The live version (QABOT_HOME) answers as the answer worker answers: grounded in its notes when it was trained so,
with its data's answer budget (else the bundled base model, ungrounded). Prints answers per second one at a time, in
one batch, and with `model.generate` (no pruning), how many answers the batch and one-at-a-time give alike, and where
the batch's time goes: prefilling the prompts (the notes) or decoding. Target: at least 8x more answers per second in
one batch. --baseline REV runs the same measurement first with the code of commit REV (a git worktree), in this run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import bundled_folder, machine, quiet, settings
from engine.versions import ModelStore
from qabot.heldout import read_heldout


def answerer_of(s, store: ModelStore):
    """The answer worker's answerer for the live version (grounded when it was trained so), or the bundled model's."""
    from engine.generate import Answerer
    from engine.models import load_model
    from engine.serving import load_version, make_answerer, version_grounding

    if store.current() is None:
        loaded = load_model(str(bundled_folder(s)), device=s.device, dtype=s.dtype)
        return Answerer(loaded.model, loaded.tokenizer, max_new_tokens=s.max_new_tokens), "bundled base model"
    loaded, info = load_version(store, device=s.device, dtype=s.dtype)
    grounding = version_grounding(
        store, info, store.current_digest(), min_score=s.min_score, decline_confidence=s.decline_confidence
    )
    answerer = make_answerer(
        loaded, info, max_new_tokens=s.max_new_tokens, max_question_chars=s.max_question_chars, grounding=grounding
    )
    return answerer, f"{info.name} ({'grounded' if grounding is not None else 'not grounded'})"


def split_of_time(answerer, questions: list[str]) -> str:
    """Seconds of one batch spent prefilling prompts and decoding (the running batch's join and step), where the code
    has them."""
    try:
        from engine.decoding import RunningBatch
    except ImportError:
        return "prefill/decode split: not measured (no running batch in this code)"
    import engine.generate

    spent = {"join": 0.0, "step": 0.0, "model_declines": 0.0}
    owners = {"join": RunningBatch, "step": RunningBatch, "model_declines": engine.generate}
    originals = {name: getattr(owners[name], name, None) for name in spent}

    def timed(name):
        def call(*args, **kwargs):
            started = time.monotonic()
            try:
                return originals[name](*args, **kwargs)
            finally:
                spent[name] += time.monotonic() - started

        return call

    for name, original in originals.items():
        if original is not None:
            setattr(owners[name], name, timed(name))
    try:
        started = time.monotonic()
        answerer.answer(questions)
        total = time.monotonic() - started
    finally:
        for name, original in originals.items():
            if original is not None:
                setattr(owners[name], name, original)
    rest = total - sum(spent.values())
    return (
        f"one batch's {total:.1f} s: the decline (prefill) of answers taken from learnt notes {spent['model_declines']:.1f} s "
        f"({spent['model_declines'] / total:.0%}), prefill to decode {spent['join']:.1f} s ({spent['join'] / total:.0%}), "
        f"decoding {spent['step']:.1f} s ({spent['step'] / total:.0%}), retrieval and the rest {rest:.1f} s "
        f"({rest / total:.0%})"
    )


def measure(count: int) -> None:
    from engine.generate import Answerer

    s = settings()
    store = ModelStore(s.models_dir)
    answerer, name = answerer_of(s, store)
    questions = [i.question for i in read_heldout(s.eval_data)]
    questions = (questions * (count // len(questions) + 1))[:count]
    print(f"model: {name} on {answerer.device}, {len(questions)} questions, answer budget {answerer.max_new_tokens} tokens")
    answerer.answer(questions[:2])  # warm-up

    started = time.monotonic()
    single = [answerer.answer([q])[0] for q in questions]
    single_s = time.monotonic() - started
    started = time.monotonic()
    batched = answerer.answer(questions)
    batch_s = time.monotonic() - started

    reference = Answerer(answerer.model, answerer.tokenizer, max_new_tokens=answerer.max_new_tokens, prune=False)
    reference.grounding = answerer.grounding
    started = time.monotonic()
    reference.answer(questions)
    generate_s = time.monotonic() - started

    same = sum(a.text == b.text for a, b in zip(single, batched, strict=True))
    tokens = sum(a.new_tokens for a in batched)
    declined = sum(a.declined for a in batched)
    print(f"one at a time: {len(questions) / single_s:.2f} answers/s ({single_s:.1f} s)")
    print(f"one batch:     {len(questions) / batch_s:.2f} answers/s ({batch_s:.1f} s, {tokens} new tokens, {declined} declined)")
    print(f"(model.generate, one batch, no pruning: {len(questions) / generate_s:.2f} answers/s, {generate_s:.1f} s)")
    print(f"identical answers: {same}/{len(questions)}")
    print(split_of_time(answerer, questions))
    ratio = single_s / batch_s
    print(f"speed-up: {ratio:.2f}x (target >= 8x): {'PASS' if ratio >= 8 else 'FAIL'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--baseline", metavar="REV", help="first run the same measurement with the code of commit REV")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)  # the baseline's run, in its tree
    args = parser.parse_args()
    quiet()
    if not args.inner:
        print(f"machine: {machine()}")
    if args.baseline and not args.inner:
        from bench.common import baseline_tree

        tree = baseline_tree(args.baseline)
        print(f"-- before: the code of {args.baseline}", flush=True)
        env = os.environ | {"PYTHONPATH": str(tree)}
        # this measurement, as a module of the old tree (run as a file, its folder would shadow the stdlib's `queue`)
        shutil.copy(Path(__file__), tree / "bench" / "generation_now.py")
        script = [sys.executable, "-m", "bench.generation_now", "--questions", str(args.questions), "--inner"]
        subprocess.run(script, cwd=tree, env=env, check=True)
        print("-- after: this checkout's code", flush=True)
    measure(args.questions)


if __name__ == "__main__":
    main()
