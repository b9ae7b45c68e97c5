"""NeuMF: a GMF branch and an MLP branch with their own embeddings, one linear head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from torchcf.errors import ConfigError
from torchcf.models.base import ModelSpec
from torchcf.models.gmf import GMF
from torchcf.models.layers import (
    KernelLayout,
    head,
    init_embedding,
    tower,
    tower_layout,
    tower_output,
    tower_scores,
)
from torchcf.models.mlp import MLP, TOWER_SEARCH, TowerConfig, TowerModel
from torchcf.native import bf16_products

__all__ = ["FAST", "FAST_FINETUNE", "FINETUNE", "SPEC", "NeuMF", "NeuMFConfig"]


@dataclass(frozen=True)
class NeuMFConfig(TowerConfig):
    owner: ClassVar[str] = "neumf"


class NeuMF(TowerModel):
    """NeuMF: a GMF branch and an MLP branch with their own embeddings, one linear head.

    ``score = hᵀ [p^G_u ⊙ q^G_i ; tower([p^M_u; q^M_i])] + b``. ``init_from_pretrained`` sets it
    up from a trained GMF and MLP so that it scores ``α·GMF + (1−α)·MLP`` before fine-tuning.
    """

    name = "neumf"
    Config = NeuMFConfig
    user_tables = ("gmf_user_embedding", "mlp_user_embedding")

    def __init__(
        self,
        num_users: int,
        num_items: int,
        config: NeuMFConfig | None = None,
        *,
        generator: torch.Generator | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(num_users, num_items)
        self._settings(self.make_config(config, settings))
        width, dim = self.width, self.embedding_dim
        self.pair_width = 4 * width + dim
        self.gmf_user_embedding = nn.Embedding(num_users, dim)
        self.gmf_item_embedding = nn.Embedding(num_items, dim)
        self.mlp_user_embedding = nn.Embedding(num_users, width)
        self.mlp_item_embedding = nn.Embedding(num_items, width)
        for emb in (
            self.gmf_user_embedding,
            self.gmf_item_embedding,
            self.mlp_user_embedding,
            self.mlp_item_embedding,
        ):
            init_embedding(emb.weight, self.init_std, generator)
        self.tower = tower(2 * width, dim, self.layers, self.dropout, generator)
        self.head = head(2 * dim, generator)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        mlp = tower_output(
            self.tower, self.mlp_user_embedding, self.mlp_item_embedding, users, items
        )
        gmf = self.gmf_user_embedding(users) * self.gmf_item_embedding(items)
        both = torch.cat([gmf, mlp], dim=-1)
        return both @ self.head.weight[0] + self.head.bias[0]

    def score_all(self, users: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        if torch.is_grad_enabled() or self.training:
            return super().score_all(users, chunk)
        dim = self.embedding_dim
        head = self.head.weight[0]
        tower = tower_scores(
            self.tower, self.mlp_user_embedding, self.mlp_item_embedding, users, head[dim:]
        )
        gmf = (self.gmf_user_embedding(users) * head[:dim]) @ self.gmf_item_embedding.weight.T
        return gmf + tower + self.head.bias[0]

    def kernel_layout(self) -> KernelLayout | None:
        return tower_layout(
            self.tower,
            (self.mlp_user_embedding, self.mlp_item_embedding),
            self.head,
            gmf_tables=(self.gmf_user_embedding, self.gmf_item_embedding),
        )

    @torch.no_grad()
    def init_from_pretrained(self, gmf: GMF, mlp: MLP, alpha: float = 0.5) -> NeuMF:
        """Copy both branches' weights; head = [α·h_GMF, (1−α)·h_MLP], bias = α·b_G + (1−α)·b_M."""
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
        if not isinstance(gmf, GMF) or not isinstance(mlp, MLP):
            raise ConfigError("pretraining needs a trained gmf and a trained mlp")
        sizes = (self.num_users, self.num_items)
        for other in (gmf, mlp):
            if (other.num_users, other.num_items) != sizes:
                raise ConfigError(
                    f"pretrained {other.name} has {other.num_users} users × {other.num_items} "
                    f"items, NeuMF has {sizes[0]} × {sizes[1]}: not the same data"
                )
        if gmf.embedding_dim != self.embedding_dim or mlp.embedding_dim != self.embedding_dim:
            raise ConfigError(
                f"pretrained factors differ: gmf {gmf.embedding_dim}, mlp {mlp.embedding_dim}, "
                f"neumf {self.embedding_dim}"
            )
        if mlp.layers != self.layers:
            raise ConfigError(f"pretrained mlp has {mlp.layers} layers, neumf {self.layers}")
        self.gmf_user_embedding.weight.copy_(gmf.user_embedding.weight)
        self.gmf_item_embedding.weight.copy_(gmf.item_embedding.weight)
        self.mlp_user_embedding.weight.copy_(mlp.user_embedding.weight)
        self.mlp_item_embedding.weight.copy_(mlp.item_embedding.weight)
        mine, theirs = (
            [m for m in layers if isinstance(m, nn.Linear)] for layers in (self.tower, mlp.tower)
        )
        for target, source in zip(mine, theirs, strict=True):  # dropout may differ: layers only
            target.load_state_dict(source.state_dict())
        self.head.weight.copy_(
            torch.cat([alpha * gmf.head.weight, (1 - alpha) * mlp.head.weight], dim=1)
        )
        self.head.bias.copy_(alpha * gmf.head.bias + (1 - alpha) * mlp.head.bias)
        return self


