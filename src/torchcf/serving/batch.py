"""Batch recommendations: every user's (or a list of users') top k, written to one table.

``write_recommendations`` streams ``Recommender.recommend_all``'s chunks into Parquet (``.parquet``)
or CSV (``.csv``), long format: one row per (user, rank) with columns ``user``, ``rank`` (1 is
best), ``item`` and ``score``, by the training data's own ids. The file appears whole or not at
all (written beside it, renamed when done); memory is bounded by the chunk, not the users.
"""

from __future__ import annotations

import contextlib
import csv
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from torchcf.errors import ConfigError, DataError
from torchcf.io import atomic_path
from torchcf.serving.recommender import Recommender

__all__ = ["FORMATS", "read_user_file", "write_recommendations"]

FORMATS = (".parquet", ".csv")


def output_format(out: str | Path) -> str:
    """``.parquet`` or ``.csv`` from ``out``'s suffix; a ``ConfigError`` for anything else."""
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"--out must end in .parquet or .csv, got {str(out)!r}")
    return suffix


def read_user_file(path: str | Path) -> np.ndarray:
    """User ids from a text file, one a line (blank lines and a ``user`` header ignored)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read --users {path}: {exc}") from None
    ids = [line.strip() for line in lines if line.strip()]
    if ids and ids[0].lower() == "user":
        ids = ids[1:]
    if not ids:
        raise DataError(f"--users {path} names no user")
    return np.asarray(ids, dtype=object)


def write_recommendations(
    rec: Recommender,
    out: str | Path,
    users: Any = None,
    k: int = 10,
    exclude_seen: bool = True,
    filter_items: Any = None,
    progress: bool | None = None,
    overwrite: bool = True,
) -> dict[str, Any]:
    """Write the top ``k`` of every user (or of ``users``) to ``out`` (``.parquet`` or
    ``.csv``); ``progress``: a bar on stderr (default: when stderr is a terminal). Returns
    what was written: users, rows, seconds."""
    kind = output_format(out)
    if Path(out).exists() and not overwrite:
        raise DataError(f"{out} exists (use --overwrite to replace it)")
    total = len(rec.user_map.ids) if users is None else len(users)
    chunks = rec.recommend_all(users, k, exclude_seen, filter_items)  # (checks ids and k)
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=total, unit="user", desc="recommend", disable=not show, file=sys.stderr)
    start, rows = time.perf_counter(), 0
    with atomic_path(out) as tmp, contextlib.ExitStack() as files:
        writer: Any = None
        for frame in chunks:
            bar.update(frame.attrs["users"])
            if not len(frame):
                continue
            rows += len(frame)
            if kind == ".csv":
                if writer is None:
                    writer = csv.writer(files.enter_context(open(tmp, "w", newline="")))
                    writer.writerow(frame.columns)
                writer.writerows(frame.itertuples(index=False))
                continue
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if writer is None:
                writer = files.enter_context(pq.ParquetWriter(tmp, table.schema))
            writer.write_table(table.cast(writer.schema))
        if writer is None:  # no rows at all: the columns alone
            empty = pd.DataFrame({"user": [], "rank": [], "item": [], "score": []})
            (empty.to_csv if kind == ".csv" else empty.to_parquet)(tmp, index=False)
    bar.close()
    return {"users": total, "rows": rows, "seconds": round(time.perf_counter() - start, 2)}
