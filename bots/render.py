"""How results read in a chat: progress, training outcomes, status, models, added and removed pairs, declines. Plain text
(what admins read of the data and the inbox: bots.render_inbox)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from qabot.dataset import STOPPED
from qabot.shapes import (
    AddPairResult,
    EditResult,
    ModelsResult,
    StatusReport,
)
from worker.results import TrainStatus

MAX_PROBLEMS_SHOWN = 15
QUOTE_CHARS = 200  # a question or an answer quoted to admins (a forgotten pair, the inbox list) is cut to this many characters
PASSED_ON = "I've passed your question on to the admins."
REPORTED = "Thanks: I've passed the question and my answer on to the admins."


def problems_text(problems: list[str] | tuple[str, ...], what: str = "That dataset") -> str:
    """The first problems found, and how many there are (the validator stops counting at MAX_PROBLEMS)."""
    problems = list(problems)
    stopped = bool(problems) and problems[-1] == STOPPED
    found = problems[:-1] if stopped else problems
    count = f"more than {len(found)}" if stopped else str(len(found))
    shown = "\n".join(f"- {p}" for p in found[:MAX_PROBLEMS_SHOWN])
    left = len(found) - MAX_PROBLEMS_SHOWN
    more = f"\n...and {'more than ' if stopped else ''}{left} more" if left > 0 else ("\n...and more" if stopped else "")
    return f"{what} has {count} problem(s); nothing was changed:\n{shown}{more}"


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


def upload_text(upload: dict[str, Any]) -> str:
    """What an uploaded file did to the dataset, and the other choice."""
    name = upload["filename"]
    if upload["mode"] == "replace":
        return f"{name} replaced the dataset: {upload['pairs']} pairs, {upload['dropped']} dropped."
    text = (
        f"{name}: {upload['file_pairs']} pairs; {upload['added']} added to the {upload['kept']} of the dataset"
        + (f", {upload['updated']} answers updated" if upload["updated"] else "")
        + f" ({upload['pairs']} pairs)."
    )
    if upload.get("not_in_file"):
        text += (
            f" The file lacks {upload['not_in_file']} pairs of the dataset, which were kept (adding is the default, so an "
            "upload never drops knowledge); to train on the file alone, send it again with /retrain replace."
        )
    return text


def render_result(status: TrainStatus) -> str:
    """The final word on a fine-tune."""
    if status.result is None:
        problems = status.meta.get("problems")
        if problems:
            return problems_text(problems)
        return f"Training failed: {status.error or status.state}"
    result = status.result
    lines = [upload_text(result["upload"])] if result.get("upload") else []
    previous = result.get("previous")
    against = f" against {previous['version']}'s {accuracy_text(previous['metrics'])}" if previous else ""
    verdict = "now live" if result["promoted"] else "not promoted"
    lines.append(
        f"Training done: {result['version']} ({result['dataset']['pairs']} pairs), accuracy {accuracy_text(result['metrics'])}"
        f"{against}. {result['version']} is {verdict}: {result['reason']}."
    )
    return "\n".join(lines)


def when(iso: str | None, now: float | None = None) -> str:
    """An ISO time as people read it: '3 h ago'; the text itself when it is not one."""
    from datetime import datetime

    try:
        return ago(datetime.fromisoformat(iso or "").timestamp(), now)
    except ValueError:
        return iso or "at an unknown time"


def render_status(report: StatusReport) -> str:
    live = report.live_version or "none yet"
    lines = [f"Live model: {live}" + (f", trained {when(report.trained_at)}." if report.trained_at else ".")]
    for worker in report.workers:
        if worker.get("fallback"):
            lines.append(
                f"Warning: {worker['fallback']['live']} does not load ({worker['fallback']['why']}), so answer worker "
                f"{worker['name']} answers with {worker['model']}: /rollback to a version that loads, or /retrain."
            )
    if report.live_dataset:
        source = f" from {report.live_source}" if report.live_source else ""
        lines.append(f"It learnt {report.live_pairs} pairs{source} (dataset {report.live_dataset}).")
    if report.waiting_dataset:
        edit = report.last_edit
        changed = ""
        if edit.get("action"):
            who = f" by {edit['platform']}:{edit['by']}" if edit.get("platform") and edit.get("by") else ""
            changed = f", last changed with /{edit['action']}{who} {when(edit.get('at'))}"
        lines.append(
            f"Waiting to be trained: {report.current_pairs} pairs (dataset {report.current_dataset}){changed}; /retrain."
        )
    else:
        lines.append("No newer dataset is waiting to be trained.")
    lines.append(
        "Queues: " + ", ".join(f"{name} {q['waiting']} waiting, {q['running']} running" for name, q in report.queues.items())
    )
    lines.append(f"Workers: {len(report.workers)}")
    if report.unanswered:
        lines.append(f"Unanswered questions: {report.unanswered}; /unanswered lists them.")
    training = report.training
    if training:
        loss = f", loss {training['loss']:.3f}" if training.get("loss") is not None else ""
        lines.append(f"Training: {training['stage']}, epoch {training.get('epoch') or 0}{loss}")
    else:
        lines.append("Training: none running")
    return "\n".join(lines)


def render_models(result: ModelsResult) -> str:
    if not result.rows:
        return "No model versions yet: /retrain with a dataset file attached (or /addqa pairs, then /retrain) trains the first."
    rows = []
    for row in result.rows:
        accuracy = ", ".join(f"{k} {v:.0%}" for k, v in row.accuracy.items())
        rows.append(f"{row.name}{' (live)' if row.live else ''}: {when(row.created_at)}, {row.pairs or '?'} pairs, {accuracy}")
    return "\n".join(rows)


def render_added(result: AddPairResult, escape: Callable[[str], str] = str) -> str:
    """`escape`: user text as the platform shows it literally (Discord: Markdown escaped)."""
    if not result.added:
        return problems_text(result.problems, "That pair")
    question = escape(result.question)
    if result.unchanged:
        return f"'{question}' already has that answer: nothing changed ({result.pairs} pairs, dataset {result.dataset})."
    did = "Updated the answer to" if result.replaced else "Added"
    return (
        f"{did} '{question}'. The dataset now has {result.pairs} pairs (dataset {result.dataset}); "
        "/retrain to teach it to the bot."
    )


def render_forgotten(result: EditResult, escape: Callable[[str], str] = str) -> str:
    """`escape`: as for `render_added`."""
    if not result.done:
        if result.message:
            return f"Nothing was forgotten: {result.message}."
        close = "; ".join(f"'{escape(q)}'" for q in result.suggestions)
        return f"No pair has the question '{escape(result.what)}'." + (f" Did you mean {close}?" if close else "")
    answer = result.answer if len(result.answer) <= QUOTE_CHARS else result.answer[: QUOTE_CHARS - 1] + "…"
    return (
        f"Forgot '{escape(result.what)}' (its answer was: {escape(answer)}). The dataset now has {result.pairs} pairs (dataset "
        f"{result.dataset}); the bot answers from it within seconds. /undo brings the pair back."
    )


def render_undone(result: EditResult) -> str:
    if not result.done:
        return f"Nothing to undo: {result.message}."
    return (
        f"Undid the {result.what}. The dataset now has {result.pairs} pairs (dataset {result.dataset}); the bot "
        "answers from it within seconds."
    )


def render_declined(decline_text: str, passed_on: bool) -> str:
    """The decline, and whether the question went to the admins' inbox."""
    return f"{decline_text} {PASSED_ON}" if passed_on else decline_text


def render_notice(question: str, answer: str, escape: Callable[[str], str] = str) -> str:
    """An admin's answer, posted where the question was asked (the asker's words escaped for the platform)."""
    return f'An admin answered a question asked here: "{escape(question)}" — {answer}'


def ago(epoch_s: float, now: float | None = None) -> str:
    """'5 min ago', '3 h ago', '2 days ago'."""
    seconds = max(0.0, (now or time.time()) - epoch_s)
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 48 * 3600:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} days ago"
