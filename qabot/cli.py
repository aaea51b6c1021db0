"""`qabot`: the one command line for training, chatting, asking, evaluating and managing models."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as Bar

from qabot.data_cli import data_app
from qabot.evaluation import evaluate
from qabot.evaluation import load_answerer as _load_answerer
from qabot.models_cli import models_app
from qabot.ops import bot_app, dev, health_app, inbox_app, status, worker_app
from qabot.settings import Settings
from qabot.setup import State, console, err, report_error, scrub
from qabot.setup import settings as _settings

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
app.add_typer(models_app, name="models")
app.add_typer(worker_app, name="worker")
app.add_typer(bot_app, name="bot")
app.add_typer(health_app, name="health")
app.add_typer(inbox_app, name="inbox")
app.add_typer(data_app, name="data")

EXIT_WORDS = {"exit", "quit", ":q"}


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False) -> None:
    """qabot: a question-answering chatbot trained on your community's question/answer pairs."""
    State.debug = debug


def _store(settings):
    from engine.versions import ModelStore

    return ModelStore.of(settings)


def _train_with_bar(settings: Settings, data: Path, request, *, promote: bool = True, force: bool = False) -> object:
    """Validate once, fine-tune and release (the same path as the train job) with a progress bar; returns the Release."""
    from engine.pipeline import load_base, validate_file
    from engine.release import Policy, release

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Bar(*columns, console=console, transient=False) as bar:
        task = bar.add_task("loading base model", total=None)

        def show(p) -> None:
            if p.stage == "training":
                loss = f" loss {p.loss:.3f}" if p.loss is not None else ""
                bar.update(task, total=p.total_steps, completed=p.step, description=f"training epoch {p.epoch:.1f}{loss}")
            else:
                bar.update(task, description=p.stage)

        base = load_base(request.base_model, settings.cache_dir, request.config.max_length)
        bar.update(task, description="validating data")
        pairs = validate_file(data, base)
        policy = Policy(
            promote=promote, force=force, keep_versions=settings.keep_versions, device=settings.device, dtype=settings.dtype
        )
        outcome = release(_store(settings), pairs, base, request, policy, progress=show)
    return outcome


def _print_outcome(outcome) -> None:
    info = outcome.version
    metrics = ", ".join(f"{k} {v}" for k, v in info.meta.get("metrics", {}).items() if "accuracy" in k or "loss" in k)
    state = "now live" if outcome.promoted else "saved, not promoted"
    console.print(
        f"[bold green]{info.name}[/] {state}: {info.meta['dataset']['pairs']} pairs, {info.meta['train_seconds']} s. {metrics}"
    )
    verdict = "promoted" if outcome.promoted else "not promoted"
    console.print(f"{verdict}: {escape(outcome.reason)}", highlight=False, soft_wrap=True)
    console.print(f"loss curve: {info.path / 'loss.png'}")


