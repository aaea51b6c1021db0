"""What both bots do, whatever the platform: ask, rate-limit, follow fine-tunes; the admin commands come from
bots.admin. Speaks only to Redis: no torch and nothing of `engine/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bots.admin import AdminCommands
from bots.commands import admin_help, help_text
from bots.feedback import HOW_TO_FLAG, WRONG, Notify, Reply, deliver_notices
from bots.render import render_declined, render_progress, render_result
from bots.render_inbox import CHAT_HINTS
from qabot.errors import AnswerTimeout, Busy, JobFailed, ServiceUnavailable, TrainingBusy
from qabot.health import BOT_BEAT_TTL_S, beat, bot_service
from qabot.questions import clean_question
from qabot.settings import Settings
from qabot.shapes import ReplyTo
from worker.client import QueueClient
from worker.results import TrainStatus

logger = logging.getLogger(__name__)

EDIT_DELAY_SECONDS = 5.0  # progress edits stay well inside the platforms' flood limits
FOLLOW_POLL_SECONDS = 0.5  # how often a bot reads a running fine-tune's progress
NO_WORKER_WAIT_SECONDS = 5.0  # with no answer worker alive, the asker gets the apology after this, not QABOT_ANSWER_WAIT
DELIVERY_POLL_SECONDS = 15.0  # how often a bot looks for finished fine-tunes nobody has reported yet
HELP_TEXT = help_text()  # bots.commands: the one table of commands
ADMIN_HELP = admin_help()
APOLOGY = "Sorry, I can't answer right now: the answering service is down or busy. Please try again in a minute."
ANSWER_DOWN_ALERT = (
    "Admins: questions are going unanswered because no answer worker is running (start `qabot worker answer`; "
    "`qabot status` shows the workers). People get an apology until one runs again. I say this once per outage."
)
FALLBACK_ALERT = (
    "Admins: the live model {live} does not load, so I answer with {served} until it is fixed: /rollback to a version "
    "that loads, or /retrain. /status says what is wrong with it. I say this once per version."
)
BUSY = "I'm answering a lot of questions right now: please ask again in a minute."
REFUSAL = "Sorry, only this bot's admins can do that."
NO_ANSWER = "I don't know that one yet."


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

    def refund(self, user: str) -> None:
        """Uncount `user`'s latest question: it failed on our side, and the reply asks them to try again."""
        if times := self.asked.get(user):
            times.pop()


@dataclass(frozen=True)
class RetrainOutcome:
    text: str
    image: bytes | None = None


Send = Callable[[str], Awaitable[Any]]
Edit = Callable[[Any, str], Awaitable[None]]
Deliver = Callable[[RetrainOutcome], Awaitable[None]]
Alert = Callable[[str, str], Awaitable[None]]  # (text, the chat of the question that went unanswered)


