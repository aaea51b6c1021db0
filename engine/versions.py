"""Model versions on disk: one folder per fine-tune, a `current` pointer switched atomically."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qabot.dataset import QAPair, dataset_hash, pairs_to_json
from qabot.errors import VersionError

METADATA_FILE = "qabot.json"
VERSION_RE = re.compile(r"^v(\d{4,})$")


@dataclass(frozen=True)
class VersionInfo:
    """A saved model version and what is known about it."""

    name: str
    path: Path
    meta: dict[str, Any]

    @property
    def created_at(self) -> str:
        return str(self.meta.get("created_at", ""))


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class ModelStore:
    """Versions live in `root/versions/vNNNN`; `root/current` names the live one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions_dir = root / "versions"
        self.datasets_dir = root / "datasets"
        self.runs_dir = root / "runs"
        self.pointer = root / "current"
        self.history_file = root / "history.json"

    # -- reading ----------------------------------------------------------------------------
    def list(self) -> list[VersionInfo]:
        """All complete versions, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        found = []
        for path in self.versions_dir.iterdir():
            if VERSION_RE.match(path.name) and (path / METADATA_FILE).is_file():
                found.append(self._info(path))
        return sorted(found, key=lambda v: int(v.name[1:]))

    def get(self, name: str) -> VersionInfo:
        path = self.versions_dir / name
        if not VERSION_RE.match(name) or not (path / METADATA_FILE).is_file():
            known = ", ".join(v.name for v in self.list()) or "none yet"
            raise VersionError(f"no model version '{name}' (known: {known})")
        return self._info(path)

    def current_name(self) -> str | None:
        """The live version's name, read fresh from disk (cheap enough to poll)."""
        try:
            name = self.pointer.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return name or None

    def current(self) -> VersionInfo | None:
        name = self.current_name()
        return self.get(name) if name else None

    def history(self) -> list[str]:
        """Versions in the order they were made live, most recent last."""
        try:
            return list(json.loads(self.history_file.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return []

    @staticmethod
    def _info(path: Path) -> VersionInfo:
        return VersionInfo(path.name, path, json.loads((path / METADATA_FILE).read_text(encoding="utf-8")))

    # -- writing ----------------------------------------------------------------------------
    def staging_dir(self) -> Path:
        """A fresh folder to save a model into before `commit` makes it a version."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.versions_dir))

    def commit(self, staging: Path, meta: dict[str, Any]) -> VersionInfo:
        """Give a staged model the next version number and write its metadata last."""
        created = meta.get("created_at") or datetime.now(UTC).isoformat(timespec="seconds")
        taken = [int(m.group(1)) for p in self.versions_dir.iterdir() if (m := VERSION_RE.match(p.name))]
        number = max(taken, default=0) + 1
        while True:  # two fine-tunes finishing at once must not take the same number
            name = f"v{number:04d}"
            _write_atomic(
                staging / METADATA_FILE, json.dumps({**meta, "version": name, "created_at": created}, indent=2, default=str)
            )
            target = self.versions_dir / name
            try:
                os.rename(staging, target)  # fails if `target` exists and is not empty
                return self._info(target)
            except OSError:
                if not target.exists():
                    raise
                number += 1

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def promote(self, name: str) -> VersionInfo:
        """Make `name` the live version."""
        info = self.get(name)
        self._set_current(info.name)
        history = [n for n in self.history() if n != info.name] + [info.name]
        _write_atomic(self.history_file, json.dumps(history))
        return info

    def rollback(self, name: str | None = None) -> VersionInfo:
        """Go back to `name`, or to the version that was live before the current one."""
        if name is not None:
            return self.promote(name)
        history = [n for n in self.history() if (self.versions_dir / n / METADATA_FILE).is_file()]
        current = self.current_name()
        if current in history:
            history.remove(current)
        if not history:
            raise VersionError("nothing to roll back to: no version was live before the current one")
        previous = history[-1]
        self._set_current(previous)
        _write_atomic(self.history_file, json.dumps(history))
        return self.get(previous)

    def _set_current(self, name: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.pointer, name + "\n")

    # -- datasets ---------------------------------------------------------------------------
    def current_dataset(self) -> Path | None:
        """The newest dataset version (set by uploads and additions), else the live model's data."""
        try:
            digest = (self.datasets_dir / "current").read_text(encoding="utf-8").strip()
            path = self.datasets_dir / f"{digest}.json"
            if path.is_file():
                return path
        except FileNotFoundError:
            pass
        live = self.current()
        if live is not None and Path(live.meta.get("dataset", {}).get("path", "")).is_file():
            return Path(live.meta["dataset"]["path"])
        return None

    def dataset_file(self, reference: str) -> Path:
        """A dataset reference is the hash of a stored dataset version, or a file path."""
        stored = self.datasets_dir / f"{reference}.json"
        return stored if stored.is_file() else Path(reference)

    def set_current_dataset(self, digest: str) -> None:
        if not (self.datasets_dir / f"{digest}.json").is_file():
            raise VersionError(f"no stored dataset {digest}")
        _write_atomic(self.datasets_dir / "current", digest + "\n")

    def store_dataset(self, pairs: list[QAPair]) -> tuple[str, Path]:
        """Keep a copy of a dataset named by its hash; never overwritten."""
        digest = dataset_hash(pairs)
        path = self.datasets_dir / f"{digest}.json"
        if not path.is_file():
            self.datasets_dir.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, pairs_to_json(pairs))
        return digest, path
