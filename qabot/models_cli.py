"""`qabot models`: list, promote and roll back model versions (no torch)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from qabot.setup import console
from qabot.setup import settings as _settings

models_app = typer.Typer(help="List, promote and roll back model versions.", no_args_is_help=True)


def _store(settings):
    from engine.versions import ModelStore

    return ModelStore.of(settings)


@models_app.command("list")
def models_list() -> None:
    """List model versions; the live one is marked."""
    settings = _settings()
    store = _store(settings)
    current = store.current_name()
    table = Table("", "version", "created", "base", "pairs", "accuracy")
    for info in store.list():
        metrics = info.meta.get("metrics", {})
        accuracy = " ".join(f"{k.removesuffix('_accuracy')} {v:.0%}" for k, v in metrics.items() if k.endswith("_accuracy"))
        table.add_row(
            "*" if info.name == current else "",
            info.name,
            info.created_at,
            info.meta.get("base_model", ""),
            str(info.meta.get("dataset", {}).get("pairs", "")),
            accuracy,
        )
    console.print(table if store.list() else "No model versions yet: run `qabot train`.")


@models_app.command("promote")
def models_promote(name: Annotated[str, typer.Argument(help="Version to make live, e.g. v0003.")]) -> None:
    """Make a version live."""
    info = _store(_settings()).promote(name)
    console.print(f"{info.name} is now live.")


@models_app.command("rollback")
def models_rollback(
    name: Annotated[str | None, typer.Argument(help="Version to go back to (default: the previous live one).")] = None,
) -> None:
    """Go back to the previously live version (or to a named one)."""
    info = _store(_settings()).rollback(name)
    pairs = len(_store(_settings()).current_pairs())
    console.print(f"Rolled back: {info.name} is now live, with its own dataset ({pairs} pairs).")
