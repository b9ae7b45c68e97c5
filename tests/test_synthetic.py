"""The ML-20M-shaped synthetic generator: distinct pairs, power laws, bounds, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from torchcf.data.interactions import unique_sorted
from torchcf.data.split import leave_one_out
from torchcf.data.synthetic import ML20M_SHAPE, powerlaw_interactions
from torchcf.errors import ConfigError


def test_powerlaw_interactions_shape():
    data = powerlaw_interactions(2000, 800, 60_000, seed=3)
    keys = data.users * data.num_items + data.items
    assert len(unique_sorted(keys)) == len(data)  # no (user, item) pair twice
    assert 0.99 * 60_000 <= len(data) <= 60_000
    per_user = np.bincount(data.users, minlength=2000)
    assert per_user.min() >= 20 - 2 and per_user.max() <= 800 // 3
    popularity = np.sort(np.bincount(data.items, minlength=800))[::-1]
    assert popularity[0] > 20 * np.median(popularity)  # a few blockbusters, a long tail
    assert per_user.max() > 5 * np.median(per_user)  # a few very active users
    again = powerlaw_interactions(2000, 800, 60_000, seed=3)
    assert np.array_equal(again.users, data.users) and np.array_equal(again.items, data.items)
    split = leave_one_out(data, num_negatives=20, validation=False)
    assert len(split.test) == 2000


def test_powerlaw_interactions_rejects_impossible_sizes():
    with pytest.raises(ConfigError, match="20 each"):
        powerlaw_interactions(100, 50, 1000)
    with pytest.raises(ConfigError, match="third"):
        powerlaw_interactions(100, 90, 100 * 60)
    with pytest.raises(ConfigError, match="positive"):
        powerlaw_interactions(0, 10, 10)


def test_unique_sorted_matches_numpy():
    values = np.random.default_rng(0).integers(-50, 50, size=1000)
    assert np.array_equal(unique_sorted(values), np.unique(values))
    assert len(unique_sorted(np.zeros(0, dtype=np.int64))) == 0


def test_ml20m_shape_is_ml20m():
    assert ML20M_SHAPE == {
        "num_users": 138_493,
        "num_items": 26_744,
        "num_interactions": 20_000_263,
    }
