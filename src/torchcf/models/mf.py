"""Matrix factorisation (the seed's MF) and BPR-MF: ``score(u, i) = p_u · q_i`` (+ biases)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from torchcf.models.base import (
    FloatRange,
    IntRange,
    ModelConfig,
    ModelSpec,
    Param,
    ScoringModel,
    factors_setting,
    init_std_setting,
)
from torchcf.models.layers import DotLayout, KernelLayout, init_embedding
from torchcf.settings import setting

__all__ = ["BPRMF", "FAST", "MF", "MFConfig", "SPEC", "BPR_SPEC"]


@dataclass(frozen=True)
class MFConfig(ModelConfig):
    owner: ClassVar[str] = "mf"
    embedding_dim: int = factors_setting(32)
    init_std: float = init_std_setting(0.01)
    biases: bool = setting(False, "mf/bpr: add user, item and global biases")


class Factorisation(ScoringModel):
    """A user table and an item table of ``embedding_dim`` columns, N(0, ``init_std``)."""

    matrix_scoring = True

    def _tables(self, embedding_dim: int, std: float, generator: torch.Generator | None) -> None:
        self.embedding_dim = embedding_dim
        self.init_std = std
        self.pair_width = 3 * embedding_dim  # p_u, q_i and their product per scored pair
        self.user_embedding = nn.Embedding(self.num_users, embedding_dim)
        self.item_embedding = nn.Embedding(self.num_items, embedding_dim)
        init_embedding(self.user_embedding.weight, std, generator)
        init_embedding(self.item_embedding.weight, std, generator)

    def item_vectors(self) -> torch.Tensor | None:
        return self.item_embedding.weight


class MF(Factorisation):
    """Matrix factorisation: ``score(u, i) = Σ_f p_uf q_if`` (the seed's MF, a fixed all-ones head).

    Embeddings of size ``embedding_dim`` drawn from N(0, ``init_std``). With ``biases``:
    ``+ b_u + b_i + g`` (zero-initialised user, item and global biases; Rendle et al. 2020).
    """

    name = "mf"
    Config = MFConfig

    def __init__(
        self,
        num_users: int,
        num_items: int,
        config: MFConfig | None = None,
        *,
        generator: torch.Generator | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(num_users, num_items)
        self.config = self.make_config(config, settings)
        self._tables(self.config.embedding_dim, self.config.init_std, generator)
        self.biases = self.config.biases
        if self.biases:
            self.user_bias = nn.Embedding(num_users, 1)
            self.item_bias = nn.Embedding(num_items, 1)
            self.global_bias = nn.Parameter(torch.zeros(()))
            nn.init.zeros_(self.user_bias.weight)
            nn.init.zeros_(self.item_bias.weight)
            self.user_tables = ("user_embedding", "user_bias")

    def _bias(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.user_bias(users)[..., 0] + self.item_bias(items)[..., 0] + self.global_bias

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        dot = (self.user_embedding(users) * self.item_embedding(items)).sum(-1)
        return dot + self._bias(users, items) if self.biases else dot

    def score_all(self, users: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        dot = self.user_embedding(users) @ self.item_embedding.weight.T
        if not self.biases:
            return dot
        return dot + self.user_bias(users) + self.item_bias.weight.T + self.global_bias

    def dot_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``p_u · q_i``; with biases ``[p_u, b_u + g, 1] · [q_i, 1, b_i]``."""
        users, items = self.user_embedding.weight, self.item_embedding.weight
        if not self.biases:
            return users, items
        ones_u, ones_i = users.new_ones(len(users), 1), items.new_ones(len(items), 1)
        user_bias = self.user_bias.weight + self.global_bias
        return (
            torch.cat([users, user_bias, ones_u], 1),
            torch.cat([items, ones_i, self.item_bias.weight], 1),
        )

    def kernel_layout(self) -> KernelLayout | None:
        if self.biases:  # the compiled step has no bias terms
            return None
        return DotLayout(self.user_embedding.weight, self.item_embedding.weight, None)


class BPRMF(MF):
    """BPR-MF: the MF scorer trained with the pairwise BPR loss (its spec's ``loss=bpr``)."""

    name = "bpr"


# The fast mode (``--fast``): large batches with a learning-rate recipe tuned on the validation
# holdout of the ML-1M NCF split (benchmarks/RESULTS.md, "fast mode"): batch 16384 (300 steps an
# epoch instead of 19,400), Adam with shorter memories (β 0.8/0.95), a cosine decay over 12
# epochs, 5 negatives per positive, the next epoch's samples drawn in the background.
FAST: dict[str, Any] = {
    "batch_size": 16384,
    "beta1": 0.8,
    "beta2": 0.95,
    "lr_schedule": "cosine",
    "epochs": 12,
    "num_negatives": 5,
    "prefetch": True,
}

# tuning spaces of the dot-product models (Adam's rate, L2, negatives per positive)
DOT_SEARCH: dict[str, Param] = {
    "learning_rate": FloatRange(1e-4, 1e-2, log=True),
    "weight_decay": FloatRange(1e-9, 1e-5, log=True),
    "num_negatives": IntRange(2, 10),
}

SPEC = ModelSpec(
    MF,
    "matrix factorisation p_u · q_i (the seed's MF)",
    recipes={"fast": {**FAST, "learning_rate": 0.01}},
    search=DOT_SEARCH,
)
BPR_SPEC = ModelSpec(
    BPRMF,
    "MF trained with the pairwise BPR loss −log σ(s⁺ − s⁻)",
    defaults={"loss": "bpr"},
    search=DOT_SEARCH,
)
