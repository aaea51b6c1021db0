"""A dataset's held-out questions: which of them it answers, the file a version records, and that file's upkeep.

A release is judged only on the held-out questions its own dataset holds the answer to (`heldout_for`): a line of
versions started on the sample never judges a FAQ on the sample's paraphrases. The file a version records
(`heldout_file`) holds just those questions, and the next release carries it forward (`eval_data_for`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from engine.datastore import write_atomic
from engine.versions import ModelStore, VersionInfo
from qabot.dataset import QAPair
from qabot.heldout import HeldoutItem

if TYPE_CHECKING:
    from engine.pipeline import TrainRequest

HELDOUT_DIR = "heldout"  # under the store's datasets folder: held-out files narrowed to a dataset


def fold(text: str) -> str:
    """A text as answers and facts are compared: casefolded, whitespace folded."""
    return " ".join(text.casefold().split())


def heldout_for(pairs: list[QAPair], items: list[HeldoutItem]) -> list[HeldoutItem]:
    """The held-out items this dataset holds the answer to; items about removed pairs or another world drop out.

    An item with an `answer` belongs when one pair's response is that answer or contains all its facts; an item
    without one when each of its facts appears in some pair's response (case and spacing ignored).
    """
    responses = [fold(p.response) for p in pairs]
    exact = set(responses)
    joined = "\n".join(responses)  # folded texts hold no newline, so no fact matches across two responses
    kept = []
    for item in items:
        facts = [fold(f) for f in item.facts]
        if item.answer is not None:
            holds = fold(item.answer) in exact or any(all(f in r for f in facts) for r in responses)
        else:
            holds = all(f in joined for f in facts)
        if holds:
            kept.append(item)
    return kept


def eval_data_for(request: TrainRequest, live: VersionInfo | None) -> Path | None:
    """The request's held-out file, else the one the live model was measured with (if it still exists)."""
    if request.eval_data is not None:
        return request.eval_data
    previous = live.meta.get("eval_data") if live is not None else None
    return Path(previous) if previous and Path(previous).is_file() else None


def heldout_file(store: ModelStore, source: Path | None, items: list[HeldoutItem], kept: list[HeldoutItem]) -> Path | None:
    """The held-out file the fine-tune's early stopping reads, which the version records and the next release carries
    forward: `source` itself when all its items belong to the dataset, None when none does, else a copy of the kept
    items in the store (datasets/heldout/<hash of its text>.json: never overwritten, removed once no version names it).

    A copy holds only what belonged then: a pair removed and added back later comes back without its held-out items.
    """
    if not kept:
        return None
    if len(kept) == len(items):
        return source
    rows = [{"question": i.question, "facts": list(i.facts)} | ({"answer": i.answer} if i.answer else {}) for i in kept]
    text = json.dumps(rows, ensure_ascii=False, indent=1)
    path = store.datasets_dir / HELDOUT_DIR / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text)
    return path


def prune_heldout(store: ModelStore) -> None:
    """Remove the narrowed held-out files that no kept version names."""
    folder = store.datasets_dir / HELDOUT_DIR
    if not folder.is_dir():
        return
    with store.lock():
        named = {Path(str(v.meta.get("eval_data") or "")).name for v in store.list()}
        for path in folder.glob("*.json"):
            if path.name not in named:
                path.unlink(missing_ok=True)
