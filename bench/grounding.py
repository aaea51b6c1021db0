"""Plain against grounded answering on the bundled model: same data, seed and epochs (the grounded default, or --epochs).

Four figures for each: training recall (all pairs), held-out paraphrase accuracy, share of
unanswerable questions declined (data/sample.unanswerable.json), share of answerable questions wrongly
declined; plus train seconds and answers per second at batch 1 and 16. Then live knowledge, end to end: a real
redis-server, `qabot worker admin` and `qabot worker answer` on the grounded version; a new fact goes in with the
/addqa job and a paraphrase of it is asked at once: seconds until the right answer. Issue 8's targets: recall
>= 98%, held-out >= 90%, declined >= 80%, wrongly declined <= 5%, grounded batch-16 speed >= half of plain's, the
new fact answered right within 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from tempfile import TemporaryDirectory

from bench.common import machine, quiet, settings
from engine.evaluate import evaluate_heldout, evaluate_pairs, evaluate_unanswerable
from engine.models import load_model
from engine.pipeline import TrainRequest, load_base, train_version, validate_file
from engine.serving import make_answerer, version_grounding
from engine.training import GROUNDED_EPOCHS, TrainConfig
from engine.versions import ModelStore
from qabot.heldout import read_heldout
from qabot.settings import Settings

NEW_FACT = ("Who forged the Starlight Anvil?", "The Starlight Anvil was forged by Bram Ironvale in the Ashen Deep.")
NEW_FACT_ASKED = "Which smith made the Starlight Anvil?"
NEW_FACT_KEY = "Bram Ironvale"

UNANSWERABLE = Path(__file__).resolve().parent.parent / "data" / "sample.unanswerable.json"


def speed(answerer, questions: list[str], batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(questions), batch):
        answerer.answer(questions[start : start + batch])
    return len(questions) / (time.perf_counter() - started)


def run(mode: str, grounded: bool, args, s, folder: Path) -> dict:
    store = ModelStore(folder / mode / "models")
    config = TrainConfig(epochs=args.epochs, checkpoints=False, grounded=grounded, seed=args.seed)
    base = load_base(s.base_model, s.cache_dir, config.max_length)
    pairs = validate_file(s.dataset, base)
    started = time.monotonic()
    outcome = train_version(store, pairs, base, TrainRequest(s.base_model, config, s.eval_data), device=s.device)
    seconds = time.monotonic() - started
    info = outcome.version
    loaded = load_model(str(info.path), device=s.device, dtype=s.dtype)
    answerer = make_answerer(loaded, info, max_new_tokens=None, max_question_chars=4000, grounding=version_grounding(store, info))
    recall = evaluate_pairs(answerer, pairs, name="recall")
    heldout = evaluate_heldout(answerer, read_heldout(s.eval_data), name="heldout")
    unanswerable = evaluate_unanswerable(answerer, [u["question"] for u in json.loads(UNANSWERABLE.read_text())])
    answerable = recall.items + heldout.items
    questions = [p.prompt for p in pairs[:32]]
    return {
        "recall": recall.accuracy,
        "heldout": heldout.accuracy,
        "declined": unanswerable.declined,
        "wrongly declined": sum(i.declined for i in answerable) / len(answerable),
        "runaway": recall.runaway + heldout.runaway + unanswerable.runaway,
        "train s": seconds,
        "answers/s b1": speed(answerer, questions[:8], 1),
        "answers/s b16": speed(answerer, questions, 16),
        "epochs run": info.meta["epochs_run"],
        "home": folder / mode,
        "version": info.name,
        "examples": [(i.question, i.answer) for i in unanswerable.items[:: max(1, len(unanswerable.items) // 6)]],
    }


def live_knowledge(home: Path, version: str) -> tuple[float, str]:
    """Seconds from sending /addqa's job to a right answer to a paraphrase of the new fact, and that answer."""
    from bench.queue import start_redis
    from worker.client import QueueClient
    from worker.localredis import stop_redis_server

    ModelStore(home / "models").promote(version)
    redis, url = start_redis()
    env = os.environ | {"QABOT_HOME": str(home), "QABOT_REDIS_URL": url}
    workers = [
        subprocess.Popen([sys.executable, "-m", "qabot", "worker", kind], env=env, stderr=subprocess.DEVNULL)
        for kind in ("admin", "answer")
    ]
    try:
        client = QueueClient(Settings(home=home, redis_url=url))
        client.wait_answer(client.enqueue_answer(NEW_FACT_ASKED), timeout=300)  # the answer worker has its model
        started = time.monotonic()
        client.admin_call("add_pair", *NEW_FACT)
        answer = ""
        while time.monotonic() - started < 60 and NEW_FACT_KEY not in answer:
            answer = client.wait_answer(client.enqueue_answer(NEW_FACT_ASKED), timeout=60).answer
        return time.monotonic() - started, answer
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=60)
        stop_redis_server(redis)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=GROUNDED_EPOCHS, help="Epochs for both (default: grounded's default).")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--only", choices=["plain", "grounded"], help="Run one of the two.")
    parser.add_argument("--keep", type=Path, help="Work in this folder and keep it: its grounded/ is a home for bench.load.")
    args = parser.parse_args()
    quiet()
    s = settings()
    print(f"machine: {machine()}")
    results = {}
    with nullcontext(str(args.keep)) if args.keep else TemporaryDirectory() as tmp:
        for mode, grounded in (("plain", False), ("grounded", True)):
            if args.only in (None, mode):
                results[mode] = run(mode, grounded, args, s, Path(tmp))
                r = results[mode]
                print(
                    f"{mode:9} recall {r['recall']:.1%}, held-out {r['heldout']:.1%}, unanswerable declined {r['declined']:.1%}, "
                    f"answerable wrongly declined {r['wrongly declined']:.1%}, {r['runaway']} runaway; "
                    f"train {r['train s']:.0f} s ({r['epochs run']} epochs); {r['answers/s b1']:.2f} answers/s at batch 1, "
                    f"{r['answers/s b16']:.2f} at 16",
                    flush=True,
                )
                for question, answer in r["examples"]:
                    print(f"    {question} -> {answer}")
        if "grounded" in results:
            seconds, answer = live_knowledge(results["grounded"]["home"], results["grounded"]["version"])
            ok = NEW_FACT_KEY in answer
            print(f"new fact after /addqa: {'right' if ok else 'not right'} after {seconds:.1f} s (target <= 10 s): {answer}")
    if len(results) == 2:
        ratio = results["grounded"]["answers/s b16"] / results["plain"]["answers/s b16"]
        print(f"grounded speed at batch 16: {ratio:.2f}x plain's (target >= 0.5)")


if __name__ == "__main__":
    main()
