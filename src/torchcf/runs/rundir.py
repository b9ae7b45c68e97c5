"""The run directory: one schema for every file a run writes and reads back.

::

    RUN/config.json          RunConfig: the recipe (model, its settings, training, split), the
                             data, where it came from, pretraining / blend parts, command, versions
    RUN/metrics.csv          one row per epoch: loss, each holdout's metrics at k, seconds
    RUN/metrics.json         the summary: selected epoch and its metrics, best test epoch,
                             full ranking, protocol, timings
    RUN/learning_curve.png   the metrics per epoch, selected epoch marked
    RUN/per_user.parquet     the selected epoch per evaluated user, holdout (test, validation)
                             and protocol (sampled, full): the held-out item's rank and its
                             HR/NDCG contributions at k, with the users' and items' own ids
    RUN/model/               the saved model (``torchcf.serving.persistence``)
    RUN/checkpoint.pt        the trainer's checkpoint while a run is under way
    RUN/pretrain/{gmf,mlp}/  the runs a pretrained NeuMF starts from

No other module spells these file names or the summary's metric keys (``hr@10``...): they read
and write through ``RunDir``, ``RunConfig`` and ``metric_key``. Every file is written atomically.
"""

from __future__ import annotations

import csv
import json
import platform
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import torchcf
from torchcf.data.interactions import IdMap, Interactions
from torchcf.data.sources import DataSpec
from torchcf.data.split import SplitConfig
from torchcf.errors import ConfigError, DataError
from torchcf.evaluation.metrics import metric_key
from torchcf.io import atomic_open, atomic_path, write_json
from torchcf.models.registry import SPECS
from torchcf.training.config import Recipe, TrainConfig
from torchcf.training.trainer import METRICS, EpochRecord

__all__ = ["HOLDOUT_PREFIX", "RunConfig", "RunDir", "metric_key", "metrics_at", "versions"]

# metrics.csv's column prefix per holdout: test_hr@10, val_hr@10
HOLDOUT_PREFIX = {"test": "test", "validation": "val"}


def metrics_at(values: Mapping[str, float], k: int) -> dict[str, float]:
    """``{"hr": x, "ndcg": y}`` as the summary's keys at ``k``: ``{"hr@10": x, ...}``."""
    return {metric_key(name, k): value for name, value in values.items()}


