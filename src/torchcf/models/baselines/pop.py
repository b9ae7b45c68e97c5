"""Most popular: ``score(u, i) = number of training users of i`` (the same for every user)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from torchcf.data.interactions import Interactions
from torchcf.models.base import FITTED_TRAINING, FittedModel, ModelConfig, ModelSpec

__all__ = ["SPEC", "Pop", "PopConfig"]


@dataclass(frozen=True)
class PopConfig(ModelConfig):
    owner: ClassVar[str] = "pop"


class Pop(FittedModel):
    """Most popular: ``score(u, i) = number of training users of i`` (the same for every user)."""

    name = "pop"
    Config = PopConfig
    user_tables = ()
    counts: torch.Tensor

    def __init__(
        self, num_users: int, num_items: int, config: PopConfig | None = None, **settings: Any
    ) -> None:
        super().__init__(num_users, num_items)
        self.config = self.make_config(config, settings)
        self.register_buffer("counts", torch.zeros(num_items))

    def fit_epoch(self, train: Interactions, epoch: int) -> float:
        counts = np.bincount(train.deduplicate().items, minlength=self.num_items)
        self.counts.copy_(torch.as_tensor(counts, dtype=torch.float32))
        return math.nan

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        users, items = torch.broadcast_tensors(users, items)
        return self.counts[items]

    def score_all(self, users: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        return self.counts.expand(len(users), -1).clone()

    def fold_in_scores(self, items: torch.Tensor) -> torch.Tensor:
        return self.counts.clone()


SPEC = ModelSpec(Pop, "most popular items (training interaction counts)", training=FITTED_TRAINING)
