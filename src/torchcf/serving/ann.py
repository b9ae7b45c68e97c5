"""Approximate top-k with faiss, for models whose scores are inner products of vectors.

Two indexes, kept in the model directory's ``ann/`` (``torchcf index RUN``, or the first
``--ann``): ``recommend`` holds the model's item vectors (``dot_vectors``, biases folded in) for
maximum inner-product search, turned into nearest-neighbour search by one extra column
(x ↦ [x, √(M² − ‖x‖²)], q ↦ [q, 0], M the largest item norm: ‖q − x‖² = ‖q‖² + M² − 2 q·x, so
the nearest items are the highest-scoring ones); ``similar`` holds the unit item vectors
(``item_vectors``) for cosine. Both are inverted files (``IndexIVFFlat``, about 4√n lists) that
visit ``nprobe`` lists a query, ``nprobe`` the smallest power of two whose recall@10 against
exact ranking reaches ``target_recall`` on up to 1,000 sampled users (items for ``similar``):
that recall is measured at build time and reported with the index.

Candidates are over-fetched (k plus the query's excluded items, twice over) and re-scored
exactly with the model's own vectors, so scores are the model's and seen or filtered items never
come back; a query left short of k by the index falls back to exact scoring (``short`` rows).

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
    def nprobe(self) -> int:
        return int(_faiss().extract_index_ivf(self.index).nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        _faiss().extract_index_ivf(self.index).nprobe = int(value)

    def search(self, queries: np.ndarray, count: int) -> np.ndarray:
        """``(n, count)`` candidate item positions, ``-1`` where the visited lists ran out."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.kind == "recommend":  # the extra column is 0 for queries
            queries = np.hstack([queries, np.zeros((len(queries), 1), np.float32)])
        count = min(count, len(self.vectors))
        return self.index.search(queries, count)[1]

    def top_k(
        self,
        queries: np.ndarray,
        k: int,
        excluded: Callable[[np.ndarray, np.ndarray], np.ndarray],
        most_excluded: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-``k`` positions and exact scores for each query; ``excluded(rows, candidates)``
        marks candidates a query must not get, ``most_excluded`` bounds how many one query has.
        Returns ``(positions, scores, short)``: ``short`` marks rows the index left with fewer
        than ``k`` items (the caller scores those exactly)."""
        count = min(len(self.vectors), 2 * (k + most_excluded))
        rows = max(1, (1 << 23) // (count * self.vectors.shape[1]))  # bounded gathers
        positions = np.empty((len(queries), k), dtype=np.int64)
        scores = np.empty((len(queries), k), dtype=np.float32)
        for start in range(0, len(queries), rows):
            part = slice(start, start + rows)
            found = self.search(queries[part], count)
            candidates = np.maximum(found, 0)
            exact = np.einsum("nd,ncd->nc", queries[part], self.vectors[candidates])
            drop = (found < 0) | excluded(np.arange(start, start + len(found)), candidates)
            exact[drop] = -np.inf
            order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
            positions[part] = np.take_along_axis(candidates, order, axis=1)
            scores[part] = np.take_along_axis(exact, order, axis=1)
        short = np.asarray(~np.isfinite(scores).all(axis=1))
        return positions, scores, short


def _augment(vectors: np.ndarray) -> np.ndarray:
    """Items for inner-product search by L2: [x, √(M² − ‖x‖²)]."""
    norms = np.einsum("nd,nd->n", vectors, vectors)
    extra = np.sqrt(np.maximum(norms.max() - norms, 0.0))[:, None]
    return np.ascontiguousarray(np.hstack([vectors, extra]), dtype=np.float32)


def _ivf(data: np.ndarray, metric: int, seed: int) -> Any:
    faiss = _faiss()
    n, d = data.shape
    lists = int(max(1, min(4 * np.sqrt(n), n // 39)))
    index = faiss.IndexIVFFlat(faiss.IndexFlat(d, metric), d, lists, metric)
    index.cp.niter = 10
    index.cp.seed = seed
    index.cp.max_points_per_centroid = 64  # k-means on ≤ 64 points a list (seconds at 10⁶)
    index.train(data)
    index.add(data)
    return index


def build_index(
    kind: str,
    vectors: np.ndarray,
    recall_of: Callable[[AnnIndex], tuple[float, int]],
    target_recall: float = 0.98,
    seed: int = 0,
) -> AnnIndex:
    """An index of ``kind`` over ``vectors`` (dot item vectors, or unit item vectors for
    ``similar``), with the smallest power-of-two ``nprobe`` whose ``recall_of`` (recall@10
    against exact, and the number of queries it was measured on) reaches ``target_recall``."""
    faiss = _faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    start = time.perf_counter()
    if kind == "recommend":
        index = _ivf(_augment(vectors), faiss.METRIC_L2, seed)
    else:
        index = _ivf(vectors, faiss.METRIC_INNER_PRODUCT, seed)
    built = time.perf_counter() - start
    ann = AnnIndex(kind, index, vectors)
    lists = int(index.nlist)
    nprobe, recall, queries = 1, 0.0, 0
    while True:
        ann.nprobe = nprobe
        recall, queries = recall_of(ann)
        if recall >= target_recall or nprobe >= lists:
            break
        nprobe = min(2 * nprobe, lists)
    ann.info = {
        "kind": kind,
        "index": f"faiss IndexIVFFlat, {lists} lists, nprobe {nprobe}",
        "items": len(vectors),
        "dimensions": int(vectors.shape[1]),
        "lists": lists,
        "nprobe": nprobe,
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
        ann.nprobe = info["nprobe"]
        out[kind] = ann
    return out
