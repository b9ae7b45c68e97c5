"""A blend: trained models' standardised scores, weighed into one model."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from torchcf.errors import ConfigError
from torchcf.models.base import ModelSpec, ScoringModel, gather_scores

__all__ = ["SPEC", "Blend", "standardise", "weighted_sum"]


def standardise(scores: torch.Tensor) -> torch.Tensor:
    """Each row (a user's scores over every item) shifted and scaled to mean 0, std 1."""
    centred = scores - scores.mean(-1, keepdim=True)
    return centred / centred.std(-1, keepdim=True).clamp_min(1e-12)


def weighted_sum(
    weights: list[float] | tuple[float, ...], terms: list[torch.Tensor | None]
) -> torch.Tensor:
    """``Σ w_k · terms_k`` over the positive weights, in order (``None``: a term of weight 0)."""
    total: torch.Tensor | None = None
    for w, term in zip(weights, terms, strict=True):
        if w > 0 and term is not None:
            total = w * term if total is None else total + w * term
    if total is None:
        raise ConfigError("a weighted sum needs a positive weight")
    return total


class Blend(ScoringModel):
    """A weighted sum of trained models' scores, each standardised per user over all items:
    ``score(u, ·) = Σ_k w_k · (s_k(u, ·) − mean) / std``. The scales of different models'
    scores (logits, EASE's reconstructions, iALS dot products) are not comparable; their
    standardised rows are, so the weights alone say how much each model counts.

    ``Blend(num_users, num_items, parts, weights)`` wraps trained ``parts`` (same users and
    items); a saved blend's ``hparams`` name its parts (``{"model": name, "hparams": {...}}``),
    which ``from_hparams`` rebuilds, their weights then loaded from the blend's state dict
    (``parts.K.*``). ``torchcf blend`` chooses the weights on the validation holdout.
    """

    name = "blend"
    user_tables = ()
    matrix_scoring = True

    def __init__(
        self,
        num_users: int,
        num_items: int,
        parts: list[ScoringModel],
        weights: list[float],
    ) -> None:
        super().__init__(num_users, num_items)
        if any((m.num_users, m.num_items) != (num_users, num_items) for m in parts):
            raise ConfigError("blend parts must have the same users and items")
        if any(isinstance(m, Blend) for m in parts):
            raise ConfigError("a blend's parts must be trained models, not blends")
        self._assemble(list(parts), weights)

    @classmethod
    def from_hparams(
        cls,
        num_users: int,
        num_items: int,
        hparams: Mapping[str, Any],
        restore: Callable[[str, int, int, Mapping[str, Any]], ScoringModel],
    ) -> ScoringModel:
        parts = []
        for spec in hparams["parts"]:
            name = spec.get("model")
            if name == cls.name:
                raise ConfigError("a blend part must be a trained model, not a blend")
            parts.append(restore(name, num_users, num_items, spec.get("hparams", {})))
        return cls(num_users, num_items, parts, hparams["weights"])

    def _assemble(self, models: list[ScoringModel], weights: list[float]) -> None:
        if len(models) < 2 or len(weights) != len(models):
            raise ConfigError(
                f"a blend needs two or more parts and one weight each, got {len(models)} "
                f"parts and {len(weights)} weights"
            )
        if any(not np.isfinite(w) or w < 0 for w in weights) or not sum(weights) > 0:
            raise ConfigError(f"blend weights must be ≥ 0 and not all 0, got {list(weights)}")
        self.parts = nn.ModuleList(models)
        self.weights = [float(w) for w in weights]

    @classmethod
    def of(cls, models: list[ScoringModel], weights: list[float]) -> Blend:
        """A blend of trained ``models`` (same users and items), sharing their weights."""
        if not models:
            raise ConfigError("a blend needs two or more parts")
        return cls(models[0].num_users, models[0].num_items, models, weights)

    @property
    def members(self) -> list[ScoringModel]:
        """The parts, typed."""
        return [cast(ScoringModel, p) for p in self.parts]

    def hparams(self) -> dict[str, Any]:
        parts = [{"model": p.name, "hparams": p.hparams()} for p in self.members]
        return {"parts": parts, "weights": self.weights}

    def combine(self, part_scores: list[torch.Tensor | None]) -> torch.Tensor:
        """The weighted sum of the parts' standardised rows (``None``: a part of weight 0)."""
        terms = [None if s is None else standardise(s.float()) for s in part_scores]
        return weighted_sum(self.weights, terms)

    def score_all(self, users: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        if chunk is None:
            chunk = max(1, 2**24 // self.num_items)
        out = []
        for s in range(0, len(users), chunk):
            rows = users[s : s + chunk]
            scores = [
                p.score_all(rows) if w > 0 else None
                for w, p in zip(self.weights, self.members, strict=True)
            ]
            out.append(self.combine(scores))
        return torch.cat(out) if out else torch.zeros(0, self.num_items, device=users.device)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return gather_scores(self, users, items)


SPEC = ModelSpec(
    Blend, "trained runs' standardised scores, weighed (torchcf blend)", trainable=False
)
