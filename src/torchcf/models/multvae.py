"""Mult-VAE (Liang, Krishnan, Hoffman & Jebara, "Variational Autoencoders for Collaborative
Filtering", WWW 2018).

A user is their row of training items ``x``. The encoder reads the row scaled to unit L2 norm,
with dropout on its items while training, through ``[I → hidden → 2·latent]`` (tanh between
layers) to the mean ``μ`` and log-variance of ``q(z | x)``; the decoder maps ``z`` through
``[latent → hidden → I]`` (tanh) to logits whose softmax is the multinomial over items. Training
minimises, per user, ``−Σᵢ xᵢ log softmax(f(z))ᵢ + β · KL(q(z | x) ‖ N(0, I))`` with ``z``
sampled by the reparameterisation, ``β`` annealed linearly with the optimizer's steps,
``min(anneal_cap, step / anneal_steps)`` (the paper's: to 0.2 over 200,000 steps). Scoring
decodes ``μ``: a user's scores are a function of their row alone, so a new user is scored by
encoding their items (fold-in, no fitting).

The first layer reads the sparse row as a weighted sum of its items' weight rows
(``embedding_bag``): ``B·nnz·hidden`` work instead of ``B·I·hidden``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from torchcf.models.base import (
    Choice,
    FloatRange,
    KeptRows,
    ModelConfig,
    ModelSpec,
    ScoringModel,
    gather_scores,
)
from torchcf.models.layers import Dropout, keyed_generator
from torchcf.settings import below_one, between, setting

__all__ = ["SPEC", "MultVAE", "MultVAEConfig", "kl_weight"]


@dataclass(frozen=True)
class MultVAEConfig(ModelConfig):
    owner: ClassVar[str] = "multvae"
    hidden: int = setting(600, "multvae: width of the hidden layers", check=between(1, 65_536))
    latent: int = setting(200, "multvae: size of the latent code z", check=between(1, 65_536))
    dropout: float = setting(0.5, "multvae: dropout on the encoder's input items", check=below_one)
    anneal_cap: float = setting(
        0.2, "multvae: the KL weight β the annealing stops at", check=between(0, 100)
    )
    anneal_steps: int = setting(
        200_000,
        "multvae: optimizer steps over which β rises linearly from 0 (0: β at its cap at once)",
        check=between(0, 10**12),
    )


def kl_weight(step: int, cap: float, steps: int) -> float:
    """The KL weight at optimizer step ``step`` (0-based): ``min(cap, step / steps)``."""
    return cap if steps == 0 else min(cap, step / steps)


class MultVAE(KeptRows, ScoringModel):
    """Mult-VAE: scores are the decoder's logits of the user's encoded row (``μ``, no dropout,
    in training mode too)."""

    name = "multvae"
    Config = MultVAEConfig
    matrix_scoring = True
    user_tables = ()
    row_training = True
    folds_in_rows = True
    distributed_training = False
    one_process = "a batch is whole user rows, not (user, item) pairs to share"

    def __init__(
        self,
        num_users: int,
        num_items: int,
        config: ModelConfig | None = None,
        *,
        nnz: int = 0,
        generator: torch.Generator | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(num_users, num_items)
        self.config = self.make_config(config, settings)
        hidden, latent = self.config.hidden, self.config.latent
        self.pair_width = 1
        # the first layer as an (items × hidden) table read by embedding_bag, and its bias
        self.encoder_items = nn.Parameter(torch.empty(num_items, hidden))
        self.encoder_bias = nn.Parameter(torch.empty(hidden))
        self.encoder_out = nn.Linear(hidden, 2 * latent)
        self.decoder_in = nn.Linear(latent, hidden)
        self.decoder_out = nn.Linear(hidden, num_items)
        self.input_dropout = Dropout(self.config.dropout)
        with torch.no_grad():  # Xavier weights, N(0, 0.001) biases (the paper's code)
            nn.init.xavier_uniform_(self.encoder_items, generator=generator)
            self.encoder_bias.normal_(0.0, 0.001, generator=generator)
            for layer in (self.encoder_out, self.decoder_in, self.decoder_out):
                nn.init.xavier_uniform_(layer.weight, generator=generator)
                layer.bias.normal_(0.0, 0.001, generator=generator)
        self.keep_rows(num_users, nnz)

    def encode(
        self,
        items: torch.Tensor,
        offsets: torch.Tensor,
        counts: torch.Tensor,
        drop: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, log σ²)`` of rows given as concatenated ``items`` with each row's start in
        ``offsets`` and length in ``counts``: the row scaled to unit norm, its items dropped
        out with ``drop`` (training)."""
        norms = counts.clamp(min=1).to(self.encoder_items.dtype).rsqrt()
        values = torch.repeat_interleave(norms, counts)
        if drop:
            values = self.input_dropout(values)
        first = F.embedding_bag(
            items, self.encoder_items, offsets, mode="sum", per_sample_weights=values
        )
        h = self.encoder_out(torch.tanh(first + self.encoder_bias))
        latent = self.config.latent
        return h[:, :latent], h[:, latent:]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The logits of the multinomial over items, ``(B, I)``."""
        return self.decoder_out(torch.tanh(self.decoder_in(z)))

    def _rows(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        items, counts = self.row_items(users)
        offsets = torch.cumsum(counts, 0) - counts
        return items, offsets, counts

    def row_loss(self, users: torch.Tensor, step: int) -> torch.Tensor:
        """``−log p(x | z) + β·KL`` per user, ``z = μ + σ·ε`` with ``ε`` keyed like the input
        dropout (a resumed run draws what an uninterrupted one would)."""
        items, offsets, counts = self._rows(users)
        mu, logvar = self.encode(items, offsets, counts, drop=self.training)
        key = self.input_dropout.key
        if self.training:
            gen = None if key is None else keyed_generator(key, 1, mu.device)
            noise = torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype)
            z = mu + noise * torch.exp(0.5 * logvar)
        else:
            z = mu
        log_probs = torch.log_softmax(self.decode(z), dim=1)
        rows = torch.repeat_interleave(torch.arange(len(users), device=users.device), counts)
        likelihood = torch.zeros(len(users), dtype=log_probs.dtype, device=log_probs.device)
        likelihood = likelihood.index_add(0, rows, log_probs[rows, items])
        kl = 0.5 * (torch.exp(logvar) + mu.pow(2) - 1.0 - logvar).sum(1)
        beta = kl_weight(step, self.config.anneal_cap, self.config.anneal_steps)
        return -likelihood + beta * kl

    def score_all(self, users: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        mu, _ = self.encode(*self._rows(users))
        return self.decode(mu)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return gather_scores(self, users, items)

    def fold_in_scores(self, items: torch.Tensor) -> torch.Tensor:
        """A new user with ``items``: their row encoded and decoded, as for a trained user."""
        items = torch.unique(items)
        counts = torch.tensor([len(items)], device=items.device)
        mu, _ = self.encode(items, torch.zeros(1, dtype=torch.long, device=items.device), counts)
        return self.decode(mu)[0]

    def item_vectors(self) -> torch.Tensor:
        """The decoder's output weights: each item's vector in the hidden space."""
        return self.decoder_out.weight.detach()


SPEC = ModelSpec(
    MultVAE,
    "Mult-VAE: a variational autoencoder of user rows, multinomial likelihood",
    defaults={"loss": "multinomial", "batch_size": 500, "learning_rate": 0.001, "epochs": 200},
    # chosen on LastFM's validation file (benchmarks/RESULTS.md, issue 26): 3× the paper's rate
    # decaying to 0 by a cosine over 40 epochs, against the paper's constant rate, which peaks
    # at epoch 50 and then overfits: validation NDCG@20 0.1829 against 0.1746 (Gowalla: 0.1020
    # against 0.0852 at its best epoch, 16)
    recipes={
        "fast": {"learning_rate": 0.003, "lr_schedule": "cosine", "epochs": 40, "eval_every": 5}
    },
    search={
        "learning_rate": FloatRange(3e-4, 1e-2, log=True),
        "dropout": Choice((0.3, 0.5, 0.7)),
        "anneal_cap": FloatRange(0.0, 0.5),
        "weight_decay": FloatRange(1e-7, 1e-3, log=True),
    },
    training=frozenset(
        {
            "epochs",
            "batch_size",
            "learning_rate",
            "beta1",
            "beta2",
            "lr_schedule",
            "weight_decay",
            "optimizer",
            "loss",
            "amp",
            "patience",
            "eval_every",
            "select_by",
            "select_metric",
            "seed",
            "device",
        }
    ),
)
