"""`qabot` commands for running the service: workers, bots, `dev`, `status`, `health`, the inbox. No torch in these processes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from qabot.setup import console
from qabot.setup import settings as _settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis import Redis

worker_app = typer.Typer(help="Run the RQ workers of a GPU host.", no_args_is_help=True)
bot_app = typer.Typer(help="Run a chat bot (no torch needed).", no_args_is_help=True)
inbox_app = typer.Typer(
    help="Questions the bot declined or answered wrongly: list, answer (a new pair), dismiss. Needs `qabot worker admin`.",
    no_args_is_help=True,
)
health_app = typer.Typer(
    help="Health checks of one service on this host (exit 0: alive; 1: not, with the reason); more than `status --quiet`.",
    no_args_is_help=True,
)
health_bot_app = typer.Typer(help="Whether a bot on this host runs (its delivery loop beats in Redis).", no_args_is_help=True)
health_app.add_typer(health_bot_app, name="bot")


def status(
    quiet: Annotated[bool, typer.Option(help="Print nothing; exit 0 when Redis answers (a health check).")] = False,
) -> None:
    """Show the live model and datasets, queue lengths, workers and any training run (JSON)."""
    import json
    from dataclasses import asdict

    from redis.exceptions import RedisError

    from qabot.errors import ServiceUnavailable
    from worker.client import QueueClient
    from worker.results import redacted
    from worker.status import collect

    settings = _settings(engine=False)
    try:
        from engine.versions import ModelStore  # torch-free; absent from the bots' image, which has no store

        store = ModelStore.of(settings)
    except ImportError:
        store = None
    try:
        report = collect(settings, QueueClient(settings), store)
    except RedisError as exc:
        raise ServiceUnavailable(f"Redis at {redacted(settings.redis_url)} is unreachable ({exc})") from exc
    if not quiet:
        console.print_json(json.dumps(asdict(report), default=str))


HEALTH_TIMEOUT_S = 5  # seconds a health check waits on Redis (compose gives the whole check 10)


def _probe(check: Callable[[Redis], bool], failure: str) -> None:
    """Exit 0 when `check` holds on a Redis connection; else exit 1 with `failure` (or why Redis failed) on stderr."""
    from redis.exceptions import RedisError

    from qabot.errors import ServiceUnavailable
    from worker.results import connect, redacted

    url = _settings(engine=False).redis_url
    try:
        healthy = check(connect(url, HEALTH_TIMEOUT_S))
    except RedisError as exc:
        raise ServiceUnavailable(f"Redis at {redacted(url)} is unreachable ({exc})") from exc
    if not healthy:
        raise ServiceUnavailable(failure)


@health_app.command("answer")
def health_answer() -> None:
    """Exit 0 only when an answer worker on this host is registered and has a model loaded (compose's health check)."""
    import socket

    from qabot.health import workers_here
    from worker.jobs import ANSWER_QUEUE
    from worker.liveness import MODEL_FIELD

    def check(connection: Redis) -> bool:
        return any(connection.hget(w.key, MODEL_FIELD) for w in workers_here(connection, ANSWER_QUEUE))

    _probe(check, f"no answer worker on {socket.gethostname()} has a model loaded")


@health_app.command("train")
def health_train() -> None:
    """Exit 0 only when a worker of the `train` queue runs on this host with a live rq record (compose's health check)."""
    import socket

    from qabot.health import workers_here
    from worker.jobs import TRAIN_QUEUE

    _probe(lambda c: bool(workers_here(c, TRAIN_QUEUE)), f"no train worker runs on {socket.gethostname()}")


@health_app.command("admin")
def health_admin() -> None:
    """Exit 0 only when a worker of the `admin` queue runs on this host with a live rq record (compose's health check)."""
    import socket

    from qabot.health import workers_here
    from worker.jobs import ADMIN_QUEUE

    _probe(lambda c: bool(workers_here(c, ADMIN_QUEUE)), f"no admin worker runs on {socket.gethostname()}")


def _health_bot(platform: str) -> None:
    import socket

    from qabot.health import BOT_BEAT_TTL_S, alive, bot_service

    failure = f"the {platform} bot on {socket.gethostname()} has not said it is alive in the last {BOT_BEAT_TTL_S} s"
    _probe(lambda c: alive(c, bot_service(platform)), failure)


@health_bot_app.command("telegram")
def health_bot_telegram() -> None:
    """Exit 0 only when the Telegram bot on this host beat within its TTL (a round of its delivery loop)."""
    _health_bot("telegram")


@health_bot_app.command("discord")
def health_bot_discord() -> None:
    """Exit 0 only when the Discord bot on this host beat within its TTL (a round of its delivery loop)."""
    _health_bot("discord")


def dev(
    bot: Annotated[list[str] | None, typer.Option(help="Also run this bot: telegram or discord (repeatable).")] = None,
) -> None:
    """Run Redis (started if needed), the answer worker, the train worker and chosen bots locally, without Docker.

    A process that dies is restarted (with a backoff); one that keeps crashing at start stops everything.
    """
    from worker.dev import run

    settings = _settings(engine=False)
    known = {"telegram", "discord"}
    unknown = set(bot or []) - known
    if unknown:
        raise typer.BadParameter(f"unknown bot(s) {', '.join(sorted(unknown))}; choose from {', '.join(sorted(known))}")
    raise typer.Exit(run(settings, bot or [], echo=console.print))


@worker_app.command("answer")
def worker_answer(burst: Annotated[bool, typer.Option(help="Stop when the queue is empty.")] = False) -> None:
    """Answer questions from the `answer` queue in batches, with the live model loaded once."""
    from worker.answer_worker import AnswerWorker
    from worker.jobs import ANSWER_QUEUE
    from worker.metrics import start_metrics_server
    from worker.results import WORKER_SOCKET_TIMEOUT, connect

    settings = _settings()
    start_metrics_server(settings.answer_metrics_port, settings.metrics_host)
    connection = connect(settings.redis_url, WORKER_SOCKET_TIMEOUT)
    AnswerWorker([ANSWER_QUEUE], connection=connection, settings=settings).work(burst=burst)
    _exit_without_finalizing()


def _exit_without_finalizing() -> None:
    """End a worker that holds a model once rq's work loop returned (burst done, or warm shutdown on SIGTERM), skipping
    the interpreter's finalization. With torch, tokenizers and OpenBLAS threads loaded, that finalization sometimes
    spun in the garbage collector for minutes (Py_FinalizeEx -> finalize_modules -> gc_collect_main, seen with gdb on a
    busy 2-core host: the answer worker never exited, and a warm shutdown became a SIGKILL). Everything rq writes is
    written by now; logs and stdio are flushed here."""
    import logging
    import os
    import sys

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)


