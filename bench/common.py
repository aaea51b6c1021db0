"""Shared set-up for the benchmarks: the machine they ran on and the bundled model."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from qabot.settings import Settings


def quiet() -> None:
    """Keep library progress bars and warnings out of the figures."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}"


def settings() -> Settings:
    return Settings()


def bundled_folder(settings: Settings) -> Path:
    from engine.models import ensure_bundled

    return ensure_bundled(settings.cache_dir)


def baseline_tree(rev: str) -> Path:
    """A checkout of `rev` (a detached git worktree in a temporary folder): the code that a "before" figure runs, in
    the same run as the "after" one. Run with PYTHONPATH (and cwd) set to it, Python imports qabot from there."""
    import atexit
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parent.parent
    tree = Path(tempfile.mkdtemp(prefix=f"qabot-{rev[:12]}-"))
    subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", "-f", str(tree), rev], check=True, capture_output=True)
    remove = ["git", "-C", str(root), "worktree", "remove", "--force", str(tree)]
    atexit.register(subprocess.run, remove, capture_output=True)  # the checkout lives as long as the bench
    return tree
