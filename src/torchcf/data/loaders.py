"""Readers for MovieLens, NCF split directories and generic interaction tables.

Each reader validates as it parses and raises ``DataError`` naming the file, the line and what was
expected, so the CLI can print one line instead of a traceback.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from torchcf.data.interactions import IdMap, Interactions
from torchcf.errors import DataError

__all__ = [
    "NcfFiles",
    "find_ncf_files",
    "load_interactions_table",
    "load_ml100k",
    "load_ml1m",
    "load_ncf_files",
    "load_path",
    "load_title_map",
    "load_titles",
]

_FIELD_ERROR = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def _require_file(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"file not found: {path}")
    if not path.is_file():
        raise DataError(f"not a file: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"empty file: {path}")
    return path


def _read_numeric_table(
    path: Path, sep: str, names: list[str], min_cols: int, encoding: str = "utf-8"
) -> pd.DataFrame:
    """Read a headerless table of numbers with ``min_cols..len(names)`` columns per line.

    Raises ``DataError`` with the 1-based line number of the first malformed line.
    """
    _require_file(path)
    raw = path.read_bytes()
    if sep != "\t" and len(sep) > 1:
        raw = raw.replace(sep.encode(), b"\t")
        sep = "\t"
    if not raw.strip():
        raise DataError(f"empty file: {path}")
    try:
        frame = pd.read_csv(
            io.BytesIO(raw),
            sep=sep,
            header=None,
            names=names,
            encoding=encoding,
            skip_blank_lines=True,
            engine="c",
        )
    except pd.errors.ParserError as exc:
        match = _FIELD_ERROR.search(str(exc))
        if match:
            saw, line = match.group(3), match.group(2)
            raise DataError(
                f"{path}: line {line}: expected at most {len(names)} fields, saw {saw}"
            ) from None
        raise DataError(f"{path}: cannot parse: {str(exc).strip().splitlines()[-1]}") from None
    if frame.empty:
        raise DataError(f"empty file: {path}")
    line_numbers = _line_numbers(raw)
    for col_pos, name in enumerate(names):
        col = frame[name]
        required = col_pos < min_cols
        if col.isna().all() and not required:
            frame = frame.drop(columns=[name])
            continue
        numeric = pd.to_numeric(col, errors="coerce")
        bad = numeric.isna().to_numpy()
        if bad.any():
            row = int(np.argmax(bad))
            value = col.iloc[row]
            what = "missing" if pd.isna(value) else f"not a number: {value!r}"
            raise DataError(
                f"{path}: line {line_numbers[row]}: field {name!r} {what} "
                f"(expected {len(names) if not required else min_cols}+ {sep!r}-separated fields)"
            )
        frame[name] = numeric
    return frame


def _line_numbers(raw: bytes) -> np.ndarray:
    """1-based line numbers of the non-blank lines of ``raw`` (pandas skips blank lines)."""
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    nonblank = np.fromiter((bool(line.strip()) for line in lines), dtype=bool, count=len(lines))
    return np.flatnonzero(nonblank) + 1


def _ids_column(frame: pd.DataFrame, name: str, path: Path) -> np.ndarray:
    values = frame[name].to_numpy()
    if values.dtype.kind == "f":
        if not np.all(np.mod(values, 1) == 0):
            row = int(np.argmax(np.mod(values, 1) != 0))
            raise DataError(f"{path}: {name} must be an integer id, got {values[row]!r}")
        values = values.astype(np.int64)
    return values.astype(np.int64)


def _from_frame(
    frame: pd.DataFrame,
    path: Path,
    min_rating: float | None,
    user_col: str = "user",
    item_col: str = "item",
    rating_col: str | None = "rating",
    time_col: str | None = "timestamp",
) -> Interactions:
    if min_rating is not None:
        if rating_col is None or rating_col not in frame:
            raise DataError(f"{path}: --min-rating needs a rating column")
        frame = frame[frame[rating_col] >= min_rating]
        if frame.empty:
            raise DataError(f"{path}: no interaction has rating >= {min_rating}")
    user_map, users = IdMap.from_values(frame[user_col].to_numpy())
    item_map, items = IdMap.from_values(frame[item_col].to_numpy())
    timestamps = None
    if time_col is not None and time_col in frame:
        timestamps = frame[time_col].to_numpy()
    ratings = None
    if rating_col is not None and rating_col in frame:
        ratings = frame[rating_col].to_numpy(dtype=np.float32)
    return Interactions(
        users=users,
        items=items,
        num_users=len(user_map),
        num_items=len(item_map),
        timestamps=timestamps,
        ratings=ratings,
        user_map=user_map,
        item_map=item_map,
    )


def load_ml1m(path: str | Path, min_rating: float | None = None) -> Interactions:
    """GroupLens ML-1M ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp`` per line."""
    path = Path(path)
    frame = _read_numeric_table(path, "::", ["user", "item", "rating", "timestamp"], 4)
    for name in ("user", "item"):
        frame[name] = _ids_column(frame, name, path)
    return _from_frame(frame, path, min_rating)


def load_ml100k(path: str | Path, min_rating: float | None = None) -> Interactions:
    """GroupLens ML-100K ``u.data``: ``user\\titem\\trating\\ttimestamp`` per line."""
    path = Path(path)
    frame = _read_numeric_table(path, "\t", ["user", "item", "rating", "timestamp"], 4)
    for name in ("user", "item"):
        frame[name] = _ids_column(frame, name, path)
    return _from_frame(frame, path, min_rating)


def load_interactions_table(
    path: str | Path,
    user_col: str = "user",
    item_col: str = "item",
    rating_col: str | None = None,
    time_col: str | None = None,
    min_rating: float | None = None,
    sep: str | None = None,
) -> Interactions:
    """A CSV, TSV or Parquet table of interactions with a header row naming its columns.

    ``rating_col``/``time_col`` are optional; ``min_rating`` keeps rows with rating ≥ it.
    Timestamps may be numbers or date-times (converted to Unix seconds).
    """
    path = _require_file(Path(path))
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            if sep is None:
                sep = "\t" if suffix in (".tsv", ".tab") else ","
            frame = pd.read_csv(path, sep=sep)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError) as exc:
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot read table: {message}") from None
    if frame.empty:
        raise DataError(f"{path}: no rows")
    wanted = {"user": user_col, "item": item_col, "rating": rating_col, "timestamp": time_col}
    for role, col in wanted.items():
        if col is not None and col not in frame.columns:
            raise DataError(
                f"{path}: no {role} column {col!r} (columns: {', '.join(map(str, frame.columns))})"
            )
    for role in ("user", "item"):
        col = wanted[role]
        if frame[col].isna().any():
            row = int(np.argmax(frame[col].isna().to_numpy()))
            raise DataError(f"{path}: row {row + 2}: missing {role} id in column {col!r}")
    if rating_col is not None:
        numeric = pd.to_numeric(frame[rating_col], errors="coerce")
        if numeric.isna().any():
            row = int(np.argmax(numeric.isna().to_numpy()))
            raise DataError(
                f"{path}: row {row + 2}: rating {frame[rating_col].iloc[row]!r} is not a number"
            )
        frame[rating_col] = numeric
    if time_col is not None:
        frame[time_col] = _unix_seconds(frame[time_col], path, time_col)
    return _from_frame(frame, path, min_rating, user_col, item_col, rating_col, time_col)


def _unix_seconds(col: pd.Series, path: Path, name: str) -> pd.Series:
    """Numbers pass through; date-times (or date strings) become Unix seconds."""
    if col.dtype.kind in "iuf":
        if col.isna().any():
            raise DataError(
                f"{path}: row {int(np.argmax(col.isna().to_numpy())) + 2}: missing {name}"
            )
        return col
    numeric = pd.to_numeric(col, errors="coerce")
    if not numeric.isna().any():
        return numeric
    try:
        stamps = pd.to_datetime(col, utc=True)
    except (ValueError, TypeError):
        raise DataError(f"{path}: column {name!r} is neither numbers nor dates") from None
    if stamps.isna().any():
        raise DataError(
            f"{path}: row {int(np.argmax(stamps.isna().to_numpy())) + 2}: missing {name}"
        )
    return (stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)


# ML-100K's u.item ends with 19 genre flags in this order (its u.genre file)
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


def load_item_info(path: str | Path) -> dict[Any, tuple[str, str]]:
    """Title and genres (``"Action|Comedy"``, ``""`` when not given) of each item id, from
    ML-1M ``movies.dat`` (``id::title::genres``) or ML-100K ``u.item`` (``|``, genre flags)."""
    path = _require_file(Path(path))
    sep = "::" if path.name.endswith(".dat") else "|"
    text = path.read_bytes().decode("latin-1")
    info: dict[Any, tuple[str, str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) < 2 or not parts[0].strip().isdigit():
            raise DataError(f"{path}: line {number}: expected 'id{sep}title{sep}...'")
        if sep == "::":
            genres = parts[2].strip() if len(parts) > 2 else ""
        else:
            flags = parts[-len(ML100K_GENRES) :] if len(parts) >= 5 + len(ML100K_GENRES) else []
            genres = "|".join(g for g, f in zip(ML100K_GENRES, flags, strict=False) if f == "1")
        info[int(parts[0])] = (parts[1], genres)
    return info


def load_titles(path: str | Path) -> dict[Any, str]:
    """Titles from ML-1M ``movies.dat`` (``id::title::genres``) or ML-100K ``u.item`` (``|``)."""
    return {item: title for item, (title, _) in load_item_info(path).items()}


def load_title_map(path: str | Path) -> dict[int, int]:
    """A two-column TSV with a header (``ncf_item_id  MovieID``): item id → title-file id."""
    path = _require_file(Path(path))
    mapping: dict[int, int] = {}
    for number, line in enumerate(path.read_text().splitlines()[1:], start=2):
        parts = line.split("\t")
        if not line.strip():
            continue
        if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
            raise DataError(f"{path}: line {number}: expected 'item_id<TAB>title_id'")
        mapping[int(parts[0])] = int(parts[1])
    return mapping


@dataclass(frozen=True)
class NcfFiles:
    """The three files of an NCF split directory."""

    train: Path
    test: Path
    negative: Path


def find_ncf_files(directory: str | Path) -> NcfFiles | None:
    """``*.train.rating``, ``*.test.rating`` and ``*.test.negative`` in ``directory``, or None."""
    directory = Path(directory)
    trains = sorted(directory.glob("*.train.rating"))
    if not trains:
        return None
    if len(trains) > 1:
        raise DataError(f"{directory}: several *.train.rating files; point --data at one split")
    stem = trains[0].name[: -len(".train.rating")]
    files = NcfFiles(
        train=trains[0],
        test=directory / f"{stem}.test.rating",
        negative=directory / f"{stem}.test.negative",
    )
    for path in (files.test, files.negative):
        _require_file(path)
    return files


def _parse_ncf_negatives(
    path: Path,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[int]]:
    """``(user,item)\\tneg\\tneg…`` lines → users, items, list of negative arrays, and each
    entry's line number."""
    _require_file(path)
    users, items, negatives, lines = [], [], [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue
            head, _, rest = line.partition("\t")
            try:
                if not (head.startswith("(") and head.endswith(")")):
                    raise ValueError
                user, item = (int(x) for x in head[1:-1].split(","))
                negs = np.array(rest.split("\t") if rest else [], dtype=np.int64)
            except ValueError:
                raise DataError(
                    f"{path}: line {number}: expected '(user,item)' then tab-separated item ids"
                ) from None
            users.append(user)
            items.append(item)
            negatives.append(negs)
            lines.append(number)
    if not users:
        raise DataError(f"empty file: {path}")
    return np.array(users, dtype=np.int64), np.array(items, dtype=np.int64), negatives, lines


@dataclass(frozen=True)
class NcfData:
    """An NCF split as read: training interactions, test pairs, their given negatives."""

    train: Interactions
    test_users: np.ndarray
    test_items: np.ndarray
    test_negatives: list[np.ndarray]
    test_timestamps: np.ndarray | None = None

    def all_interactions(self) -> Interactions:
        """Training and test interactions together, as raw events (for another split); a
        ``DataError`` when a file lacks the timestamps that split needs is the split's to say,
        so the result has timestamps only when both files have them."""
        train = self.train
        both = train.timestamps is not None and self.test_timestamps is not None
        return Interactions(
            np.concatenate([train.users, self.test_users]),
            np.concatenate([train.items, self.test_items]),
            train.num_users,
            train.num_items,
            timestamps=np.concatenate([train.timestamps, self.test_timestamps]) if both else None,
            user_map=train.user_map,
            item_map=train.item_map,
        )


def _check_catalogue(
    files: NcfFiles,
    train_items: int,
    test_items: np.ndarray,
    negatives: list[np.ndarray],
    lines: list[int],
) -> None:
    """``DataError`` naming the file, line and item when a test item or a given negative is not
    an item of the training file (ids ``0 .. train_items - 1``): a typo or another split's file
    would otherwise grow the catalogue silently."""
    where = [(files.test, line, item) for line, item in enumerate(test_items.tolist(), 1)]
    for line, negs in zip(lines, negatives, strict=True):
        if len(negs) and negs.max() >= train_items:
            where.append((files.negative, line, int(negs[negs >= train_items][0])))
    outside = [(path, line, item) for path, line, item in where if item >= train_items]
    if outside:
        path, line, item = min(outside, key=lambda w: (str(w[0]) != str(files.test), w[1]))
        raise DataError(
            f"{path}: line {line}: item {item} is not an item of {files.train.name} (its items "
            f"are 0..{train_items - 1}); --allow-cold-items keeps items never trained on"
        )


def _check_no_leak(
    files: NcfFiles, train: Interactions, users: np.ndarray, items: np.ndarray
) -> None:
    """``DataError`` when test pairs are also training interactions (the split would leak)."""
    inside = np.flatnonzero(train.contains(users, items))
    if len(inside):
        first = int(inside[0])
        raise DataError(
            f"{files.test}: {len(inside)} test pairs are also in {files.train.name} (first: line "
            f"{first + 1}, user {users[first]}, item {items[first]}): the split leaks its test set"
        )


def load_ncf_files(files: NcfFiles, allow_cold_items: bool = False) -> NcfData:
    """Read an NCF split; ids are already dense (user and item ids are used as indices).

    Test items and given negatives must be items of the training file unless
    ``allow_cold_items``; a test pair that is also a training interaction is an error."""
    train = _read_numeric_table(files.train, "\t", ["user", "item", "rating", "timestamp"], 2)
    test = _read_numeric_table(files.test, "\t", ["user", "item", "rating", "timestamp"], 2)
    for frame, path in ((train, files.train), (test, files.test)):
        for name in ("user", "item"):
            frame[name] = _ids_column(frame, name, path)
            if (frame[name] < 0).any():
                raise DataError(f"{path}: negative {name} id")
    neg_users, neg_items, negatives, lines = _parse_ncf_negatives(files.negative)
    test_users = test["user"].to_numpy()
    test_items = test["item"].to_numpy()
    if len(np.unique(test_users)) != len(test_users):
        raise DataError(f"{files.test}: a user appears more than once")
    if len(neg_users) != len(test_users) or not (
        np.array_equal(neg_users, test_users) and np.array_equal(neg_items, test_items)
    ):
        raise DataError(
            f"{files.negative}: its (user,item) pairs do not match {files.test.name} line by line"
        )
    all_neg = np.concatenate(negatives) if negatives else np.zeros(0, np.int64)
    if len(all_neg) and all_neg.min() < 0:
        raise DataError(f"{files.negative}: negative item id")
    if not allow_cold_items:
        _check_catalogue(files, int(train["item"].max()) + 1, test_items, negatives, lines)
    num_users = int(max(train["user"].max(), test_users.max())) + 1
    num_items = int(max(train["item"].max(), test_items.max(), all_neg.max(initial=0))) + 1
    timestamps = train["timestamp"].to_numpy() if "timestamp" in train else None
    ratings = train["rating"].to_numpy(dtype=np.float32) if "rating" in train else None
    interactions = Interactions(
        users=train["user"].to_numpy(),
        items=train["item"].to_numpy(),
        num_users=num_users,
        num_items=num_items,
        timestamps=timestamps,
        ratings=ratings,
        user_map=IdMap.identity(num_users),
        item_map=IdMap.identity(num_items),
    )
    _check_no_leak(files, interactions, test_users, test_items)
    test_times = test["timestamp"].to_numpy() if "timestamp" in test else None
    return NcfData(interactions, test_users, test_items, negatives, test_times)


def load_path(
    path: str | Path, min_rating: float | None = None, **table_options: Any
) -> Interactions:
    """Load interactions from a MovieLens file/directory or a CSV/TSV/Parquet table."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"file not found: {path}")
    if path.is_dir():
        for name, loader in (("ratings.dat", load_ml1m), ("u.data", load_ml100k)):
            if (path / name).exists():
                return loader(path / name, min_rating=min_rating)
        raise DataError(
            f"{path}: no ratings.dat, u.data or NCF *.train.rating/*.test.rating/*.test.negative"
        )
    if path.name.endswith("ratings.dat"):
        return load_ml1m(path, min_rating=min_rating)
    if path.name == "u.data":
        return load_ml100k(path, min_rating=min_rating)
    return load_interactions_table(path, min_rating=min_rating, **table_options)