@worker_app.command("admin")
def worker_admin(burst: Annotated[bool, typer.Option(help="Stop when the queue is empty.")] = False) -> None:
    """Serve admin jobs (/addqa, /answer, /models, /rollback, /status, ...): quick, no torch; the store's writer."""
    from worker.jobs import ADMIN_QUEUE
    from worker.results import WORKER_SOCKET_TIMEOUT, connect
    from worker.rq_seam import AdminWorker

    settings = _settings(engine=False)
    connection = connect(settings.redis_url, WORKER_SOCKET_TIMEOUT)
    # /addqa carries people's words: keep job arguments out of the logs, as the answer worker does.
    AdminWorker([ADMIN_QUEUE], connection=connection, log_job_description=False).work(burst=burst)


@worker_app.command("train")
def worker_train(burst: Annotated[bool, typer.Option(help="Stop when the queue is empty.")] = False) -> None:
    """Run fine-tunes from the `train` queue, each in a fresh child process that frees the GPU when it ends.

    The child dies with this process; a fine-tune that dies frees the training lock within 15 s (LEASE_TTL_S) and its
    job ends failed; a Redis restart is waited out (see worker.train_worker).
    """
    from engine.versions import ModelStore
    from worker.jobs import TRAIN_QUEUE
    from worker.metrics import start_metrics_server
    from worker.results import WORKER_SOCKET_TIMEOUT, connect
    from worker.train_worker import TrainWorker

    settings = _settings(engine=False)
    start_metrics_server(settings.train_metrics_port, settings.metrics_host)
    connection = connect(settings.redis_url, WORKER_SOCKET_TIMEOUT)
    store = ModelStore.of(settings)  # what dead runs of this host left (staging folders) goes at start and after each job
    TrainWorker([TRAIN_QUEUE], connection=connection, clean_up=store.clean_staging).work(burst=burst)


@bot_app.command("telegram")
def bot_telegram() -> None:
    """Run the Telegram bot: polling, or a webhook when QABOT_TELEGRAM_WEBHOOK_URL is set."""
    from bots.telegram_bot import main as run_telegram

    run_telegram(_settings(engine=False))


@bot_app.command("discord")
def bot_discord() -> None:
    """Run the Discord bot (slash commands are synced at start)."""
    from bots.discord_bot import main as run_discord

    run_discord(_settings(engine=False))


def _inbox_job(function: str, request: object) -> object:
    """Run an inbox job on the admin worker, as the bots do."""
    from worker.client import QueueClient

    return QueueClient(_settings(engine=False)).admin_call(function, request)


def _show(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@inbox_app.command("list")
def inbox_list(
    limit: Annotated[int, typer.Option(help="Questions (groups of wordings) per page.")] = 20,
    page: Annotated[int, typer.Option(min=1, help="Which page.")] = 1,
) -> None:
    """The most-asked open questions first, then the most recent, with their ids; other wordings grouped."""
    from bots.render_inbox import CLI_HINTS, render_inbox
    from qabot.shapes import InboxListRequest

    _show(render_inbox(_inbox_job("inbox_jobs.inbox_list", InboxListRequest(limit, page)), CLI_HINTS))


@inbox_app.command("answer")
def inbox_answer(
    item_id: Annotated[str, typer.Argument(metavar="ID", help="The question's id from `qabot inbox list`.")],
    answer: Annotated[list[str], typer.Argument(metavar="TEXT...", help="The answer (quoted, or as several words).")],
) -> None:
    """Answer a question: it becomes a pair of the dataset, and the chats where it was asked get the answer."""
    from bots.render_inbox import CLI_HINTS, render_inbox_answer
    from qabot.shapes import InboxAnswerRequest

    result = _inbox_job("inbox_jobs.inbox_answer", InboxAnswerRequest(item_id, " ".join(answer)))
    _show(render_inbox_answer(result, CLI_HINTS))
    if not result.closed:
        raise typer.Exit(1)


@inbox_app.command("dismiss")
def inbox_dismiss(
    item_id: Annotated[str, typer.Argument(metavar="ID", help="The question's id from `qabot inbox list`.")],
) -> None:
    """Close a question without answering it."""
    from bots.render_inbox import CLI_HINTS, render_inbox_dismiss
    from qabot.shapes import InboxDismissRequest

    result = _inbox_job("inbox_jobs.inbox_dismiss", InboxDismissRequest(item_id))
    _show(render_inbox_dismiss(result, CLI_HINTS))
    if not result.found:
        raise typer.Exit(1)
