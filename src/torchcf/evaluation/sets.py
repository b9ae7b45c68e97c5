"""Held-out **sets** ranked among every item: the multi-item protocol of the graph-CF literature
(LightGCN, Mult-VAE, RecBole), pure and vectorised.

Each user holds out a set ``T`` of items; every item the user is not known to have (the mask:
training items, or training and validation items) is ranked. The ranking is total and
pessimistic: by score, then, among equal scores, the items *not* held out first (ties count
against the model, so a constant model scores 0), then held-out items by id. NaN scores rank
below every real score but above masked items. Per user, at each cut-off ``K``:

* ``recall@K = |top-K ∩ T| / |T|``; ``precision@K = |top-K ∩ T| / K``; ``hr@K = [top-K ∩ T ≠ ∅]``
* ``ndcg@K = Σ_{t ∈ T, pos_t < K} 1/log2(pos_t + 2) / Σ_{j < min(K, |T|)} 1/log2(j + 2)``
* ``mrr@K = 1 / (pos + 1)`` of the first hit (0 without one)
* ``map@K = Σ_{hits, j-th in order} (j / (pos + 1)) / min(K, |T|)``

``pos_t`` is the 0-based position of ``t`` in that ranking. Only positions below the largest
cut-off matter, so users are scored in blocks (memory bounded by ``BLOCK_FLOATS``) and only each
block's top-``K`` is kept: a held-out item scoring below the block's ``K``-th best is a miss at
every cut-off. Figures are the means of the per-user values over users with a non-empty set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from torchcf.evaluation.metrics import metric_key

__all__ = [
    "BLOCK_FLOATS",
    "SET_METRICS",
    "HeldOutSets",
    "set_metrics",
    "set_positions",
    "set_summary",
]

BLOCK_FLOATS = 2**23 - 2**12  # scores per block of users: under 32 MiB, the CLI's mmap threshold
SET_METRICS = ("recall", "ndcg", "precision", "hr", "mrr", "map")
_LOWEST = torch.finfo(torch.float32).min  # NaN / −inf scores: below every real score, above masked
_HIGHEST = torch.finfo(torch.float32).max


@dataclass(frozen=True, eq=False)
class HeldOutSets:
    """Each user's held-out set, CSR-like: ``users`` ``(U,)`` sorted and distinct, ``indptr``
    ``(U + 1,)``, ``items`` ``(nnz,)`` sorted within each user."""

    name: str
    users: np.ndarray
    indptr: np.ndarray
    items: np.ndarray

    @classmethod
    def from_pairs(cls, name: str, users: np.ndarray, items: np.ndarray) -> HeldOutSets:
        """The sets of (user, item) pairs (duplicates kept once)."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        order = np.lexsort((items, users))
        users, items = users[order], items[order]
        fresh = np.ones(len(users), dtype=bool)
        fresh[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
        users, items = users[fresh], items[fresh]
        distinct, starts = np.unique(users, return_index=True)
        indptr = np.append(starts, len(users)).astype(np.int64)
        return cls(name, distinct, indptr, items)

    def __len__(self) -> int:
        return len(self.users)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.indptr)

    def share(self, lo: int, hi: int) -> HeldOutSets:
        """Users ``lo:hi`` (a rank's share in a distributed run)."""
        start, stop = int(self.indptr[lo]), int(self.indptr[hi])
        return HeldOutSets(
            self.name, self.users[lo:hi], self.indptr[lo : hi + 1] - start, self.items[start:stop]
        )


