"""What both bots do, whatever the platform: answer, rate-limit, retrain, add pairs, report. No torch here."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.versions import ModelStore
from qabot.dataset import parse_text, read_dataset, validate_items
from qabot.errors import AnswerTimeout, DatasetError, JobFailed, QabotError, ServiceUnavailable, TrainingBusy
from qabot.settings import Settings
from worker.client import QueueClient, TrainStatus

logger = logging.getLogger(__name__)

EDIT_DELAY_SECONDS = 5.0  # progress edits stay well inside the platforms' flood limits
MAX_PROBLEMS_SHOWN = 15
HELP_TEXT = (
    "I answer questions about our community's world, trained on its own questions and answers.\n"
    "Ask me anything: /ask <question>, mention me, or reply to one of my messages."
)
ADMIN_HELP = "Admins: /retrain [attach a JSON dataset], /addqa question | answer, /status, /models, /rollback [version]."
APOLOGY = "Sorry, I can't answer right now: the answering service is down or busy. Please try again in a minute."
REFUSAL = "Sorry, only this bot's admins can do that."


class RateLimiter:
    """At most `limit` questions per person per `window` seconds (a sliding window)."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self.asked: dict[str, deque[float]] = defaultdict(deque)

    def wait_for(self, user: str) -> float:
        """0 if `user` may ask now (and counts it), else the seconds until they may."""
        now = self.clock()
        if len(self.asked) > 10_000:  # forget people who have not asked within the window
            for quiet_user in [u for u, t in self.asked.items() if not t or now - t[-1] >= self.window]:
                del self.asked[quiet_user]
        times = self.asked[user]
        while times and now - times[0] >= self.window:
            times.popleft()
        if len(times) >= self.limit:
            return self.window - (now - times[0])
        times.append(now)
        return 0.0


def split_message(text: str, limit: int) -> list[str]:
    """Split at paragraph, line or word boundaries into parts of at most `limit` characters."""
    parts: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        cut = max(rest.rfind("\n\n", 0, limit), rest.rfind("\n", 0, limit), rest.rfind(" ", 0, limit))
        if cut <= 0:
            cut = limit
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        parts.append(rest)
    return parts or [""]


def render_progress(status: TrainStatus) -> str:
    """One progress line: stage, epoch, loss, ETA."""
    meta = status.meta
    stage = meta.get("stage") or status.state
    if stage == "training" and meta.get("total_steps"):
        loss = f", loss {meta['loss']:.3f}" if meta.get("loss") is not None else ""
        eta = f", about {int(meta['eta_s']) // 60} min {int(meta['eta_s']) % 60} s left" if meta.get("eta_s") is not None else ""
        return f"Training: epoch {meta.get('epoch', 0):.1f}, step {meta.get('step')}/{meta['total_steps']}{loss}{eta}"
    return f"Training: {stage}..."


def accuracy_text(metrics: dict[str, Any]) -> str:
    """`recall 100%, heldout 75%` from a metrics dict."""
    return ", ".join(f"{k.removesuffix('_accuracy')} {v:.0%}" for k, v in metrics.items() if k.endswith("_accuracy"))


def render_result(status: TrainStatus) -> str:
    """The final word on a fine-tune."""
    if status.error or status.result is None:
        return f"Training failed: {status.error or status.state}"
    result = status.result
    metrics = result["metrics"]
    accuracy = accuracy_text(metrics)
    previous = result.get("previous")
    against = f" against {previous['version']}'s {accuracy_text(previous['metrics'])}" if previous else ""
    verdict = "now live" if result["promoted"] else "not promoted"
    return (
        f"Training done: {result['version']} ({result['dataset']['pairs']} pairs), accuracy {accuracy}{against}. "
        f"{result['version']} is {verdict}: {result['reason']}."
    )


@dataclass(frozen=True)
class RetrainOutcome:
    text: str
    image: Path | None = None


