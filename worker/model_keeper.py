"""The answer worker's model: the live version loaded once, a fallback when it does not load, the current notes, and
the heap memory a running batch freed given back between batches (`give_back_free_memory`).

A mixin of `worker.answer_worker.AnswerWorker` (it uses the worker's settings, store, log and rq record)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from typing import Any

from worker import metrics

RELOAD_RETRY_SECONDS = 60


class ModelKeeper:
    """Keeps `answerer` (the loaded version, `model_version`) in step with the store, between batches only."""

    settings: Any
    store: Any
    answerer: Any
    model_version: str | None
    notes_digest: str | None
    fallback: dict[str, str] | None
    _failed: tuple[str, int] | None
    log: Any
    name: str

    def refresh_model(self) -> None:
        """Load the live version if it is not the one loaded (between batches only).

        A live version that does not load leaves the loaded one serving; a worker with none in hand serves the newest
        version that loads (the last live ones first). Either way it says so: in its rq record (/status), the metrics,
        and each answer's `fallback_from` (the bots tell the admins). It tries the live one again every minute.
        Raises only when no version loads at all."""
        live = self.store.current_name()
        if live is None:
            return
        if live == self.model_version:
            if self.fallback is not None:  # rolled back to the version it serves: nothing is amiss any more
                self.fallback = None
                self._publish_model()
                metrics.MODEL_FALLBACK.set(0)
                self.log.info("Worker %s: %s is live again and loaded", self.name, live)
            return
        if self._failed == (live, int(time.monotonic() // RELOAD_RETRY_SECONDS)):
            return  # it failed moments ago: keep serving the loaded model, retry a little later
        try:
            self._load(live)
            return
        except Exception as exc:  # a version that will not load must not stop the worker
            self._failed = (live, int(time.monotonic() // RELOAD_RETRY_SECONDS))
            why = " ".join(str(exc).split())[:200] or type(exc).__name__
            self.log.exception("Worker %s: could not load the live model %s", self.name, live)
            if self.answerer is None:
                self._load_newest_that_loads(live, exc)
        self.fallback = {"live": live, "why": why}
        self._publish_model()
        metrics.MODEL_FALLBACK.set(1)
        self.log.error("Worker %s: the live model %s does not load; serving %s", self.name, live, self.model_version)

    def _load_newest_that_loads(self, live: str, error: Exception) -> None:
        """Load the version that was live last before `live`, else the newest other one that loads; re-raise `error`
        when none does."""
        recent = [name for name in reversed(self.store.history()) if name != live]
        others = sorted((v.name for v in self.store.list() if v.name not in recent and v.name != live), reverse=True)
        for name in recent + others:
            try:
                self._load(name)
                return
            except Exception:
                self.log.exception("Worker %s: %s does not load either", self.name, name)
        raise error

    def _load(self, name: str) -> None:
        """Load version `name` with the current notes, and make it the one that answers."""
        from engine.serving import load_version, make_answerer, version_grounding

        started = time.monotonic()
        loaded, info = load_version(self.store, name, device=self.settings.device, dtype=self.settings.dtype)
        digest = self.store.current_digest()
        answerer = make_answerer(
            loaded,
            info,
            max_new_tokens=self.settings.max_new_tokens,
            max_question_chars=self.settings.max_question_chars,
            grounding=version_grounding(
                self.store,
                info,
                digest,
                min_score=self.settings.min_score,
                decline_confidence=self.settings.decline_confidence,
                offtopic_margin=self.settings.offtopic_margin,
                complaint_margin=self.settings.complaint_margin,
                device=str(loaded.model.device),  # the embedder beside the model (engine.retrieval.shared_embedder)
            ),
        )
        self.notes_digest = digest
        old, self.answerer, self.model_version, self.fallback = self.answerer, answerer, info.name, None
        del old
        gc.collect()
        _empty_device_cache()
        self._publish_model()
        metrics.set_model_version(info.name)
        metrics.MODEL_FALLBACK.set(0)
        self.log.info("Worker %s: model %s loaded in %.1f s", self.name, info.name, time.monotonic() - started)

    def refresh_notes(self) -> None:
        """A grounded model answers from the current dataset: a pair added a moment ago is in its notes."""
        from engine.serving import dataset_grounding

        grounding = self.answerer.grounding if self.answerer is not None else None
        digest = self.store.current_digest()
        if grounding is None or digest is None or digest == self.notes_digest:
            return
        fresh = dataset_grounding(self.store, digest, grounding.notes, grounding.decline, previous=grounding)
        self.answerer.grounding, self.notes_digest = fresh, digest
        self.log.info("Worker %s: notes from dataset %s (%d pairs)", self.name, digest, len(fresh.index.pairs))


def _empty_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def give_back_free_memory() -> None:
    """Return the heap memory a running batch freed to the OS, between batches. glibc keeps it otherwise, and a running
    batch allocates caches of ever-changing widths: on the FAQ model (bench/load.py) the worker's RSS grew 18% over 90
    questions without this."""
    global _libc, _trimmed
    if time.monotonic() - _trimmed < 1.0:  # a few ms each: at most once a second
        return
    _trimmed = time.monotonic()
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            _libc = False
    if _libc and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)


_libc: Any = None  # glibc, loaded on first use (False where there is none)
_trimmed = float("-inf")
