"""Filters applied to interactions before splitting."""

from __future__ import annotations

import numpy as np

from torchcf.data.interactions import IdMap, Interactions
from torchcf.errors import DataError

__all__ = ["filter_users"]


def filter_users(data: Interactions, min_count: int) -> Interactions:
    """Drop users with fewer than ``min_count`` distinct items; re-index users and items densely."""
    if min_count <= 1:
        return data
    data = data.deduplicate()
    counts = data.user_counts()
    keep = counts[data.users] >= min_count
    if not keep.any():
        raise DataError(f"no user has at least {min_count} interactions")
    kept = data.subset(keep)
    user_ids, users = np.unique(kept.users, return_inverse=True)
    item_ids, items = np.unique(kept.items, return_inverse=True)
    user_map = IdMap(data.user_map.to_id(user_ids)) if data.user_map else IdMap(user_ids)
    item_map = IdMap(data.item_map.to_id(item_ids)) if data.item_map else IdMap(item_ids)
    return Interactions(
        users,
        items,
        len(user_ids),
        len(item_ids),
        timestamps=kept.timestamps,
        ratings=kept.ratings,
        user_map=user_map,
        item_map=item_map,
    )
