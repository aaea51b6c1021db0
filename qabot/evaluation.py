"""`qabot eval`: how a version answers its training questions, held-out questions and what it must decline.

A dataset's companions sit beside it: `X.json` has its held-out questions in `X.heldout.json` and the questions it
cannot answer in `X.unanswerable.json` (data/sample.* and data/faq.* are the two examples). Without options, eval asks
the version's own training pairs, the held-out file it was released with, and that file's unanswerable companion.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from qabot.settings import Settings
from qabot.setup import console
from qabot.setup import settings as _settings


def companions(dataset: Path) -> tuple[Path, Path]:
    """The held-out and unanswerable files that belong beside a dataset file."""
    stem = dataset.name.removesuffix(".json").removesuffix(".jsonl")
    return dataset.with_name(f"{stem}.heldout.json"), dataset.with_name(f"{stem}.unanswerable.json")


def load_answerer(settings: Settings, version: str | None = None):
    """The live (or a named) version, as the answer worker serves it: its budget, notes and thresholds."""
    from engine.serving import load_version, make_answerer, version_grounding
    from engine.versions import ModelStore

    store = ModelStore.of(settings)
    loaded, info = load_version(store, version, device=settings.device, dtype=settings.dtype)
    answerer = make_answerer(
        loaded,
        info,
        max_new_tokens=settings.max_new_tokens,
        max_question_chars=settings.max_question_chars,
        grounding=version_grounding(
            store,
            info,
            store.current_digest(),
            min_score=settings.min_score,
            decline_confidence=settings.decline_confidence,
            offtopic_margin=settings.offtopic_margin,
            complaint_margin=settings.complaint_margin,
            device=str(loaded.model.device),  # the embedder beside the model (engine.retrieval.shared_embedder)
        ),
    )
    return answerer, info


def _defaults(info: Any, train_data: Path | None) -> tuple[Path | None, Path | None]:
    """Held-out and unanswerable files: the companions of --train-data, else of the file the version was released with."""
    if train_data is not None:
        heldout, unanswerable = companions(train_data)
    else:
        recorded = info.meta.get("eval_data")
        heldout = Path(recorded) if recorded else None
        unanswerable = heldout.with_name(heldout.name.replace(".heldout.", ".unanswerable.")) if heldout else None
    return (heldout if heldout and heldout.is_file() else None), (
        unanswerable if unanswerable and unanswerable.is_file() else None
    )


def _thresholds(answerer: Any, info: Any) -> str:
    grounding = answerer.grounding
    parts = [f"answer budget {answerer.max_new_tokens} tokens"]
    if grounding is not None:
        names, kinds = grounding.rules_that_hold()
        parts += [
            f"notes by {grounding.embedder.name}",
            f"floor {grounding.min_score:.3f}",
            f"decline confidence {grounding.decline_confidence:.2f}",
            "off-topic margin " + ("off" if grounding.offtopic_margin is None else f"{grounding.offtopic_margin:.3f}"),
            "complaint margin " + ("off" if grounding.complaint_vectors() is None else f"{grounding.complaint_margin:.3f}"),
            f"name rule {'on' if names else 'off'}",
            f"answer kinds {', '.join(kinds) or 'none'}",
        ]
    calibration = info.meta.get("calibration")
    measured = f" (calibrated: {json.dumps(calibration)})" if calibration else " (not calibrated: defaults)"
    return f"{info.name} thresholds: {'; '.join(parts)}{measured if grounding is not None else ''}"


def evaluate(
    data: Annotated[Path | None, typer.Option(help="Held-out questions {question, facts} (default: see above).")] = None,
    train_data: Annotated[Path | None, typer.Option(help="Training pairs to ask back (default: the version's own data).")] = None,
    version: Annotated[str | None, typer.Option(help="Model version (default: the live one).")] = None,
    unanswerable: Annotated[Path | None, typer.Option(help="Questions the data cannot answer (default: see above).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the thresholds and every answer.")] = False,
) -> None:
    """Accuracy on training and held-out questions; declines of unanswerable and answerable ones; checks' effect.

    Held-out and unanswerable files default to the companions of --train-data (X.heldout.json, X.unanswerable.json
    beside X.json), else to the held-out file the version was released with and its companion."""
    from engine.evaluate import evaluate_heldout, evaluate_pairs, evaluate_unanswerable
    from engine.versions import read_stored
    from qabot.dataset import read_dataset
    from qabot.heldout import read_heldout

    settings = _settings()
    answerer, info = load_answerer(settings, version)
    default_heldout, default_unanswerable = _defaults(info, train_data)
    # A file given is checked; the version's own dataset was checked when it was trained, with its base model's rules
    pairs = read_dataset(train_data) if train_data else read_stored(Path(info.meta["dataset"]["path"]))
    heldout_path, unanswerable_path = data or default_heldout, unanswerable or default_unanswerable
    if verbose:
        console.print(_thresholds(answerer, info), soft_wrap=True, highlight=False)
    reports = [evaluate_pairs(answerer, pairs, name="training")]
    if heldout_path is not None:
        reports.append(evaluate_heldout(answerer, read_heldout(heldout_path), name="heldout"))
    answerable = [item for report in reports for item in report.items]
    if answerer.grounding is not None and unanswerable_path is not None:
        questions = [item["question"] for item in json.loads(unanswerable_path.read_text(encoding="utf-8"))]
        reports.append(evaluate_unanswerable(answerer, questions))
    for report in reports:
        if verbose:
            _show_items(report)
        right = sum(i.correct for i in report.items)
        what = "declined" if report.name == "unanswerable" else "right"
        console.print(
            f"{info.name} {report.name}: {report.accuracy:.1%} {what} ({right}/{len(report.items)}), "
            f"{report.runaway} ran to the token limit",
            soft_wrap=True,
        )
    if answerer.grounding is not None:
        wrongly = sum(i.declined for i in answerable)
        share = wrongly / len(answerable) if answerable else 0.0
        console.print(f"{info.name} answerable wrongly declined: {share:.1%} ({wrongly}/{len(answerable)})", soft_wrap=True)
        withheld = [i for report in reports for i in report.items if i.withheld_right is not None]
        lost = sum(bool(i.withheld_right) for i in withheld)
        console.print(
            f"{info.name} answer checks withheld {len(withheld)}: {lost} right answers lost, {len(withheld) - lost} wrong "
            "answers caught",
            soft_wrap=True,
        )


def _show_items(report: Any) -> None:
    console.rule(f"{report.name} questions")
    for item in report.items:
        mark = "[green]right[/]" if item.correct else "[red]wrong[/]"
        # the data's own text, never markup: a Markdown link's "[label]" was dropped, and "[/b]" stopped the report
        lines = [f"{mark} {escape(item.question)}", f"      answer: {escape(item.answer)}"]
        lines.append(f"    expected: {escape(item.expected)}")
        if item.declined:
            lines.append(f"    declined: {escape(item.reason)}")
        lines += [f"      source: {escape(source)}" for source in item.sources]
        console.print("\n".join(lines), highlight=False, soft_wrap=True)
