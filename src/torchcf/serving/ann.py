"""Approximate top-k with faiss, for models whose scores are inner products of vectors.

Two indexes, kept in the model directory's ``ann/`` (``torchcf index RUN``, or the first
``--ann``): ``recommend`` holds the model's item vectors (``dot_vectors``, biases folded in) in
an HNSW graph searched by inner product (``IndexHNSWFlat``; on the 10⁶-item benchmark it needs
far less work per query for a given recall than an inverted file over the items made
nearest-neighbour by an extra column, benchmarks/RESULTS.md); ``similar`` holds the unit item
vectors (``item_vectors``) in an inverted file (``IndexIVFFlat``, spherical k-means, ~4√n lists)
searched by cosine. The search effort (``efSearch``, ``nprobe``) is the smallest power of two
whose recall@10 against exact ranking reaches ``target_recall`` on up to 1,000 sampled users
(items for ``similar``): that recall is measured at build time and reported with the index.

Candidates are over-fetched (k plus the query's excluded items, twice over) and re-scored
exactly with the model's own vectors, so scores are the model's and seen or filtered items never
come back; a query left short of k by the index, or one that would need over a quarter of the
catalogue as candidates (a user who has seen most of it), is scored exactly instead.

An index records the SHA-256 of the ``weights.pt`` it was built from; loading it beside other
weights is refused (a stale index would answer for a model that no longer exists).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from torchcf.errors import DataError
from torchcf.io import atomic_directory, write_json

__all__ = [
    "KINDS",
    "AnnIndex",
    "build_index",
    "load_indexes",
    "save_indexes",
    "weights_digest",
]

KINDS = ("recommend", "similar")
INDEX_DIR = "ann"
SAMPLE = 1000  # queries the recall is measured on


def weights_digest(model_dir: Path) -> str:
    """SHA-256 of the model's ``weights.pt``: what an index is tied to."""
    digest = hashlib.sha256()
    with open(model_dir / "weights.pt", "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _faiss() -> Any:
    import faiss

    return faiss


@dataclass
class AnnIndex:
    """One faiss index over ``vectors`` (the exact item vectors its candidates are re-scored
    with), of ``kind`` ``"recommend"`` (inner product) or ``"similar"`` (cosine)."""

    kind: str
    index: Any
    vectors: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def setting(self) -> str:
        """The search-effort knob: HNSW's ``efSearch`` or an inverted file's ``nprobe``."""
        return "efSearch" if hasattr(self.index, "hnsw") else "nprobe"

    @property
    def effort(self) -> int:
        if self.setting == "efSearch":
            return int(self.index.hnsw.efSearch)
        return int(_faiss().extract_index_ivf(self.index).nprobe)

    @effort.setter
    def effort(self, value: int) -> None:
        if self.setting == "efSearch":
            self.index.hnsw.efSearch = int(value)
        else:
            _faiss().extract_index_ivf(self.index).nprobe = int(value)

    def efforts(self) -> list[int]:
        """The efforts the tuning tries, in order: powers of two up to exhaustive."""
        if self.setting == "efSearch":
            return [2**e for e in range(4, 13)]
        lists = int(_faiss().extract_index_ivf(self.index).nlist)
        return sorted({min(2**e, lists) for e in range(0, int(np.log2(lists)) + 2)})

    def search(self, queries: np.ndarray, count: int) -> np.ndarray:
        """``(n, count)`` candidate item positions, ``-1`` where the index ran out."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        count = min(count, len(self.vectors))
        return self.index.search(queries, count)[1]

    def top_k(
        self,
        queries: np.ndarray,
        k: int,
        excluded: Callable[[np.ndarray, np.ndarray], np.ndarray],
        excluded_counts: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Top-``k`` positions and exact scores for each query; ``excluded(rows, candidates)``
        marks candidates a query must not get, ``excluded_counts`` how many each query has.
        Queries are grouped by how many candidates they need (2 (k + excluded), rounded up to a
        power of two), so one heavy user does not make a whole batch over-fetch.
        Returns ``(positions, scores, short, heavy)``: ``short`` marks rows the index left with
        fewer than ``k`` items, ``heavy`` rows that would need over a quarter of the catalogue as
        candidates (not searched): the caller scores both exactly."""
        positions = np.zeros((len(queries), k), dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        need = 2 * (k + np.broadcast_to(np.asarray(excluded_counts), (len(queries),)))
        bucket = np.exp2(np.ceil(np.log2(np.maximum(need, 1)))).astype(np.int64)
        heavy = (4 * bucket > len(self.vectors)) & (bucket > 4 * k)
        for count in np.unique(bucket[~heavy]):
            chosen = np.flatnonzero(bucket == count)
            count = int(min(count, len(self.vectors)))
            step = max(1, (1 << 23) // (count * self.vectors.shape[1]))  # bounded gathers
            for start in range(0, len(chosen), step):
                rows = chosen[start : start + step]
                found = self.search(queries[rows], count)
                candidates = np.maximum(found, 0)
                exact = np.einsum("nd,ncd->nc", queries[rows], self.vectors[candidates])
                exact[(found < 0) | excluded(rows, candidates)] = -np.inf
                order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
                positions[rows] = np.take_along_axis(candidates, order, axis=1)
                scores[rows] = np.take_along_axis(exact, order, axis=1)
        short = np.asarray(~np.isfinite(scores).all(axis=1) & ~heavy)
        return positions, scores, short, heavy


def _hnsw(data: np.ndarray) -> Any:
    """A graph index for inner products (HNSW, 32 links a node)."""
    faiss = _faiss()
    index = faiss.IndexHNSWFlat(data.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 200  # (a better graph: less search for the same recall)
    index.add(data)
    return index


def _ivf(data: np.ndarray, seed: int) -> Any:
    """An inverted file for cosine on unit vectors (spherical k-means, ~4√n lists)."""
    faiss = _faiss()
    n, d = data.shape
    lists = int(max(1, min(4 * np.sqrt(n), n // 39)))
    metric = faiss.METRIC_INNER_PRODUCT
    index = faiss.IndexIVFFlat(faiss.IndexFlat(d, metric), d, lists, metric)
    index.cp.niter = 10
    index.cp.seed = seed
    index.cp.spherical = True
    index.cp.max_points_per_centroid = 64  # k-means on ≤ 64 points a list (seconds at 10⁶)
    index.train(data)
    index.add(data)
    return index


def build_index(
    kind: str,
    vectors: np.ndarray,
    recall_of: Callable[[AnnIndex], tuple[float, int]],
    target_recall: float = 0.97,
    seed: int = 0,
) -> AnnIndex:
    """An index of ``kind`` over ``vectors`` (dot item vectors: HNSW for inner products; unit
    item vectors for ``similar``: an inverted file), with the smallest power-of-two effort
    (``efSearch`` / ``nprobe``) whose ``recall_of`` (recall@10 against exact, and the number of
    queries it was measured on) reaches ``target_recall``."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    start = time.perf_counter()
    index = _hnsw(vectors) if kind == "recommend" else _ivf(vectors, seed)
    built = time.perf_counter() - start
    ann = AnnIndex(kind, index, vectors)
    recall, queries = 0.0, 0
    for effort in ann.efforts():
        ann.effort = effort
        recall, queries = recall_of(ann)
        if recall >= target_recall:
            break
    described = (
        "faiss IndexHNSWFlat (inner product, 32 links)"
        if ann.setting == "efSearch"
        else f"faiss IndexIVFFlat (cosine, {index.nlist} lists)"
    )
    ann.info = {
        "kind": kind,
        "index": f"{described}, {ann.setting} {ann.effort}",
        "items": len(vectors),
        "dimensions": int(vectors.shape[1]),
        "setting": ann.setting,
        "effort": ann.effort,
        "recall@10": round(float(recall), 4),
        "recall_queries": queries,
        "target_recall": target_recall,
        "build_seconds": round(built, 2),
        "tune_seconds": round(time.perf_counter() - start - built, 2),
    }
    return ann


def save_indexes(model_dir: Path, indexes: dict[str, AnnIndex], digest: str) -> Path:
    """Write ``indexes`` to ``model_dir/ann`` whole (replacing an older one)."""
    faiss = _faiss()
    with atomic_directory(model_dir / INDEX_DIR) as tmp:
        for kind, ann in indexes.items():
            faiss.write_index(ann.index, str(tmp / f"{kind}.faiss"))
        write_json(
            tmp / "index.json",
            {"weights_sha256": digest, "indexes": {k: a.info for k, a in indexes.items()}},
        )
    return model_dir / INDEX_DIR


def load_indexes(
    model_dir: Path, vectors: dict[str, np.ndarray], digest: str
) -> dict[str, AnnIndex] | None:
    """The indexes in ``model_dir/ann`` (``None`` when there are none), each with its exact
    ``vectors``; a ``DataError`` when they were built from other weights or are damaged."""
    where = model_dir / INDEX_DIR
    if not (where / "index.json").exists():
        return None
    try:
        card = json.loads((where / "index.json").read_text())
        stale = card["weights_sha256"] != digest
        infos = card["indexes"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(
            f"{where}/index.json is damaged ({exc}): rebuild with torchcf index"
        ) from None
    if stale:
        raise DataError(
            f"the ANN index in {where} was built from other weights than {model_dir}/weights.pt "
            "(the model changed since): rebuild it with torchcf index"
        )
    faiss = _faiss()
    out = {}
    for kind, info in infos.items():
        if kind not in vectors:
            continue
        try:
            index = faiss.read_index(str(where / f"{kind}.faiss"))
        except RuntimeError as exc:
            raise DataError(f"{where}/{kind}.faiss: {str(exc).splitlines()[0]}") from None
        if index.ntotal != len(vectors[kind]):
            raise DataError(
                f"{where}/{kind}.faiss holds {index.ntotal} items, not {len(vectors[kind])}"
            )
        ann = AnnIndex(kind, index, vectors[kind], info)
        ann.effort = info["effort"]
        out[kind] = ann
    return out
