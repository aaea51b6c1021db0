"""Prometheus metrics of the answer and train workers, in one registry served by `start_metrics_server`.

Off unless QABOT_ANSWER_METRICS_PORT / QABOT_TRAIN_METRICS_PORT is set; each worker serves its own process's figures.
The train worker counts fine-tunes in its parent (the fine-tune runs in a forked child whose counts would be lost).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server

from worker.rq_seam import JobTimeoutException

logger = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()  # ours alone (plus the process's CPU and memory), whatever else a library registers
ProcessCollector(registry=REGISTRY)

QUESTION_OUTCOMES = ("answered", "declined", "failed", "timed_out")
FINE_TUNE_OUTCOMES = ("promoted", "kept", "failed")

QUESTIONS = Counter("qabot_questions", "Questions this answer worker ended, by outcome.", ["outcome"], registry=REGISTRY)
ANSWER_LATENCY = Histogram(
    "qabot_answer_latency_seconds",
    "Seconds from a question's enqueue to its answer (answered or declined).",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "qabot_batch_size", "Questions per batched pass of the model.", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=REGISTRY
)
QUEUE_DEPTH = Gauge(
    "qabot_queue_depth", "Jobs waiting in the queue (refreshed every 2 s and at each batch).", ["queue"], registry=REGISTRY
)
MODEL_VERSION = Gauge("qabot_model_version", "1 for the model version this answer worker serves.", ["version"], registry=REGISTRY)
MODEL_FALLBACK = Gauge(
    "qabot_model_fallback",
    "1 while this answer worker serves another version because the live one does not load (/status says why).",
    registry=REGISTRY,
)
PUT_BACK = Counter(
    "qabot_questions_put_back", "Questions a dead answer worker held that this worker put back in the queue.", registry=REGISTRY
)
FINE_TUNES = Counter("qabot_fine_tunes", "Fine-tunes this train worker ran, by outcome.", ["outcome"], registry=REGISTRY)
FINE_TUNE_RUNNING = Gauge("qabot_fine_tune_running", "1 while this train worker runs a fine-tune.", registry=REGISTRY)

for _outcome in QUESTION_OUTCOMES:
    QUESTIONS.labels(_outcome)  # every outcome shows, at 0, from the first scrape
for _outcome in FINE_TUNE_OUTCOMES:
    FINE_TUNES.labels(_outcome)


def start_metrics_server(port: int | None, host: str = "127.0.0.1") -> bool:
    """Serve /metrics on host:port in a daemon thread; False when `port` is None or taken (the worker runs on)."""
    if port is None:
        return False
    try:
        start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:  # metrics are for the operator: a taken port never stops the worker
        logger.error("metrics: cannot listen on %s:%d (%s); give each worker on a host its own port", host, port, exc)
        return False
    logger.info("metrics: serving http://%s:%d/metrics", host, port)
    return True


def question_ended(outcome: dict[str, Any] | BaseException | None, enqueued_at: datetime | None) -> str:
    """Count one answer job's outcome (and its time since enqueue when it was answered); the outcome label."""
    if isinstance(outcome, dict):
        label = "declined" if outcome.get("declined") else "answered"
        if enqueued_at is not None:
            ANSWER_LATENCY.observe(max(0.0, (datetime.now(UTC) - enqueued_at).total_seconds()))
    else:
        label = "timed_out" if isinstance(outcome, JobTimeoutException) else "failed"
    QUESTIONS.labels(label).inc()
    return label


def set_queue_depth(queues: list[Any]) -> None:
    """Read each queue's length (one LLEN each); raises RedisError like any Redis call."""
    for queue in queues:
        QUEUE_DEPTH.labels(queue.name).set(queue.count)


def set_model_version(version: str) -> None:
    """The version now served is the only one at 1."""
    MODEL_VERSION.clear()
    MODEL_VERSION.labels(version).set(1)


def fine_tune_ended(status: str | None, result: Any) -> str:
    """Count one fine-tune by its final job status and result; the outcome label.

    finished: "promoted" or "kept" (a candidate, worse than the live one or --no-promote); failed: "failed"; any other
    final status (stopped, canceled) by its name; "unknown" when Redis could not tell.
    """
    status = getattr(status, "value", status)  # rq's JobStatus is a str enum
    if status == "finished":
        label = "promoted" if isinstance(result, dict) and result.get("promoted") else "kept"
    else:
        label = status or "unknown"
    FINE_TUNES.labels(label).inc()
    return label
