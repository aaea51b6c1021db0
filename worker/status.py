"""What is going on: the live model and datasets, queue lengths, workers, a running fine-tune. No torch."""

from __future__ import annotations

import json

from rq import Worker
from rq.registry import FailedJobRegistry, StartedJobRegistry

from qabot import inbox
from qabot.settings import Settings
from qabot.shapes import StatusReport
from worker.client import QueueClient
from worker.liveness import FALLBACK_FIELD, MODEL_FIELD


def collect(settings: Settings, client: QueueClient, store=None, *, inside: str | None = None) -> StatusReport:
    """A report for `qabot status`, health checks and the bots' /status; the store part needs the models volume.

    `inside`: the queue of the job collecting it (the admin worker's /status), which is not counted as running.
    """
    queues = {}
    for queue in (client.answers, client.training, client.admin_jobs):
        queues[queue.name] = {
            "waiting": queue.count,
            # ZCARD, not len(): rq's len() runs its cleanup, which would fail a dead answer worker's questions as
            # abandoned before a live worker puts them back
            "running": client.connection.zcard(StartedJobRegistry(queue.name, connection=client.connection).key)
            - (queue.name == inside),
            "failed": len(FailedJobRegistry(queue.name, connection=client.connection)),
        }
    workers = [_worker(client, w) for w in Worker.all(connection=client.connection)]
    training = None
    job_id = client.running_training()
    if job_id:
        status = client.training_status(job_id)
        training = {
            "job": job_id,
            "state": str(status.state),
            **{k: status.meta.get(k) for k in ("stage", "epoch", "loss", "eta_s", "step", "total_steps")},
        }
    live = store.current() if store is not None else None
    live_data = live.meta.get("dataset", {}) if live else {}
    current = store.current_dataset() if store is not None else None
    current_pairs = len(store.current_pairs()) if current is not None else None
    edits = store.edits() if store is not None else []
    return StatusReport(
        live_version=live.name if live else None,
        trained_at=live.created_at if live else None,
        live_dataset=live_data.get("hash"),
        live_pairs=live_data.get("pairs"),
        current_dataset=current.stem if current is not None else None,
        current_pairs=current_pairs,
        queues=queues,
        workers=workers,
        training=training,
        unanswered=inbox.open_count(client.connection),
        live_source=live_data.get("source") or None,
        last_edit={k: str(v) for k, v in edits[-1].items() if k in ("action", "platform", "by", "at")} if edits else {},
    )


def _worker(client: QueueClient, worker: Worker) -> dict:
    """A worker's name, queues and state; for an answer worker, the version it serves and, while the live version
    does not load, which one that is and why (`fallback`)."""
    model, fallback = client.connection.hmget(worker.key, [MODEL_FIELD, FALLBACK_FIELD])
    return {
        "name": worker.name,
        "queues": worker.queue_names(),
        "state": str(worker.get_state()),
        "model": model.decode() if model else None,
        "fallback": json.loads(fallback) if fallback else None,
    }