class BotCore:
    """Platform-independent behaviour shared by the Telegram and Discord bots."""

    def __init__(self, settings: Settings, client: QueueClient | None = None, store: ModelStore | None = None) -> None:
        self.settings = settings
        self.client = client or QueueClient(settings)
        self.store = store or ModelStore(settings.models_dir)
        self.limiter = RateLimiter(settings.rate_limit, settings.rate_window)
        self.edit_delay = EDIT_DELAY_SECONDS

    # -- everyone ---------------------------------------------------------------------------
    async def ask(self, user: str, question: str, channel: str) -> str:
        """The reply to a question: an answer, the help text, a limit message, or an apology."""
        text = question.strip()
        if not text:
            return HELP_TEXT
        if len(text) > self.settings.max_question_chars:
            return f"Your question is {len(text)} characters long; please keep it under {self.settings.max_question_chars}."
        wait = self.limiter.wait_for(user)
        if wait:
            return f"You're asking quickly: please try again in {max(1, round(wait))} s."
        try:
            result = await self.client.ask(text, asker=user, channel=channel)
        except (ServiceUnavailable, AnswerTimeout) as exc:
            logger.warning("no answer for a question: %s", exc)
            return APOLOGY
        except JobFailed as exc:
            logger.warning("an answer job failed: %s", exc)
            return "Sorry, something went wrong while answering that. Please try again."
        except Exception:  # the edge: never crash the bot over one question
            logger.exception("unexpected failure while answering")
            return APOLOGY
        return result.answer or "I don't know that one yet."

    # -- admins -----------------------------------------------------------------------------
    def store_upload(self, data: bytes, filename: str) -> tuple[str | None, str]:
        """Validate an uploaded dataset; store it as a new dataset version. Returns (hash or None, message)."""
        if len(data) > self.settings.upload_max_bytes:
            return None, f"{filename} is {len(data)} bytes; the limit is {self.settings.upload_max_bytes}."
        try:
            text = data.decode("utf-8")
            pairs = validate_items(parse_text(text, filename), filename)
        except UnicodeDecodeError:
            return None, f"{filename} is not UTF-8 text."
        except DatasetError as exc:
            return None, self._problems(exc)
        digest, _ = self.store.store_dataset(pairs)
        self.store.set_current_dataset(digest)
        return digest, f"{filename}: {len(pairs)} pairs, valid, stored as dataset {digest}."

    @staticmethod
    def _problems(exc: DatasetError) -> str:
        shown = "\n".join(f"- {p}" for p in exc.problems[:MAX_PROBLEMS_SHOWN])
        more = f"\n...and {len(exc.problems) - MAX_PROBLEMS_SHOWN} more" if len(exc.problems) > MAX_PROBLEMS_SHOWN else ""
        return f"That dataset has {len(exc.problems)} problem(s); nothing was changed:\n{shown}{more}"

    def _dataset_for_training(self) -> tuple[str, str | None]:
        current = self.store.current_dataset()
        if current is not None:
            return current.stem if current.parent == self.store.datasets_dir else str(current), None
        eval_data = str(self.settings.eval_data) if self.settings.eval_data else None
        return str(self.settings.dataset), eval_data

    async def retrain(
        self,
        admin: str,
        upload: tuple[bytes, str] | None,
        start: Callable[[str], Awaitable[Any]],
        edit: Callable[[Any, str], Awaitable[None]],
    ) -> RetrainOutcome:
        """Validate an optional upload, queue a fine-tune, keep one progress message up to date, report."""
        if upload is not None:
            digest, message = await asyncio.to_thread(self.store_upload, *upload)
            if digest is None:
                return RetrainOutcome(message)
            await start(message)
        dataset, eval_data = self._dataset_for_training()
        live = self.store.current()
        if live is not None and eval_data is None and dataset == live.meta.get("dataset", {}).get("hash"):
            eval_data = live.meta.get("eval_data")
        request = {"dataset": dataset, "eval_data": eval_data}
        try:
            job = await asyncio.to_thread(self.client.start_training, request, admin)
        except TrainingBusy as exc:
            return RetrainOutcome(f"{exc}.")
        except ServiceUnavailable:
            return RetrainOutcome(APOLOGY)
        handle = await start("Training queued...")
        last_text, last_edit = "Training queued...", time.monotonic()
        final: TrainStatus | None = None
        async for status in self.client.follow_training(job.id, poll_s=0.5):
            if status.done:
                final = status
                break
            text = render_progress(status)
            if text != last_text and time.monotonic() - last_edit >= self.edit_delay:
                await edit(handle, text)
                last_text, last_edit = text, time.monotonic()
        assert final is not None
        await edit(handle, "Training finished." if final.result else "Training stopped.")
        image = Path(final.result["loss_curve"]) if final.result and Path(final.result["loss_curve"]).is_file() else None
        return RetrainOutcome(render_result(final), image)

    def add_pair(self, text: str) -> str:
        """`question | answer` becomes a new dataset version (validated), without training."""
        if "|" not in text:
            return "Usage: /addqa question | answer"
        question, answer = (part.strip() for part in text.split("|", 1))
        base = self.store.current_dataset() or self.settings.dataset
        try:
            pairs = read_dataset(base)
            pairs = validate_items(
                [*({"prompt": p.prompt, "response": p.response} for p in pairs), {"prompt": question, "response": answer}]
            )
        except DatasetError as exc:
            return self._problems(exc)
        digest, _ = self.store.store_dataset(pairs)
        self.store.set_current_dataset(digest)
        return f"Added. The dataset now has {len(pairs)} pairs (dataset {digest}); /retrain to teach it to the bot."

    def status(self) -> str:
        from worker.status import collect

        try:
            report = collect(self.settings, self.client)
        except Exception as exc:  # noqa: BLE001 - Redis down: say so and keep running
            logger.warning("status unavailable: %s", exc)
            return APOLOGY
        live = report["live_version"] or "none yet"
        lines = [
            f"Live model: {live}" + (f", trained {report['trained_at']}" if report["trained_at"] else ""),
            f"Dataset: {report['dataset_pairs']} pairs" if report["dataset_pairs"] else "Dataset: none trained yet",
            "Queues: "
            + ", ".join(f"{name} {q['waiting']} waiting, {q['running']} running" for name, q in report["queues"].items()),
            f"Workers: {len(report['workers'])}",
        ]
        training = report["training"]
        if training:
            lines.append(f"Training: {training['stage']}, epoch {training.get('epoch') or 0}, loss {training.get('loss')}")
        else:
            lines.append("Training: none running")
        return "\n".join(lines)

    def models(self) -> str:
        live = self.store.current_name()
        versions = self.store.list()[-10:]
        if not versions:
            return "No model versions yet: /retrain trains the first."
        rows = []
        for info in versions:
            accuracy = accuracy_text(info.meta.get("metrics", {}))
            mark = " (live)" if info.name == live else ""
            rows.append(
                f"{info.name}{mark}: {info.created_at}, {info.meta.get('dataset', {}).get('pairs', '?')} pairs, {accuracy}"
            )
        return "\n".join(rows)

    def rollback(self, version: str | None) -> str:
        try:
            info = self.store.rollback(version or None)
        except QabotError as exc:
            return f"Can't roll back: {exc}."
        return f"Rolled back: {info.name} is live again; the answer workers switch to it before their next batch."
