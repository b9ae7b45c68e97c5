"""Losses: pure functions named for their formula."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "bce_with_logits", "bpr", "pairwise_bpr", "row_mean"]


def bce_with_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy on logits: ``mean(-y log σ(x) - (1 - y) log(1 - σ(x)))``."""
    return F.binary_cross_entropy_with_logits(logits, labels)


def bpr(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Bayesian personalised ranking: ``mean(−log σ(s⁺ − s⁻))`` (Rendle et al. 2009)."""
    return -F.logsigmoid(positive - negative).mean()


def pairwise_bpr(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BPR on ``(B, 2)`` logits of (positive, negative) pairs; ``labels`` are unused."""
    return bpr(logits[..., 0], logits[..., 1])


def row_mean(losses: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A row model's own ``(B,)`` per-user losses (Mult-VAE's annealed negative ELBO of the
    multinomial likelihood), averaged; ``labels`` are unused."""
    return losses.mean()


# the trainer's losses by name: each takes (logits, labels) of one batch (a row model hands its
# per-user losses as the "logits")
LOSSES = {"bce": bce_with_logits, "bpr": pairwise_bpr, "multinomial": row_mean}
