"""User and item vectors out of a trained model, for the vector store a service already runs.

Models whose scores are inner products of a user vector and an item vector (``dot_vectors``:
mf, bpr, gmf with its head folded into the user side, ials, lightgcn; biases folded in as extra
columns) export both tables with their ids, so that ``users[u] · items[i]`` is the model's score
of ``(u, i)`` and a store's maximum-inner-product search returns the model's top items.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from torchcf.errors import ConfigError, DataError
from torchcf.io import atomic_directory, write_json
from torchcf.models.base import ScoringModel
from torchcf.models.registry import MODELS
from torchcf.serving.persistence import load_model

__all__ = ["export_vectors", "inner_product_models"]


def inner_product_models() -> list[str]:
    """The models whose scores are inner products of user and item vectors."""
    return [
        name
        for name, cls in MODELS.items()
        if cls.dot_vectors is not ScoringModel.dot_vectors  # (overridden: they have the form)
    ]


def dot_tables(model: ScoringModel) -> tuple[np.ndarray, np.ndarray]:
    """``model``'s user and item vectors as float32 arrays; a ``ConfigError`` naming the
    models that have them when its scores are not inner products."""
    vectors = model.dot_vectors()
    if vectors is None:
        raise ConfigError(
            f"{model.name}'s scores are not inner products of a user and an item vector "
            f"(models whose are: {', '.join(inner_product_models())})"
        )
    users, items = (v.detach().float().cpu().contiguous().numpy() for v in vectors)
    return users, items


def _table(ids: np.ndarray, vectors: np.ndarray, what: str) -> pa.Table:
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    return pa.table({what: pa.array(ids.tolist()), "vector": column})


def export_vectors(run: str | Path, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write ``users.parquet`` / ``items.parquet`` (id, vector), ``users.npy`` / ``items.npy``
    (rows in the order of ``user_ids.npy`` / ``item_ids.npy``) and ``export.json`` to ``out``,
    whole or not at all; returns what ``export.json`` says."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out} exists (use --overwrite to replace it)")
    loaded = load_model(run)
    users, items = dot_tables(loaded.model)
    form = inspect.getdoc(type(loaded.model).dot_vectors) or ""
    card = {
        "model": loaded.model.name,
        "run": str(run),
        "users": len(users),
        "items": len(items),
        "dimensions": int(users.shape[1]),
        "score": "score(user, item) = users[user] · items[item]: the model's own score, up to "
        "float32 rounding; rank by inner product (maximum inner-product search), not by "
        "cosine or L2 distance",
        "form": form.splitlines()[0] if form else "",
        "files": {
            "users.parquet": "columns user (the training data's id), vector (float32 list)",
            "items.parquet": "columns item, vector",
            "users.npy": "float32 (users, dimensions), rows in the order of user_ids.npy",
            "items.npy": "float32 (items, dimensions), rows in the order of item_ids.npy",
        },
    }
    with atomic_directory(out, overwrite=overwrite) as tmp:
        for what, ids, vectors in (
            ("user", loaded.user_map.ids, users),
            ("item", loaded.item_map.ids, items),
        ):
            pq.write_table(_table(ids, vectors, what), tmp / f"{what}s.parquet")
            np.save(tmp / f"{what}s.npy", vectors)
            plain = ids.astype(str) if ids.dtype.kind == "O" else ids  # (no pickles)
            np.save(tmp / f"{what}_ids.npy", plain, allow_pickle=False)
        write_json(tmp / "export.json", card)
    return card
