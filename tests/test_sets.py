"""Held-out sets ranked among every item: each metric against a brute-force computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchcf.evaluation.sets import (
    SET_METRICS,
    HeldOutSets,
    set_metrics,
    set_positions,
    set_summary,
)


class Fixed(torch.nn.Module):
    """A model whose scores are a given matrix."""

    def __init__(self, scores: np.ndarray) -> None:
        super().__init__()
        self.scores = torch.as_tensor(scores, dtype=torch.float32)
        self.num_items = scores.shape[1]

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.scores[users].clone()


def brute_force(scores, masked, held, ks):
    """Per user, every metric from the sorted ranking (score desc; ties: items not held out
    first, then held-out ones by id; NaN below every number; masked items removed)."""
    out = {f"{m}@{k}": [] for k in ks for m in SET_METRICS}
    for u, targets in held.items():
        items = [i for i in range(scores.shape[1]) if i not in masked[u] or i in targets]
        s = {i: (-math.inf if math.isnan(scores[u, i]) else scores[u, i]) for i in items}
        ranking = sorted(items, key=lambda i: (-s[i], i in targets, i))
        for k in ks:
            top = ranking[:k]
            hits = [j for j, i in enumerate(top) if i in targets]
            n = len(targets)
            ideal = sum(1 / math.log2(j + 2) for j in range(min(k, n)))
            ap = sum((c + 1) / (j + 1) for c, j in enumerate(hits)) / min(k, n)
            out[f"recall@{k}"].append(len(hits) / n)
            out[f"precision@{k}"].append(len(hits) / k)
            out[f"hr@{k}"].append(float(bool(hits)))
            out[f"ndcg@{k}"].append(sum(1 / math.log2(j + 2) for j in hits) / ideal)
            out[f"mrr@{k}"].append(1 / (hits[0] + 1) if hits else 0.0)
            out[f"map@{k}"].append(ap)
    return {key: np.array(v) for key, v in out.items()}


def run(scores, masked, held, ks, batch_users=None):
    users = np.array([u for u, t in held.items() for _ in t], dtype=np.int64)
    items = np.array([i for t in held.values() for i in sorted(t)], dtype=np.int64)
    sets = HeldOutSets.from_pairs("test", users, items)
    n_users, n_items = scores.shape
    mu = [u for u, m in masked.items() for _ in m]
    mi = [i for m in masked.values() for i in m]
    exclude = sp.csr_matrix((np.ones(len(mu)), (mu, mi)), shape=(n_users, n_items))
    positions, lists = set_positions(Fixed(scores), sets, exclude, max(ks), batch_users=batch_users)
    return set_metrics(positions, sets.indptr, ks), lists, sets


@st.composite
def cases(draw):
    n_users = draw(st.integers(1, 6))
    n_items = draw(st.integers(1, 12))
    values = st.one_of(st.integers(-2, 2).map(float), st.just(math.nan), st.floats(-3, 3))
    scores = np.array(
        draw(st.lists(values, min_size=n_users * n_items, max_size=n_users * n_items)),
        dtype=np.float32,
    ).reshape(n_users, n_items)
    held, masked = {}, {}
    for u in range(n_users):
        items = set(draw(st.lists(st.integers(0, n_items - 1), max_size=n_items)))
        targets = (
            set(draw(st.lists(st.sampled_from(sorted(items)), max_size=4))) if items else set()
        )
        masked[u] = items - targets
        if targets:
            held[u] = targets
    ks = tuple(sorted(set(draw(st.lists(st.integers(1, 15), min_size=1, max_size=3)))))
    return scores, masked, held, ks


@settings(max_examples=300, deadline=None)
@given(cases(), st.sampled_from([None, 1, 2]))
def test_every_metric_equals_brute_force(case, batch_users):
    """Ties, NaN, users with fewer held-out items than K, K larger than the catalogue, users
    without a held-out item (left out), blocks of any size."""
    scores, masked, held, ks = case
    if not held:
        return
    got, _, sets = run(scores, masked, held, ks, batch_users)
    want = brute_force(scores, masked, held, ks)
    assert list(sets.users) == sorted(held)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-12, err_msg=key)


def test_constant_model_scores_zero():
    """Every item ties: the held-out items rank after the others (ties count against them)."""
    scores = np.zeros((2, 50), dtype=np.float32)
    got, _, _ = run(scores, {0: set(), 1: {1, 2}}, {0: {3, 4}, 1: {5}}, (10, 20))
    assert all(float(np.sum(v)) == 0.0 for v in got.values())


def test_tie_at_the_cut_off_counts_every_tied_item():
    """Held-out item 7 ties with 30 others at the 10th score: it ranks after all of them."""
    scores = np.zeros((1, 60), dtype=np.float32)
    scores[0, :9] = 5.0  # nine clear winners
    got, _, _ = run(scores, {0: set()}, {0: {7, 59}}, (10, 40))
    assert got["recall@10"][0] == 0.5  # item 7 (among the nine) is a hit, 59 is not
    # 59 ties with 50 unmasked non-held-out items at 0: position 9 + 50 = 59 ≥ 40
    assert got["recall@40"][0] == 0.5


def test_summary_means_and_coverage():
    scores = np.array([[3, 2, 1, 0], [0, 1, 2, 3]], dtype=np.float32)
    per_user, lists, _ = run(scores, {0: set(), 1: set()}, {0: {0}, 1: {0, 1}}, (1, 2))
    summary = set_summary(per_user, lists, 4, (1, 2))
    assert summary["recall@2"] == pytest.approx((1.0 + 0.0) / 2)
    assert summary["ndcg@1"] == pytest.approx(0.5)
    assert summary["coverage@1"] == pytest.approx(2 / 4)
    assert summary["coverage@2"] == pytest.approx(4 / 4)
    for key, values in per_user.items():
        assert summary[key] == pytest.approx(float(np.mean(values)))
