"""Generalized matrix factorisation (He et al. 2017): ``score(u, i) = hᵀ(p_u ⊙ q_i) + b``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from torchcf.models.base import ModelConfig, ModelSpec, factors_setting, init_std_setting
from torchcf.models.layers import DotLayout, KernelLayout, head
from torchcf.models.mf import DOT_SEARCH, FAST, Factorisation

__all__ = ["FAST_PRETRAIN", "GMF", "GMFConfig", "SPEC"]


@dataclass(frozen=True)
class GMFConfig(ModelConfig):
    owner: ClassVar[str] = "gmf"
    embedding_dim: int = factors_setting(32)
    init_std: float = init_std_setting(0.01)


class GMF(Factorisation):
    """Generalized MF (He et al. 2017): ``score(u, i) = hᵀ(p_u ⊙ q_i) + b``.

    ``h`` initialised kaiming-uniform (a=1, sigmoid gain), ``b`` = 0, embeddings N(0, ``init_std``).
    """

    name = "gmf"
    Config = GMFConfig

    def __init__(
        self,
        num_users: int,
        num_items: int,
        config: GMFConfig | None = None,
        *,
        generator: torch.Generator | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(num_users, num_items)
        self.config = self.make_config(config, settings)
        self._tables(self.config.embedding_dim, self.config.init_std, generator)
        self.head = head(self.config.embedding_dim, generator)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        product = self.user_embedding(users) * self.item_embedding(items)
        return product @ self.head.weight[0] + self.head.bias[0]

    def score_all(self, users: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        weighted = self.user_embedding(users) * self.head.weight[0]
        return torch.addmm(self.head.bias, weighted, self.item_embedding.weight.T)

    def item_vectors(self) -> torch.Tensor | None:
        """``h ⊙ q_i``: scores are dot products of user rows with these."""
        return self.item_embedding.weight * self.head.weight[0]

    def dot_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``[h ⊙ p_u, 1] · [q_i, b]``: the head folded into the user side."""
        users, items = self.user_embedding.weight, self.item_embedding.weight
        return (
            torch.cat([users * self.head.weight[0], users.new_ones(len(users), 1)], 1),
            torch.cat([items, self.head.bias.expand(len(items), 1)], 1),
        )

    def kernel_layout(self) -> KernelLayout | None:
        return DotLayout(
            self.user_embedding.weight,
            self.item_embedding.weight,
            (self.head.weight, self.head.bias),
        )


# --fast --pretrain: the GMF part of a pretrained NeuMF, on top of the fast recipe. The part's
# NDCG carries into the mix, and a longer cosine decay lifts it: mixed with the compare's fast
# MLP, the validation HR@10 of the mix (before fine-tuning) is 0.8270 from the 12-epoch fast GMF,
# 0.8283 / 0.8298 / 0.8306 / 0.8320 / 0.8331 from 16 / 20 / 24 / 28 / 32 epochs (other rates,
# negatives and batches: at most 0.8296; benchmarks/RESULTS.md, issue 17); 32 epochs take ~25 s
FAST_PRETRAIN: dict[str, Any] = {"epochs": 32}

SPEC = ModelSpec(
    GMF,
    "generalized MF hᵀ(p_u ⊙ q_i) + b (He et al. 2017)",
    recipes={"fast": {**FAST, "learning_rate": 0.03}, "fast-pretrain": FAST_PRETRAIN},
    search=DOT_SEARCH,
)
