"""One release path for `qabot train` and the train job: fine-tune, score new and live alike, promote by one rule.

The gate scores both models, loaded from disk the same way, with the same generation settings, on the
same union of questions: the whole held-out set, the live dataset's questions that the new dataset
keeps, and the new questions. Each question counts once, so a few new questions cannot outvote the
held-out paraphrases and the kept knowledge.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.evaluate import accuracy_score, evaluate_heldout, evaluate_pairs
from engine.generate import Answerer
from engine.models import free_memory, load_model
from engine.pipeline import Base, TrainOutcome, TrainRequest, train_version, version_grounding
from engine.training import Progress, ProgressFn
from engine.versions import ModelStore, VersionInfo, read_stored
from qabot.dataset import MAX_FIELD_CHARS, HeldoutItem, QAPair, normalize_question, read_heldout

logger = logging.getLogger(__name__)

GATE_SAMPLE = 96  # most questions asked from each of the kept and the new pairs
GATE_MAX_NEW_TOKENS = 96


@dataclass(frozen=True)
class Policy:
    """The promotion rule's inputs: `promote=False` never promotes (--no-promote); `force` promotes even if worse."""

    promote: bool = True
    force: bool = False
    keep_versions: int = 3
    device: str = "auto"
    dtype: str = "auto"


@dataclass(frozen=True)
class GateQuestions:
    kept: list[QAPair]
    new: list[QAPair]
    heldout: list[HeldoutItem]

    def __len__(self) -> int:
        return len(self.kept) + len(self.new) + len(self.heldout)

    def describe(self) -> str:
        parts = [f"{len(self.kept)} kept", f"{len(self.new)} new", f"{len(self.heldout)} held-out"]
        return f"{len(self)} questions ({', '.join(parts)})"


@dataclass(frozen=True)
class Release:
    """What a release did and why."""

    version: VersionInfo
    promoted: bool
    reason: str
    score: float
    metrics: dict[str, float]
    live: str | None = None
    live_score: float | None = None
    live_metrics: dict[str, float] = field(default_factory=dict)
    trained: TrainOutcome | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain values for a job result."""
        previous = None
        if self.live is not None:
            previous = {"version": self.live, "metrics": self.live_metrics, "score": self.live_score}
        return {
            "version": self.version.name,
            "promoted": self.promoted,
            "reason": self.reason,
            "metrics": self.metrics,
            "score": self.score,
            "previous": previous,
            "dataset": self.version.meta["dataset"],
            "train_seconds": self.version.meta.get("train_seconds"),
        }


def gate_questions(live_pairs: list[QAPair], new_pairs: list[QAPair], heldout: list[HeldoutItem], seed: int) -> GateQuestions:
    """The union both models are asked: kept and new questions (sampled) and the whole held-out set."""
    live_questions = {normalize_question(p.prompt) for p in live_pairs}
    kept = [p for p in new_pairs if normalize_question(p.prompt) in live_questions]
    new = [p for p in new_pairs if normalize_question(p.prompt) not in live_questions]
    rng = random.Random(seed)
    return GateQuestions(rng.sample(kept, min(GATE_SAMPLE, len(kept))), rng.sample(new, min(GATE_SAMPLE, len(new))), heldout)


def score(
    store: ModelStore, name: str, questions: GateQuestions, policy: Policy, digest: str | None = None
) -> tuple[float, dict[str, float]]:
    """Load a version as the answer workers do and ask it the gate's questions; (share right, per-set accuracy)."""
    info = store.get(name)
    loaded = load_model(str(info.path), device=policy.device, dtype=policy.dtype)
    answerer = Answerer(
        loaded.model,
        loaded.tokenizer,
        max_new_tokens=GATE_MAX_NEW_TOKENS,
        max_question_chars=MAX_FIELD_CHARS,
        grounding=version_grounding(store, info, digest),  # grounded models read the same notes
    )
    reports = [evaluate_pairs(answerer, questions.kept, name="kept"), evaluate_pairs(answerer, questions.new, name="new")]
    reports.append(evaluate_heldout(answerer, questions.heldout, name="heldout"))
    del loaded, answerer
    free_memory()
    asked = sum(len(r.items) for r in reports)
    right = sum(sum(i.correct for i in r.items) for r in reports)
    metrics = {f"{r.name}_accuracy": round(r.accuracy, 4) for r in reports if r.items}
    return (right / asked if asked else 0.0), metrics


def eval_data_for(request: TrainRequest, live: VersionInfo | None) -> Path | None:
    """The request's held-out file, else the one the live model was measured with (if it still exists)."""
    if request.eval_data is not None:
        return request.eval_data
    previous = live.meta.get("eval_data") if live is not None else None
    return Path(previous) if previous and Path(previous).is_file() else None


def release(
    store: ModelStore,
    pairs: list[QAPair],
    base: Base,
    request: TrainRequest,
    policy: Policy,
    *,
    progress: ProgressFn | None = None,
    guard: Callable[[], None] | None = None,
) -> Release:
    """Fine-tune on validated pairs, score the new and the live version alike, promote by the one rule, prune.

    `guard()` (a queued run's hold on the training lock) runs under the store's lock right before the commit and
    the promotion, and raises when this run must not publish any more.
    """
    report = progress or (lambda p: None)
    live = store.current()
    eval_data = eval_data_for(request, live)
    request = replace(request, eval_data=eval_data)
    trained = train_version(store, pairs, base, request, device=policy.device, progress=report, guard=guard)
    new = trained.version
    report(Progress("comparing"))
    live_pairs = read_stored(Path(live.meta["dataset"]["path"])) if live and _has_dataset(live) else []
    questions = gate_questions(live_pairs, pairs, read_heldout(eval_data) if eval_data else [], request.config.seed)
    digest = new.meta["dataset"]["hash"]
    on = questions.describe()
    if live is None and policy.promote:  # nothing to compare with: the fine-tune's own evaluation is the score
        new_metrics = {k: v for k, v in trained.result.metrics.items() if k.endswith("_accuracy")}
        new_score, live_score, live_metrics = accuracy_score(new_metrics), None, {}
        on = "the questions asked after its last evaluated epoch"
    else:
        new_score, new_metrics = score(store, new.name, questions, policy, digest)
        live_score, live_metrics = score(store, live.name, questions, policy, digest) if live else (None, {})
    if not policy.promote:
        promoted, reason = False, f"not promoted on request (score {new_score:.2f} on {on})"
    elif live is None:
        promoted, reason = True, f"first model: nothing live to compare with (score {new_score:.2f} on {on})"
    elif policy.force:
        promoted, reason = True, f"forced (score {new_score:.2f} against {live.name}'s {live_score:.2f} on {on})"
    elif new_score >= live_score:
        promoted, reason = True, f"not worse than {live.name}: score {new_score:.2f} against {live_score:.2f} on {on}"
    else:
        promoted = False
        reason = f"worse than {live.name}: score {new_score:.2f} against {live_score:.2f} on {on}; kept as a candidate"
    if promoted:
        store.promote(new.name, check=guard)
    store.prune(policy.keep_versions)
    logger.info("release %s: %s", new.name, reason)
    report(Progress("done"))
    return Release(
        new,
        promoted,
        reason,
        round(new_score, 4),
        new_metrics,
        live.name if live else None,
        None if live_score is None else round(live_score, 4),
        live_metrics,
        trained,
    )


def _has_dataset(info: VersionInfo) -> bool:
    path = info.meta.get("dataset", {}).get("path")
    return bool(path) and Path(path).is_file()