# Fine-tuning a pretrained NeuMF (the paper uses plain SGD, as Adam's moments are not in the
# pretrained parts): Adam at 1e-4 drifts down from the pretrained mix; from the batch-256 parts,
# Adam at 1e-5 lifts it most on the validation holdout (2 epochs: val HR 0.8339 / NDCG 0.5856,
# against 0.8311 / 0.5816 for SGD lr 0.05 and 0.8303 / 0.5833 for the mix; benchmarks/RESULTS.md).
FINETUNE: dict[str, Any] = {
    "optimizer": "adam",
    "learning_rate": 1e-5,
    "epochs": 2,
    "batch_size": 1024,
}

# --fast from scratch, chosen on the validation holdout (benchmarks/RESULTS.md, issue 17): at
# batch 16384 the GMF branch wants a larger rate than the tower's usual 0.001-0.005, six
# negatives lift NDCG, and 0.15 dropout keeps the last epochs from overfitting; with bfloat16
# products 10 epochs at 0.008 fit where 7 at 0.01 did (best validation HR of 7-10 epochs)
FAST: dict[str, Any] = {
    "batch_size": 16384,
    "learning_rate": 0.008,
    "beta1": 0.8,
    "beta2": 0.95,
    "lr_schedule": "cosine",
    "epochs": 10,
    "num_negatives": 6,
    "dropout": 0.15,
    # no prefetch: drawing the next epoch beside the kernel slows its two threads
    "prefetch": False,
    "amp": bf16_products(),  # bfloat16 products where the CPU has them (as MLP's)
}

# --fast --pretrain: NeuMF from the parts' fast recipes. On validation no fine-tuning at batch
# 16384 beat the α-mix itself (epoch 0: val HR 0.8257; Adam 1e-4, 3e-4 and 1e-3 for two epochs:
# at most 0.8250; with bfloat16 parts 0.8270, and Adam 3e-5, SGD 0.2 or 0.8: at most 0.8258;
# with GMF's fast-pretrain part 0.8331, one epoch 0.8328; benchmarks/RESULTS.md), so one short
# epoch follows and selection keeps the mix unless the epoch lifts it; the tower's dropout is
# its fast MLP part's
FAST_FINETUNE: dict[str, Any] = {
    "optimizer": "adam",
    "learning_rate": 1e-4,
    "epochs": 1,
    "batch_size": 16384,
    "dropout": 0.1,
    "prefetch": False,
    "amp": bf16_products(),
}

SPEC = ModelSpec(
    NeuMF,
    "GMF and MLP branches under one head (pretrained from gmf + mlp with --pretrain)",
    defaults={"epochs": 12},  # with dropout 0.2 at batch 256 (benchmarks/RESULTS.md)
    recipes={"finetune": FINETUNE, "fast": FAST, "fast-finetune": FAST_FINETUNE},
    search=TOWER_SEARCH,
)
