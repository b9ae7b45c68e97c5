"""What the page in ``torchcf serve`` shows: a user's history beside their recommendations, why
each was recommended, whether the held-out items made the list; title search for a new user.

``History`` holds each user's training items (most recent first where the data has timestamps)
and held-out items; it comes from the run's rebuilt split, or (a bare model directory, moved data)
from the model's own ``seen`` matrix without held-out items. ``Explorer`` answers with the same
``Recommender`` as the JSON API: one implementation behind the page and the API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from torchcf.data.interactions import Interactions
from torchcf.data.split import Split
from torchcf.errors import ConfigError
from torchcf.serving.recommender import Recommender, _plain

__all__ = ["Explorer", "History"]


@dataclass(frozen=True)
class History:
    """Per user (dense index): training items in display order, and held-out items by holdout."""

    order: str
    items: dict[int, np.ndarray]
    held_out: dict[int, list[tuple[str, int]]] = field(default_factory=dict)

    @classmethod
    def from_split(cls, split: Split) -> History:
        train = split.train
        held: dict[int, list[tuple[str, int]]] = {}
        for holdout in (split.test, split.validation):
            if holdout is None:
                continue
            for u, i in zip(holdout.users.tolist(), holdout.items.tolist(), strict=True):
                held.setdefault(u, []).append((holdout.name, i))
        if train.timestamps is not None:
            return cls("most recent first", _per_user(train, train.timestamps), held)
        order = "in the data's order, last line first (the data has no timestamps)"
        return cls(order, _per_user(train, np.arange(len(train))), held)

    @classmethod
    def from_seen(cls, seen: sp.csr_matrix) -> History:
        """From a model's training matrix alone: no order, no held-out items."""
        csr = seen.tocsr()
        items = {u: csr.indices[csr.indptr[u] : csr.indptr[u + 1]] for u in range(csr.shape[0])}
        return cls("by item id (the run's data is not available: no order, no held-out items)",
                   items)  # fmt: skip


def _per_user(train: Interactions, time: np.ndarray) -> dict[int, np.ndarray]:
    """Each user's items, latest ``time`` first (ties: later row first)."""
    rows = np.arange(len(train))
    order = np.lexsort((-rows, -np.asarray(time, dtype=np.float64), train.users))
    users, items = train.users[order], train.items[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0)
    bounds = np.r_[starts, len(users)].astype(np.int64)
    return {int(users[a]): items[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)}


class Explorer:
    """The page's questions, answered with ``rec`` and ``history``."""

    def __init__(self, rec: Recommender, history: History, seed: int = 0) -> None:
        self.rec = rec
        self.history = history
        self.rng = np.random.default_rng(seed)
        self._known = np.flatnonzero(np.diff(rec.seen.tocsr().indptr) > 0)
        titles = rec.titles(rec.item_map.ids)
        self._search = [(index, (title or "").casefold()) for index, title in enumerate(titles)]

    def random_user(self) -> Any:
        """A random user with training interactions (external id)."""
        if not len(self._known):
            raise ConfigError("the model has no user with training interactions")
        return _plain(self.rec.user_map.to_id(self.rng.choice(self._known, size=1))[0])

    def item(self, index: int) -> dict[str, Any]:
        """``{"item", "title", "genres"}`` of a dense item index."""
        ids = self.rec.item_map.to_id(np.array([index]))
        return {
            "item": _plain(ids[0]),
            "title": self.rec.titles(ids)[0],
            "genres": self.rec.genres(ids)[0],
        }

    def search(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        """Items whose title contains ``query`` (case-insensitive) or whose id is ``query``."""
        text = query.strip().casefold()
        if not text:
            return []
        found = [index for index, title in self._search if text in title]
        exact = self.rec.item_map.to_index(np.array([query.strip()]), strict=False)
        if exact[0] >= 0 and int(exact[0]) not in found:
            found.insert(0, int(exact[0]))
        return [self.item(index) for index in found[:limit]]

    def user(self, user_id: Any, k: int = 10, history_limit: int = 50) -> dict[str, Any]:
        """A known user's page: history, the top ``k`` with their explanations, held-out items
        and whether each made the list. Unknown users are ``UnknownIdError``."""
        index = int(self.rec.user_map.to_index(np.array([user_id]), what="user")[0])
        ids, scores = self.rec.recommend(user_id, k=k)
        rows = self.rec.rows(ids, scores)
        history = self.history.items.get(index, np.zeros(0, dtype=np.int64))
        listed = [int(i) for i in self.rec.item_map.to_index(ids[np.isfinite(scores)])]
        because = self._because(listed, history)
        genres = self.rec.genres([row["item"] for row in rows])
        for row, reasons, kind in zip(rows, because, genres, strict=True):
            row["genres"] = kind
            named = [self.item(i) for i in reasons]
            row["because"] = [n["title"] or str(n["item"]) for n in named]
        held = {i: name for name, i in self.history.held_out.get(index, [])}
        shown = [
            {**self.item(int(i)), "held_out": held.get(int(i))} for i in history[:history_limit]
        ]
        held_rows = [
            {**self.item(i), "holdout": name, "position": listed.index(i) + 1 if i in listed
             else None}
            for name, i in self.history.held_out.get(index, [])
        ]  # fmt: skip
        for row, item in zip(rows, listed, strict=True):
            row["held_out"] = held.get(item)
        return {
            "user": _plain(self.rec.user_map.to_id(np.array([index]))[0]),
            "history": shown,
            "history_total": int(len(history)),
            "history_order": self.history.order,
            "held_out": held_rows,
            "recommendations": rows,
            "k": k,
        }

    def _because(self, listed: list[int], history: np.ndarray, top: int = 2) -> list[list[int]]:
        """For each listed item, the ``top`` history items most cosine-similar to it (item
        vectors); empty lists for a model without item vectors or a user without history."""
        vectors = self.rec.model.item_vectors()
        if vectors is None or not len(history) or not listed:
            return [[] for _ in listed]
        with torch.no_grad():
            unit = torch.nn.functional.normalize(vectors.detach().float(), dim=1)
            past = torch.from_numpy(np.asarray(history, dtype=np.int64))
            sims = unit[torch.tensor(listed)] @ unit[past].T
            best = torch.topk(sims, min(top, len(history)), dim=1)
        return [
            [int(past[j]) for j, s in zip(cols.tolist(), vals.tolist(), strict=True) if s > 0]
            for cols, vals in zip(best.indices, best.values, strict=True)
        ]
