"""One release path for `qabot train` and the train job: fine-tune, score new and live alike, promote by one rule.

The gate scores both models, loaded from disk the same way, with the same generation settings, on the
same union of questions: the held-out questions that belong to the dataset being trained, the live
dataset's questions that the new dataset keeps, and the new questions. Each question counts once, so a
few new questions cannot outvote the held-out paraphrases and the kept knowledge. Where no held-out
question belongs to the dataset, rewrites of its training questions in users' style (lower case, a
typo, keywords) stand in for them. A grounded candidate is also asked questions it must decline: users'
rewrites of some of its questions, with their own pair taken out of the notes (an unknown fact of a known
subject). A grounded version answers a learnt question with its nearest note unless the model declines, so
without them an untrained grounded model scored as well as a trained one: only the declines tell them apart.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.evaluate import accuracy_score, evaluate_heldout, evaluate_pairs, evaluate_unanswerable
from engine.heldout import eval_data_for, fold, heldout_file, heldout_for, prune_heldout
from engine.models import free_memory, load_model
from engine.pipeline import Base, TrainOutcome, TrainRequest, train_version
from engine.retrieval import PairIndex
from engine.serving import make_answerer, version_grounding
from engine.training import Progress, ProgressFn
from engine.versions import ModelStore, VersionInfo, read_stored
from qabot.dataset import MAX_FIELD_CHARS, QAPair, normalize_question, pair_key
from qabot.heldout import HeldoutItem, read_heldout
from qabot.rewrites import Rewrite, user_rewrites

logger = logging.getLogger(__name__)

GATE_SAMPLE = 96  # most questions asked from each of the kept and the new pairs, and most rewrites
GATE_UNKNOWN = 24  # most questions asked with their own pair left out of the notes (a grounded candidate)


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
    """What both models are asked. `rewrites` (judged like training questions) only where no held-out question
    belongs to the dataset; `left_out` counts the held-out questions dropped because the dataset lacks their answer."""

    kept: list[QAPair]
    new: list[QAPair]
    heldout: list[HeldoutItem]
    rewrites: list[QAPair] = field(default_factory=list)
    left_out: int = 0
    unknown: list[Rewrite] = field(default_factory=list)  # asked with `pair` left out of the notes: right if declined

    def __len__(self) -> int:
        return len(self.kept) + len(self.new) + len(self.heldout) + len(self.rewrites) + len(self.unknown)

    def describe(self) -> str:
        parts = [f"{len(self.kept)} kept", f"{len(self.new)} new", f"{len(self.heldout)} held-out"]
        if self.rewrites:
            parts.append(f"{len(self.rewrites)} rewrites in users' style")
        if self.unknown:
            parts.append(f"{len(self.unknown)} to decline, their answer left out of the notes")
        return f"{len(self)} questions ({', '.join(parts)}){left_out_text(self.left_out)}"


def left_out_text(left_out: int) -> str:
    if left_out == 1:
        return "; 1 held-out question left out: this dataset does not hold its answer"
    return f"; {left_out} held-out questions left out: this dataset does not hold their answers" if left_out else ""


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


def gate_questions(
    live_pairs: list[QAPair], new_pairs: list[QAPair], heldout: list[HeldoutItem], seed: int, *, grounded: bool = False
) -> GateQuestions:
    """The union both models are asked: kept and new questions (sampled), the held-out items the new dataset answers,
    or, where none does, rewrites of its questions in users' style (sampled); for a `grounded` candidate, rewrites of
    some of its questions to be asked with their own pair left out of the notes."""
    live_questions = {normalize_question(p.prompt) for p in live_pairs}
    kept = [p for p in new_pairs if normalize_question(p.prompt) in live_questions]
    new = [p for p in new_pairs if normalize_question(p.prompt) not in live_questions]
    belonging = heldout_for(new_pairs, heldout)
    rewrites = []
    if not belonging:
        rewrites = [QAPair(r.question, r.pair.response) for r in user_rewrites(new_pairs, limit=GATE_SAMPLE, seed=seed)]
    unknown = []  # a quarter of the pairs at most: the rest of the data still gives each its notes
    if grounded and (count := min(GATE_UNKNOWN, len(new_pairs) // 4)):
        unknown = user_rewrites(new_pairs, limit=count, seed=seed + 1)
    rng = random.Random(seed)
    return GateQuestions(
        rng.sample(kept, min(GATE_SAMPLE, len(kept))),
        rng.sample(new, min(GATE_SAMPLE, len(new))),
        belonging,
        rewrites,
        len(heldout) - len(belonging),
        unknown,
    )


def without(grounding: Any, pairs: list[QAPair]) -> Any:
    """The grounding with these pairs, and any other pair with the same answer, taken out of its notes (its index
    keeps the other rows)."""
    gone = {pair_key(p) for p in pairs}
    answers = {fold(p.response) for p in pairs}
    rows = [i for i, p in enumerate(grounding.index.pairs) if pair_key(p) not in gone and fold(p.response) not in answers]
    index = PairIndex([grounding.index.pairs[i] for i in rows], grounding.index.vectors[rows])
    return replace(grounding, index=index)


def score(
    store: ModelStore, name: str, questions: GateQuestions, policy: Policy, digest: str | None = None
) -> tuple[float, dict[str, float]]:
    """Load a version as the answer workers do and ask it the gate's questions; (share right, per-set accuracy)."""
    info = store.get(name)
    loaded = load_model(str(info.path), device=policy.device, dtype=policy.dtype)
    # grounded models read the same notes, embedded on the model's device (as the answer worker embeds)
    grounding = version_grounding(store, info, digest, device=str(loaded.model.device))
    answerer = _answerer(loaded, info, grounding)
    reports = [evaluate_pairs(answerer, questions.kept, name="kept"), evaluate_pairs(answerer, questions.new, name="new")]
    reports.append(evaluate_heldout(answerer, questions.heldout, name="heldout"))
    reports.append(evaluate_pairs(answerer, questions.rewrites, name="rewrites"))
    if questions.unknown:  # a plain version cannot decline: it gets none of them right
        if grounding is not None:
            answerer = _answerer(loaded, info, without(grounding, [r.pair for r in questions.unknown]))
        reports.append(evaluate_unanswerable(answerer, [r.question for r in questions.unknown], name="unknown"))
    del loaded, answerer
    free_memory()
    asked = sum(len(r.items) for r in reports)
    right = sum(sum(i.correct for i in r.items) for r in reports)
    metrics = {f"{r.name}_accuracy": round(r.accuracy, 4) for r in reports if r.items}
    return (right / asked if asked else 0.0), metrics


