"""Model versions on disk: one folder per fine-tune, a `current` pointer switched atomically.

Only workers (and the CLI on the GPU host) write here. Every read-modify-write of the pointers, the
history and the dataset versions holds the store's file lock, so concurrent changes are never lost.
No torch in this module: the admin worker uses it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from engine.datastore import DatasetVersions, read_stored, write_atomic
from engine.loadcheck import check_loadable
from qabot.errors import VersionError

__all__ = ["METADATA_FILE", "ModelStore", "VersionInfo", "read_stored"]

logger = logging.getLogger(__name__)

METADATA_FILE = "qabot.json"
VERSION_RE = re.compile(r"^v(\d{4,})$")
STAGING_PREFIX = ".staging-"
OWNER_FILE = ".owner"
LOCK_TIMEOUT_S = 120


@dataclass(frozen=True)
class VersionInfo:
    """A saved model version and what is known about it."""

    name: str
    path: Path
    meta: dict[str, Any]

    @property
    def created_at(self) -> str:
        return str(self.meta.get("created_at", ""))


class ModelStore(DatasetVersions):
    """Versions live in `root/versions/vNNNN`; `root/current` names the live one."""

    def __init__(self, root: Path, lock_timeout: float = LOCK_TIMEOUT_S) -> None:
        self.root = root
        self.versions_dir = root / "versions"
        self.datasets_dir = root / "datasets"
        self.runs_dir = root / "runs"
        self.pointer = root / "current"
        self.history_file = root / "history.json"
        self._lock = FileLock(str(root / ".lock"), timeout=lock_timeout)
        self.lock_timeout = lock_timeout

    @classmethod
    def of(cls, settings, *, admin: bool = False) -> ModelStore:
        """The store of a deployment's settings (QABOT_HOME/models); `admin`: a lock wait well inside an admin job's
        time limit (a bot waits `admin_wait` for the result). The one way every command and worker opens it."""
        timeout = max(1.0, settings.admin_wait / 2) if admin else LOCK_TIMEOUT_S
        return cls(settings.models_dir, lock_timeout=timeout)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store's lock (re-entrant in one process) for a read-modify-write."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            with self._lock:
                yield
        except Timeout as exc:
            raise VersionError(f"the model store is busy (locked for over {self.lock_timeout:.0f} s); try again") from exc

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
        """A fresh folder to save a model into before `commit` makes it a version; its name says who made it."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        owner = f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-"
        return Path(tempfile.mkdtemp(prefix=owner, dir=self.versions_dir))

    def clean_staging(self) -> list[str]:
        """Remove staging folders and run folders (epoch checkpoints) of runs that died on this host."""
        removed = []
        staged = self.versions_dir.glob(f"{STAGING_PREFIX}*") if self.versions_dir.is_dir() else []
        for path in staged:
            if _dead_here(path.name.removeprefix(STAGING_PREFIX).rsplit("-", 1)[0]):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
        runs = self.runs_dir.iterdir() if self.runs_dir.is_dir() else []
        for path in runs:
            if not _running(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(f"runs/{path.name}")
        if removed:
            logger.info("removed what dead runs left: %s", ", ".join(removed))
        return removed

    def claim_run(self, name: str) -> Path:
        """A run folder (epoch checkpoints) marked as this process's, so that only dead runs' are cleaned."""
        path = self.runs_dir / name
        path.mkdir(parents=True, exist_ok=True)
        (path / OWNER_FILE).write_text(f"{socket.gethostname()}-{os.getpid()}", encoding="utf-8")
        return path

    def commit(self, staging: Path, meta: dict[str, Any], check: Callable[[], None] | None = None) -> VersionInfo:
        """Give a staged model the next version number and write its metadata last; `check()` may refuse, under the lock."""
        created = meta.get("created_at") or datetime.now(UTC).isoformat(timespec="seconds")
        with self.lock():
            if check is not None:
                check()
            taken = [int(m.group(1)) for p in self.versions_dir.iterdir() if (m := VERSION_RE.match(p.name))]
            number = max(taken, default=0) + 1
            while True:  # a store shared by hosts whose locks do not meet must still not reuse a number
                name = f"v{number:04d}"
                version_meta = {**meta, "version": name, "created_at": created}
                write_atomic(staging / METADATA_FILE, json.dumps(version_meta, indent=2, default=str))
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

    def promote(self, name: str, check: Callable[[], None] | None = None) -> VersionInfo:
        """Make `name` the live version, with its notes (`_go_live`); `check()` may refuse, under the lock, and so does
        a version whose files would not load (`check_loadable`): `current` never points at damaged weights."""
        with self.lock():
            if check is not None:
                check()
            info = self.get(name)
            check_loadable(info.name, info.path)
            self._go_live(info)
            history = [n for n in self.history() if n != info.name] + [info.name]
            write_atomic(self.history_file, json.dumps(history))
            return info

    def _go_live(self, info: VersionInfo) -> None:
        """Point at `info` and at its notes: the dataset it was trained on, with the pairs admins added, changed or
        removed one at a time (/addqa, /answer) since its training began replayed onto it. Those edits are carried
        because each was typed on purpose and was live in seconds; what a promotion or rollback moves is a training
        and the dataset it brought (rolling back a replace that dropped pairs brings them back). A version whose
        dataset is not in the store (saved by `qabot train` before datasets were stored) keeps the current one."""
        dataset = info.meta.get("dataset", {})
        trained = str(dataset.get("hash") or "")
        if trained and (self.datasets_dir / f"{trained}.json").is_file():
            self.notes_for(info.name, trained, int(dataset.get("edits_from") or 0))
        self._set_current(info.name)

    def rollback(self, name: str | None = None) -> VersionInfo:
        """Go back to `name`, or to the version that was live before the current one."""
        if name is not None:
            return self.promote(name)
        with self.lock():
            history = [n for n in self.history() if (self.versions_dir / n / METADATA_FILE).is_file()]
            current = self.current_name()
            if current in history:
                history.remove(current)
            if not history:
                raise VersionError("nothing to roll back to: no version was live before the current one")
            previous = self.get(history[-1])
            check_loadable(previous.name, previous.path)
            self._go_live(previous)
            write_atomic(self.history_file, json.dumps(history))
            return previous

    def prune(self, keep_previous: int) -> list[str]:
        """Keep the live version, the `keep_previous` last live before it, and the newest newer candidate; delete
        the rest, then the dataset versions no kept model names (the current dataset always stays)."""
        with self.lock():
            live = self.current_name()
            versions = self.list()
            earlier = [n for n in reversed(self.history()) if n != live][:keep_previous]
            keep = {live, *earlier}
            live_number = int(live[1:]) if live else 0
            candidates = [v.name for v in versions if int(v.name[1:]) > live_number and v.name not in keep]
            if candidates:
                keep.add(candidates[-1])
            removed = []
            for info in versions:
                if info.name not in keep:
                    shutil.rmtree(info.path, ignore_errors=True)
                    removed.append(info.name)
            if removed:
                write_atomic(self.history_file, json.dumps([n for n in self.history() if n not in removed]))
            named = {str(v.meta.get("dataset", {}).get("hash")) for v in self.list()}
            named |= self._training_digests()  # a run still training names its dataset only when it commits
            current = self._current_digest()
            if self.datasets_dir.is_dir():
                for path in self.datasets_dir.glob("*.json"):  # dataset versions only: named by their hex hash
                    if path.stem not in named and path.stem != current and _is_digest(path.stem):
                        path.unlink(missing_ok=True)
                        for index in self.datasets_dir.glob(f"{path.stem}.*index.safetensors"):  # each embedder's
                            index.unlink(missing_ok=True)
                        removed.append(f"datasets/{path.name}")
        if removed:
            logger.info("retention removed %s", ", ".join(removed))
        return removed

    def _training_digests(self) -> set[str]:
        """The datasets of runs still going: a run folder (`claim_run`, named "<digest>-<settings>") whose owner lives,
        or runs on another host. A `qabot train` and a queued fine-tune on one store once pruned each other's."""
        runs = self.runs_dir.iterdir() if self.runs_dir.is_dir() else []
        return {path.name.rsplit("-", 1)[0] for path in runs if _running(path)}

    def _set_current(self, name: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.pointer, name + "\n")


def _is_digest(name: str) -> bool:
    """A stored dataset's file stem (its hash), not one of the store's own files (provenance.json)."""
    return bool(name) and all(c in "0123456789abcdef" for c in name)


def _running(run: Path) -> bool:
    """A run folder whose owner (`claim_run`) is alive here or runs on another host; False for one without an owner."""
    owner = run / OWNER_FILE
    return owner.is_file() and not _dead_here(owner.read_text(encoding="utf-8").strip())


def _dead_here(owner: str) -> bool:
    """True when `owner` ("<host>-<pid>") names a process of this host that has ended."""
    host, _, pid = owner.rpartition("-")
    return host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
