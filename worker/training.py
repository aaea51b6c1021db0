"""The train job's work: fine-tune a new version, compare it with the live one, promote if not worse."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from qabot.settings import Settings

logger = logging.getLogger(__name__)


def _config(overrides: dict[str, Any] | None):
    from engine.training import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides or {}) - known
    if unknown:
        raise ValueError(f"unknown hyper-parameter(s): {', '.join(sorted(unknown))}")
    return TrainConfig(**(overrides or {}))


def _evaluate_live(settings: Settings, store, pairs, heldout, config) -> tuple[str, dict[str, float]] | None:
    """Ask the live model the same questions the new one was scored on."""
    from engine.evaluate import evaluate_sets
    from engine.pipeline import load_version, make_answerer
    from engine.training import recall_sample

    current = store.current()
    if current is None:
        return None
    loaded, info = load_version(store, current.name, device=settings.device, dtype=settings.dtype)
    answerer = make_answerer(loaded, max_new_tokens=96, max_question_chars=settings.max_question_chars)
    metrics = evaluate_sets(answerer, recall_sample(pairs, config), heldout or [])
    del loaded, answerer
    return info.name, metrics


def run_training(settings: Settings, request: dict[str, Any], report: Callable[..., None]) -> dict[str, Any]:
    """Fine-tune from a request {dataset, eval_data?, base_model?, hyperparameters?, force?} and decide promotion."""
    from engine.evaluate import accuracy_score
    from engine.pipeline import TrainRequest, train_version
    from engine.versions import ModelStore
    from qabot.dataset import read_dataset, read_heldout

    store = ModelStore(settings.models_dir)
    defaults = {
        "epochs": settings.train_epochs,
        "learning_rate": settings.train_learning_rate,
        "batch_size": settings.train_batch_size,
    }
    config = _config({k: v for k, v in defaults.items() if v is not None} | (request.get("hyperparameters") or {}))
    data = store.dataset_file(request.get("dataset") or str(settings.dataset))
    eval_data = request.get("eval_data")
    eval_path = Path(eval_data) if eval_data else None
    base = request.get("base_model") or settings.base_model

    def progress(p) -> None:
        report(
            stage=p.stage,
            step=p.step,
            total_steps=p.total_steps,
            epoch=round(p.epoch, 2),
            loss=None if p.loss is None else round(p.loss, 4),
            eta_s=None if p.eta_s is None else round(p.eta_s),
            metrics=p.metrics,
        )

    train_request = TrainRequest(data=data, base_model=base, config=config, eval_data=eval_path, promote=False)
    outcome = train_version(store, train_request, cache_dir=settings.cache_dir, device=settings.device, progress=progress)
    new = outcome.version
    report(stage="comparing")
    pairs = read_dataset(Path(new.meta["dataset"]["path"]))
    heldout = read_heldout(eval_path) if eval_path else None
    live = _evaluate_live(settings, store, pairs, heldout, config)
    new_score = accuracy_score(new.meta["metrics"])
    if live is None:
        promote, reason, previous = True, "first model: nothing live to compare with", None
    else:
        name, live_metrics = live
        live_score = accuracy_score(live_metrics)
        previous = {"version": name, "metrics": live_metrics, "score": round(live_score, 4)}
        if request.get("force"):
            promote, reason = True, f"forced (score {new_score:.2f} against {name}'s {live_score:.2f})"
        elif new_score >= live_score:
            promote, reason = True, f"not worse than {name}: score {new_score:.2f} against {live_score:.2f}"
        else:
            promote, reason = False, f"worse than {name}: score {new_score:.2f} against {live_score:.2f}; kept as a candidate"
    if promote:
        store.promote(new.name)
    report(stage="done")
    return {
        "version": new.name,
        "promoted": promote,
        "reason": reason,
        "metrics": new.meta["metrics"],
        "score": round(new_score, 4),
        "previous": previous,
        "dataset": new.meta["dataset"],
        "loss_curve": str(new.path / "loss.png"),
        "train_seconds": new.meta["train_seconds"],
    }
