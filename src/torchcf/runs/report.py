"""Run reports: the learning-curve figure."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from torchcf.io import atomic_path

if TYPE_CHECKING:
    from torchcf.training.trainer import EpochRecord

__all__ = ["write_learning_curve"]


def write_learning_curve(
    path: str | Path,
    history: Sequence[EpochRecord],
    k: int,
    title: str,
    selected_epoch: int | None = None,
) -> None:
    """The two metrics of every epoch at k (HR and NDCG, or for held-out sets the selecting
    metric and its partner) per epoch (test solid, validation dashed) in two panels, as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    epochs = [r.epoch for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    names = list(history[0].metrics["test"]) if history else ["hr", "ndcg"]
    for ax, metric in zip(axes, names, strict=True):
        ax.plot(epochs, [r.metrics["test"][metric] for r in history], "o-", label="test")
        if history and "validation" in history[0].metrics:
            values = [r.metrics["validation"][metric] for r in history]
            ax.plot(epochs, values, "s--", label="validation")
        if selected_epoch is not None:
            ax.axvline(
                selected_epoch,
                color="grey",
                linestyle=":",
                label=f"selected (epoch {selected_epoch})",
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{metric.upper()}@{k}")
        ax.set_title(f"{metric.upper()}@{k}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
