"""Full-ranking evaluation: a case worked out by hand, a brute-force reference, properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchcf.data.split import Holdout
from torchcf.evaluation.metrics import ranking_metrics
from torchcf.evaluation.protocols import evaluate_full, full_ranks
from torchcf.models import ScoringModel


class Fixed(ScoringModel):
    """Scores from a fixed ``(users, items)`` matrix."""

    def __init__(self, scores: np.ndarray) -> None:
        super().__init__(*scores.shape)
        self.register_buffer("table", torch.as_tensor(scores, dtype=torch.float32))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.table[users, items]


def csr(rows: list[list[int]], num_items: int) -> sp.csr_matrix:
    users = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
    items = np.concatenate([np.array(r, dtype=np.int64) for r in rows]) if rows else []
    return sp.csr_matrix((np.ones(len(users)), (users, items)), shape=(len(rows), num_items))


def holdout(items: list[int]) -> Holdout:
    n = len(items)
    return Holdout("test", np.arange(n), np.array(items), np.zeros((n, 0), dtype=np.int64))


def test_hand_worked_case():
    scores = np.array(
        [
            [0.9, 5.0, 0.5, 0.7, 0.1],  # item 1 seen (masked although best); positive 2: rank 2
            [0.3, 0.2, 9.0, 0.3, 0.3],  # items 0, 2 seen; positive 4 ties with 3: rank 1
            [1.0, 0.0, 0.0, 0.0, 0.0],  # nothing seen; positive 0 is best: rank 0
        ]
    )
    seen = csr([[1], [0, 2], []], 5)
    ranks, lists = full_ranks(Fixed(scores), holdout([2, 4, 0]), seen, top_k=1)
    # user 1: item 0 is seen, item 3 ties (counts against), items 1 scores lower
    assert ranks.tolist() == [2, 1, 0]
    assert lists[:, 0].tolist() == [0, 3, 0] or lists[:, 0].tolist() == [0, 4, 0]
    m = ranking_metrics(ranks, (1, 2, 3))
    assert m["hr@1"] == pytest.approx(1 / 3) and m["hr@2"] == pytest.approx(2 / 3)
    assert m["hr@3"] == 1.0 and m["recall@3"] == 1.0 and m["precision@3"] == pytest.approx(1 / 3)
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(4) + 1 / math.log2(3) + 1) / 3)
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3) + 1) / 3)
    assert m["mrr@3"] == pytest.approx((1 / 3 + 1 / 2 + 1) / 3)
    assert m["mrr@1"] == pytest.approx(1 / 3)


def test_coverage_and_protocol():
    scores = np.array([[3.0, 2.0, 1.0, 0.0], [0.0, 3.0, 2.0, 1.0]])
    result = evaluate_full(Fixed(scores), holdout([3, 0]), csr([[], [1]], 4), ks=(1, 2))
    # top-1: user 0 → item 0, user 1 (item 1 seen) → item 2; top-2 adds items 1 and 3
    assert result["coverage@1"] == 0.5 and result["coverage@2"] == 1.0
    assert result["users"] == 2 and result["protocol"]["kind"] == "full ranking"
    assert result["hr@2"] == 0.0  # user 0's positive is last; user 1's rank 2 (items 2, 3 beat it)


def reference_ranks(scores: np.ndarray, seen: list[set[int]], positives: list[int]) -> list[int]:
    """Brute force: count the unseen other items scoring at least the positive's score."""
    out = []
    for u, pos in enumerate(positives):
        s = [(-math.inf if math.isnan(v) else v) for v in scores[u]]
        out.append(sum(1 for i, v in enumerate(s) if i != pos and i not in seen[u] and v >= s[pos]))
    return out


@st.composite
def cases(draw):
    users = draw(st.integers(1, 6))
    items = draw(st.integers(2, 12))
    values = st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0, float("nan")])  # many ties, some NaN
    scores = np.array(draw(st.lists(values, min_size=users * items, max_size=users * items)))
    scores = scores.reshape(users, items)
    positives = [draw(st.integers(0, items - 1)) for _ in range(users)]
    seen = [
        set(draw(st.lists(st.integers(0, items - 1), max_size=items))) - {positives[u]}
        for u in range(users)
    ]
    return scores, seen, positives


@given(cases(), st.integers(1, 6))
@settings(max_examples=150, deadline=None)
def test_full_ranks_match_the_reference_and_metrics_behave(case, batch):
    scores, seen, positives = case
    items = scores.shape[1]
    ranks, _ = full_ranks(
        Fixed(scores), holdout(positives), csr([sorted(s) for s in seen], items), batch_users=batch
    )
    assert ranks.tolist() == reference_ranks(scores, seen, positives)
    metrics = ranking_metrics(ranks, (1, 2, 5, 10))
    for name in ("hr", "recall", "ndcg", "mrr", "precision"):
        values = [metrics[f"{name}@{k}"] for k in (1, 2, 5, 10)]
        assert all(0.0 <= v <= 1.0 for v in values)
        if name != "precision":
            assert values == sorted(values)  # non-decreasing in k
    assert metrics["ndcg@10"] <= metrics["hr@10"] and metrics["mrr@10"] <= metrics["ndcg@10"]


@given(st.integers(1, 5), st.integers(3, 15), st.integers(0, 2**31 - 1))
@settings(max_examples=50, deadline=None)
def test_perfect_and_worst_rankings(users, items, seed):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(users, items))
    positives = rng.integers(0, items, size=users)
    best, worst = scores.copy(), scores.copy()
    best[np.arange(users), positives] = 100.0
    worst[np.arange(users), positives] = -100.0
    empty = csr([[] for _ in range(users)], items)
    perfect = ranking_metrics(full_ranks(Fixed(best), holdout(list(positives)), empty)[0], (1, 3))
    assert perfect["hr@1"] == perfect["ndcg@1"] == perfect["mrr@1"] == perfect["ndcg@3"] == 1.0
    ranks = full_ranks(Fixed(worst), holdout(list(positives)), empty)[0]
    assert ranks.tolist() == [items - 1] * users
    assert ranking_metrics(ranks, (items - 1,))[f"hr@{items - 1}"] == 0.0
