"""Training negatives: exact, seeded, right shapes, and correct for near-complete users."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import planted
from torchcf.data.interactions import Interactions
from torchcf.data.sampling import sample_negatives, sample_negatives_torch, sample_unseen_candidates
from torchcf.errors import DataError


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


def test_device_sampler_is_exact_and_uniform():
    """The tensor sampler (what a GPU runs) never returns a known item and covers the rest."""
    data = planted(num_users=40, num_items=30, groups=3, per_user=12)
    users = torch.as_tensor(np.repeat(np.arange(40), 300))
    gen = torch.Generator().manual_seed(0)
    keys = torch.as_tensor(data.pair_keys)
    items = sample_negatives_torch(keys, users, data.num_items, gen)
    assert items.shape == users.shape
    assert not data.contains(users.numpy(), items.numpy()).any()
    counts = np.bincount(items[users == 0].numpy(), minlength=30)
    unseen = ~data.contains(np.zeros(30, dtype=np.int64), np.arange(30))
    assert (counts[unseen] > 0).all() and (counts[~unseen] == 0).all()
    assert counts[unseen].max() < 3 * counts[unseen].mean()


def test_device_sampler_gives_up_on_a_user_who_saw_everything():
    data = Interactions(np.zeros(5, dtype=np.int64), np.arange(5), 1, 5)
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(DataError, match="every item"):
        sample_negatives_torch(
            torch.as_tensor(data.pair_keys), torch.zeros(3, dtype=torch.int64), 5, gen
        )
