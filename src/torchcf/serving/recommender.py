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

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch.func import functional_call

from torchcf.data.loaders import load_item_info, load_title_map
from torchcf.errors import ConfigError, DataError
from torchcf.evaluation.sets import row_entries
from torchcf.models.base import ScoringModel
from torchcf.models.blend import Blend
from torchcf.serving.ann import SAMPLE as ANN_SAMPLE
from torchcf.serving.ann import (
    AnnIndex,
    build_index,
    load_indexes,
    save_indexes,
    weights_digest,
)
from torchcf.serving.persistence import LoadedModel, load_model, model_directory
from torchcf.serving.vectors import dot_tables
from torchcf.training.losses import bce_with_logits

__all__ = ["UNKNOWN_USER_POLICIES", "FoldIn", "Recommender"]

UNKNOWN_USER_POLICIES = ("error", "popular")
SCORES_AT_ONCE = 1 << 26  # exact scoring works through users in blocks of this many scores


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
        self.ann: dict[str, AnnIndex] = {}  # approximate top-k, when use_ann attached it
        self._dot_users: np.ndarray | None = None
        self._seen_keys: np.ndarray | None = None
        self._degrees = np.diff(self.seen.indptr)
        self._unit: torch.Tensor | None = None

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        unknown_user: str = "error",
        titles: str | Path | None = None,
        ann: bool = False,
    ) -> Recommender:
        """Load a run (or model) directory. ``titles``: a ``movies.dat``/``u.item`` file; by
        default the one recorded at training time, if it is still there. ``ann``: answer
        through the directory's ANN index, built there first if there is none."""
        loaded = load_model(path, device=device)
        info = _find_item_info(loaded, titles)
        rec = cls(
            loaded,
            unknown_user=unknown_user,
            titles=None if info is None else {i: title for i, (title, _) in info.items()},
            genres=None if info is None else {i: genres for i, (_, genres) in info.items()},
        )
        if ann:
            rec.use_ann(model_directory(path))
        return rec

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
        """Top-``k`` item ids and scores for each user (see the module docstring); through the
        ANN index when one is attached (``use_ann``) and every user is known."""
        scalar = np.ndim(user_ids) == 0
        users = self._user_indices(user_ids)
        k = self._check_k(k)
        filtered = self._filtered(filter_items)
        if self.ann.get("recommend") is not None and (users >= 0).all():
            positions, top = self._ann_recommend(users, k, exclude_seen, filtered)
        else:
            positions, top = self._exact_recommend(users, k, exclude_seen, filtered)
        ids = self._ids(positions, top)
        return (ids[0], top[0]) if scalar else (ids, top)

    def recommend_all(
        self,
        users: Any = None,
        k: int = 10,
        exclude_seen: bool = True,
        filter_items: Any = None,
        chunk: int | None = None,
    ) -> Iterator[pd.DataFrame]:
        """Every user's top ``k`` (or ``users``'), as long tables (``user``, ``rank``, ``item``,
        ``score``) of ``chunk`` users at a time: memory stays bounded however many users
        there are. Ids are checked before the first chunk; padding (users with fewer than
        ``k`` items left) is dropped."""
        ids = self.user_map.ids if users is None else np.asarray(users, dtype=object)
        self._user_indices(ids)  # unknown ids fail here, before any work
        k = self._check_k(k)
        self._filtered(filter_items)
        if chunk is None:  # ~2^26 scores a chunk exactly; the index needs far less
            exact = self.ann.get("recommend") is None
            chunk = max(1, SCORES_AT_ONCE // self.num_items) if exact else 4096
        return self._chunks(ids, chunk, k, exclude_seen, filter_items)

    def _chunks(
        self, ids: np.ndarray, chunk: int, k: int, exclude_seen: bool, filter_items: Any
    ) -> Iterator[pd.DataFrame]:
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            items, scores = self.recommend(part, k, exclude_seen, filter_items)
            keep = np.isfinite(scores)
            frame = pd.DataFrame(
                {
                    "user": np.repeat(self._canonical_users(part), keep.sum(axis=1)),
                    "rank": np.nonzero(keep)[1].astype(np.int32) + 1,
                    "item": items[keep],
                    "score": scores[keep],
                }
            )
            frame.attrs["users"] = len(part)
            yield frame

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
        filtered = self._filtered(filter_items)
        k = self._check_k(k)
        scores = self.fold_in_scores(items).clone()
        scores[torch.from_numpy(filtered).to(self.device)] = float("-inf")
        if exclude_seen:
            scores[torch.from_numpy(items).to(self.device)] = float("-inf")
        values, positions = torch.topk(scores, min(k, self.num_items))
        top = values.cpu().numpy()
        return self._ids(positions.cpu().numpy(), top), top

    def similar_items(self, item_ids: Any, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items most cosine-similar to each item (itself excluded); through the
        ANN index when one is attached."""
        scalar = np.ndim(item_ids) == 0
        items = self.item_map.to_index(np.atleast_1d(item_ids), what="item")
        k = self._check_k(k)
        if self.ann.get("similar") is not None:
            positions, top = self._ann_similar(items, k)
        else:
            positions, top = self._exact_similar(items, k)
        ids = self._ids(positions, top)
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
            "ann": {kind: ann.info for kind, ann in self.ann.items()} or None,
        }

    # -- approximate top-k --------------------------------------------------------------------

    def ann_vectors(self) -> dict[str, np.ndarray]:
        """The exact item vectors each index kind holds: the model's inner-product item vectors
        (``recommend``) and its unit item vectors (``similar``), where the model has them;
        a ``ConfigError`` naming the models that do when it has neither."""
        out: dict[str, np.ndarray] = {}
        vectors = self.model.dot_vectors()
        if vectors is not None:
            users, items = (v.detach().float().cpu().contiguous().numpy() for v in vectors)
            self._dot_users, out["recommend"] = users, items
        if vectors is not None and self.model.item_vectors() is not None:
            out["similar"] = self._unit_items().cpu().contiguous().numpy()
        if not out:
            dot_tables(self.model)  # raises, naming the inner-product models
        return out

    def use_ann(self, model_dir: Path, target_recall: float = 0.97, rebuild: bool = False) -> None:
        """Answer ``recommend`` and ``similar_items`` through the ANN index in ``model_dir``,
        built (and saved there) when there is none or ``rebuild``; a stale one is refused."""
        vectors = self.ann_vectors()
        digest = weights_digest(model_dir)
        indexes = None if rebuild else load_indexes(model_dir, vectors, digest)
        if indexes is None:
            indexes = self.build_ann(vectors, target_recall)
            save_indexes(model_dir, indexes, digest)
        self.ann = indexes

    def build_ann(
        self, vectors: dict[str, np.ndarray], target_recall: float = 0.97
    ) -> dict[str, AnnIndex]:
        """Fresh indexes over ``vectors`` (``ann_vectors``), nprobe tuned to ``target_recall``."""
        rng = np.random.default_rng(0)
        users = np.sort(rng.permutation(self.model.num_users)[:ANN_SAMPLE])
        items = np.sort(rng.permutation(self.num_items)[:ANN_SAMPLE])
        k = min(10, self.num_items)
        truth = {
            "recommend": lambda: self._exact_recommend(users, k, True, np.zeros(0, np.int64)),
            "similar": lambda: self._exact_similar(items, k),
        }
        built = {}
        for kind, table in vectors.items():
            exact = truth[kind]()

            def recall_of(ann: AnnIndex, kind: str = kind, exact: Any = exact) -> tuple[float, int]:
                self.ann = {kind: ann}
                found = (self._ann_recommend if kind == "recommend" else self._ann_similar)(
                    users if kind == "recommend" else items, k, fallback=False
                )
                self.ann = {}
                return _recall(exact, found), len(exact[0])

            built[kind] = build_index(kind, table, recall_of, target_recall)
        return built

    def _ann_recommend(
        self,
        users: np.ndarray,
        k: int,
        exclude_seen: bool = True,
        filtered: np.ndarray | None = None,
        fallback: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        filtered = np.zeros(0, np.int64) if filtered is None else filtered
        if self._seen_keys is None:  # (user, item) keys of the seen pairs, sorted, made once
            rows = np.repeat(np.arange(self.seen.shape[0], dtype=np.int64), self._degrees)
            self._seen_keys = np.sort(rows * self.num_items + self.seen.indices)
        seen = self._seen_keys

        def excluded(rows: np.ndarray, candidates: np.ndarray) -> np.ndarray:
            drop = np.isin(candidates, filtered) if len(filtered) else candidates < 0
            if exclude_seen and len(seen):
                keys = users[rows, None] * self.num_items + candidates
                at = np.minimum(np.searchsorted(seen, keys), len(seen) - 1)
                drop |= seen[at] == keys
            return drop

        counts = self._degrees[users] if exclude_seen else np.zeros(len(users), np.int64)
        assert self._dot_users is not None
        positions, top, short, heavy = self.ann["recommend"].top_k(
            self._dot_users[users], min(k, self.num_items), excluded, counts + len(filtered)
        )
        redo = np.flatnonzero((short & fallback) | heavy)
        if len(redo):  # the index came up short (or was not asked): scored exactly
            positions[redo], top[redo] = self._exact_recommend(
                users[redo], k, exclude_seen, filtered
            )
        return positions, top

    def _ann_similar(
        self, items: np.ndarray, k: int, fallback: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        ann = self.ann["similar"]
        positions, top, short, _ = ann.top_k(
            ann.vectors[items],
            min(k, self.num_items),
            lambda rows, c: c == items[rows, None],
            np.ones(len(items), np.int64),
        )
        redo = np.flatnonzero(short & fallback)
        if len(redo):
            positions[redo], top[redo] = self._exact_similar(items[redo], k)
        return positions, top

    # -- internals ------------------------------------------------------------------------------

    def _user_indices(self, user_ids: Any) -> np.ndarray:
        ids = np.atleast_1d(np.asarray(user_ids))
        if ids.ndim != 1:
            raise DataError(f"user ids must be a scalar or a list, got shape {ids.shape}")
        return self.user_map.to_index(ids, strict=self.unknown_user == "error", what="user")

    def _canonical_users(self, ids: np.ndarray) -> np.ndarray:
        """Known ids as the training data spells them (``"7"`` → ``7``), unknown ones as given."""
        index = self._user_indices(ids)
        known = self.user_map.ids[np.maximum(index, 0)]
        return known if (index >= 0).all() else np.where(index >= 0, known, ids)

    @staticmethod
    def _check_k(k: Any) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        return int(k)

    def _filtered(self, filter_items: Any) -> np.ndarray:
        """Dense indices of ``filter_items`` (unknown ids are an error), sorted and unique."""
        if filter_items is None:
            return np.zeros(0, dtype=np.int64)
        return np.unique(self.item_map.to_index(np.atleast_1d(filter_items), what="item"))

    def _exact_recommend(
        self, users: np.ndarray, k: int, exclude_seen: bool, filtered: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Score every item for ``users``, ~2^26 scores at a time (bounded memory on large
        catalogues), seen (of known users) and filtered items set to ``-inf`` in place."""
        return self._in_blocks(
            users, lambda part: self._exact_part(part, k, exclude_seen, filtered)
        )

    def _in_blocks(
        self, rows: np.ndarray, top: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``top`` (positions and scores of a block of queries) over ``rows`` in blocks of
        ~2^26 scores, concatenated: exact scoring's memory is bounded on large catalogues."""
        step = max(1, SCORES_AT_ONCE // self.num_items)
        parts = [top(rows[s : s + step]) for s in range(0, max(len(rows), 1), step)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    @torch.no_grad()
    def _exact_part(
        self, users: np.ndarray, k: int, exclude_seen: bool, filtered: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        known = users >= 0
        if known.all():
            scores = self.model.score_all(torch.from_numpy(users).to(self.device)).float()
        else:
            scores = torch.from_numpy(self.popularity).to(self.device).repeat(len(users), 1)
            if known.any():
                rows = torch.from_numpy(np.flatnonzero(known)).to(self.device)
                who = torch.from_numpy(users[known]).to(self.device)
                scores[rows] = self.model.score_all(who).float()
        if exclude_seen:  # unknown (popular-fallback) users saw nothing
            row_of, columns = row_entries(self.seen, np.where(known, users, 0))
            hit = torch.from_numpy(known)[row_of]
            scores[row_of[hit].to(self.device), columns[hit].to(self.device)] = float("-inf")
        scores[:, torch.from_numpy(filtered).to(self.device)] = float("-inf")
        values, positions = torch.topk(scores, min(k, self.num_items), dim=1)
        return positions.cpu().numpy(), values.cpu().numpy()

    def _exact_similar(self, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        unit = self._unit_items()

        @torch.no_grad()
        def top(part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            query = torch.from_numpy(part).to(self.device)
            scores = unit[query] @ unit.T
            scores[torch.arange(len(query)), query] = float("-inf")
            values, where = torch.topk(scores, min(k, self.num_items), dim=1)
            return where.cpu().numpy(), values.cpu().numpy()

        return self._in_blocks(items, top)

    def _unit_items(self) -> torch.Tensor:
        """The unit item vectors ``similar`` compares, made once (the model is frozen here)."""
        if self._unit is None:
            vectors = self.model.item_vectors()
            if vectors is None:
                raise ConfigError(
                    f"{self.name} has no single item embedding to compare items with; "
                    "use mf, gmf, mlp or ials"
                )
            self._unit = torch.nn.functional.normalize(vectors.detach().float(), dim=1)
        return self._unit

    def _ids(self, positions: np.ndarray, top: np.ndarray) -> np.ndarray:
        """External ids of item ``positions``; padding (score ``-inf``) as the pad id."""
        ids = self.item_map.to_id(positions)
        padding = np.isneginf(top)
        if padding.any():
            ids = ids.astype(object) if self._pad == "" else ids
            ids[padding] = self._pad
        return ids

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


def _recall(exact: tuple[np.ndarray, np.ndarray], found: tuple[np.ndarray, np.ndarray]) -> float:
    """Mean share of each query's exact top-k (its finite entries) that ``found`` also has."""
    hits, total = 0, 0
    for want, want_scores, got, got_scores in zip(*exact, *found, strict=True):
        want = want[np.isfinite(want_scores)]
        hits += len(np.intersect1d(want, got[np.isfinite(got_scores)]))
        total += len(want)
    return hits / max(total, 1)


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
