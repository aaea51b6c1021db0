"""The answer worker: an rq SimpleWorker that keeps the model loaded and answers waiting questions in batches."""

from __future__ import annotations

import gc
import logging
import time
from collections import deque
from typing import Any

from rq import Queue, SimpleWorker
from rq.job import Job
from rq.timeouts import JobTimeoutException
from rq.worker import WorkerStatus

from qabot.settings import Settings
from worker import jobs
from worker.jobs import BatchedJob

logger = logging.getLogger(__name__)

RELOAD_RETRY_SECONDS = 60
MODEL_FIELD = "qabot_model"  # in the worker's own rq hash: the version it answers with (the health check reads it)


class AnswerWorker(SimpleWorker):
    """Loads the live model once, answers up to `batch_size` waiting questions per pass, hot-swaps versions.

    Each question stays its own rq job (started/finished/failed registries, result, TTLs); the model
    runs once per batch, before rq performs each job, and each job hands back its own answer.
    """

    def __init__(self, *args: Any, settings: Settings | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("log_job_description", False)  # questions are people's words: keep them out of logs
        kwargs.setdefault("job_class", BatchedJob)  # each job carries its share of the batch's answers
        super().__init__(*args, **kwargs)
        from engine.versions import ModelStore

        self.settings = settings or Settings()
        self.batch_size = self.settings.answer_batch_size
        self.store = ModelStore(self.settings.models_dir)
        self.answerer = None
        self.model_version: str | None = None
        self.batches: deque[int] = deque(maxlen=1000)
        self.notes_digest: str | None = None
        self._failed: tuple[str, int] | None = None

    # -- model ------------------------------------------------------------------------------
    def refresh_model(self) -> None:
        """Load the live version if it is not the one loaded (between batches only)."""
        from engine.pipeline import load_version, make_answerer, version_grounding

        live = self.store.current_name()
        if live is None or live == self.model_version:
            return
        if self._failed == (live, int(time.monotonic() // RELOAD_RETRY_SECONDS)):
            return  # it failed moments ago: keep serving the loaded model, retry a little later
        started = time.monotonic()
        loaded, info = load_version(self.store, live, device=self.settings.device, dtype=self.settings.dtype)
        digest = self.store.current_digest()
        answerer = make_answerer(
            loaded,
            max_new_tokens=self.settings.max_new_tokens,
            max_question_chars=self.settings.max_question_chars,
            grounding=version_grounding(self.store, info, digest),
        )
        self.notes_digest = digest
        old, self.answerer, self.model_version = self.answerer, answerer, info.name
        del old
        gc.collect()
        _empty_device_cache()
        self._publish_model()
        self.log.info("Worker %s: model %s loaded in %.1f s", self.name, info.name, time.monotonic() - started)

    def refresh_notes(self) -> None:
        """A grounded model answers from the current dataset: a pair added a moment ago is in its notes."""
        from engine.pipeline import dataset_grounding

        grounding = self.answerer.grounding if self.answerer is not None else None
        digest = self.store.current_digest()
        if grounding is None or digest is None or digest == self.notes_digest:
            return
        fresh = dataset_grounding(self.store, digest, grounding.notes, grounding.decline, previous=grounding)
        self.answerer.grounding, self.notes_digest = fresh, digest
        self.log.info("Worker %s: notes from dataset %s (%d pairs)", self.name, digest, len(fresh.index.pairs))

    def _publish_model(self) -> None:
        """Say in this worker's rq record which version it answers with (it expires with the worker)."""
        if self.model_version is not None and self.connection.exists(self.key):
            self.connection.hset(self.key, MODEL_FIELD, self.model_version)

    def register_birth(self, *args: Any, **kwargs: Any) -> None:
        super().register_birth(*args, **kwargs)
        self._publish_model()

    # -- batching ---------------------------------------------------------------------------
    def _take_waiting(self, queue: Queue, most: int, into: list[tuple[Job, Queue]]) -> None:
        """Dequeue up to `most` questions that are already waiting, without blocking, appending as it goes."""
        for _ in range(most):
            found = self.queue_class.dequeue_any(
                [queue], None, connection=self.connection, job_class=self.job_class, serializer=self.serializer
            )
            if found is None:
                return
            into.append(found)

    def answer_batch(self, batch: list[BatchedJob]) -> None:
        """Compute every job's answer (or its error) with one batched pass of the model; each job carries its own."""
        from qabot.errors import QabotError, QuestionError

        try:
            self.refresh_model()
        except Exception as exc:  # a version that will not load must not stop the worker
            self._failed = (self.store.current_name() or "", int(time.monotonic() // RELOAD_RETRY_SECONDS))
            self.log.exception(
                "Worker %s: could not load the live model; %s",
                self.name,
                f"still serving {self.model_version}" if self.answerer else "no model loaded",
            )
            if self.answerer is None:
                error = exc if isinstance(exc, QabotError) else RuntimeError(f"the model could not be loaded: {exc}")
                for job in batch:
                    job.outcome = error
                return
        try:
            self.refresh_notes()
        except Exception:  # keep the notes in hand; try again when the dataset changes
            self.notes_digest = self.store.current_digest()
            self.log.exception("Worker %s: could not refresh the notes", self.name)
        if self.answerer is None:
            error = RuntimeError("no model has been trained yet: an admin must train one first")
            for job in batch:
                job.outcome = error
            return
        valid: list[tuple[BatchedJob, str]] = []
        for job in batch:
            question = job.kwargs.get("question", job.args[0] if job.args else "")
            try:
                valid.append((job, self.answerer.prepare(question)))
            except QuestionError as exc:
                job.outcome = exc
        if not valid:
            return
        timeout = min(job.timeout or self.queue_class.DEFAULT_TIMEOUT for job, _ in valid)
        started = time.monotonic()
        try:
            with self.death_penalty_class(timeout, JobTimeoutException, job_id=valid[0][0].id):
                answers = self.answerer.answer([q for _, q in valid])
        except JobTimeoutException:
            error = JobTimeoutException(f"the answer took longer than {timeout} s and was stopped")
            for job, _ in valid:
                job.outcome = error
            return
        except Exception:
            self.log.exception("Worker %s: a batch of %d failed; answering one at a time", self.name, len(valid))
            answers = None
        elapsed = time.monotonic() - started
        self.batches.append(len(valid))
        for index, (job, question) in enumerate(valid):
            try:
                if answers is not None:
                    result = answers[index]
                else:
                    with self.death_penalty_class(job.timeout or timeout, JobTimeoutException, job_id=job.id):
                        result = self.answerer.answer([question])[0]
            except Exception as exc:  # noqa: BLE001 - this question fails alone, the others go on
                job.outcome = exc
                continue
            job.outcome = {
                "answer": result.text,
                "declined": result.declined,
                "reason": result.reason,
                "sources": list(result.sources),
                "score": result.score,
                "stop": result.stop.value,
                "version": self.model_version,
                "batch_size": len(valid),
                "generate_s": round(elapsed, 4),
                "queued_s": round(max(0.0, time.time() - job.enqueued_at.timestamp()), 4) if job.enqueued_at else None,
            }
        self.record_declined(valid)

    def record_declined(self, answered: list[tuple[BatchedJob, str]]) -> None:
        """Each declined question goes to the unanswered inbox, with the chat it came from; a failure here never fails
        the answer (the asker is then simply not told that the question was passed on)."""
        from qabot import inbox

        for job, question in answered:
            outcome = job.outcome
            if not isinstance(outcome, dict) or not outcome.get("declined"):
                continue
            try:
                place = inbox.place_of(job.kwargs.get("channel"))
                recorded = inbox.record(self.connection, question, place=place, size=self.settings.inbox_size)
                outcome["inboxed"] = recorded.open
            except Exception:  # the answer matters more than the record
                self.log.warning("Worker %s: could not record a declined question in the inbox", self.name, exc_info=True)

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Take the waiting questions too, answer all at once, then let rq finish each job."""
        batch = [(job, queue)]
        try:
            if job.func_name == jobs.ANSWER_JOB:
                try:
                    self._take_waiting(queue, self.batch_size - 1, batch)
                except Exception:  # Redis hiccup: answer the one in hand
                    self.log.exception("Worker %s: could not take more waiting questions", self.name)
                try:
                    self.answer_batch([j for j, _ in batch if j.func_name == jobs.ANSWER_JOB])
                except Exception as exc:  # every job still ends, failed, with the reason
                    self.log.exception("Worker %s: a batch failed", self.name)
                    for each, _ in batch:
                        if getattr(each, "outcome", None) is None:
                            each.outcome = exc
            for each, each_queue in batch:
                self.perform_job(each, each_queue, self.prepare_execution(each))
        finally:
            self.set_state(WorkerStatus.IDLE)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        """Load the live model before taking the first question."""
        try:
            self.refresh_model()
        except Exception:  # the worker still starts; each question then gets the error
            self.log.exception("Worker %s: could not load the live model", self.name)
        return super().work(*args, **kwargs)


def _empty_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
