"""Training negatives: exact, seeded, right shapes, and correct for near-complete users."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import planted
from torchcf.data.interactions import Interactions
from torchcf.errors import DataError
from torchcf.sampling import sample_negatives, sample_unseen_candidates


def test_negatives_are_never_positives_and_shaped_like_users():
    data = planted()
    users = np.repeat(data.users, 4).reshape(-1, 4)
    rng = np.random.default_rng(0)
    negs = sample_negatives(data, users, rng)
    assert negs.shape == users.shape
    assert not data.contains(users, negs).any()
    assert np.array_equal(negs, sample_negatives(data, users, np.random.default_rng(0)))


def test_negatives_cover_the_unseen_items_roughly_uniformly():
    data = Interactions(np.array([0, 0]), np.array([0, 1]), 1, 5)
    negs = sample_negatives(data, np.zeros(30_000, dtype=np.int64), np.random.default_rng(1))
    counts = np.bincount(negs, minlength=5)
    assert counts[:2].sum() == 0
    assert np.all(np.abs(counts[2:] / 30_000 - 1 / 3) < 0.02)


def test_nearly_complete_users_fall_back_to_their_complement():
    # user 0 has seen 199 of 200 items: rejection sampling alone would need ~200 rounds
    data = Interactions(np.zeros(199, dtype=np.int64), np.arange(199), 1, 200)
    negs = sample_negatives(
        data, np.zeros(50, dtype=np.int64), np.random.default_rng(0), max_rounds=2
    )
    assert (negs == 199).all()
    cands = sample_unseen_candidates(data, np.array([0]), 5, np.random.default_rng(0), max_rounds=1)
    assert cands.tolist() == [[199, -1, -1, -1, -1]]


def test_user_who_saw_everything_is_an_error():
    data = Interactions(np.array([0, 0]), np.array([0, 1]), 1, 2)
    with pytest.raises(DataError, match="every item"):
        sample_negatives(data, np.array([0]), np.random.default_rng(0))
