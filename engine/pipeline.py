"""From a dataset file to a new, saved (and usually live) model version; and back to a loaded model."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from transformers import AutoConfig

from engine.formatting import count_tokens
from engine.generate import Answerer
from engine.models import LoadedModel, context_length, load_model, load_tokenizer, resolve_source
from engine.plots import plot_training
from engine.training import Progress, ProgressFn, TrainConfig, TrainResult, fine_tune
from engine.versions import ModelStore, VersionInfo
from qabot.dataset import QAPair, read_dataset, read_heldout
from qabot.errors import ModelError, TrainingError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainRequest:
    """What to fine-tune: data, optional held-out paraphrases, base model and hyper-parameters."""

    data: Path
    base_model: str
    config: TrainConfig
    eval_data: Path | None = None
    promote: bool = True
    resume: bool = False


@dataclass(frozen=True)
class TrainOutcome:
    version: VersionInfo
    promoted: bool
    result: TrainResult


def validate_dataset(data: Path, tokenizer, max_tokens: int) -> list[QAPair]:
    """Read and check a dataset against the model's tokenizer; raises DatasetError."""
    return read_dataset(data, count_tokens=count_tokens(tokenizer), max_tokens=max_tokens)


def _run_name(digest: str, request: TrainRequest) -> str:
    key = json.dumps([request.base_model, asdict(request.config)], sort_keys=True)
    return f"{digest}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def train_version(
    store: ModelStore, request: TrainRequest, *, cache_dir: Path, device: str = "auto", progress: ProgressFn | None = None
) -> TrainOutcome:
    """Validate, fine-tune, save a new version and promote it; bad data changes nothing."""
    report = progress or (lambda p: None)
    report(Progress("loading base model"))
    source = resolve_source(request.base_model, cache_dir)
    tokenizer = load_tokenizer(source)
    try:
        limit = min(request.config.max_length, context_length(AutoConfig.from_pretrained(source)))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the configuration of '{source}': {exc}") from exc
    report(Progress("validating data"))
    pairs = validate_dataset(request.data, tokenizer, limit)
    heldout = read_heldout(request.eval_data) if request.eval_data else None
    digest, stored = store.store_dataset(pairs)
    run_dir = store.runs_dir / _run_name(digest, request)
    loaded = load_model(source, device=device, dtype="float32")
    model, result = fine_tune(
        loaded.model,
        tokenizer,
        pairs,
        config=request.config,
        run_dir=run_dir,
        heldout=heldout,
        resume=request.resume,
        progress=report,
    )
    report(Progress("saving", metrics=result.metrics))
    staging = store.staging_dir()
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        plot_training(result.log_history, staging / "loss.png", title=f"{Path(request.data).name}: {len(pairs)} pairs")
        (staging / "log_history.json").write_text(json.dumps(result.log_history, indent=1), encoding="utf-8")
        meta = {
            "base_model": request.base_model,
            "dataset": {"hash": digest, "pairs": len(pairs), "path": str(stored), "source": str(request.data)},
            "eval_data": str(request.eval_data) if request.eval_data else None,
            "hyperparameters": asdict(request.config),
            "metrics": result.metrics,
            "train_seconds": round(result.seconds, 1),
            "epochs_run": result.epochs_run,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        info = store.commit(staging, meta)
    except Exception:
        store.discard(staging)
        raise
    shutil.rmtree(run_dir, ignore_errors=True)
    if request.promote:
        store.promote(info.name)
    report(Progress("done", metrics=result.metrics))
    return TrainOutcome(info, request.promote, result)


def load_version(
    store: ModelStore, name: str | None = None, *, device: str = "auto", dtype: str = "auto"
) -> tuple[LoadedModel, VersionInfo]:
    """Load a saved version (the live one by default) for answering."""
    info = store.get(name) if name else store.current()
    if info is None:
        raise TrainingError("no model has been trained yet: run `qabot train` (or `qabot chat`, which trains one)")
    return load_model(str(info.path), device=device, dtype=dtype), info


def make_answerer(loaded: LoadedModel, *, max_new_tokens: int, max_question_chars: int) -> Answerer:
    return Answerer(loaded.model, loaded.tokenizer, max_new_tokens=max_new_tokens, max_question_chars=max_question_chars)
