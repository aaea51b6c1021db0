"""Whether a saved version's files would load, checked without loading it (no torch): promotion and rollback refuse a
version that fails, so `current` never points at damaged weights. A full load is the answer worker's to try; this
catches what a disk, a copy or a hand edit breaks: a missing or unreadable config, no weights, a weights file whose
header or length does not hold (safetensors checks the header and that its tensors fill the file exactly)."""

from __future__ import annotations

import json
from pathlib import Path

from qabot.errors import VersionError

WEIGHTS = ("*.safetensors", "pytorch_model*.bin")


def check_loadable(name: str, path: Path) -> None:
    """Raise VersionError naming what is wrong with version `name` at `path`; return if its files hold together."""
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VersionError(f"{name} cannot be loaded: its config.json is missing or damaged ({exc})") from exc
    files = sorted(f for pattern in WEIGHTS for f in path.glob(pattern))
    if not files:
        raise VersionError(f"{name} cannot be loaded: it has no weights file")
    for weights in files:
        if weights.suffix == ".safetensors":
            _check_safetensors(name, weights)


def _check_safetensors(name: str, weights: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="numpy") as opened:  # reads and checks the header, maps no tensor
            opened.keys()
    except Exception as exc:  # safetensors raises its own error types for each kind of damage
        raise VersionError(f"{name} cannot be loaded: {weights.name} is damaged ({exc})") from exc
