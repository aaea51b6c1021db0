"""`qabot data`: the current dataset on the GPU host, as the admin commands see it (/export, /forget, /undo)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qabot.setup import console, err

data_app = typer.Typer(
    help="The current dataset: find pairs, export it, forget a pair, undo the last one-pair edit.", no_args_is_help=True
)


@data_app.command("find")
def data_find(
    words: Annotated[list[str], typer.Argument(help="Words to look for in the questions and answers.")],
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=20, help="Pairs shown.")] = 5,
) -> None:
    """The pairs nearest to the words (the index the answers use), numbered as in the dataset, with where each came from."""
    from bots.render_inbox import CLI_HINTS, render_find
    from worker.admin import find_pairs

    console.print(render_find(find_pairs(" ".join(words), limit), CLI_HINTS), markup=False, soft_wrap=True)


@data_app.command("export")
def data_export(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="File to write (default: standard output).")] = None,
) -> None:
    """The current dataset in the upload format, with where each pair came from in optional fields."""
    from worker.admin import export_dataset

    result = export_dataset()
    if out is None:
        typer.echo(result.data.decode("utf-8"))
        return
    out.write_bytes(result.data)
    err.print(f"Wrote {result.pairs} pairs to {out} (dataset {result.dataset}).", markup=False)


@data_app.command("forget")
def data_forget(
    question: Annotated[str, typer.Argument(help="The question whose pair to remove, as stored, or its number from find.")],
) -> None:
    """Remove a pair from the current dataset (no training; `qabot data undo` brings it back)."""
    from bots.render import render_forgotten
    from worker.admin import forget_pair

    result = forget_pair(question)
    console.print(render_forgotten(result), markup=False, soft_wrap=True)
    if not result.done:
        raise typer.Exit(1)


@data_app.command("undo")
def data_undo() -> None:
    """Take back the last one-pair edit (/addqa, /answer, /forget) not yet undone."""
    from bots.render import render_undone
    from worker.admin import undo_edit

    result = undo_edit()
    console.print(render_undone(result), markup=False, soft_wrap=True)
    if not result.done:
        raise typer.Exit(1)
