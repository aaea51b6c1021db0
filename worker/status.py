"""What is going on: the live model, queue lengths, workers, a running fine-tune. No torch."""

from __future__ import annotations

from typing import Any

from rq import Worker
from rq.registry import FailedJobRegistry, StartedJobRegistry

from engine.versions import ModelStore
from qabot.settings import Settings
from worker.client import QueueClient


def collect(settings: Settings, client: QueueClient) -> dict[str, Any]:
    """A plain dict for the CLI, health checks and the bots' /status."""
    store = ModelStore(settings.models_dir)
    live = store.current()
    queues = {}
    for queue in (client.answers, client.training):
        queues[queue.name] = {
            "waiting": queue.count,
            "running": len(StartedJobRegistry(queue.name, connection=client.connection)),
            "failed": len(FailedJobRegistry(queue.name, connection=client.connection)),
        }
    workers = [
        {"name": w.name, "queues": w.queue_names(), "state": str(w.get_state())} for w in Worker.all(connection=client.connection)
    ]
    training = None
    job_id = client.running_training()
    if job_id:
        status = client.training_status(job_id)
        training = {
            "job": job_id,
            "state": str(status.state),
            **{k: status.meta.get(k) for k in ("stage", "epoch", "loss", "eta_s", "step", "total_steps")},
        }
    return {
        "live_version": live.name if live else None,
        "trained_at": live.created_at if live else None,
        "dataset_pairs": live.meta.get("dataset", {}).get("pairs") if live else None,
        "queues": queues,
        "workers": workers,
        "training": training,
    }
