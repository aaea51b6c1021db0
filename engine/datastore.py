"""Dataset versions in the model store: each dataset kept once under its hash, `datasets/current` names the newest.

No torch in this module.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from qabot.dataset import QAPair, dataset_hash, pairs_to_json
from qabot.errors import VersionError


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

    def index_path(self, digest: str) -> Path:
        """Where the retrieval index of a stored dataset version lives (beside it)."""
        return self.datasets_dir / f"{digest}.index.safetensors"

    def current_pairs(self) -> list[QAPair]:
        """The pairs of the current dataset (empty when there is none yet)."""
        path = self.current_dataset()
        return read_stored(path) if path is not None else []

    def set_current_dataset(self, digest: str) -> None:
        with self.lock():
            if not (self.datasets_dir / f"{digest}.json").is_file():
                raise VersionError(f"no stored dataset {digest}")
            write_atomic(self.datasets_dir / "current", digest + "\n")

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
