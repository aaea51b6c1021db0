"""From a dataset file to a new, saved (and usually live) model version (engine.serving: back to a loaded one)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from transformers import AutoConfig

from engine.calibration import GATE_FLOOR, calibrate, calibrate_decline
from engine.formatting import count_tokens
from engine.grounding import DECLINE, build_examples, learnt_answers
from engine.models import (
    context_length,
    free_memory,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_source,
    special_tokens,
)
from engine.plots import plot_training
from engine.serving import dataset_grounding
from engine.training import Progress, ProgressFn, TrainConfig, TrainResult, fine_tune
from engine.versions import ModelStore, VersionInfo
from qabot.dataset import QAPair, parse_text, read_dataset, validate_items
from qabot.errors import DatasetError, ModelError
from qabot.heldout import read_heldout

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainRequest:
    """How to fine-tune: base model, hyper-parameters, optional held-out paraphrases."""

    base_model: str
    config: TrainConfig
    eval_data: Path | None = None
    resume: bool = False
    source: str = ""  # where the pairs came from (a file name), for the plot and the metadata
    edits_from: int | None = None  # admin edits journaled when the pairs were read: later ones are carried over


@dataclass(frozen=True)
class Base:
    """A base model's tokenizer and the longest formatted example it takes, loaded once per release."""

    name: str
    source: str
    tokenizer: Any
    limit: int


@dataclass(frozen=True)
class TrainOutcome:
    version: VersionInfo
    result: TrainResult


def load_base(name: str, cache_dir: Path, max_length: int) -> Base:
    """Resolve a base-model setting and load its tokenizer; the token limit is its context or `max_length`."""
    source = resolve_source(name, cache_dir)
    tokenizer = load_tokenizer(source)
    try:
        limit = min(max_length, context_length(AutoConfig.from_pretrained(source)))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the configuration of '{source}': {exc}") from exc
    return Base(name, source, tokenizer, limit)


def _rules(base: Base) -> dict[str, Any]:
    return {
        "count_tokens": count_tokens(base.tokenizer),
        "max_tokens": base.limit,
        "special_tokens": special_tokens(base.tokenizer),
    }


def validate_file(data: Path, base: Base) -> list[QAPair]:
    """Read and check a dataset file against the base model's tokenizer; raises DatasetError."""
    return read_dataset(data, **_rules(base))