@app.command()
def train(
    data: Annotated[
        Path | None,
        typer.Option(
            help="Dataset: JSON array or JSON Lines of {prompt, response} (default: the store's current dataset, "
            "else QABOT_DATASET)."
        ),
    ] = None,
    eval_data: Annotated[Path | None, typer.Option(help="Held-out paraphrases {question, facts} to evaluate on.")] = None,
    base: Annotated[str | None, typer.Option(help="Base model: 'bundled', a hub id or a folder.")] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the data.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per step.")] = None,
    max_length: Annotated[int | None, typer.Option(help="Longest example in tokens.")] = None,
    lora: Annotated[bool, typer.Option(help="Train LoRA adapters instead of all weights.")] = False,
    trained_share: Annotated[
        float | None, typer.Option(help="Share of the blocks trained, from the top (default 0.4 grounded, 1 plain).")
    ] = None,
    grounded: Annotated[
        bool | None,
        typer.Option(
            "--grounded/--plain", help="Answer from retrieved notes and learn to decline (default: QABOT_GROUNDED, on)."
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    resume: Annotated[bool, typer.Option(help="Resume an interrupted run of the same data and settings.")] = False,
    promote: Annotated[
        bool, typer.Option(help="Make the new version live if it scores at least as well as the live one.")
    ] = True,
    force: Annotated[bool, typer.Option(help="Make the new version live even if it scores lower than the live one.")] = False,
) -> None:
    """Fine-tune the base model on a dataset, score it against the live version and promote it if not worse."""
    from engine.datastore import read_stored
    from engine.pipeline import TrainRequest
    from engine.training import TrainConfig

    settings = _settings()
    overrides = {"epochs": epochs, "learning_rate": lr, "batch_size": batch_size, "max_length": max_length, "seed": seed}
    overrides["trained_share"] = trained_share
    grounded = settings.grounded if grounded is None else grounded
    overrides["embedder"] = settings.embedder
    config = TrainConfig(lora=lora, grounded=grounded, **{k: v for k, v in overrides.items() if v is not None})
    data_path, edits_from = data, None
    if data_path is None:  # the dataset admins built (/addqa, uploads) if there is one; the sample is only a demo
        store = _store(settings)
        with store.lock():  # read with the edit journal's length: an /addqa from here on is carried onto the version
            data_path, edits_from = store.current_dataset(), len(store.edits())
        if data_path is not None:
            console.print(f"No --data: training the current dataset {data_path.stem} ({len(read_stored(data_path))} pairs).")
    if data_path is None:
        data_path = settings.dataset
        eval_data = settings.eval_data if eval_data is None else eval_data
    request = TrainRequest(
        base_model=base or settings.base_model,
        config=config,
        eval_data=eval_data,
        resume=resume,
        source=data_path.name,
        edits_from=edits_from,
    )
    _print_outcome(_train_with_bar(settings, data_path, request, promote=promote, force=force))


@app.command()
def chat(version: Annotated[str | None, typer.Option(help="Model version (default: the live one).")] = None) -> None:
    """Chat with the bot in the console; type 'exit' to leave. Trains a first model if there is none."""
    from engine.pipeline import TrainRequest
    from engine.training import TrainConfig
    from qabot.errors import QuestionError

    settings = _settings()
    store = _store(settings)
    if version is None and store.current_name() is None:
        # the dataset admins built (/addqa before any training) if there is one, else the demo sample
        data, eval_data = store.current_dataset(), None
        if data is None:
            data, eval_data = settings.dataset, settings.eval_data
        console.print(f"No fine-tuned model yet: training one on {data.name} first (a few minutes on a CPU).")
        # No epoch checkpoints here: they write ~1.6 GB per epoch for the bundled model, and a first
        # run that is interrupted simply starts again (`qabot train --resume` is the resumable path).
        config = TrainConfig(checkpoints=False, grounded=settings.grounded, embedder=settings.embedder)
        request = TrainRequest(settings.base_model, config, eval_data, source=data.name)
        _print_outcome(_train_with_bar(settings, data, request))
    answerer, info = _load_answerer(settings, version)
    console.print(f"qabot {info.name} is ready. Ask a question, or type 'exit' to leave.")
    while True:
        try:
            question = console.input("[bold cyan]you>[/] ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            break
        if question.strip().casefold() in EXIT_WORDS:
            break
        if not question.strip():
            continue
        try:
            answer = answerer.answer([question])[0]
            said = settings.decline_text if answer.declined else answer.text or "(no answer)"
            console.print(f"[bold green]bot>[/] {escape(said)}")  # an answer's "[label](link)" is text, not markup
        except QuestionError as exc:
            console.print(f"[yellow]{escape(str(exc))}[/]")
    console.print("Thanks for chatting. Goodbye!")


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question to answer.")],
    version: Annotated[str | None, typer.Option(help="Model version (default: the live one).")] = None,
    sample: Annotated[bool, typer.Option(help="Sample instead of greedy decoding.")] = False,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.7,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling.")] = None,
    remote: Annotated[bool, typer.Option(help="Ask through the Redis queue and the answer workers.")] = False,
) -> None:
    """Answer one question with the live model and print the answer."""
    from qabot.questions import check_question

    settings = _settings(engine=not remote)
    check_question(question, settings.max_question_chars)
    if remote:
        from worker.client import QueueClient

        print(QueueClient(settings).ask_sync(question, asker="cli").answer)
        return
    from engine.generate import Sampling

    answerer, _ = _load_answerer(settings, version)
    answer = answerer.answer([question], Sampling(do_sample=sample, temperature=temperature, seed=seed))[0]
    print(settings.decline_text if answer.declined else answer.text)


app.command("eval")(evaluate)
app.command()(status)
app.command()(dev)


def main() -> None:
    """Entry point: errors become one line (secrets masked) and a non-zero exit; --debug shows the traceback."""
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - the edge: one line for the user
        if State.debug:
            err.print(scrub(traceback.format_exc()), highlight=False, markup=False)
            sys.exit(1)
        sys.exit(report_error(exc))


if __name__ == "__main__":
    main()
