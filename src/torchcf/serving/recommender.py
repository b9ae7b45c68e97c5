"""Recommendations from a saved model, in external ids: the library behind CLI and HTTP serving.

Follows implicit's contract: ``recommend(user_ids, k, exclude_seen=True, filter_items=None)``
returns ``(item_ids, scores)``; a scalar id gives 1-D arrays of length k, a list gives ``(n, k)``;
a batch returns exactly what the single calls would. ``k`` is clamped to the catalogue; a user
with fewer than ``k`` items left gets a row padded with score ``-inf`` and item id ``-1`` (``""``
for string ids). Scores are the model's logits (higher is better); the popularity fallback scores
with training interaction counts.

Unknown users follow ``unknown_user``: ``"error"`` raises ``UnknownIdError``; ``"popular"``
recommends the most popular items. Unknown items are always an error. A user not in training can
still be served from the items they interacted with: ``recommend_for_items`` fits a user vector
with everything else frozen (fold-in).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch.func import functional_call

from torchcf.data.loaders import load_item_info, load_title_map
from torchcf.errors import ConfigError, DataError
from torchcf.evaluation.protocols import rows_mask
from torchcf.models.base import ScoringModel
from torchcf.models.blend import Blend
from torchcf.serving.persistence import LoadedModel, load_model
from torchcf.training.losses import bce_with_logits

__all__ = ["UNKNOWN_USER_POLICIES", "FoldIn", "Recommender"]

UNKNOWN_USER_POLICIES = ("error", "popular")


@dataclass(frozen=True)
class FoldIn:
    """How a new user's vector is fitted, everything else frozen, on the model's own loss: BCE
    with the user's items as positives and ``negatives`` fresh uniform non-interacted items per
    positive, ``steps`` full-batch Adam steps from the mean training user.

    Few steps on purpose (a short history is easily overfitted); how close the folded-in users
    come to the trained users' test HR@10 is measured by ``benchmarks/fold_in.py``.
    """

    steps: int = 30
    learning_rate: float = 0.1
    negatives: int = 4
    weight_decay: float = 0.0
    seed: int = 0


class Recommender:
    """A trained model that answers "what should user X see next?" with external ids."""

    def __init__(
        self,
        loaded: LoadedModel,
        unknown_user: str = "error",
        titles: dict[Any, str] | None = None,
        fold_in: FoldIn | None = None,
        genres: dict[Any, str] | None = None,
    ) -> None:
        if unknown_user not in UNKNOWN_USER_POLICIES:
            raise ConfigError(
                f"unknown_user must be one of {', '.join(UNKNOWN_USER_POLICIES)}, "
                f"got {unknown_user!r}"
            )
        self.model = loaded.model.eval()
        self.user_map = loaded.user_map
        self.item_map = loaded.item_map
        self.seen: sp.csr_matrix = loaded.seen
        self.metadata = loaded.metadata
        self.unknown_user = unknown_user
        self.fold_in = fold_in or FoldIn()
        self._titles = titles
        self._genres = genres
        self.popularity = np.asarray(self.seen.sum(axis=0)).ravel().astype(np.float32)
        tensors = [*self.model.parameters(), *self.model.buffers()]
        self.device = tensors[0].device if tensors else torch.device("cpu")
        self._pad = "" if self.item_map.ids.dtype.kind in "OUS" else -1

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        unknown_user: str = "error",
        titles: str | Path | None = None,
    ) -> Recommender:
        """Load a run (or model) directory. ``titles``: a ``movies.dat``/``u.item`` file; by
        default the one recorded at training time, if it is still there."""
        loaded = load_model(path, device=device)
        info = _find_item_info(loaded, titles)
        if info is None:
            return cls(loaded, unknown_user=unknown_user)
        return cls(
            loaded,
            unknown_user=unknown_user,
            titles={item: title for item, (title, _) in info.items()},
            genres={item: genres for item, (_, genres) in info.items()},
        )

    # -- public API -----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def num_items(self) -> int:
        return self.model.num_items

    def recommend(
        self,
        user_ids: Any,
        k: int = 10,
        exclude_seen: bool = True,
        filter_items: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` item ids and scores for each user (see the module docstring)."""
        scalar = np.ndim(user_ids) == 0
        users = self._user_indices(user_ids)
        known = users >= 0
        with torch.no_grad():
            if known.all():
                scores = self.model.score_all(torch.from_numpy(users).to(self.device)).float()
            else:
                scores = torch.from_numpy(self.popularity).to(self.device).repeat(len(users), 1)
                if known.any():
                    rows = torch.from_numpy(np.flatnonzero(known)).to(self.device)
                    who = torch.from_numpy(users[known]).to(self.device)
                    scores[rows] = self.model.score_all(who).float()
        excluded = self._excluded(users if exclude_seen else None, len(users), filter_items)
        ids, top = self._top_k(scores, excluded, k)
        return (ids[0], top[0]) if scalar else (ids, top)

    def recommend_for_items(
        self,
        item_ids: Any,
        k: int = 10,
        exclude_seen: bool = True,
        filter_items: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` for a new user who interacted with ``item_ids`` (fold-in; 1-D results)."""
        items = np.unique(self.item_map.to_index(np.atleast_1d(item_ids), what="item"))
        if len(items) == 0:
            raise DataError("fold-in needs at least one item")
        scores = self.fold_in_scores(items)[None, :]
        excluded = self._excluded(None, 1, filter_items)
        if exclude_seen:
            excluded[0, torch.from_numpy(items)] = True
        ids, top = self._top_k(scores, excluded, k)
        return ids[0], top[0]

    def similar_items(self, item_ids: Any, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items most cosine-similar to each item (itself excluded)."""
        vectors = self.model.item_vectors()
        if vectors is None:
            raise ConfigError(
                f"{self.name} has no single item embedding to compare items with; "
                "use mf, gmf, mlp or ials"
            )
        scalar = np.ndim(item_ids) == 0
        items = self.item_map.to_index(np.atleast_1d(item_ids), what="item")
        with torch.no_grad():
            unit = torch.nn.functional.normalize(vectors.detach().float(), dim=1)
            query = torch.from_numpy(items).to(self.device)
            scores = unit[query] @ unit.T
        excluded = torch.zeros_like(scores, dtype=torch.bool)
        excluded[torch.arange(len(items)), query] = True
        ids, top = self._top_k(scores, excluded, k)
        return (ids[0], top[0]) if scalar else (ids, top)

    def score(self, user_ids: Any, item_ids: Any) -> np.ndarray:
        """Logits of (user, item) pairs, NumPy-broadcast; unknown ids are an error."""
        users = self.user_map.to_index(np.asarray(user_ids).ravel(), what="user")
        items = self.item_map.to_index(np.asarray(item_ids).ravel(), what="item")
        shape = np.broadcast_shapes(np.shape(user_ids), np.shape(item_ids))
        u = torch.from_numpy(users.reshape(np.shape(user_ids))).to(self.device)
        i = torch.from_numpy(items.reshape(np.shape(item_ids))).to(self.device)
        with torch.no_grad():
            out = self.model(*torch.broadcast_tensors(u, i)).float()
        return out.cpu().numpy().reshape(shape)

    def fold_in_scores(self, items: np.ndarray) -> torch.Tensor:
        """Fit a new user on dense item indices ``items``; ``(num_items,)`` logits.

        Fitted baselines answer in closed form (item-item models score the items directly,
        iALS solves the user's row exactly); the other models take ``FoldIn`` Adam steps.
        """
        return self._fold_in(self.model, items)

    def _fold_in(self, model: ScoringModel, items: np.ndarray) -> torch.Tensor:
        if isinstance(model, Blend):  # each part folds the user in its own way
            scores = [
                self._fold_in(part, items) if w > 0 else None
                for w, part in zip(model.weights, model.members, strict=True)
            ]
            return model.combine(scores)
        if not model.folds_in_rows and not model.user_tables:
            raise DataError(
                f"{model.name} cannot score a new user from items (its users are nodes of the "
                "training graph: retrain with them)"
            )
        if model.folds_in_rows:
            with torch.no_grad():
                index = torch.from_numpy(np.asarray(items, dtype=np.int64)).to(self.device)
                return model.fold_in_scores(index).float()
        params = self._fit_user(model, items)
        everything = torch.arange(self.num_items, device=self.device)[None, :]
        with torch.no_grad():
            zero = torch.zeros(1, 1, dtype=torch.long, device=self.device)
            return functional_call(model, params, (zero, everything))[0].float()

    def titles(self, item_ids: Any) -> list[str | None]:
        """Display titles of external item ids (``None`` where unknown or without titles)."""
        if self._titles is None:
            return [None] * len(np.atleast_1d(item_ids))
        return [self._titles.get(_plain(i)) for i in np.atleast_1d(item_ids)]

    def genres(self, item_ids: Any) -> list[str | None]:
        """Genres (``"Action|Comedy"``) of external item ids, ``None`` where unknown."""
        if self._genres is None:
            return [None] * len(np.atleast_1d(item_ids))
        return [self._genres.get(_plain(i)) for i in np.atleast_1d(item_ids)]

    def rows(self, item_ids: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
        """One 1-D result as ``[{"item", "score", "title"}]``, short-list padding dropped."""
        keep = np.isfinite(scores)
        ids, kept = np.asarray(item_ids)[keep], np.asarray(scores)[keep]
        return [
            {"item": _plain(i), "score": float(s), "title": t}
            for i, s, t in zip(ids, kept, self.titles(ids), strict=True)
        ]

    def card(self) -> dict[str, Any]:
        """What the model is: name, sizes, hyperparameters, data, protocol and metrics."""
        meta = self.metadata
        metrics = meta.get("metrics") or {}
        return {
            "model": self.name,
            "num_users": self.model.num_users,
            "num_items": self.num_items,
            "hparams": meta.get("hparams", {}),
            "train_config": meta.get("train_config", {}),
            "source": meta.get("source", {}),
            "protocol": metrics.get("protocol"),
            "metrics": {key: metrics[key] for key in ("selected", "best_test") if key in metrics},
            "torchcf_version": meta.get("torchcf_version"),
            "torch_version": meta.get("torch_version"),
            "unknown_user": self.unknown_user,
        }

    # -- internals ------------------------------------------------------------------------------

    def _user_indices(self, user_ids: Any) -> np.ndarray:
        ids = np.atleast_1d(np.asarray(user_ids))
        if ids.ndim != 1:
            raise DataError(f"user ids must be a scalar or a list, got shape {ids.shape}")
        return self.user_map.to_index(ids, strict=self.unknown_user == "error", what="user")

    def _excluded(self, users: np.ndarray | None, n: int, filter_items: Any) -> torch.Tensor:
        """``(n, num_items)`` mask of items not to recommend: seen by known ``users``, filtered."""
        mask = torch.zeros(n, self.num_items, dtype=torch.bool)
        if users is not None:
            known = np.flatnonzero(users >= 0)  # unknown (popular-fallback) users saw nothing
            mask[torch.from_numpy(known)] = rows_mask(self.seen, users[known], self.num_items)
        if filter_items is not None:
            filtered = self.item_map.to_index(np.atleast_1d(filter_items), what="item")
            mask[:, torch.from_numpy(filtered)] = True
        return mask.to(self.device)

    def _top_k(
        self, scores: torch.Tensor, excluded: torch.Tensor, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        k = min(int(k), scores.shape[1])
        masked = scores.masked_fill(excluded, float("-inf"))
        values, positions = torch.topk(masked, k, dim=1)
        top = values.cpu().numpy()
        ids = self.item_map.to_id(positions.cpu().numpy())
        padding = np.isneginf(top)
        if padding.any():
            ids = ids.astype(object) if self._pad == "" else ids
            ids[padding] = self._pad
        return ids, top

    def _fit_user(self, model: ScoringModel, items: np.ndarray) -> dict[str, torch.Tensor]:
        """Parameters of ``model`` with every user table replaced by one fitted row."""
        cfg = self.fold_in
        params = {name: p.detach() for name, p in model.named_parameters()}
        rows = {
            f"{table}.weight": params[f"{table}.weight"].mean(0, keepdim=True).clone()
            for table in model.user_tables
        }
        for row in rows.values():
            row.requires_grad_(True)
        optimizer = torch.optim.Adam(list(rows.values()), lr=cfg.learning_rate)
        rng = np.random.default_rng(cfg.seed)
        others = np.setdiff1d(np.arange(self.num_items), items)
        positives = torch.from_numpy(items)
        labels = torch.cat([torch.ones(len(items)), torch.zeros(len(items) * cfg.negatives)]).to(
            self.device
        )
        zero = torch.zeros(len(labels), dtype=torch.long, device=self.device)
        for _ in range(cfg.steps if len(others) else 0):
            negatives = torch.from_numpy(rng.choice(others, len(items) * cfg.negatives))
            batch = torch.cat([positives, negatives]).to(self.device)
            logits = functional_call(model, {**params, **rows}, (zero, batch))
            penalty = sum(row.pow(2).sum() for row in rows.values())
            loss = bce_with_logits(logits, labels) + cfg.weight_decay * penalty
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return {**params, **{name: row.detach() for name, row in rows.items()}}


def _plain(value: Any) -> Any:
    """A NumPy scalar id as the Python ``int``/``str`` it stands for (JSON-ready)."""
    return value.item() if isinstance(value, np.generic) else value


def _find_item_info(
    loaded: LoadedModel, titles: str | Path | None
) -> dict[Any, tuple[str, str]] | None:
    """Title and genres keyed by the model's external item ids, from ``titles`` or the
    training source's title file."""
    source = loaded.metadata.get("source") or {}
    if titles is None:
        recorded = source.get("titles")
        if not recorded or not Path(recorded).exists():
            return None
        titles = recorded
    by_movie = load_item_info(titles)
    id_map = source.get("title_ids")  # NCF splits renumber items: their ids → MovieID
    if id_map and Path(id_map).exists():
        return {
            item: by_movie[movie]
            for item, movie in load_title_map(id_map).items()
            if movie in by_movie
        }
    return by_movie
