"""Synthetic implicit feedback with the shape of real data sets, for scale tests and benchmarks.

``powerlaw_interactions`` draws users' activity and items' popularity from power laws, like
MovieLens: a few blockbusters and a long tail of items, most users with a few dozen ratings and a
few with thousands. ``ML20M_SHAPE`` is ML-20M's size (138,493 users, 26,744 items, 20,000,263
ratings, at least 20 per user).
"""

from __future__ import annotations

import numpy as np

from torchcf.data.interactions import Interactions, unique_sorted
from torchcf.errors import ConfigError

__all__ = ["ML20M_SHAPE", "powerlaw_interactions"]

ML20M_SHAPE = {"num_users": 138_493, "num_items": 26_744, "num_interactions": 20_000_263}


def _user_counts(
    num_users: int, num_items: int, total: int, minimum: int, rng: np.random.Generator
) -> np.ndarray:
    """Per-user interaction counts: ``minimum`` plus a Pareto tail, summing to ``total``."""
    extra = rng.pareto(1.5, size=num_users)
    budget = total - minimum * num_users
    counts = minimum + np.floor(extra / extra.sum() * budget).astype(np.int64)
    cap = max(minimum, num_items // 3)  # nobody rates more than a third of the catalogue
    counts = np.minimum(counts, cap)
    short = total - int(counts.sum())
    while short > 0:  # hand the rounding remainder (and any capped excess) to random users
        room = np.flatnonzero(counts < cap)
        lucky = rng.choice(room, size=min(short, len(room)), replace=False)
        counts[lucky] += 1
        short -= len(lucky)
    return counts


def powerlaw_interactions(
    num_users: int,
    num_items: int,
    num_interactions: int,
    item_exponent: float = 1.0,
    min_per_user: int = 20,
    seed: int = 0,
) -> Interactions:
    """``num_interactions`` distinct (user, item) pairs with power-law activity and popularity.

    Item ``r`` (in a random order of ranks) is drawn with probability ∝ ``(r + 1)^-item_exponent``;
    user activity is ``min_per_user`` plus a Pareto(1.5) tail, at most a third of the items.
    A repeated draw may leave a user a pair or two short (the total is then a hair under
    ``num_interactions``). Timestamps give each user's pairs a random order, so
    leave-one-out splits have a "latest" item per user.
    """
    if min(num_users, num_items, num_interactions) <= 0:
        raise ConfigError("num_users, num_items and num_interactions must be positive")
    if num_interactions < min_per_user * num_users:
        raise ConfigError(
            f"{num_interactions} interactions cannot give {num_users} users {min_per_user} each"
        )
    if num_interactions > num_users * max(min_per_user, num_items // 3):
        raise ConfigError("more interactions than a third of all (user, item) pairs")
    rng = np.random.default_rng(seed)
    counts = _user_counts(num_users, num_items, num_interactions, min_per_user, rng)
    popularity = (np.arange(num_items) + 1.0) ** -item_exponent
    popularity = popularity[rng.permutation(num_items)]
    # a bipartite configuration model: user "stubs" (one per wanted pair) are matched with item
    # stubs drawn by popularity; a user drawing an item twice keeps it once and is topped up
    # with uniformly drawn items (which rarely repeat), twice at most
    users = np.repeat(np.arange(num_users, dtype=np.int64), counts)
    items = rng.choice(num_items, size=len(users), p=popularity / popularity.sum())
    keys = unique_sorted(users * num_items + items)
    for _ in range(2):
        need = counts - np.bincount(keys // num_items, minlength=num_users)
        if not need.any():
            break
        users = np.repeat(np.arange(num_users, dtype=np.int64), need)
        items = rng.integers(0, num_items, size=len(users))
        keys = unique_sorted(np.concatenate([keys, users * num_items + items]))
    users, items = keys // num_items, keys % num_items
    timestamps = rng.permutation(len(keys)).astype(np.int64)
    return Interactions(users, items, num_users, num_items, timestamps=timestamps)
