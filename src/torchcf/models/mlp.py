"""NCF's MLP: ``score = hᵀ tower([p_u; q_i]) + b``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from torchcf.models.base import (
    Choice,
    FloatRange,
    ModelConfig,
    ModelSpec,
    Param,
    ScoringModel,
    factors_setting,
    init_std_setting,
)
from torchcf.models.layers import (
    KernelLayout,
    head,
    init_embedding,
    tower,
    tower_layout,
    tower_output,
    tower_scores,
)
from torchcf.native import bf16_products
from torchcf.settings import below_one, between, setting

__all__ = ["FAST", "MLP", "MLPConfig", "SPEC", "TOWER_SEARCH", "TowerConfig", "TowerModel"]


@dataclass(frozen=True)
class TowerConfig(ModelConfig):
    """The settings of a model with an MLP tower (MLP, NeuMF)."""

    embedding_dim: int = factors_setting(32)
    layers: int = setting(3, "MLP/NeuMF tower layers", check=between(1, 12))
    # without dropout the tower overfits after ~6-9 epochs; with 0.2 it keeps improving at the
    # paper's batch 256 (benchmarks/RESULTS.md, issue 3)
    dropout: float = setting(0.2, "MLP/NeuMF dropout after each tower layer", check=below_one)
    init_std: float = init_std_setting(0.01)


@dataclass(frozen=True)
class MLPConfig(TowerConfig):
    owner: ClassVar[str] = "mlp"


class TowerModel(ScoringModel):
    """Shared shape of the models with an MLP tower: factors, layers, dropout, init."""

    blocked_scoring = True  # score_all in eval: ``layers.tower_scores``, blocks of pairs

    def _settings(self, config: TowerConfig) -> None:
        self.config = config
        self.embedding_dim = config.embedding_dim
        self.layers = config.layers
        self.dropout = config.dropout
        self.init_std = config.init_std
        self.width = config.embedding_dim * 2 ** (config.layers - 1)  # an MLP table's row


class MLP(TowerModel):
    """NCF's MLP: ``score = hᵀ tower([p_u; q_i]) + b``.

    Embeddings of size ``embedding_dim · 2^(layers-1)`` each; ``layers`` ReLU layers halve the width
    down to ``embedding_dim`` (the predictive factors); xavier-uniform layers, a linear head
    initialised like GMF's; optional dropout after each layer.
    """

    name = "mlp"
    Config = MLPConfig

    def __init__(
        self,
        num_users: int,
        num_items: int,
        config: MLPConfig | None = None,
        *,
        generator: torch.Generator | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(num_users, num_items)
        self._settings(self.make_config(config, settings))
        width = self.width
        self.pair_width = 4 * width
        self.user_embedding = nn.Embedding(num_users, width)
        self.item_embedding = nn.Embedding(num_items, width)
        init_embedding(self.user_embedding.weight, self.init_std, generator)
        init_embedding(self.item_embedding.weight, self.init_std, generator)
        self.tower = tower(2 * width, self.embedding_dim, self.layers, self.dropout, generator)
        self.head = head(self.embedding_dim, generator)

    def features(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The tower's output ``(..., embedding_dim)`` for broadcast ``users`` and ``items``."""
        return tower_output(self.tower, self.user_embedding, self.item_embedding, users, items)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.features(users, items) @ self.head.weight[0] + self.head.bias[0]

    def score_all(self, users: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        if torch.is_grad_enabled() or self.training:
            return super().score_all(users, chunk)
        tower = tower_scores(
            self.tower, self.user_embedding, self.item_embedding, users, self.head.weight[0]
        )
        return tower + self.head.bias[0]

    def item_vectors(self) -> torch.Tensor | None:
        return self.item_embedding.weight

    def kernel_layout(self) -> KernelLayout | None:
        return tower_layout(self.tower, (self.user_embedding, self.item_embedding), self.head)


TOWER_SEARCH: dict[str, Param] = {
    "learning_rate": FloatRange(3e-4, 3e-3, log=True),
    "dropout": FloatRange(0.0, 0.5),
    "batch_size": Choice((512, 1024, 2048)),
}

# --fast, chosen on the validation holdout among batch-16384 and 4096 recipes
# (benchmarks/RESULTS.md, issue 17): five negatives gave the best validation HR, fewer lose more
# per epoch than they save; with bfloat16 products 20 epochs fit where 14 did (validation HR
# 0.8137 against 0.8065); longer runs, lower rates, more dropout and batch 4096 did not do better
FAST: dict[str, Any] = {
    "batch_size": 16384,
    "learning_rate": 0.005,
    "beta1": 0.8,
    "beta2": 0.95,
    "lr_schedule": "cosine",
    "epochs": 20,
    "num_negatives": 5,
    "dropout": 0.1,
    # no prefetch: drawing the next epoch beside the kernel slows its two threads
    "prefetch": False,
    # bfloat16 products where the CPU has them in hardware (~1.5x the epochs in the same time)
    "amp": bf16_products(),
}

SPEC = ModelSpec(
    MLP,
    "NCF's MLP tower over [p_u; q_i]",
    defaults={"epochs": 20},  # validation picked 19 of 25 (benchmarks/RESULTS.md)
    recipes={"fast": FAST},
    search=TOWER_SEARCH,
)
