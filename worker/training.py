"""The train job: an uploaded or stored dataset, validated once, through the one release path (engine.release)."""

from __future__ import annotations

import logging
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError
from rq import get_current_job

from qabot.settings import Settings
from worker.jobs import UPLOAD_KEY, release_training_lock

logger = logging.getLogger(__name__)

META_EVERY_SECONDS = 1.0
# The sample is a demo, never a default for real data: a deployment with no dataset is told what to send.
NOTHING_TO_TRAIN = (
    'there is no dataset to train on yet: attach a JSON or JSONL file of {"prompt": ..., "response": ...} pairs to '
    "/retrain, or add pairs one at a time with /addqa, then /retrain. Nothing was changed."
)


def _config(overrides: dict[str, Any] | None):
    from engine.training import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides or {}) - known
    if unknown:
        raise ValueError(f"unknown hyper-parameter(s): {', '.join(sorted(unknown))}")
    return TrainConfig(**(overrides or {}))


def _pairs(settings: Settings, store, request: dict[str, Any], base, connection, report) -> tuple[list, dict[str, Any], str, int]:
    """The pairs to train on (validated once, with the base model's tokenizer), what an upload changed, their source,
    and the admin edits journaled when the dataset was read (later ones carry onto it if promoted): read together under
    the store's lock, so an /addqa that lands while the job starts is in one or the other, never lost."""
    from engine.pipeline import validate_file, validate_upload
    from qabot.errors import DatasetError, TrainingError
    from qabot.merge import UploadMode, merge_pairs, would_drop

    upload = request.get("upload")
    if upload is None:
        reference = request.get("dataset")
        with store.lock():  # a stored dataset's file never changes: reading its path and the journal's length is enough
            path = store.dataset_file(reference) if reference else store.current_dataset()
            edits_from = len(store.edits())
        if path is None:  # run_training checked this before loading the base model; the store may have changed since
            raise TrainingError(NOTHING_TO_TRAIN)
        return validate_file(Path(path), base), {}, Path(path).name, edits_from
    data = connection.get(UPLOAD_KEY.format(upload["id"]))
    if data is None:
        raise DatasetError(upload["filename"], ["the upload expired before training started; send the file again"])
    incoming, rows = validate_upload(data, upload["filename"], base, settings.upload_max_bytes)
    store.note_provenance(upload_provenance(rows, incoming, upload["filename"]), keep=True)
    mode = UploadMode(upload.get("mode") or UploadMode.ADD)
    with store.lock():  # the merged dataset is stored, and becomes current only if its version is promoted
        edits_from = len(store.edits())
        current = store.current_pairs()
        merge = merge_pairs(current, incoming, mode)
        digest, _ = store.store_dataset(merge.pairs)
    connection.delete(UPLOAD_KEY.format(upload["id"]))
    changed = {
        "filename": upload["filename"],
        "mode": str(mode),
        "file_pairs": len(incoming),
        "added": merge.added,
        "updated": merge.updated,
        "kept": merge.kept,
        "dropped": merge.dropped,
        "not_in_file": would_drop(current, incoming),
        "pairs": len(merge.pairs),
        "dataset": digest,
    }
    report(stage="validated", upload=changed)
    return merge.pairs, changed, upload["filename"], edits_from


def upload_provenance(rows: list, pairs: list, filename: str) -> dict:
    """Where an upload's pairs came from: the optional fields its rows carry for them (an export writes them), else
    the file's name and the time. A pair the store already knows keeps its record (`note_provenance(keep=True)`)."""
    from datetime import UTC, datetime

    from engine.datastore import PROVENANCE_FIELDS
    from qabot.dataset import QAPair

    carried = {
        QAPair(r["prompt"].strip(), r["response"].strip()): {k: str(r[k]) for k in PROVENANCE_FIELDS if r.get(k)}
        for r in rows
        if isinstance(r, dict) and isinstance(r.get("prompt"), str) and isinstance(r.get("response"), str)
    }
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return {p: carried.get(p) or {"source": filename, "added_at": now} for p in pairs}


