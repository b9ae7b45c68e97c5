"""Losses: pure functions named for their formula."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["bce_with_logits"]


def bce_with_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy on logits: ``mean(-y log σ(x) - (1 - y) log(1 - σ(x)))``."""
    return F.binary_cross_entropy_with_logits(logits, labels)