class BotCore(AdminCommands):
    """Platform-independent behaviour shared by the Telegram and Discord bots."""

    def __init__(self, settings: Settings, client: QueueClient | None = None) -> None:
        self.settings = settings
        self.client = client or QueueClient(settings, no_worker_wait=NO_WORKER_WAIT_SECONDS)
        self.limiter = RateLimiter(settings.rate_limit, settings.rate_window)
        self.edit_delay = EDIT_DELAY_SECONDS
        self.follow_poll = FOLLOW_POLL_SECONDS
        self.delivery_poll = DELIVERY_POLL_SECONDS
        self.following: set[str] = set()  # fine-tunes this bot reports itself, live
        self.platform: str | None = None  # set with `alert` by the platform's wiring
        self.hints = CHAT_HINTS  # Discord's wiring escapes Markdown in user text (bots.render_inbox.InboxHints.escape)
        self.alert: Alert | None = None  # tells the admins that no answer worker runs
        self.how_to_flag = HOW_TO_FLAG  # the reply to a bare "wrong" (Discord's wiring: react with 👎)
        self._alerts: set[asyncio.Task] = set()

    # -- everyone ---------------------------------------------------------------------------
    async def ask(self, user: str, question: str, channel: str) -> Reply:
        """The reply to a question: an answer, the decline, the help text, a limit message, or an apology."""
        if not question.strip():
            return Reply(HELP_TEXT)
        if WRONG.fullmatch(question.strip()):  # a flag that flags nothing is not a question for the inbox
            return Reply(self.how_to_flag)
        text = " ".join(question.split())  # the answer worker checks the question, once (too long: its message)
        wait = self.limiter.wait_for(user)
        if wait:
            return Reply(f"You're asking quickly: please try again in {max(1, round(wait))} s.")
        try:
            result = await self.client.ask(text, asker=user, channel=channel)
        except Busy:  # more askers than the bot can hold: told at once, not queued behind the others
            self.limiter.refund(user)  # each failure on our side asks them to try again: the try does not count
            return Reply(BUSY)
        except (ServiceUnavailable, AnswerTimeout) as exc:
            logger.warning("no answer for a question: %s", exc)
            self.limiter.refund(user)
            self._in_background(self._answer_down(channel))  # the asker's apology does not wait for it
            return Reply(APOLOGY)
        except JobFailed as exc:
            if exc.kind == "QuestionError":
                return Reply(str(exc))
            logger.warning("an answer job failed: %s", exc)
            self.limiter.refund(user)
            return Reply("Sorry, something went wrong while answering that. Please try again.")
        except Exception:  # the edge: never crash the bot over one question
            logger.exception("unexpected failure while answering")
            self.limiter.refund(user)
            return Reply(APOLOGY)
        if result.details.get("fallback_from"):
            self._in_background(self._fallback_alert(result.details["fallback_from"], result.version or "?", channel))
        if result.details.get("declined"):
            return Reply(render_declined(self.settings.decline_text, bool(result.details.get("inboxed"))))
        if not result.answer:
            return Reply(NO_ANSWER)
        return Reply(result.answer, clean_question(text), result.answer)  # flagged, it is stored as the worker read it

    def _in_background(self, alert: Awaitable[None]) -> None:
        task = asyncio.ensure_future(alert)
        self._alerts.add(task)
        task.add_done_callback(self._alerts.discard)

    async def _fallback_alert(self, live: str, served: str, channel: str) -> None:
        """The live version does not load and an older one answers: tell the admins, once per platform and version."""
        if self.alert is None or self.platform is None:
            return
        try:
            if not await asyncio.to_thread(self.client.claim_fallback_alert, self.platform, live):
                return
            await self.alert(FALLBACK_ALERT.format(live=live, served=served), channel)
        except Exception:  # the next answer from the old version does not try again: /status still says it
            logger.warning("could not tell the admins that the live model does not load", exc_info=True)

    async def _answer_down(self, channel: str) -> None:
        """If no answer worker is alive, tell the admins: once per outage and platform, whichever bot sees it first."""
        if self.alert is None or self.platform is None:
            return
        try:
            if await asyncio.to_thread(self.client.live_answer_workers):
                return  # a worker runs (busy, or restarting): nothing to tell
            if not await asyncio.to_thread(self.client.claim_answer_down_alert, self.platform):
                return
        except Exception:  # Redis away: the admins cannot be told through it either
            logger.warning("could not check the answer workers", exc_info=True)
            return
        try:
            await self.alert(ANSWER_DOWN_ALERT, channel)
        except Exception:
            logger.warning("could not tell the admins that no answer worker runs", exc_info=True)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.client.release_answer_down_alert, self.platform)

    async def retrain(
        self,
        reply_to: ReplyTo,
        upload: tuple[bytes, str] | None,
        start: Send,
        edit: Edit,
        *,
        replace: bool = False,
        force: bool = False,
        deliver: Deliver | None = None,
    ) -> RetrainOutcome | None:
        """Queue a fine-tune (with an uploaded file), keep one progress message up to date, send the final word with
        `deliver` and return it.

        None when another bot delivered the outcome already (it is delivered once). A fine-tune's outcome that
        `deliver` fails to send (the platform timed out, refused it) is handed back to the delivery loop
        (`deliver_pending`), which sends it on a later round.
        """
        outcome, job_id = await self._start_and_follow(reply_to, upload, start, edit, replace=replace, force=force)
        if outcome is not None and deliver is not None:
            try:
                await deliver(outcome)
            except Exception:
                if job_id is None:  # a refusal before any job: nothing to hand back
                    raise
                await asyncio.to_thread(self.client.release_delivery, job_id)  # the delivery loop sends it again
                logger.exception("could not send the outcome of a fine-tune; the delivery loop will")
        return outcome

    async def _start_and_follow(
        self, reply_to: ReplyTo, upload: tuple[bytes, str] | None, start: Send, edit: Edit, *, replace: bool, force: bool
    ) -> tuple[RetrainOutcome | None, str | None]:
        """The final word and the fine-tune's job id (None when no job was queued)."""
        if upload is not None and len(upload[0]) > self.settings.upload_max_bytes:
            limit = self.settings.upload_max_bytes
            return RetrainOutcome(f"{upload[1]} is {len(upload[0])} bytes; the limit is {limit}."), None
        request = {"mode": "replace" if replace else "add", "force": force}
        try:
            job = await asyncio.to_thread(self.client.start_training, request, reply_to, upload)
        except TrainingBusy as exc:
            return RetrainOutcome(f"{exc}."), None
        except ServiceUnavailable:
            return RetrainOutcome(APOLOGY), None
        self.following.add(job.id)
        try:
            return await self._follow(job.id, start, edit), job.id
        except Exception:  # Redis away, job gone: the delivery loop reports the outcome once it can
            logger.warning("lost track of a fine-tune; its outcome will be delivered when it ends", exc_info=True)
            return None, job.id
        finally:
            self.following.discard(job.id)

    async def _follow(self, job_id: str, start: Send, edit: Edit) -> RetrainOutcome | None:
        handle = await start("Training queued...")
        last_text, last_edit = "Training queued...", time.monotonic()
        final: TrainStatus | None = None
        async for status in self.client.follow_training(job_id, poll_s=self.follow_poll):
            if status.done:
                final = status
                break
            text = render_progress(status)
            if text != last_text and time.monotonic() - last_edit >= self.edit_delay:
                await edit(handle, text)
                last_text, last_edit = text, time.monotonic()
        assert final is not None
        if final.result:
            await edit(handle, "Training finished.")
        else:  # a rejected upload never started training: its problems follow
            await edit(
                handle,
                "Nothing was trained: what is wrong with the file follows."
                if final.meta.get("problems")
                else "Training stopped.",
            )
        if not await asyncio.to_thread(self.client.claim_delivery, job_id):
            return None
        return outcome_of(final)

    async def deliver_pending(self, platform: str, deliver: Callable[[ReplyTo, RetrainOutcome], Awaitable[None]]) -> int:
        """Deliver, once, the outcome of every ended fine-tune asked for on `platform` that nobody reported."""
        delivered = 0
        for status in await asyncio.to_thread(self.client.undelivered_training, platform):
            if status.job_id in self.following or not await asyncio.to_thread(self.client.claim_delivery, status.job_id):
                continue
            try:
                await deliver(status.reply_to, outcome_of(status))
                delivered += 1
            except BaseException as exc:  # failed, or cancelled as the bot stops: another round or bot sends it
                await asyncio.to_thread(self.client.release_delivery, status.job_id)
                if not isinstance(exc, Exception):
                    raise
                logger.exception("could not deliver the outcome of a fine-tune")
        return delivered

    async def keep_delivering(
        self, platform: str, deliver: Callable[[ReplyTo, RetrainOutcome], Awaitable[None]], notify: Notify | None = None
    ) -> None:
        """Deliver ended fine-tunes and admins' answers now and then every `delivery_poll` seconds, until cancelled;
        each round also says in Redis that this bot is alive (`qabot health bot <platform>` reads it)."""
        while True:
            try:
                await asyncio.to_thread(beat, self.client.connection, bot_service(platform), BOT_BEAT_TTL_S)
            except Exception:
                logger.warning("could not say in Redis that this bot is alive", exc_info=True)
            try:
                await self.deliver_pending(platform, deliver)
            except Exception:
                logger.warning("could not look for undelivered results", exc_info=True)
            if notify is not None:
                try:
                    await deliver_notices(self.client, platform, notify, self.hints.escape)
                except Exception:
                    logger.warning("could not look for admins' answers to deliver", exc_info=True)
            await asyncio.sleep(self.delivery_poll)


def outcome_of(status: TrainStatus) -> RetrainOutcome:
    image = status.result.get("loss_png") if status.result else None
    return RetrainOutcome(render_result(status), image)