def run_training(settings: Settings, request: dict[str, Any], report, connection=None, guard=None) -> dict[str, Any]:
    """Fine-tune from a request {dataset | upload, eval_data?, base_model?, hyperparameters?, force?} and decide promotion.

    `guard()` raises unless this run may still publish; it is called right before a version is committed and promoted.
    """
    from engine.pipeline import TrainRequest, load_base
    from engine.release import Policy, release
    from engine.versions import ModelStore
    from qabot.errors import TrainingError

    store = ModelStore.of(settings)
    if not request.get("upload") and not request.get("dataset") and store.current_dataset() is None:
        raise TrainingError(NOTHING_TO_TRAIN)  # before the base model loads: the admin hears at once
    defaults = {
        "checkpoints": False,  # queued fine-tunes never resume: no epoch checkpoints to leave behind
        "grounded": settings.grounded,
        "embedder": settings.embedder,
        "epochs": settings.train_epochs,
        "learning_rate": settings.train_learning_rate,
        "batch_size": settings.train_batch_size,
    }
    config = _config({k: v for k, v in defaults.items() if v is not None} | (request.get("hyperparameters") or {}))
    report(stage="validating data")
    base = load_base(request.get("base_model") or settings.base_model, settings.cache_dir, config.max_length)
    pairs, upload, source, edits_from = _pairs(settings, store, request, base, connection, report)

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

    eval_data = request.get("eval_data")
    train_request = TrainRequest(base.name, config, Path(eval_data) if eval_data else None, source=source, edits_from=edits_from)
    policy = Policy(
        force=bool(request.get("force")), keep_versions=settings.keep_versions, device=settings.device, dtype=settings.dtype
    )
    outcome = release(store, pairs, base, train_request, policy, progress=progress, guard=guard)
    loss_png = outcome.version.path / "loss.png"
    return outcome.to_dict() | {
        "upload": upload,
        "loss_png": loss_png.read_bytes() if loss_png.is_file() else None,
    }


def train_job(request: dict[str, Any]) -> dict[str, Any]:
    """The rq job: progress in job.meta (saved at most once a second), under a lease on the training lock.

    The lease (worker.train_worker) is renewed every few seconds while the fine-tune lives; if it is lost, the run
    stops at its next progress report and never commits or promotes. A Redis outage only delays progress reports.
    """
    from worker.results import retrying
    from worker.train_worker import Lease

    job = get_current_job()
    last_save = 0.0
    lease = Lease(job.connection, job.id).start() if job is not None else None

    def report(**meta: Any) -> None:
        nonlocal last_save
        if lease is not None and lease.lost:
            lease.check()  # raises: the run was declared failed
        if job is None:
            return
        stage_changed = meta.get("stage") != job.meta.get("stage")
        job.meta.update(meta)
        if stage_changed or time.monotonic() - last_save >= META_EVERY_SECONDS:
            try:
                job.save_meta()
                last_save = time.monotonic()
            except RedisError as exc:  # Redis restarting: the next report saves it all
                logger.warning("progress not saved: %s", exc)

    settings = Settings()
    try:
        from engine.versions import ModelStore

        ModelStore.of(settings).clean_staging()  # this job holds the lock: anything staged is a dead run's
        connection = job.connection if job else None
        return run_training(settings, request, report, connection, lease.check if lease else None)
    except Exception as exc:
        from qabot.errors import DatasetError

        if job is not None:
            job.meta.update(stage="failed", error=str(exc), problems=exc.problems if isinstance(exc, DatasetError) else None)
            retrying(job.save_meta, "job meta", give_up_s=60)
        raise
    finally:
        if job is not None:
            lease.stop()
            # rq records the outcome next: wait out a Redis restart here rather than lose it
            retrying(lambda: release_training_lock(job.connection, job.id), "releasing the training lock", give_up_s=60)
