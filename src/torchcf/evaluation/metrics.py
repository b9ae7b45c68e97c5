"""Ranking metrics: pure functions of the held-out items' 0-based ranks."""

from __future__ import annotations

import math

import torch

__all__ = ["hit_rate", "metric_key", "ndcg", "positive_ranks", "ranking_metrics"]


def metric_key(name: str, k: int) -> str:
    """The key of metric ``name`` at cut-off ``k`` in every result and summary: ``hr@10``."""
    return f"{name}@{k}"


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


def ranking_metrics(ranks: torch.Tensor, ks: tuple[int, ...] = (5, 10, 20)) -> dict[str, float]:
    """HR, Recall, NDCG, MRR and precision at each k from 0-based ranks of one relevant item.

    With one held-out item per user, Recall@k = HR@k and precision@k = HR@k / k; MRR@k is
    ``1 / (rank + 1)`` when ``rank < k``, else 0. Averaged over every user.
    """
    out: dict[str, float] = {}
    r = ranks.double()
    for k in ks:
        hit = (r < k).double()
        hr = hit_rate(ranks, k)
        out[metric_key("hr", k)] = hr
        out[metric_key("recall", k)] = hr
        out[metric_key("ndcg", k)] = ndcg(ranks, k)
        out[metric_key("mrr", k)] = float((hit / (r + 1.0)).mean()) if len(r) else float("nan")
        out[metric_key("precision", k)] = hr / k
    return out
