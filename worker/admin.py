"""Admin jobs, served by `qabot worker admin` (no torch): the only writer of datasets and pointers besides training.

Each job takes and returns the plain shapes of `qabot.shapes`; bots only render them.
"""

from __future__ import annotations

import difflib
import json
import logging
import re

from engine.datastore import replay
from engine.textformat import version_counter
from engine.versions import ModelStore
from qabot.dataset import QAPair, normalize_question, pair_key, quote, validate_items
from qabot.errors import DatasetError, QabotError
from qabot.merge import merge_pairs
from qabot.settings import Settings
from qabot.shapes import (
    AddPairResult,
    EditResult,
    ExportResult,
    FindResult,
    ModelRow,
    ModelsResult,
    RollbackResult,
    StatusReport,
)

logger = logging.getLogger(__name__)

MODELS_SHOWN = 10
FIND_SHOWN = 5
FIND_MAX = 20


def admin_store(settings: Settings | None = None) -> ModelStore:
    """The store, with a lock wait well inside the admin job's time limit."""
    return ModelStore.of(settings or Settings(), admin=True)


def _rules(store: ModelStore) -> dict:
    """The live model's token rules, so that a pair accepted here is never refused by the train job."""
    live = store.current()
    found = version_counter(live.path) if live is not None else None
    if found is None:
        return {}
    count, limit, specials = found
    return {"count_tokens": count, "max_tokens": limit, "special_tokens": specials or None}


def add_pair(question: str, answer: str) -> AddPairResult:
    """Add one pair to the current dataset (a question already there gets the new answer); no training."""
    return add_pair_as(Settings(), question, answer)


def add_pair_as(settings: Settings, question: str, answer: str, action: str = "addqa") -> AddPairResult:
    """/addqa and /answer: validate the pair with the live model's rules, merge it, store a new dataset version."""
    store = admin_store(settings)
    with store.lock():
        current = store.current_pairs()  # a deployment with no dataset starts empty: never the sample
        try:
            (pair,) = validate_items([{"prompt": question, "response": answer}], "the new pair", **_rules(store))
        except DatasetError as exc:
            return AddPairResult(question, False, len(current), problems=tuple(_one_pair(p, question) for p in exc.problems))
        if pair in current:  # sent again: a new dataset version would only move the pair (and shift /find's numbers)
            return AddPairResult(pair.prompt, True, len(current), store.current_digest(), unchanged=True)
        merge = merge_pairs(current, [pair])  # a question already there takes the new answer
        digest = store.edit_dataset(merge.pairs, **_who(action))
    logger.info("pair added: dataset %s, %d pairs", digest, len(merge.pairs))
    return AddPairResult(pair.prompt, True, len(merge.pairs), digest, replaced=merge.updated > 0)


TOO_LONG = re.compile(r"(\d+) tokens once formatted, the model's limit is (\d+); shorten it")


