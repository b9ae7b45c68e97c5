"""Run reports: the per-epoch CSV and the learning-curve figure."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from torchcf.io import atomic_open, atomic_path

if TYPE_CHECKING:
    from torchcf.training import EpochRecord

__all__ = ["epoch_rows", "write_learning_curve", "write_metrics_csv"]


def epoch_rows(history: Sequence[EpochRecord], k: int) -> list[dict[str, object]]:
    """One dict per epoch with metric names that carry the cut-off (``test_hr@10``...)."""
    rows: list[dict[str, object]] = []
    for r in history:
        rows.append(
            {
                "epoch": r.epoch,
                "loss": round(r.loss, 6),
                f"test_hr@{k}": round(r.test_hr, 6),
                f"test_ndcg@{k}": round(r.test_ndcg, 6),
                f"val_hr@{k}": None if r.val_hr is None else round(r.val_hr, 6),
                f"val_ndcg@{k}": None if r.val_ndcg is None else round(r.val_ndcg, 6),
                "train_seconds": round(r.train_seconds, 3),
                "eval_seconds": round(r.eval_seconds, 3),
            }
        )
    return rows


def write_metrics_csv(path: str | Path, history: Sequence[EpochRecord], k: int) -> None:
    rows = epoch_rows(history, k)
    with atomic_open(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["epoch"])
        writer.writeheader()
        writer.writerows(rows)


def write_learning_curve(
    path: str | Path,
    history: Sequence[EpochRecord],
    k: int,
    title: str,
    selected_epoch: int | None = None,
) -> None:
    """HR@k and NDCG@k per epoch (test solid, validation dashed) in two panels, as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    epochs = [r.epoch for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, metric in zip(axes, ("hr", "ndcg"), strict=True):
        ax.plot(epochs, [getattr(r, f"test_{metric}") for r in history], "o-", label="test")
        if history and history[0].val_hr is not None:
            ax.plot(
                epochs, [getattr(r, f"val_{metric}") for r in history], "s--", label="validation"
            )
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
