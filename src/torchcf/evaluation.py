"""Evaluation ranks first, then scores: pure, vectorised functions.

Sampled leave-one-out: the positive's rank among its candidates is the number of valid negatives
scoring **at least as high** (ties count against the positive, so a constant model gets HR = 0).
NaN scores rank last. Every result carries its protocol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from torchcf.models import ScoringModel
from torchcf.split import Holdout

__all__ = ["EvalResult", "evaluate_sampled", "hit_rate", "ndcg", "positive_ranks"]


def positive_ranks(scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of column 0 among the valid columns of each row: ``(n, C) -> (n,)``.

    ``rank = #{j ≥ 1 : valid_j and s_j ≥ s_0}``; NaN scores are treated as −∞.
    """
    scores = torch.nan_to_num(scores.float(), nan=-math.inf)
    beats = scores[:, 1:] >= scores[:, :1]
    if valid is not None:
        beats &= valid[:, 1:]
    return beats.sum(dim=1)


def hit_rate(ranks: torch.Tensor, k: int) -> float:
    """HR@k: share of users whose positive ranks in the top ``k``."""
    return float((ranks < k).double().mean()) if len(ranks) else float("nan")


def ndcg(ranks: torch.Tensor, k: int) -> float:
    """NDCG@k with one relevant item: ``1 / log2(rank + 2)`` if ``rank < k`` else 0, averaged."""
    if not len(ranks):
        return float("nan")
    gains = torch.where(ranks < k, 1.0 / torch.log2(ranks.double() + 2.0), 0.0)
    return float(gains.mean())


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one holdout with the protocol that produced them."""

    holdout: str
    k: int
    hr: float
    ndcg: float
    users: int
    protocol: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "holdout": self.holdout,
            f"hr@{self.k}": self.hr,
            f"ndcg@{self.k}": self.ndcg,
            "users": self.users,
            "protocol": self.protocol,
        }


@torch.no_grad()
def holdout_ranks(
    model: ScoringModel,
    holdout: Holdout,
    device: torch.device | str = "cpu",
    batch_users: int | None = None,
    candidates: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rank of each user's held-out item among its candidates, ``(n,)`` on ``device``.

    Users are scored in batches that keep about 2^24 floats alive (``model.pair_width``).
    """
    was_training = model.training
    model.eval()
    if candidates is None:
        candidates = torch.as_tensor(holdout.candidates(), device=device)
    users = torch.as_tensor(holdout.users, device=device)
    if batch_users is None:
        width = max(1, candidates.shape[1]) * getattr(model, "pair_width", 1)
        batch_users = max(1, 2**24 // width)
    out = []
    for s in range(0, len(users), batch_users):
        cand = candidates[s : s + batch_users]
        valid = cand >= 0
        scores = model(users[s : s + batch_users, None], cand.clamp(min=0))
        out.append(positive_ranks(scores, valid))
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=device)


def evaluate_sampled(
    model: ScoringModel,
    holdout: Holdout,
    k: int = 10,
    device: torch.device | str = "cpu",
    protocol: dict[str, Any] | None = None,
) -> EvalResult:
    """HR@k and NDCG@k of ``model`` on a sampled-candidates holdout (every user counted)."""
    ranks = holdout_ranks(model, holdout, device)
    return EvalResult(
        holdout=holdout.name,
        k=k,
        hr=hit_rate(ranks, k),
        ndcg=ndcg(ranks, k),
        users=len(holdout),
        protocol=dict(protocol or {}, k=k, candidates_per_user=_candidate_summary(holdout)),
    )


def _candidate_summary(holdout: Holdout) -> dict[str, int]:
    counts = 1 + (holdout.negatives >= 0).sum(axis=1)
    if not len(counts):
        return {"min": 0, "max": 0}
    return {"min": int(counts.min()), "max": int(counts.max())}
