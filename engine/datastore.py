"""Dataset versions in the model store: each dataset kept once under its hash, `datasets/current` names the newest.

No torch in this module.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from engine.embedders import LEGACY_EMBEDDER
from qabot.dataset import QAPair, dataset_hash, normalize_question, pair_key, pairs_to_json
from qabot.errors import VersionError
from qabot.merge import merge_pairs

PROVENANCE_FILE = "provenance.json"  # pair key -> where it came from (the optional fields of an export)
PROVENANCE_FIELDS = ("source", "added_with", "added_by", "added_at")
EDITS_FILE = "edits.jsonl"  # pairs admins added, changed or removed one at a time, in order (one edit a line)

logger = logging.getLogger(__name__)


def diff(before: list[QAPair], after: list[QAPair]) -> tuple[list[QAPair], list[QAPair]]:
    """(pairs added, pairs removed) from `before` to `after`; a new answer is its old pair removed and the new added."""
    before_set, after_set = set(before), set(after)
    return [p for p in after if p not in before_set], [p for p in before if p not in after_set]


def replay(pairs: list[QAPair], edits: list[dict]) -> list[QAPair]:
    """`pairs` with `edits` applied in order: each one's removed questions removed, whatever answer they have in
    `pairs` (a /forget made while an upload that changed that answer trained still forgets the question), then its
    added pairs merged in (a question already there takes the new answer)."""
    for edit in edits:
        removed = {normalize_question(q) for q, _ in edit.get("removed", [])}
        added = [QAPair(q, a) for q, a in edit.get("added", [])]
        pairs = merge_pairs([p for p in pairs if normalize_question(p.prompt) not in removed], added).pairs
    return pairs


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step (a reader sees the old or the new file, never part of one)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class DatasetVersions:
    """The dataset half of `engine.versions.ModelStore` (which provides `datasets_dir`, `lock()` and `current()`)."""

    def _current_digest(self) -> str | None:
        try:
            return (self.datasets_dir / "current").read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None

    def current_dataset(self) -> Path | None:
        """The newest dataset version (set by uploads and additions), else the live model's data."""
        digest = self._current_digest()
        if digest and (self.datasets_dir / f"{digest}.json").is_file():
            return self.datasets_dir / f"{digest}.json"
        live = self.current()
        if live is not None and Path(live.meta.get("dataset", {}).get("path", "")).is_file():
            return Path(live.meta["dataset"]["path"])
        return None

    def current_digest(self) -> str | None:
        """The hash of the current dataset when it is a stored version (not a file outside the store)."""
        path = self.current_dataset()
        return path.stem if path is not None and path.parent == self.datasets_dir else None

    def dataset_file(self, reference: str) -> Path:
        """A dataset reference is the hash of a stored dataset version, or a file path."""
        stored = self.datasets_dir / f"{reference}.json"
        return stored if stored.is_file() else Path(reference)

    def index_path(self, digest: str, embedder: str) -> Path:
        """Where the retrieval index of a stored dataset version made by `embedder` lives (beside it; MiniLM's keeps
        the name it had before there was a choice)."""
        embedder = "" if embedder == LEGACY_EMBEDDER else f".{embedder}"
        return self.datasets_dir / f"{digest}{embedder}.index.safetensors"

    def current_pairs(self) -> list[QAPair]:
        """The pairs of the current dataset (empty when there is none yet)."""
        path = self.current_dataset()
        return read_stored(path) if path is not None else []

    def set_current_dataset(self, digest: str) -> None:
        with self.lock():
            if not (self.datasets_dir / f"{digest}.json").is_file():
                raise VersionError(f"no stored dataset {digest}")
            write_atomic(self.datasets_dir / "current", digest + "\n")

    def edits(self) -> list[dict]:
        """Every edit admins made one pair at a time, oldest first (see `edit_dataset`). A line cut off by a crash or
        a full disk as it was written (its edit never became current) is skipped with a warning."""
        try:
            lines = (self.datasets_dir / EDITS_FILE).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        found = []
        for number, line in enumerate(lines, start=1):
            try:
                edit = json.loads(line) if line.strip() else None
            except ValueError:
                edit = {}
            if isinstance(edit, dict) and edit:
                found.append(edit)
            elif edit is not None:
                logger.warning("%s line %d is not a whole edit (cut off as it was written?): skipped", EDITS_FILE, number)
        return found

    def provenance(self) -> dict[str, dict[str, str]]:
        """Where each pair came from, by `pair_key`: the file it was uploaded in (or the fields that file carried,
        as an export writes them), or the one-pair edit that added it; training never reads it."""
        try:
            return dict(json.loads((self.datasets_dir / PROVENANCE_FILE).read_text(encoding="utf-8")))
        except (FileNotFoundError, ValueError):
            return {}

    def note_provenance(self, found: dict[QAPair, dict[str, str]], *, keep: bool = False) -> None:
        """Record where pairs came from; with `keep`, a pair already recorded keeps its record (a re-upload of a pair
        does not make it new)."""
        if not found:
            return
        with self.lock():
            known = self.provenance()
            for pair, fields in found.items():
                key = pair_key(pair)
                if keep and key in known:
                    continue
                known[key] = {k: str(v) for k, v in fields.items() if k in PROVENANCE_FIELDS and v}
            self.datasets_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.datasets_dir / PROVENANCE_FILE, json.dumps(known, ensure_ascii=False))

    def edit_dataset(self, pairs: list[QAPair], **source: str) -> str:
        """Make `pairs` the current dataset as an admin's edit (/addqa, /answer): stored, journaled, current at once.

        The journal is what carries such edits across retraining, promotion and rollback (`notes_for`). Call it
        under the store's lock, with `pairs` computed from `current_pairs()` under that same lock.
        """
        with self.lock():
            added, removed = diff(self.current_pairs(), pairs)
            digest, _ = self.store_dataset(pairs)
            if added or removed or "undoes" in source:  # an undo is journaled even when it changed nothing
                edit = {
                    "added": [[p.prompt, p.response] for p in added],
                    "removed": [[p.prompt, p.response] for p in removed],
                    **source,
                }
                self.datasets_dir.mkdir(parents=True, exist_ok=True)
                with open(self.datasets_dir / EDITS_FILE, "a+b") as handle:
                    if handle.seek(0, os.SEEK_END):
                        handle.seek(-1, os.SEEK_END)
                        if handle.read(1) != b"\n":
                            handle.write(b"\n")  # a line cut off before stays on its own, not glued to this edit
                    handle.write((json.dumps(edit, ensure_ascii=False) + "\n").encode("utf-8"))
                    handle.flush()
                    os.fsync(handle.fileno())
                who = f"{source['platform']}:{source['by']}" if source.get("platform") and source.get("by") else ""
                origin = {"added_with": source.get("action", ""), "added_by": who, "added_at": source.get("at", "")}
                self.note_provenance(dict.fromkeys(added, origin), keep=source.get("action") == "undo")
            self.set_current_dataset(digest)
            return digest

    def notes_for(self, name: str, trained: str, edits_from: int) -> str:
        """Make the dataset version `name` answers from current: the dataset it was trained on (`trained`), with every
        admin edit made after its training began (journal entries from `edits_from` on) replayed onto it. Returns
        the new current dataset's hash. Promotion, rollback and a release's promotion all come here, so a version and
        its notes always move together."""
        with self.lock():
            path = self.datasets_dir / f"{trained}.json"
            if not path.is_file():
                raise VersionError(f"{name} was trained on dataset {trained}, which is no longer in the store")
            digest, _ = self.store_dataset(replay(read_stored(path), self.edits()[edits_from:]))
            self.set_current_dataset(digest)
            return digest

    def store_dataset(self, pairs: list[QAPair]) -> tuple[str, Path]:
        """Keep a copy of a dataset named by its hash; never overwritten."""
        digest = dataset_hash(pairs)
        path = self.datasets_dir / f"{digest}.json"
        if not path.is_file():
            self.datasets_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(path, pairs_to_json(pairs))
        return digest, path


def read_stored(path: Path) -> list[QAPair]:
    """A dataset version this store wrote (validated when it was stored): read as it is, not checked again.

    Rules grow stricter over releases; data accepted by an earlier one must stay usable.
    """
    items = json.loads(path.read_text(encoding="utf-8"))
    return [QAPair(str(item["prompt"]), str(item["response"])) for item in items]
