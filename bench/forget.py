"""Forget and correct without retraining: do the notes win over what the fine-tuned weights learnt?

On a copy of a trained home (--home DIR, its live grounded version; the copy's files are hard links, so the bench
never edits the real store), through the admin jobs' own functions (worker.admin: /forget and /addqa on a known
question) and the answer worker's own notes refresh (engine.serving.dataset_grounding with the previous index):
- COUNT pairs are removed one at a time; each removed question is then asked: the share still answered with the
  removed answer (target 0%), and how the rest went (declined, or another pair's answer);
- COUNT other pairs get a new answer ("Update: " before the old one, so that the model must start it otherwise than it
  learnt); each is then asked: the share that still gets the old answer (target 0%) and the share that gets the new
  one;
- seconds from each command to the new behaviour: the admin job, the notes refresh and the answer (target < 10 s),
  and of that the command and the notes refresh alone (the answer itself takes as long as any answer).
Baseline, same run: the same questions asked before any edit (answered with their own answer then).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import machine


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="A QABOT_HOME whose live version is grounded.")
    parser.add_argument("--count", type=int, default=20, help="Pairs removed, and pairs corrected.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    home = Path(tempfile.mkdtemp(prefix="qabot-bench-forget-"))
    shutil.copytree(args.home / "models", home / "models", copy_function=os.link)
    if (args.home / "cache").exists():
        os.symlink((args.home / "cache").resolve(), home / "cache")
    os.environ["QABOT_HOME"] = str(home)

    from engine.serving import dataset_grounding
    from qabot.evaluation import load_answerer
    from qabot.settings import Settings
    from worker import admin

    settings = Settings()
    answerer, info = load_answerer(settings)
    if answerer.grounding is None:
        raise SystemExit(f"{info.name} is not grounded: nothing answers from notes")
    store = admin.admin_store(settings)
    pairs = store.current_pairs()
    rng = random.Random(args.seed)
    chosen = rng.sample(pairs, min(len(pairs), 2 * args.count))
    removed, corrected = chosen[: len(chosen) // 2], chosen[len(chosen) // 2 :]
    print(f"{info.name}: {len(pairs)} pairs; {len(removed)} removed, {len(corrected)} corrected, one at a time", flush=True)

    before = answerer.answer([p.prompt for p in chosen])
    own = sum(_fold(a.text) == _fold(p.response) for a, p in zip(before, chosen, strict=True))
    print(f"baseline (before any edit): {own}/{len(chosen)} answered with their own answer", flush=True)

    def refresh() -> None:  # what the answer worker does before its next batch (worker.answer_worker.refresh_notes)
        grounding = answerer.grounding
        answerer.grounding = dataset_grounding(
            store, store.current_digest(), grounding.notes, grounding.decline, previous=grounding
        )

    still_removed, declined, seconds, live = 0, 0, [], []
    for pair in removed:
        started = time.perf_counter()
        assert admin.forget_pair(pair.prompt).done
        refresh()
        live.append(time.perf_counter() - started)
        (answer,) = answerer.answer([pair.prompt])
        seconds.append(time.perf_counter() - started)
        still_removed += _fold(answer.text) == _fold(pair.response)
        declined += answer.declined
    still_old, got_new = 0, 0
    for pair in corrected:
        new = f"Update: {pair.response}"
        started = time.perf_counter()
        assert admin.add_pair(pair.prompt, new).added
        refresh()
        live.append(time.perf_counter() - started)
        (answer,) = answerer.answer([pair.prompt])
        seconds.append(time.perf_counter() - started)
        still_old += _fold(answer.text) == _fold(pair.response)
        got_new += _fold(answer.text) == _fold(new)
    n_r, n_c = len(removed), len(corrected)
    print(
        f"removed pairs still answered with the removed answer: {still_removed}/{n_r} ({still_removed / n_r:.0%}, "
        f"target 0%); declined {declined}/{n_r}, answered from another pair {n_r - declined - still_removed}/{n_r}"
    )
    print(
        f"corrected pairs still given the old answer: {still_old}/{n_c} ({still_old / n_c:.0%}, target 0%); "
        f"given the new answer {got_new}/{n_c} ({got_new / n_c:.0%})"
    )
    p95 = sorted(seconds)[max(0, int(len(seconds) * 0.95) - 1)]
    print(
        f"seconds from the command to the new behaviour: median {statistics.median(seconds):.2f}, p95 {p95:.2f}, "
        f"max {max(seconds):.2f} (target < 10 s; ratio {max(seconds) / 10:.2f}); the command and the notes refresh "
        f"alone: median {statistics.median(live):.2f}, max {max(live):.2f}"
    )
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
