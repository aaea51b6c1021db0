"""The answer worker: an rq SimpleWorker that keeps the model loaded (`worker.model_keeper`) and answers waiting
questions in a running batch that later questions join, handing each answer in as it ends."""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue
from rq.job import Job

from qabot.settings import Settings
from worker import jobs, metrics
from worker.liveness import LiveWorker
from worker.model_keeper import ModelKeeper, give_back_free_memory
from worker.rq_seam import Execution, JobTimeoutException

logger = logging.getLogger(__name__)

Deliver = Callable[[Job, Any], None]  # hands one job its outcome: the answer's dict, or the exception it earned

# Questions join a running batch once a quarter of its rows are free (or at once while it has that much room): each
# join prefills the newcomers together and copies the running KV cache once. Joining one at a time as rows left a full
# batch of 16 (the FAQ model, 2 CPU cores, bench/load.py) raised the worker's RSS from 1.1 to 1.8 GiB.
JOIN_SHARE = 4
OUTAGE_CLEAR_S = 1.0


class AnswerWorker(ModelKeeper, LiveWorker):
    """Loads the live model once, decodes up to `batch_size` questions at a time, hot-swaps versions between batches.

    Each question stays its own rq job (started/finished/failed registries, result, TTLs): the model answers it in
    the running batch, then rq performs the job at once, and the job hands back that answer.

    Nothing taken is lost and Redis going away never stops it: see `worker.liveness`.
    """

    def __init__(self, *args: Any, settings: Settings | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("log_job_description", False)  # questions are people's words: keep them out of logs
        super().__init__(*args, **kwargs)
        from engine.versions import ModelStore

        self.settings = settings or Settings()
        self.batch_size = self.settings.answer_batch_size
        self.store = ModelStore.of(self.settings)
        self.answerer = None
        self.model_version: str | None = None
        self.batches: deque[int] = deque(maxlen=1000)
        self.notes_digest: str | None = None
        self._failed: tuple[str, int] | None = None
        self.take_most = self.batch_size  # shrinks when batches run slow, grows back when they are quick
        self._outage_cleared = float("-inf")

    # -- batching ---------------------------------------------------------------------------
    def _take_waiting(self, queue: Queue, most: int, into: list[tuple[Job, Execution]]) -> list[Job]:
        """Dequeue and hold up to `most` questions that are already waiting, without blocking, appending as it goes;
        the jobs taken."""
        taken = []
        for _ in range(most):
            found = self.take_waiting(queue)
            if found is None:
                break
            into.append((found, self._hold(found, queue)))
            taken.append(found)
        return taken

    def answer_batch(self, batch: list[Job], deliver: Deliver, more: Callable[[int], list[Job]] | None = None) -> None:
        """Answer the jobs in one running batch of the model, and those `more(rows)` brings while it runs (it is asked
        between decoding steps); `deliver(job, outcome)` hands each job its answer (or its error) as soon as it ends."""
        from qabot.errors import QabotError

        try:
            self.refresh_model()
        except Exception as exc:  # no version loads: each question fails with the reason
            self.log.exception("Worker %s: no model version loads", self.name)
            error = exc if isinstance(exc, QabotError) else RuntimeError(f"the model could not be loaded: {exc}")
            for job in batch:
                deliver(job, error)
            return
        try:
            self.refresh_notes()
        except Exception:  # keep the notes in hand; try again when the dataset changes
            self.notes_digest = self.store.current_digest()
            self.log.exception("Worker %s: could not refresh the notes", self.name)
        if self.answerer is None:
            error = RuntimeError("no model has been trained yet: an admin must train one first")
            for job in batch:
                deliver(job, error)
            return
        valid = self._prepared(batch, deliver)
        if valid:
            self._answer_all(valid, deliver, more)

    def _prepared(self, batch: list[Job], deliver: Deliver) -> list[tuple[Job, str]]:
        """(job, its question as checked) for each usable question; the others are handed their error, each alone (a
        QuestionError is the asker's message; anything else fails that question, never its batch)."""
        from qabot.errors import QuestionError

        valid = []
        for job in batch:
            try:
                valid.append((job, self.answerer.prepare(job.kwargs.get("question", job.args[0] if job.args else ""))))
            except QuestionError as exc:
                deliver(job, exc)
            except Exception as exc:
                logger.exception("question %s could not be prepared", job.id)
                deliver(job, exc)
        return valid

    def _answer_all(self, items: list[tuple[Job, str]], deliver: Deliver, more: Callable[[int], list[Job]] | None = None) -> None:
        """Deliver each item's answer as it ends, or the exception it alone earned. Questions from `more` join while the
        run is young (its first half of the time limit). The run gets the jobs' timeout (less the time spent handing
        answers in); a run that goes past it (or fails) is split in halves and each half tried again, so a question
        times out or fails only alone."""
        limit, begun = _limit(items), time.monotonic()
        joined, took, peak = {i: begun for i in range(len(items))}, {}, [len(items)]

        def join(rows: int) -> list[str]:
            if more is None or time.monotonic() - begun > limit / 2:
                return []
            new = self._prepared(more(rows), deliver)
            for item in new:
                joined[len(items)] = time.monotonic()
                items.append(item)
            peak[0] = max(peak[0], rows + len(new))
            return [question for _, question in new]

        stream = self.answerer.stream([question for _, question in items], prepared=True, more=join if more else None)
        deadline = begun + limit
        try:
            while True:
                with self.time_limit(max(1, math.ceil(deadline - time.monotonic())), items[0][0]):
                    if time.monotonic() >= deadline:
                        raise JobTimeoutException(f"the batch ran past {limit} s")
                    found = next(stream, None)
                if found is None:
                    break
                index, answer = found
                took[index] = time.monotonic() - joined[index]
                handing = time.monotonic()
                job, asked = items[index]
                deliver(job, self._outcome(job, asked, answer, peak[0], took[index]))
                deadline += time.monotonic() - handing  # Redis being slow is not the model's time
        except Exception as exc:  # noqa: BLE001 - split (and logged there) until the question that fails is alone
            stream.close()
            left = [item for i, item in enumerate(items) if i not in took]
            if left:  # none left: every answer was handed in and the time ran out only as the stream ended
                self._split(left, exc, limit, deliver)
                return
        self._pace(peak[0], max(took.values(), default=0.0), limit)
        self.batches.append(peak[0])
        metrics.BATCH_SIZE.observe(peak[0])

    def _split(self, left: list[tuple[Job, str]], exc: Exception, limit: float, deliver: Deliver) -> None:
        """A run that timed out or failed with `left` unanswered: the question alone gets the error, or the rest is
        answered in halves until it is alone."""
        if _timed_out(exc):
            if len(left) == 1:
                deliver(left[0][0], JobTimeoutException(f"the answer took longer than {limit} s and was stopped"))
                return
            self.log.warning("Worker %s: a batch of %d ran past %d s; answering it in halves", self.name, len(left), limit)
            self.take_most = max(1, len(left) // 2)
        elif len(left) == 1:
            deliver(left[0][0], exc)
            return
        else:
            self.log.exception("Worker %s: a batch of %d failed; answering it in halves", self.name, len(left))
        half = (len(left) + 1) // 2
        self._answer_all(left[:half], deliver)
        self._answer_all(left[half:], deliver)

    def _outcome(self, job: Job, asked: str, answer: Any, rows: int, seconds: float) -> dict[str, Any]:
        """What the answer job returns: the answer with how it was made."""
        outcome = {
            "answer": answer.text,
            "declined": answer.declined,
            "reason": answer.reason,
            "sources": list(answer.sources),
            "score": answer.score,
            "stop": answer.stop.value,
            "version": self.model_version,
            "fallback_from": self.fallback["live"] if self.fallback else None,
            "batch_size": rows,  # the most questions decoded together in its run, up to its end
            "generate_s": round(seconds, 4),  # from joining the batch to its end
            "queued_s": round(max(0.0, time.time() - job.enqueued_at.timestamp()), 4) if job.enqueued_at else None,
        }
        if answer.declined:
            outcome["question"] = asked  # as checked: the inbox records it (record_declined)
        return outcome

    def _pace(self, size: int, seconds: float, limit: float) -> None:
        """Take fewer questions next time when a batch used more than half its time limit, more when it was quick."""
        if seconds > limit / 2:
            self.take_most = max(1, min(self.take_most, size) // 2)
        elif seconds < limit / 4:
            self.take_most = min(self.batch_size, self.take_most * 2)

    def record_declined(self, job: Job, outcome: Any) -> None:
        """Put a declined question in the unanswered inbox, with the chat it came from, once (`inboxed` marks it done).

        Redis being away (a connection error or a timeout) propagates, so the caller's retry (the hand-in, or the
        answer job alone) waits Redis out and the asker is told the question was passed on; any other failure (a
        damaged inbox key: WRONGTYPE) is logged and never holds up or fails the answer."""
        from qabot import inbox

        if not isinstance(outcome, dict) or not outcome.get("declined") or "inboxed" in outcome:
            return
        try:
            place = inbox.place_of(job.kwargs.get("channel"))
            question = outcome.get("question") or job.kwargs.get("question", "")
            recorded = inbox.record(self.connection, question, place=place, size=self.settings.inbox_size)
        except (RedisConnectionError, RedisTimeoutError):
            raise
        except Exception:  # the answer matters more than the record
            self.log.warning("Worker %s: could not record a declined question in the inbox", self.name, exc_info=True)
            outcome["inboxed"] = False
            return
        outcome["inboxed"] = recorded.open

    def run_job(self, job: Job, queue: Queue) -> None:
        """Take the waiting questions too and answer them in one running batch, which the questions that arrive
        meanwhile join; each answer is handed in (rq finishes its job) the moment it ends."""
        try:
            batch = [(job, self._hold(job, queue))]
        except RedisError as exc:  # it stays on the intermediate list: a keeper puts it back once Redis answers
            self.log.warning("Worker %s: could not take a question (%s)", self.name, exc)
            time.sleep(1)
            return
        handed: set[str] = set()

        def deliver(each: Job, outcome: Any) -> None:
            jobs.ANSWERED[each.id] = outcome  # the answer job takes its own (answer_job) when rq performs it
            self._outage_over()
            if self._hand_in(each, queue, held[each.id], self.settings.answer_wait):
                metrics.question_ended(outcome, each.enqueued_at)
            handed.add(each.id)
            jobs.ANSWERED.pop(each.id, None)
            self._let_go(held[each.id])

        def more(rows: int) -> list[Job]:
            room = self.take_most - rows
            if rows and room < max(1, self.take_most // JOIN_SHARE):
                return []  # a full batch takes newcomers a few at a time: each join copies the running cache once
            start = len(batch)
            try:
                taken = self._take_waiting(queue, room, batch)
            except Exception:  # Redis hiccup: go on with the ones in hand, those held before it failed too
                self.log.exception("Worker %s: could not take more waiting questions", self.name)
                taken = [each for each, _ in batch[start:]]  # left out, rq would answer them alone: a second model
            held.update((each.id, execution) for each, execution in batch[start:])  # held even when taking failed midway
            if not taken:
                return []
            return [each for each in taken if each.func_name == jobs.ANSWER_JOB]

        held = {each.id: execution for each, execution in batch}
        try:
            if job.func_name == jobs.ANSWER_JOB:
                questions = [job, *more(1)]
                try:
                    metrics.set_queue_depth([queue])
                except RedisError:
                    pass  # the gauge waits for the next batch
                try:
                    self.answer_batch(questions, deliver, more)
                except Exception as exc:  # every job still ends, failed, with the reason
                    self.log.exception("Worker %s: a batch failed", self.name)
                    for each, _ in batch:
                        if each.id not in handed and each.func_name == jobs.ANSWER_JOB:
                            deliver(each, exc)
            self._outage_over()
            give_back_free_memory()
            for each, execution in batch:  # anything else that was in the queue: rq runs it
                if each.id not in handed:
                    self._hand_in(each, queue, execution, self.settings.answer_wait)
        finally:
            for each, execution in batch:
                jobs.ANSWERED.pop(each.id, None)  # handed in, or dropped with its job
                self._let_go(execution)

    def _outage_over(self) -> None:
        """Answers flow: the next outage is told to the admins again. Before the answers leave, so whoever reads one
        sees the outage over; at most once a second (a round trip less per batch under load)."""
        if time.monotonic() - self._outage_cleared < OUTAGE_CLEAR_S:
            return
        try:
            self.connection.delete(jobs.ANSWER_DOWN_KEY)
            self._outage_cleared = time.monotonic()
        except RedisError:
            pass

    def before_hand_in(self, job: Job) -> None:
        """Inside the hand-in's retry (worker.liveness): a Redis blip loses no decline from the inbox."""
        self.record_declined(job, jobs.ANSWERED.get(job.id))

    def on_start(self) -> None:
        """Registered (so askers know a worker is coming): load the live model before taking the first question."""
        try:
            self.refresh_model()
        except Exception:  # the worker still starts; each question then gets the error
            self.log.exception("Worker %s: could not load the live model", self.name)


def _timed_out(exc: BaseException) -> bool:
    """The time limit struck, even where a library caught the alarm and raised its own error from it (transformers'
    tokenizer turns it into a ValueError when it strikes while tensors are built)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, JobTimeoutException):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _limit(items: list[tuple[Job, str]]) -> int:
    """A pass's time limit: the jobs' own timeout (QABOT_ANSWER_TIMEOUT of the client that asked), the shortest."""
    return min(job.timeout or Queue.DEFAULT_TIMEOUT for job, _ in items)