def validate_upload(data: bytes, filename: str, base: Base, max_bytes: int) -> tuple[list[QAPair], list]:
    """Check uploaded bytes by the same rules as a file; raises DatasetError. Returns the pairs and the parsed rows
    (whose optional fields say where each pair came from)."""
    if len(data) > max_bytes:
        raise DatasetError(filename, [f"the file is {len(data)} bytes; the limit is {max_bytes}"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(filename, [f"not UTF-8 text (byte {exc.start})"]) from exc
    rows = parse_text(text, filename)
    return validate_items(rows, filename, **_rules(base)), rows


def _run_name(digest: str, request: TrainRequest) -> str:
    config = asdict(request.config)
    if not request.config.grounded:  # plain runs keep the names they had before grounding existed (--resume)
        for name in ("grounded", "notes", "negative_share", "note_words", "note_chars", "embedder"):
            config.pop(name)
        if config["trained_share"] == 1:
            config.pop("trained_share")
    key = json.dumps([request.base_model, config], sort_keys=True)
    return f"{digest}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def train_version(
    store: ModelStore,
    pairs: list[QAPair],
    base: Base,
    request: TrainRequest,
    *,
    device: str = "auto",
    progress: ProgressFn | None = None,
    guard: Callable[[], None] | None = None,
) -> TrainOutcome:
    """Fine-tune on validated pairs and save a new version (not live: `engine.release` decides that).

    `guard()`, if given, runs under the store's lock right before the version is committed; it raises to stop it.
    """
    report = progress or (lambda p: None)
    heldout = read_heldout(request.eval_data) if request.eval_data else None
    digest, stored = store.store_dataset(pairs)
    run_dir = store.claim_run(_run_name(digest, request))
    examples, grounding, calibration = None, None, None
    if request.config.grounded:
        report(Progress("indexing the dataset"))
        # on the device the model trains on, as the answer worker embeds on its model's: on a GPU host, indexing and
        # calibrating pebble's 60 pairs on the CPU (about 30 s on 2 cores) would cost as much as the fine-tune itself
        grounding = dataset_grounding(
            store,
            digest,
            request.config.notes,
            heads=request.config.heads,
            embedder=request.config.embedder,
            device=str(resolve_device(device)),
        )
        report(Progress("calibrating declines"))
        calibration = calibrate(pairs, grounding.index, grounding.embedder, seed=request.config.seed)
        # The fine-tune's own evaluation answers as the version will: the same floor and off-topic rule, the lowest
        # decline gate calibration may give it, and each learnt question answered by its nearest note unless the model
        # declines (one prefill per question, not decoding it)
        grounding.min_score, grounding.offtopic_margin = calibration.min_score, calibration.offtopic_margin
        grounding.complaint_margin = calibration.complaint_margin
        grounding.decline_confidence = GATE_FLOOR
        grounding.learnt = learnt_answers(pairs)
        examples = build_examples(
            pairs,
            grounding.index,
            grounding.embedder,
            notes=request.config.notes,
            negative_share=request.config.negative_share,
            heads=request.config.heads,
            seed=request.config.seed,
        )
    report(Progress("loading base model"))
    loaded = load_model(base.source, device=device, dtype="float32")
    try:
        model, result = fine_tune(
            loaded.model,
            base.tokenizer,
            pairs,
            config=request.config,
            run_dir=run_dir,
            heldout=heldout,
            resume=request.resume,
            progress=report,
            examples=examples,
            grounding=grounding,
        )
        if grounding is not None and calibration is not None:
            report(Progress("calibrating the decline"))
            context = context_length(model.config)
            prompt_tokens = context - min(result.budget, context // 2)  # as the answerer leaves room for the answer
            threshold = calibrate_decline(
                model, base.tokenizer, grounding, pairs, prompt_tokens=prompt_tokens, seed=request.config.seed
            )
            calibration = replace(calibration, decline_confidence=threshold)
        report(Progress("saving", metrics=result.metrics))
        staging = store.staging_dir()
        try:
            model.save_pretrained(staging)
            base.tokenizer.save_pretrained(staging)
            title = f"{request.source or 'dataset ' + digest}: {len(pairs)} pairs"
            plot_training(result.log_history, staging / "loss.png", title=title)
            (staging / "log_history.json").write_text(json.dumps(result.log_history, indent=1), encoding="utf-8")
            meta = {
                "base_model": request.base_model,
                "dataset": {
                    "hash": digest,
                    "pairs": len(pairs),
                    "path": str(stored),
                    "source": request.source,
                    "edits_from": request.edits_from if request.edits_from is not None else len(store.edits()),
                },
                "eval_data": str(request.eval_data) if request.eval_data else None,
                "hyperparameters": asdict(request.config),
                "metrics": result.metrics,
                "train_seconds": round(result.seconds, 1),
                "eval_seconds": round(result.eval_seconds, 1),
                "epochs_run": result.epochs_run,
                "train_tokens_per_epoch": result.tokens_per_epoch,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "grounding": {
                    "notes": request.config.notes,
                    "decline": DECLINE,
                    "embedder": request.config.embedder,
                    **request.config.heads.meta(),
                }
                if grounding
                else None,
                "answer_budget": result.budget,
                "calibration": calibration.to_meta() if calibration else None,
            }
            info = store.commit(staging, meta, check=guard)
        except BaseException:
            store.discard(staging)
            raise
    except BaseException:
        if not request.config.checkpoints:  # epoch checkpoints stay only for `qabot train --resume`
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    shutil.rmtree(run_dir, ignore_errors=True)
    del loaded, model
    free_memory()
    report(Progress("saved", metrics=result.metrics))
    return TrainOutcome(info, result)
