"""EASE (Steck 2019): a closed-form item-item model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from torchcf.data.interactions import Interactions
from torchcf.models.base import FITTED_TRAINING, FloatRange, ModelConfig, ModelSpec
from torchcf.models.baselines import history
from torchcf.models.baselines.history import HistoryModel
from torchcf.settings import above, setting

__all__ = ["EASE", "EASEConfig", "SPEC"]


@dataclass(frozen=True)
class EASEConfig(ModelConfig):
    owner: ClassVar[str] = "ease"
    l2: float = setting(500.0, "EASE: the L2 penalty λ", check=above(0, 1e12))


class EASE(HistoryModel):
    """EASE (Steck 2019): ``B = argmin ||X − XB||² + λ||B||²`` with ``diag(B) = 0``, closed form
    ``P = (XᵀX + λI)⁻¹``, ``B = −P / diag(P)`` (column-wise), ``B_ii = 0``; score ``X_u B``."""

    name = "ease"
    Config = EASEConfig

    def fit_epoch(self, train: Interactions, epoch: int) -> float:
        precise = self.num_items <= history.FLOAT64_UP_TO  # beyond: XᵀX + λI, λ ≫ 1, in float32
        gram = self._fit_history(train, np.float64 if precise else np.float32)
        gram.diagonal().add_(self.config.l2)
        if self.num_items <= history.SPARSE_FROM:  # the figures recorded so far, bit for bit
            weights = -torch.linalg.inv(gram)
        else:  # a large catalogue: Cholesky (half the work of LU), in place, one copy alive
            factor = torch.linalg.cholesky(gram)
            del gram
            weights = torch.cholesky_inverse(factor).neg_()
            del factor
            if not weights.is_contiguous():  # LAPACK's column order; −P is symmetric
                weights = weights.T
        weights.div_(-weights.diagonal().clone()[None, :])  # B = −P / diag(P)
        weights.diagonal().zero_()
        self.weights = weights.float()
        return math.nan


SPEC = ModelSpec(
    EASE,
    "EASE: closed-form item-item regression (Steck 2019)",
    search={"l2": FloatRange(10.0, 10_000.0, log=True)},
    training=FITTED_TRAINING,
)
