"""Metrics on hand-computed cases and hypothesis properties."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchcf.data.split import Holdout
from torchcf.evaluation.metrics import hit_rate, ndcg, positive_ranks
from torchcf.evaluation.protocols import evaluate_sampled
from torchcf.models import ScoringModel


def test_hand_computed_ranks_and_metrics():
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.3],  # positive first: rank 0
            [0.5, 0.6, 0.1, 0.7],  # two negatives above: rank 2
            [0.4, 0.4, 0.1, 0.0],  # a tie counts against the positive: rank 1
            [0.2, 0.9, 0.8, 0.7],  # last: rank 3
        ]
    )
    ranks = positive_ranks(scores)
    assert ranks.tolist() == [0, 2, 1, 3]
    assert hit_rate(ranks, 1) == 0.25
    assert hit_rate(ranks, 2) == 0.5
    assert hit_rate(ranks, 3) == 0.75
    expected = (1 / math.log2(2) + 1 / math.log2(4) + 1 / math.log2(3)) / 4
    assert math.isclose(ndcg(ranks, 3), expected)
    assert math.isclose(ndcg(ranks, 2), (1 + 1 / math.log2(3)) / 4)


def test_padding_and_nan():
    scores = torch.tensor([[0.5, 0.9, 0.1], [float("nan"), 0.1, 0.2], [0.5, float("nan"), 0.1]])
    valid = torch.tensor([[True, False, True], [True, True, True], [True, True, True]])
    assert positive_ranks(scores, valid).tolist() == [0, 2, 0]


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 30),
    c=st.integers(2, 50),
    k=st.integers(1, 60),
    seed=st.integers(0, 2**31 - 1),
)
def test_metric_properties(n, c, k, seed):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, c, generator=gen)
    ranks = positive_ranks(scores)
    assert ((ranks >= 0) & (ranks < c)).all()
    hr, nd = hit_rate(ranks, k), ndcg(ranks, k)
    assert 0.0 <= nd <= hr <= 1.0
    assert hit_rate(ranks, k + 1) >= hr and ndcg(ranks, k + 1) >= nd  # monotone in k
    perfect = scores.clone()
    perfect[:, 0] = 2.0
    assert hit_rate(positive_ranks(perfect), k) == 1.0 and ndcg(positive_ranks(perfect), k) == 1.0
    constant = torch.full((n, c), 0.3)
    assert hit_rate(positive_ranks(constant), min(k, c - 1)) == 0.0
    worst = scores.clone()
    worst[:, 0] = -1.0
    assert positive_ranks(worst).tolist() == [c - 1] * n


class _Constant(ScoringModel):
    name = "constant"

    def forward(self, users, items):
        return torch.zeros(torch.broadcast_shapes(users.shape, items.shape))


def test_constant_model_scores_zero_through_evaluate_sampled():
    holdout = Holdout("test", np.arange(5), np.arange(5), np.tile(np.arange(5, 25), (5, 1)))
    result = evaluate_sampled(_Constant(5, 30), holdout, k=10, protocol={"split": "toy"})
    assert result.hr == 0.0 and result.ndcg == 0.0 and result.users == 5
    assert result.protocol["split"] == "toy" and result.protocol["k"] == 10
    assert result.protocol["candidates_per_user"] == {"min": 21, "max": 21}
