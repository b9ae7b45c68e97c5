"""Item-based k nearest neighbours with cosine similarity."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from torchcf.data.interactions import Interactions
from torchcf.models.base import FITTED_TRAINING, FloatRange, IntRange, ModelConfig, ModelSpec
from torchcf.models.baselines import history
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
        keep = min(self.config.neighbours, self.num_items - 1)
        if self.num_items > history.FLOAT64_UP_TO:
            self.weights = self._blocked(train, keep)
            return math.nan
        co = self._fit_history(train).float()
        norms = co.diagonal().sqrt()
        sim = co / (norms[:, None] * norms[None, :] + self.config.shrink + 1e-12)
        sim.diagonal().zero_()
        top = torch.topk(sim, keep, dim=0)  # each target item j keeps its top source items i
        pruned = torch.zeros_like(sim)
        pruned.scatter_(0, top.indices, top.values)
        self.weights = pruned
        return math.nan

    def _blocked(self, train: Interactions, keep: int) -> torch.Tensor:
        """The same weights for a large catalogue: co-occurrences in float32, similarities
        and their top ``keep`` per target item a block of columns at a time (two items × items
        matrices alive instead of five)."""
        co = self._fit_history(train, np.float32)
        norms = co.diagonal().clone().sqrt_()
        pruned = torch.zeros(co.shape, dtype=co.dtype)  # C order: rows of W are read whole
        width = max(1, 2**26 // self.num_items)
        for lo in range(0, self.num_items, width):
            hi = min(lo + width, self.num_items)
            scale = norms[:, None] * norms[None, lo:hi] + self.config.shrink + 1e-12
            sim = co[:, lo:hi] / scale
            sim[torch.arange(lo, hi), torch.arange(hi - lo)] = 0.0
            top = torch.topk(sim, keep, dim=0)
            pruned[:, lo:hi].scatter_(0, top.indices, top.values)
        return pruned


SPEC = ModelSpec(
    ItemKNN,
    "item-based kNN, cosine similarity",
    search={"neighbours": IntRange(10, 1000, log=True), "shrink": FloatRange(0.0, 100.0)},
    training=FITTED_TRAINING,
)
