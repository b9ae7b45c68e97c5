"""Vectorised, seeded negative sampling: exact (never one of the user's known items).

Draws uniformly from the catalogue and redraws the entries that hit a known item (rejection
sampling, a few whole-array rounds). Rows that still fail after ``max_rounds`` (users who know
almost every item) are finished from their explicit complement, which is rare and small.
"""

from __future__ import annotations

import numpy as np
import torch

from torchcf.data.interactions import Interactions
from torchcf.errors import DataError

__all__ = ["sample_negatives", "sample_negatives_torch", "sample_unseen_candidates"]


def _unseen_counts(known: Interactions, users: np.ndarray) -> np.ndarray:
    distinct = np.diff(known.csr.indptr)
    return known.num_items - distinct[users]


def _complement(known: Interactions, user: int) -> np.ndarray:
    seen = known.csr.indices[known.csr.indptr[user] : known.csr.indptr[user + 1]]
    return np.setdiff1d(np.arange(known.num_items), seen, assume_unique=True)


def sample_negatives(
    known: Interactions,
    users: np.ndarray,
    rng: np.random.Generator,
    max_rounds: int = 12,
) -> np.ndarray:
    """One uniformly drawn item per entry of ``users`` that the user has not interacted with.

    Shape follows ``users`` (any shape). Draws are independent (with replacement across entries).
    Raises ``DataError`` if some user has interacted with every item.
    """
    users = np.asarray(users, dtype=np.int64)
    flat_users = users.reshape(-1)
    present = np.flatnonzero(np.bincount(flat_users, minlength=known.num_users))
    if flat_users.size and (_unseen_counts(known, present) == 0).any():
        raise DataError("a user has interacted with every item: no negative can be sampled")
    items = rng.integers(0, known.num_items, size=flat_users.shape, dtype=np.int64)
    bad = np.flatnonzero(known.contains(flat_users, items))
    for _ in range(max_rounds):
        if bad.size == 0:
            break
        items[bad] = rng.integers(0, known.num_items, size=bad.size, dtype=np.int64)
        bad = bad[known.contains(flat_users[bad], items[bad])]
    if bad.size:
        for user in np.unique(flat_users[bad]):
            rows = bad[flat_users[bad] == user]
            items[rows] = rng.choice(_complement(known, int(user)), size=rows.size)
    return items.reshape(users.shape)


def sample_negatives_torch(
    known_keys: torch.Tensor,
    users: torch.Tensor,
    num_items: int,
    generator: torch.Generator,
    max_rounds: int = 50,
) -> torch.Tensor:
    """``sample_negatives`` with tensors, on the tensors' device (a GPU: no host round trip).

    ``known_keys``: the sorted ``user * num_items + item`` keys of the known interactions
    (``Interactions.pair_keys``). Rejection rounds run until no draw hits a known item; a user
    who knows (almost) every item makes that take long, so after ``max_rounds`` it is an error.
    """
    device = users.device
    items = torch.randint(num_items, users.shape, generator=generator, device=device)
    if len(known_keys) == 0:
        return items
    last = len(known_keys) - 1

    def known(u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        keys = u * num_items + i
        return known_keys[torch.searchsorted(known_keys, keys).clamp_(max=last)] == keys

    bad = torch.nonzero(known(users, items)).squeeze(1)
    for _ in range(max_rounds):
        if len(bad) == 0:
            return items
        items[bad] = torch.randint(num_items, bad.shape, generator=generator, device=device)
        bad = bad[known(users[bad], items[bad])]
    raise DataError("a user has interacted with (almost) every item: no negative can be sampled")


def _duplicate_mask(rows: np.ndarray) -> np.ndarray:
    """True at every entry equal to an earlier entry of the same row."""
    order = np.argsort(rows, axis=1, kind="stable")
    ordered = np.take_along_axis(rows, order, axis=1)
    dup_sorted = np.zeros_like(rows, dtype=bool)
    dup_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    mask = np.zeros_like(rows, dtype=bool)
    np.put_along_axis(mask, order, dup_sorted, axis=1)
    return mask


def sample_unseen_candidates(
    known: Interactions,
    users: np.ndarray,
    num: int,
    rng: np.random.Generator,
    max_rounds: int = 20,
) -> np.ndarray:
    """For each user, ``num`` distinct items the user never interacted with: ``(len(users), num)``.

    A user with fewer than ``num`` unseen items gets all of them; the rest of the row is ``-1``.
    """
    users = np.asarray(users, dtype=np.int64)
    m = len(users)
    if num <= 0 or m == 0:
        return np.full((m, max(num, 0)), -1, dtype=np.int64)
    take = np.minimum(_unseen_counts(known, users), num)
    active = np.arange(num)[None, :] < take[:, None]
    out = rng.integers(0, known.num_items, size=(m, num), dtype=np.int64)
    # padding columns get distinct negative sentinels so they never count as duplicates
    sentinel = -1 - np.broadcast_to(np.arange(num), (m, num))
    out = np.where(active, out, sentinel)
    todo = np.arange(m)
    for _ in range(max_rounds):
        sub = out[todo]
        bad = known.contains(users[todo][:, None], np.maximum(sub, 0)) | _duplicate_mask(sub)
        bad &= active[todo]
        rows_bad = bad.any(axis=1)
        todo = todo[rows_bad]
        if todo.size == 0:
            break
        bad = bad[rows_bad]
        fresh = rng.integers(0, known.num_items, size=int(bad.sum()), dtype=np.int64)
        sub = out[todo]
        sub[bad] = fresh
        out[todo] = sub
    for row in todo:  # users who know nearly the whole catalogue: draw from the complement
        pool = _complement(known, int(users[row]))
        out[row, : take[row]] = rng.choice(pool, size=take[row], replace=False)
    out[~active] = -1
    return out