def _answerer(loaded: Any, info: VersionInfo, grounding: Any) -> Any:
    """A version's answerer with its own budget and thresholds, as when it is live."""
    return make_answerer(loaded, info, max_new_tokens=None, max_question_chars=MAX_FIELD_CHARS, grounding=grounding)


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
    if request.edits_from is None:  # admin edits from here on are carried onto this dataset if it goes live
        request = replace(request, edits_from=len(store.edits()))
    source = eval_data_for(request, live)
    items = read_heldout(source) if source else []
    heldout = heldout_for(pairs, items)  # a release is judged only on its own dataset's held-out questions
    request = replace(request, eval_data=heldout_file(store, source, items, heldout))
    trained = train_version(store, pairs, base, request, device=policy.device, progress=report, guard=guard)
    new = trained.version
    report(Progress("comparing"))
    live = store.current()  # again: an admin may have rolled back or promoted while it trained
    live_pairs = read_stored(Path(live.meta["dataset"]["path"])) if live and _has_dataset(live) else []
    questions = gate_questions(live_pairs, pairs, items, request.config.seed, grounded=request.config.grounded)
    digest = new.meta["dataset"]["hash"]
    on = questions.describe()
    if live is None and policy.promote:  # nothing to compare with: the fine-tune's own evaluation is the score
        new_metrics = {k: v for k, v in trained.result.metrics.items() if k.endswith("_accuracy")}
        new_score, live_score, live_metrics = accuracy_score(new_metrics), None, {}
        left_out = left_out_text(len(items) - len(heldout))
        on = f"its training questions and {len(heldout)} held-out questions, asked after its last evaluated epoch{left_out}"
    else:
        # each version with its own notes: the candidate with the dataset it learnt, the live one with what it
        # answers from now (scored with the candidate's, a replace pulled the live score down to the candidate's)
        new_score, new_metrics = score(store, new.name, questions, policy, digest)
        live_notes = store.current_digest()
        live_score, live_metrics = score(store, live.name, questions, policy, live_notes) if live else (None, {})
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
    if promoted:  # its dataset becomes current only now, with the pairs admins edited meanwhile carried over
        try:
            store.promote(new.name, check=functools.partial(_still_live, store, live.name if live else None, guard))
        except LiveChanged as exc:
            promoted, reason = False, f"{reason}; but {exc}, so it was not promoted: kept as a candidate"
    store.prune(policy.keep_versions)
    prune_heldout(store)
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


class LiveChanged(Exception):
    """Another version went live while a candidate was scored against the one before it."""


def _still_live(store: ModelStore, scored: str | None, guard: Callable[[], None] | None) -> None:
    """Under the store's lock, before a promotion: the run may still publish (`guard`), and the version it was scored
    against is still the live one."""
    if guard is not None:
        guard()
    if (now := store.current_name()) != scored:
        raise LiveChanged(f"{now} went live while it was scored")


def _has_dataset(info: VersionInfo) -> bool:
    path = info.meta.get("dataset", {}).get("path")
    return bool(path) and Path(path).is_file()
