"""Admin jobs, served by `qabot worker admin` (no torch): the only writer of datasets and pointers besides training.

Each job takes and returns the plain shapes of `qabot.shapes`; bots only render them.
"""

from __future__ import annotations

import logging

from engine.textformat import version_counter
from engine.versions import ModelStore
from qabot.dataset import QAPair, validate_items
from qabot.errors import DatasetError, QabotError
from qabot.merge import merge_pairs
from qabot.settings import Settings
from qabot.shapes import AddPairResult, ModelRow, ModelsResult, RollbackResult, StatusReport

logger = logging.getLogger(__name__)

MODELS_SHOWN = 10


def _store(settings: Settings | None = None) -> ModelStore:
    """The store, with a lock wait well inside the admin job's time limit (a bot waits `admin_wait` for the result)."""
    settings = settings or Settings()
    return ModelStore(settings.models_dir, lock_timeout=max(1.0, settings.admin_wait / 2))


def _rules(store: ModelStore) -> dict:
    """The live model's token rules, so that a pair accepted here is never refused by the train job."""
    live = store.current()
    found = version_counter(live.path) if live is not None else None
    if found is None:
        return {}
    count, limit, specials = found
    return {"count_tokens": count, "max_tokens": limit, "special_tokens": specials or None}


def add_pair(question: str, answer: str) -> AddPairResult:
    """Add one pair to the current dataset (a question already there gets the new answer); no training."""
    settings = Settings()
    store = _store(settings)
    with store.lock():
        current = store.current_pairs() if store.current_dataset() else _default_pairs(settings)
        try:
            (pair,) = validate_items([{"prompt": question, "response": answer}], "the new pair", **_rules(store))
        except DatasetError as exc:
            return AddPairResult(question, False, len(current), problems=tuple(exc.problems))
        merge = merge_pairs(current, [pair])  # a question already there takes the new answer
        digest, _ = store.store_dataset(merge.pairs)
        store.set_current_dataset(digest)
    logger.info("pair added: dataset %s, %d pairs", digest, len(merge.pairs))
    return AddPairResult(pair.prompt, True, len(merge.pairs), digest, replaced=merge.added == 0)


def _default_pairs(settings: Settings) -> list[QAPair]:
    from qabot.dataset import read_dataset

    return read_dataset(settings.dataset) if settings.dataset.is_file() else []


def list_models() -> ModelsResult:
    """The last versions, the live one marked."""
    store = _store()
    live = store.current_name()
    rows = []
    for info in store.list()[-MODELS_SHOWN:]:
        metrics = info.meta.get("metrics", {})
        accuracy = {k.removesuffix("_accuracy"): float(v) for k, v in metrics.items() if k.endswith("_accuracy")}
        rows.append(ModelRow(info.name, info.created_at, info.meta.get("dataset", {}).get("pairs"), accuracy, info.name == live))
    return ModelsResult(tuple(rows))


def rollback(version: str | None = None) -> RollbackResult:
    """Make the previous (or a named) version live again."""
    try:
        info = _store().rollback(version or None)
    except QabotError as exc:
        return RollbackResult(False, None, str(exc))
    return RollbackResult(True, info.name)


def status() -> StatusReport:
    """Live model and datasets, queues, workers, a running fine-tune."""
    from rq import get_current_job

    from worker.client import QueueClient
    from worker.status import collect

    settings = Settings()
    job = get_current_job()
    return collect(settings, QueueClient(settings, job.connection if job else None), _store(settings))
