"""From a saved version back to a loaded model that answers: its weights, its notes and thresholds, its answer budget.

What an answer worker (and `qabot chat`, `qabot eval`) loads; nothing of fine-tuning (engine.pipeline) is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.calibration import Calibration
from engine.embedders import DEFAULT_EMBEDDER, version_embedder
from engine.formatting import longest_answer
from engine.generate import Answerer
from engine.grounding import DECLINE, Grounding, learnt_answers
from engine.models import LoadedModel, context_length, load_model
from engine.retrieval import ensure_index, shared_embedder
from engine.textformat import FALLBACK_BUDGET, WHOLE_NOTES, HeadRule, answer_budget
from engine.versions import ModelStore, VersionInfo, read_stored
from qabot.dataset import QAPair
from qabot.errors import ModelError, TrainingError


def load_version(
    store: ModelStore, name: str | None = None, *, device: str = "auto", dtype: str = "auto"
) -> tuple[LoadedModel, VersionInfo]:
    """Load a saved version (the live one by default) for answering."""
    info = store.get(name) if name else store.current()
    if info is None:
        raise TrainingError("no model has been trained yet: run `qabot train` (or `qabot chat`, which trains one)")
    return load_model(str(info.path), device=device, dtype=dtype), info


def dataset_grounding(
    store: ModelStore,
    digest: str,
    notes: int,
    decline: str = DECLINE,
    previous: Grounding | None = None,
    calibration: Calibration | None = None,
    heads: HeadRule | None = None,
    embedder: str | None = None,
    device: str = "cpu",
) -> Grounding:
    """Notes from stored dataset `digest` (its index by `embedder` loaded, or built and saved beside it, reusing
    `previous`'s rows where it has the same embedder).

    The thresholds are `calibration`'s, else `previous`'s (the notes changed, the version did not), else the defaults.
    """
    name = embedder or (previous.embedder.name if previous is not None else DEFAULT_EMBEDDER)
    same = previous is not None and previous.embedder.name == name
    found = previous.embedder if same else shared_embedder(name, device)
    index = ensure_index(store, digest, found, previous.index if same else None)
    if calibration is None and previous is not None:
        calibration = Calibration(
            min_score=previous.min_score,
            decline_confidence=previous.decline_confidence,
            offtopic_margin=previous.offtopic_margin,
            complaint_margin=previous.complaint_margin,
        )
    calibration = calibration or Calibration()
    return Grounding(
        index,
        found,
        notes=notes,
        decline=decline,
        min_score=calibration.min_score,
        decline_confidence=calibration.decline_confidence,
        offtopic_margin=calibration.offtopic_margin,
        complaint_margin=calibration.complaint_margin,
        learnt=previous.learnt if previous is not None else None,
        heads=heads if heads is not None else previous.heads if previous is not None else WHOLE_NOTES,
    )


def version_grounding(
    store: ModelStore,
    info: VersionInfo,
    digest: str | None = None,
    *,
    min_score: float | None = None,
    decline_confidence: float | None = None,
    offtopic_margin: float | None = None,
    complaint_margin: float | None = None,
    device: str = "cpu",
) -> Grounding | None:
    """For a grounded version: notes from `digest` (default: the dataset it learnt), its embedder on `device`; None for
    a plain version.

    `min_score`, `decline_confidence`, `offtopic_margin` and `complaint_margin` override the version's calibrated
    thresholds (QABOT_MIN_SCORE, QABOT_DECLINE_CONFIDENCE, QABOT_OFFTOPIC_MARGIN, QABOT_COMPLAINT_MARGIN)."""
    meta = info.meta.get("grounding")
    if not meta:
        return None
    digest = digest or info.meta["dataset"]["hash"]
    if not (store.datasets_dir / f"{digest}.json").is_file():
        raise ModelError(f"{info.name} answers from notes, but dataset {digest} is not in the store; /retrain or roll back")
    calibration = Calibration.from_meta(info.meta.get("calibration")).overridden(
        min_score, decline_confidence, offtopic_margin, complaint_margin
    )
    # a version from before note heads read whole notes, one from before NOTE_CHARS heads of whole words
    heads = HeadRule.from_meta(meta)
    # the embedder its notes were retrieved and its floor calibrated with (engine.embedders); older versions: MiniLM
    embedder = version_embedder(meta)
    grounding = dataset_grounding(
        store,
        digest,
        int(meta["notes"]),
        str(meta["decline"]),
        calibration=calibration,
        heads=heads,
        embedder=embedder,
        device=device,
    )
    learnt = store.datasets_dir / f"{info.meta['dataset']['hash']}.json"
    if learnt.is_file():  # the answers it was fine-tuned on: among those it chooses (engine.grounding.Grounding.learnt)
        grounding.learnt = learnt_answers(read_stored(learnt))  # stored: checked when trained, with the base's rules
    return grounding


def version_budget(info: VersionInfo, loaded: LoadedModel) -> int:
    """The answer budget a version was released with; for an older version, measured on the dataset it learnt."""
    stored = info.meta.get("answer_budget")
    if stored:
        return int(stored)
    path = info.meta.get("dataset", {}).get("path")
    if not path or not Path(path).is_file():
        return FALLBACK_BUDGET
    return data_budget(loaded.tokenizer, read_stored(Path(path)), context_length(loaded.model.config))


def data_budget(tokenizer: Any, pairs: list[QAPair], context: int) -> int:
    """The answer budget of a dataset: its longest answer in tokens plus a margin (engine.textformat.answer_budget)."""
    return answer_budget(longest_answer(tokenizer, (p.response for p in pairs)), context)


def make_answerer(
    loaded: LoadedModel,
    info: VersionInfo | None = None,
    *,
    max_new_tokens: int | None,
    max_question_chars: int,
    grounding: Grounding | None = None,
) -> Answerer:
    """An answerer for a loaded version; `max_new_tokens=None` sizes answers by the version's data."""
    return Answerer(
        loaded.model,
        loaded.tokenizer,
        max_new_tokens=max_new_tokens,
        max_question_chars=max_question_chars,
        grounding=grounding,
        data_budget=version_budget(info, loaded) if info is not None else FALLBACK_BUDGET,
    )
