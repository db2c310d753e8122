"""The loss curve of a run (training and evaluation loss over steps) as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def loss_points(log_history: list[dict[str, Any]]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    train = [(int(e["step"]), float(e["loss"])) for e in log_history if "loss" in e and "step" in e]
    evals = [(int(e["step"]), float(e["eval_loss"])) for e in log_history if "eval_loss" in e and "step" in e]
    return train, evals


def plot_loss(log_history: list[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display in a pod
    import matplotlib.pyplot as plt

    train, evals = loss_points(log_history)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot([s for s, _ in train], [v for _, v in train], label="training loss", color="#1f77b4")
    if evals:
        ax.plot([s for s, _ in evals], [v for _, v in evals], "o-", label="evaluation loss", color="#d62728")
    if not train and not evals:
        ax.text(0.5, 0.5, "no loss was logged", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