def _one_pair(problem: str, question: str) -> str:
    """A validator's problem about a single pair in an admin's words: no "pair 1, '...':", and a length as a share."""
    problem = problem.removeprefix(f"pair 1, {quote(question)}: ").removeprefix("pair 1: ")
    if found := TOO_LONG.fullmatch(problem):
        length, limit = int(found[1]), int(found[2])
        cut = -(-(length - limit) * 100 // length)
        return (
            f"the question and answer come to {length} tokens, over the {limit} the model reads at once: shorten the "
            f"answer by about {cut}% (or split it into two questions)"
        )
    return problem


def _who(action: str) -> dict[str, str]:
    """Where a one-pair edit came from, for the edit journal: the command, the admin, the platform, when."""
    from datetime import UTC, datetime

    from rq import get_current_job

    job = get_current_job()
    reply_to = (job.meta.get("reply_to") if job is not None else None) or {}
    found = {"action": action, "at": datetime.now(UTC).isoformat(timespec="seconds")}
    return found | {k: str(reply_to[v]) for k, v in (("platform", "platform"), ("by", "user")) if reply_to.get(v)}


def forget_pair(question: str) -> EditResult:
    """/forget: remove the pair of a question (matched as /addqa matches: case, spaces and end punctuation folded),
    or the pair of a number /find showed (its place in the current dataset)."""
    store = admin_store()
    wanted = normalize_question(question)
    with store.lock():
        current = store.current_pairs()
        removed = next((p for p in current if normalize_question(p.prompt) == wanted), None)
        number = question.strip().lstrip("#")
        if removed is None and number.isascii() and number.isdecimal():  # a number from /find: the pair's place in the dataset
            if not 1 <= int(number) <= len(current):
                return EditResult(False, question, message=f"the dataset has pairs 1 to {len(current)}; /find shows numbers")
            removed = current[int(number) - 1]
        if removed is None:
            by_folded = {normalize_question(p.prompt): p.prompt for p in current}
            close = difflib.get_close_matches(wanted, list(by_folded), n=3, cutoff=0.6)
            return EditResult(False, question, suggestions=tuple(by_folded[c] for c in close))  # unknown: no message
        twins = normalize_question(removed.prompt)  # the same question worded alike ("Who is X?", "who is x") goes too
        kept = [p for p in current if p != removed and normalize_question(p.prompt) != twins]
        digest = store.edit_dataset(kept, **_who("forget"))
    logger.info("pair forgotten: dataset %s, %d pairs", digest, len(kept))
    return EditResult(True, removed.prompt, removed.response, len(kept), digest)


def undo_edit() -> EditResult:
    """/undo: take back the last one-pair edit (/addqa, /answer, /forget, or an undo) not yet undone."""
    store = admin_store()
    with store.lock():
        edits = store.edits()
        undone = {int(e["undoes"]) for e in edits if "undoes" in e}
        last = next((i for i in range(len(edits) - 1, -1, -1) if i not in undone and "undoes" not in edits[i]), None)
        if last is None:
            return EditResult(False, message="there is no edit to undo (/addqa, /answer and /forget are undoable)")
        edit = edits[last]
        questions = [q for q, _ in edit.get("added", []) or edit.get("removed", [])]
        what = f"{edit.get('action', 'edit')} of '{questions[0] if questions else '?'}'"
        current = store.current_pairs()
        if changed := _changed_since(current, edit):
            return EditResult(
                False,
                what,
                message=f"the last edit, the {what}, is no longer in effect: '{changed}' was changed since (by an upload or "
                "a rollback); use /addqa or /forget to set it as it should be",
            )
        inverse = {"added": edit.get("removed", []), "removed": edit.get("added", [])}
        pairs = replay(current, [inverse])
        digest = store.edit_dataset(pairs, **_who("undo"), undoes=str(last))
    logger.info("edit %d undone: dataset %s, %d pairs", last, digest, len(pairs))
    return EditResult(True, what, pairs=len(pairs), dataset=digest)


def _changed_since(current: list[QAPair], edit: dict) -> str | None:
    """A question of `edit` whose pair is not as the edit left it (an upload or a rollback changed it since), or None:
    an undo then would overwrite that later change."""
    now = {normalize_question(p.prompt): p for p in current}
    for question, answer in edit.get("added", []):
        if now.get(normalize_question(question)) != QAPair(question, answer):
            return question
    added = {normalize_question(q) for q, _ in edit.get("added", [])}
    for question, _ in edit.get("removed", []):
        if normalize_question(question) not in added and normalize_question(question) in now:
            return question
    return None


def provenance(store: ModelStore, pairs: list[QAPair]) -> dict[QAPair, dict[str, str]]:
    """Where each pair came from (engine.datastore provenance: the upload's file or fields, or the one-pair edit),
    else the file the live version learnt it from (`source`)."""
    known = store.provenance()
    live = store.current()
    source = str(live.meta.get("dataset", {}).get("source") or "") if live is not None else ""
    return {p: known.get(pair_key(p)) or ({"source": source} if source else {}) for p in pairs}


def find_pairs(query: str, limit: int = FIND_SHOWN) -> FindResult:
    """/find: the pairs nearest to `query` in the index the answers use, with where each came from."""
    from worker.lookup import current_index, find, live_embedder

    store = admin_store()
    embedder = live_embedder(store)
    index = current_index(store, embedder)
    origin = provenance(store, index.pairs) if index is not None else {}
    found = find(index, embedder, query, max(1, min(limit, FIND_MAX)), origin)
    return FindResult(query, found, len(index.pairs) if index is not None else 0, store.current_digest())


def export_dataset() -> ExportResult:
    """/export: the current dataset, in the upload format; provenance rides in optional fields that training ignores,
    so export -> edit -> /retrain replace changes exactly what was edited."""
    store = admin_store()
    with store.lock():
        pairs, digest = store.current_pairs(), store.current_digest()
        origin = provenance(store, pairs)
    rows = [{"prompt": p.prompt, "response": p.response, **origin.get(p, {})} for p in pairs]
    data = json.dumps(rows, ensure_ascii=False, indent=1).encode("utf-8")
    return ExportResult(data, len(pairs), f"dataset-{digest or 'none'}.json", digest)


def list_models() -> ModelsResult:
    """The last versions, the live one marked."""
    store = admin_store()
    live = store.current_name()
    rows = []
    for info in store.list()[-MODELS_SHOWN:]:
        metrics = info.meta.get("metrics", {})
        accuracy = {k.removesuffix("_accuracy"): float(v) for k, v in metrics.items() if k.endswith("_accuracy")}
        rows.append(ModelRow(info.name, info.created_at, info.meta.get("dataset", {}).get("pairs"), accuracy, info.name == live))
    return ModelsResult(tuple(rows))


def rollback(version: str | None = None) -> RollbackResult:
    """Make the previous (or a named) version live again."""
    store = admin_store()
    try:
        info = store.rollback(version or None)
    except QabotError as exc:
        return RollbackResult(False, None, str(exc))
    return RollbackResult(True, info.name, pairs=len(store.current_pairs()))


def status() -> StatusReport:
    """Live model and datasets, queues, workers, a running fine-tune."""
    from rq import get_current_job

    from worker.client import QueueClient
    from worker.status import collect

    settings = Settings()
    job = get_current_job()
    client = QueueClient(settings, job.connection if job else None)
    return collect(settings, client, admin_store(settings), inside=job.origin if job else None)
