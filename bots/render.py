"""How admin results read in a chat: progress, training outcomes, status, models, added pairs. Plain text."""

from __future__ import annotations

from typing import Any

from qabot.shapes import AddPairResult, ModelsResult, StatusReport
from worker.client import TrainStatus

MAX_PROBLEMS_SHOWN = 15


def problems_text(problems: list[str] | tuple[str, ...], what: str = "That dataset") -> str:
    shown = "\n".join(f"- {p}" for p in problems[:MAX_PROBLEMS_SHOWN])
    more = f"\n...and {len(problems) - MAX_PROBLEMS_SHOWN} more" if len(problems) > MAX_PROBLEMS_SHOWN else ""
    return f"{what} has {len(problems)} problem(s); nothing was changed:\n{shown}{more}"


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


def render_status(report: StatusReport) -> str:
    live = report.live_version or "none yet"
    lines = [f"Live model: {live}" + (f", trained {report.trained_at}" if report.trained_at else "")]
    if report.live_dataset:
        lines.append(f"It learnt dataset {report.live_dataset} ({report.live_pairs} pairs).")
    if report.waiting_dataset:
        lines.append(f"Waiting to be trained: dataset {report.current_dataset} ({report.current_pairs} pairs); /retrain.")
    else:
        lines.append("No newer dataset is waiting to be trained.")
    lines.append(
        "Queues: " + ", ".join(f"{name} {q['waiting']} waiting, {q['running']} running" for name, q in report.queues.items())
    )
    lines.append(f"Workers: {len(report.workers)}")
    training = report.training
    if training:
        loss = f", loss {training['loss']:.3f}" if training.get("loss") is not None else ""
        lines.append(f"Training: {training['stage']}, epoch {training.get('epoch') or 0}{loss}")
    else:
        lines.append("Training: none running")
    return "\n".join(lines)


def render_models(result: ModelsResult) -> str:
    if not result.rows:
        return "No model versions yet: /retrain trains the first."
    rows = []
    for row in result.rows:
        accuracy = ", ".join(f"{k} {v:.0%}" for k, v in row.accuracy.items())
        rows.append(f"{row.name}{' (live)' if row.live else ''}: {row.created_at}, {row.pairs or '?'} pairs, {accuracy}")
    return "\n".join(rows)


def render_added(result: AddPairResult) -> str:
    if not result.added:
        return problems_text(result.problems, "That pair")
    did = "Updated the answer to" if result.replaced else "Added"
    return (
        f"{did} '{result.question}'. The dataset now has {result.pairs} pairs (dataset {result.dataset}); "
        "/retrain to teach it to the bot."
    )