def versions() -> dict[str, str]:
    """Software versions recorded with every result."""
    return {
        "torchcf": torchcf.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


@dataclass(frozen=True)
class RunConfig:
    """What ``config.json`` holds. ``recipe`` is None for a blend (made of trained runs, whose
    parts and weights ``blend`` records); ``split`` is the split either way."""

    model: str
    split: SplitConfig
    data: DataSpec
    recipe: Recipe | None = None
    source: dict[str, Any] = field(default_factory=dict)
    pretrained: dict[str, Any] | None = None
    blend: dict[str, Any] | None = None
    command: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    fingerprint: str | None = None  # the split's identity by content (Split.fingerprint)

    def to_dict(self) -> dict[str, Any]:
        recipe = self.recipe.to_dict() if self.recipe is not None else {"model": self.model}
        return {
            **recipe,
            "split": self.split.to_dict(),
            "data": self.data.to_dict(),
            "source": self.source,
            "pretrained": self.pretrained,
            "blend": self.blend,
            "command": self.command,
            "versions": self.versions,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunConfig:
        if "model_config" not in values and isinstance(values.get("train"), dict):
            values = _from_flat(values)  # a run written before per-model configs
        model = values["model"]
        recipe = (
            None if model not in SPECS or not SPECS[model].trainable else (Recipe.from_dict(values))
        )
        return cls(
            model=model,
            split=SplitConfig.from_dict(values["split"]),
            data=DataSpec(**values["data"]),
            recipe=recipe,
            source=values.get("source") or {},
            pretrained=values.get("pretrained"),
            blend=values.get("blend"),
            command=list(values.get("command") or []),
            versions=dict(values.get("versions") or {}),
            fingerprint=values.get("fingerprint"),
        )


def _from_flat(values: Mapping[str, Any]) -> dict[str, Any]:
    """A config.json with one flat ``train`` dict (every setting of every model) as today's
    parts: the model's settings, the training settings and the split's; the rest (settings the
    model never took) dropped, as they were then."""
    flat = dict(values["train"])
    model = flat.pop("model")
    split = {n: flat[n] for n in SplitConfig.field_names() if n in flat}
    out = {**values, "model": model, "split": split}
    if model in SPECS and SPECS[model].trainable:
        own = SPECS[model].config.field_names()
        out["model_config"] = {n: flat[n] for n in own if flat.get(n) is not None}
        out["train"] = {n: flat[n] for n in TrainConfig.field_names() if n in flat}
    return out


class RunDir:
    """A run directory's files, by role."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def history_file(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def summary_file(self) -> Path:
        return self.path / "metrics.json"

    @property
    def curve_file(self) -> Path:
        return self.path / "learning_curve.png"

    @property
    def per_user_file(self) -> Path:
        return self.path / "per_user.parquet"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    def pretrain(self, part: str) -> RunDir:
        """The run directory of a pretraining part (``gmf``, ``mlp``) of this NeuMF run."""
        return RunDir(self.path / "pretrain" / part)

    # -- lifecycle ----------------------------------------------------------------------------
    def prepare(self, resume: bool, overwrite: bool) -> None:
        """Make room for a run: ``resume`` keeps everything, ``overwrite`` clears what is there
        (pretraining runs stay: they may be reused), otherwise an existing run is an error."""
        keep = {"pretrain"}
        existing = (
            [p for p in self.path.iterdir() if p.name not in keep] if self.path.exists() else []
        )
        if existing and not resume:
            if not overwrite:
                raise ConfigError(
                    f"output directory {self.path} exists; use --resume, --overwrite or "
                    "another --out"
                )
            for path in existing:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        if resume and not self.checkpoint.exists():
            raise ConfigError(f"nothing to resume: {self.checkpoint} does not exist")
        if resume:  # a killed writer's temporary files (never a run's file): cleared
            for stale in self.path.glob(".*.tmp"):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()

    def is_finished(self, config: RunConfig) -> bool:
        """Does this directory hold a finished run of the same recipe, data and pretraining?"""
        try:
            saved = self.read_config()
        except DataError:
            return False
        return (
            self.summary_file.exists()
            and (self.model_dir / "config.json").exists()
            and saved.recipe == config.recipe
            and saved.data.to_dict() == config.data.to_dict()
            and saved.pretrained == config.pretrained
        )

    # -- config.json ----------------------------------------------------------------------------
    def write_config(self, config: RunConfig) -> None:
        write_json(self.config_file, config.to_dict())

    def read_config(self) -> RunConfig:
        try:
            return RunConfig.from_dict(json.loads(self.config_file.read_text()))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"{self.path} is not a torchcf run directory ({type(exc).__name__}: {exc})"
            ) from None

    # -- metrics.json ---------------------------------------------------------------------------
    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_json(self.summary_file, summary)

    def read_summary(self) -> dict[str, Any]:
        try:
            summary: dict[str, Any] = json.loads(self.summary_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{self.summary_file}: cannot read ({exc})") from None
        return summary

    # -- per_user.parquet ------------------------------------------------------------------------
    def write_per_user(self, rows: pd.DataFrame, train: Interactions) -> None:
        """``rows`` (``evaluation.protocols.per_user``'s or, for held-out sets,
        ``evaluation.sets.per_user_table``'s, concatenated) with the users' and items' external
        ids added (``user_id``, and ``item_id`` where a row is one held-out item), written
        atomically."""
        users = train.user_map or IdMap.identity(train.num_users)
        items = train.item_map or IdMap.identity(train.num_items)
        table = rows.reset_index(drop=True).assign(
            user_id=_id_column(users, rows["user"].to_numpy())
        )
        if "item" in rows:
            table["item_id"] = _id_column(items, rows["item"].to_numpy())
        with atomic_path(self.per_user_file) as tmp:
            table.to_parquet(tmp, index=False)

    def read_per_user(self) -> pd.DataFrame:
        try:
            return pd.read_parquet(self.per_user_file)
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.per_user_file}: cannot read ({exc})") from None

    # -- metrics.csv ----------------------------------------------------------------------------
    def write_history(self, history: Sequence[EpochRecord], k: int) -> None:
        rows = history_rows(history, k)
        with atomic_open(self.history_file) as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["epoch"])
            writer.writeheader()
            writer.writerows(rows)

    def read_history(self) -> list[dict[str, str]]:
        with open(self.history_file, encoding="utf-8") as handle:
            return list(csv.DictReader(handle))


def _id_column(ids: IdMap, index: np.ndarray) -> np.ndarray:
    """External ids of dense ``index`` as one Parquet-friendly column (integers or text)."""
    values = ids.to_id(index)
    return values if values.dtype.kind in "iu" else values.astype(str)


def history_column(holdout: str, name: str, k: int) -> str:
    """metrics.csv's column of metric ``name`` on ``holdout``: ``test_hr@10``, ``val_ndcg@10``."""
    return f"{HOLDOUT_PREFIX[holdout]}_{metric_key(name, k)}"


def history_rows(history: Sequence[EpochRecord], k: int) -> list[dict[str, object]]:
    """One dict per epoch: epoch, loss, every holdout's every metric, seconds."""
    rows: list[dict[str, object]] = []
    for r in history:
        row: dict[str, object] = {"epoch": r.epoch, "loss": round(r.loss, 6)}
        names = list(r.metrics.get("test") or METRICS)  # the selecting metric first
        for holdout in HOLDOUT_PREFIX:
            values = r.metrics.get(holdout)
            for name in names:
                value = None if values is None else round(values[name], 6)
                row[history_column(holdout, name, k)] = value
        row["train_seconds"] = round(r.train_seconds, 3)
        row["eval_seconds"] = round(r.eval_seconds, 3)
        rows.append(row)
    return rows


__all__ += ["history_column", "history_rows"]
