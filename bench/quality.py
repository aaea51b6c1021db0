"""Answer quality of the bundled model with default settings, measured by `qabot eval`.

Trains with `qabot train` (defaults) in a fresh QABOT_HOME unless --home already holds a live model,
then runs `qabot eval` and checks the targets: at least 95% of training questions and 70% of the
held-out paraphrases answered with the right fact, and no answer running to the token limit.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine

TARGETS = {"training": 0.95, "heldout": 0.70}
LINE = re.compile(r"^(v\d+) (training|heldout): ([\d.]+)% right \((\d+)/(\d+)\), (\d+) ran to the token limit")


def qabot(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "qabot", *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"qabot {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="QABOT_HOME with a trained model (default: train one in a temp folder)")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="qabot-quality-"))
    env = {k: v for k, v in os.environ.items() if k not in {"QABOT_BASE_MODEL", "QABOT_DATASET", "QABOT_EVAL_DATA"}}
    env["QABOT_HOME"] = str(home)
    print(f"machine: {machine()}")
    if not (home / "models" / "current").exists():
        # Reuse the converted bundled model if the default home has one.
        default_cache = Path.home() / ".qabot" / "cache"
        if default_cache.is_dir() and not (home / "cache").exists():
            (home / "cache").parent.mkdir(parents=True, exist_ok=True)
            os.symlink(default_cache, home / "cache")
        started = time.monotonic()
        qabot(env, "train")
        print(f"qabot train (defaults): {time.monotonic() - started:.0f} s")
    report = qabot(env, "eval")
    failed = False
    for line in report.splitlines():
        match = LINE.match(line.strip())
        if not match:
            continue
        _, name, _pct, right, total, runaway = match.groups()
        accuracy = int(right) / int(total)
        ok = accuracy >= TARGETS[name] and int(runaway) == 0
        failed |= not ok
        print(
            f"{name}: {accuracy:.1%} ({right}/{total}), target {TARGETS[name]:.0%}, ratio {accuracy / TARGETS[name]:.2f}; "
            f"{runaway} ran to the token limit: {'PASS' if ok else 'FAIL'}"
        )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
