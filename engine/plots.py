"""The loss curve saved beside a version's metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_training(log_history: list[dict[str, Any]], path: Path, title: str = "Fine-tuning") -> Path:
    """Training loss per step and answer accuracy per evaluated epoch, as a PNG."""
    steps = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    accuracy = {
        key: [(e["epoch"], e[key]) for e in log_history if key in e and "epoch" in e]
        for key in sorted({k for e in log_history for k in e if k.endswith("_accuracy")})
    }
    fig, loss_ax = plt.subplots(figsize=(7, 4), dpi=100)
    if steps:
        loss_ax.plot([s for s, _ in steps], [v for _, v in steps], color="tab:blue", lw=1.2, label="training loss")
    held = [(e["step"], e["heldout_loss"]) for e in log_history if "heldout_loss" in e and "step" in e]
    if held:
        loss_ax.plot([s for s, _ in held], [v for _, v in held], "s--", color="tab:purple", label="held-out loss")
        loss_ax.legend(loc="upper right")
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss (answer tokens)", color="tab:blue")
    loss_ax.set_title(title)
    if any(accuracy.values()) and steps:
        acc_ax = loss_ax.twinx()
        last_step, epochs = steps[-1][0], max((e.get("epoch", 0) for e in log_history), default=1) or 1
        for key, points in accuracy.items():
            acc_ax.plot(
                [ep / epochs * last_step for ep, _ in points], [v for _, v in points], marker="o", label=key.replace("_", " ")
            )
        acc_ax.set_ylim(0, 1.02)
        acc_ax.set_ylabel("answer accuracy")
        acc_ax.legend(loc="center right")
    loss_ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