def row_entries(csr: sp.csr_matrix, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored entries of ``csr``'s ``rows``: each entry's position in ``rows`` and its
    column. Straight from ``indptr``/``indices`` (no SciPy row slicing): the positions are
    ``start_r + 0 … count_r − 1`` for every row, in one vectorised expression."""
    rows = np.asarray(rows, dtype=np.int64)
    starts, counts = csr.indptr[rows], csr.indptr[rows + 1] - csr.indptr[rows]
    position = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
    row_of = torch.from_numpy(np.repeat(np.arange(len(rows)), counts))
    return row_of, torch.from_numpy(csr.indices[position].astype(np.int64))


def _block_positions(
    scores: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, kmax: int
) -> tuple[torch.Tensor, Any]:
    """Positions of a block's held-out items, ``(B, T)`` (``kmax`` = not in the top ``kmax``),
    and the block's top-``kmax`` (``torch.topk``'s values and indices, ``(B, kmax)``).

    ``scores`` ``(B, I)``: masked items −inf, every other score finite; ``targets`` ``(B, T)``
    held-out items (padding where not ``valid``), sorted within a row.
    """
    width = min(kmax, scores.shape[1])
    top = torch.topk(scores, width, dim=1)
    ascending = top.values.flip(1).contiguous()  # (B, width)
    floor = top.values[:, -1:]  # the width-th best score of each user
    s = scores.gather(1, targets)  # (B, T)
    s = torch.where(valid, s, torch.full_like(s, -math.inf)).contiguous()
    above = width - torch.searchsorted(ascending, s, right=True)  # #{items scoring > s}
    equal = width - torch.searchsorted(ascending, s, right=False) - above
    tied = valid & (s == floor)  # equal scores may extend past the top-width: count them all
    if tied.any():
        rows = tied.any(dim=1).nonzero().squeeze(1)
        full = (scores[rows] == floor[rows]).sum(dim=1, keepdim=True)
        equal[rows] = torch.where(tied[rows], full.expand_as(equal[rows]), equal[rows])
    # held-out items tied with each other: ordered by id (targets are sorted within a row)
    keyed = torch.where(valid, -s, torch.full_like(s, math.inf))
    order_keys, order = torch.sort(keyed, dim=1, stable=True)
    first = torch.searchsorted(order_keys, order_keys, right=False)
    last = torch.searchsorted(order_keys, order_keys, right=True)
    place = torch.arange(s.shape[1], device=s.device).expand_as(s)
    before = torch.empty_like(place).scatter_(1, order, place - first)
    together = torch.empty_like(place).scatter_(1, order, last - first)
    position = above + (equal - together) + before
    inside = valid & (s >= floor) & (position < kmax)
    return torch.where(inside, position, torch.full_like(position, kmax)), top


def _masked_scores(
    scores: torch.Tensor,
    masked: tuple[torch.Tensor, torch.Tensor],
    targets: torch.Tensor,
    valid: torch.Tensor,
    finite: bool,
) -> torch.Tensor:
    """``scores`` with the masked items at −inf, in place (a held-out item is never masked);
    ``finite``: NaN and ±inf scores made the lowest real score first (the rare careful path)."""
    if finite:
        scores = torch.nan_to_num(scores, nan=_LOWEST, posinf=_HIGHEST, neginf=_LOWEST)
    kept = scores.gather(1, targets)
    scores.index_put_(masked, torch.tensor(-math.inf, device=scores.device))
    rows = torch.arange(len(targets), device=scores.device)[:, None].expand_as(targets)
    scores[rows[valid], targets[valid]] = kept[valid]
    return scores


@torch.no_grad()
def set_positions(
    model: torch.nn.Module,
    sets: HeldOutSets,
    exclude: sp.csr_matrix,
    kmax: int,
    device: torch.device | str = "cpu",
    batch_users: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each held-out item's 0-based position in its user's ranking (``(nnz,)``; ``kmax`` when
    it is not in the top ``kmax``) and each user's top-``kmax`` items ``(U, kmax)`` (fewer
    columns when the catalogue is smaller).

    ``exclude``: users × items, the masked items (a held-out item is never masked). ``model``
    scores through ``score_all(users) -> (B, num_items)``. A block whose top or held-out
    scores are not all finite is scored again with NaN and ±inf replaced (NaN ranks last).
    """
    was_training = model.training
    model.eval()
    num_items = int(model.num_items)  # type: ignore[arg-type]
    if batch_users is None:
        batch_users = max(1, BLOCK_FLOATS // max(1, num_items))
    positions = np.full(len(sets.items), kmax, dtype=np.int64)
    lists = np.zeros((len(sets), min(kmax, num_items)), dtype=np.int64)
    sizes = sets.sizes
    for lo in range(0, len(sets), batch_users):
        hi = min(lo + batch_users, len(sets))
        start, stop = int(sets.indptr[lo]), int(sets.indptr[hi])
        counts = sizes[lo:hi]
        row = np.repeat(np.arange(hi - lo), counts)
        column = np.arange(stop - start) - np.repeat(sets.indptr[lo:hi] - start, counts)
        width = max(int(counts.max(initial=0)), 1)
        targets = torch.zeros(hi - lo, width, dtype=torch.long)
        valid = torch.zeros(hi - lo, width, dtype=torch.bool)
        targets[row, column] = torch.from_numpy(sets.items[start:stop])
        valid[row, column] = True
        targets, valid = targets.to(device), valid.to(device)
        rows, items = row_entries(exclude, sets.users[lo:hi])
        masked = (rows.to(device), items.to(device))
        users = torch.as_tensor(sets.users[lo:hi], device=device)
        for finite in (False, True):
            scores = model.score_all(users).float()  # type: ignore[operator]
            scores = _masked_scores(scores, masked, targets, valid, finite)
            pos, top = _block_positions(scores, targets, valid, kmax)
            values = torch.cat([top.values.flatten(), scores.gather(1, targets)[valid]])
            if finite or bool(torch.isfinite(values).all()):
                break  # else: NaN or ±inf scores (or masked items in a small catalogue's top)
        positions[start:stop] = pos.cpu()[row, column].numpy()
        lists[lo:hi] = top.indices.cpu().numpy()
    model.train(was_training)
    return positions, lists


def _discounts(n: int) -> np.ndarray:
    """``1 / log2(j + 2)`` for ``j = 0 … n − 1``."""
    return 1.0 / np.log2(np.arange(n, dtype=np.float64) + 2.0)


def set_metrics(
    positions: np.ndarray, indptr: np.ndarray, ks: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """Per-user values of every metric of ``SET_METRICS`` at each cut-off of ``ks``, keyed
    ``recall@20``; from the held-out items' positions (``set_positions``) grouped by ``indptr``.
    A user with an empty set gets NaN."""
    sizes = np.diff(indptr)
    users = len(sizes)
    owner = np.repeat(np.arange(users), sizes)
    pos = np.asarray(positions, dtype=np.int64)
    # each user's hits in order of position: the j-th hit (1-based) contributes j/(pos+1) to MAP
    order = np.lexsort((pos, owner))
    sorted_pos = pos[order]
    nth = np.arange(len(pos)) - np.repeat(indptr[:-1], sizes) + 1
    discount = _discounts(int(max(ks, default=0)) + 1)
    ideal = np.concatenate([[0.0], np.cumsum(discount)])
    out: dict[str, np.ndarray] = {}
    empty = sizes == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        for k in ks:
            hit = sorted_pos < k
            hits = np.bincount(owner, weights=hit, minlength=users)
            gain = np.where(hit, discount[np.minimum(sorted_pos, k)], 0.0)
            dcg = np.bincount(owner, weights=gain, minlength=users)
            first = np.full(users, np.iinfo(np.int64).max)
            np.minimum.at(first, owner, np.where(hit, sorted_pos, np.iinfo(np.int64).max))
            reciprocal = np.where(first < k, 1.0 / (np.minimum(first, k) + 1.0), 0.0)
            precision_at = np.where(hit, nth / (sorted_pos + 1.0), 0.0)
            ap = np.bincount(owner, weights=precision_at, minlength=users)
            cut = np.minimum(sizes, k)
            values = {
                "recall": hits / sizes,
                "ndcg": dcg / ideal[cut],
                "precision": hits / k,
                "hr": (hits > 0).astype(np.float64),
                "mrr": reciprocal,
                "map": ap / cut,
            }
            for name in SET_METRICS:
                out[metric_key(name, k)] = np.where(empty, np.nan, values[name])
    return out


def set_summary(
    per_user: dict[str, np.ndarray],
    lists: np.ndarray,
    num_items: int,
    ks: tuple[int, ...],
) -> dict[str, float]:
    """The figures: each metric's mean over users with a held-out item, and item coverage@K
    (the share of the catalogue in any user's top-K)."""
    out = {
        key: float(np.nanmean(values)) if len(values) else math.nan
        for key, values in per_user.items()
    }
    for k in ks:
        shown = np.unique(lists[:, :k]) if lists.size else np.zeros(0)
        out[metric_key("coverage", k)] = len(shown) / max(1, num_items)
    return out


def per_user_table(
    sets: HeldOutSets, per_user: dict[str, np.ndarray], protocol: str = "full"
) -> pd.DataFrame:
    """One row per user of ``sets``: the held-out set's size and every metric's value."""
    return pd.DataFrame(
        {
            "holdout": sets.name,
            "protocol": protocol,
            "user": np.asarray(sets.users, dtype=np.int64),
            "held_out": sets.sizes.astype(np.int64),
            **per_user,
        }
    )


__all__ += ["per_user_table", "row_entries"]
