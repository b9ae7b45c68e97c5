"""Item-based k nearest neighbours with cosine similarity."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from torchcf.data.interactions import Interactions
from torchcf.models.base import FITTED_TRAINING, FloatRange, IntRange, ModelConfig, ModelSpec
from torchcf.models.baselines.history import HistoryModel
from torchcf.settings import between, setting

__all__ = ["SPEC", "ItemKNN", "ItemKNNConfig"]


@dataclass(frozen=True)
class ItemKNNConfig(ModelConfig):
    owner: ClassVar[str] = "itemknn"
    neighbours: int = setting(
        100, "item-kNN: neighbours kept per item", check=between(1, 10_000_000)
    )
    shrink: float = setting(0.0, "item-kNN: similarity shrinkage", check=between(0, 1e12))


class ItemKNN(HistoryModel):
    """Item-based kNN: cosine similarity of item columns, each item's ``neighbours`` most
    similar items kept, ``score(u, j) = Σ_{i ∈ X_u} sim(i, j)``; ``shrink`` damps the
    similarity of rarely co-occurring items: ``XᵢᵀXⱼ / (‖Xᵢ‖‖Xⱼ‖ + shrink)``."""

    name = "itemknn"
    Config = ItemKNNConfig

    def fit_epoch(self, train: Interactions, epoch: int) -> float:
        co = self._fit_history(train).float()
        norms = co.diagonal().sqrt()
        sim = co / (norms[:, None] * norms[None, :] + self.config.shrink + 1e-12)
        sim.diagonal().zero_()
        keep = min(self.config.neighbours, self.num_items - 1)
        top = torch.topk(sim, keep, dim=0)  # each target item j keeps its top source items i
        pruned = torch.zeros_like(sim)
        pruned.scatter_(0, top.indices, top.values)
        self.weights = pruned
        return math.nan


SPEC = ModelSpec(
    ItemKNN,
    "item-based kNN, cosine similarity",
    search={"neighbours": IntRange(10, 1000, log=True), "shrink": FloatRange(0.0, 100.0)},
    training=FITTED_TRAINING,
)
