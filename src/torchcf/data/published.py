"""Published multi-item splits, used as given: LightGCN's format (``train.txt``, ``test.txt``,
optional ``valid.txt``; one line per user, ``user item item …``, dense ids from 0) or the same
split as three event tables (``train``, ``test``, optional ``valid``, each ``.csv``, ``.tsv`` or
``.parquet`` with a header naming the user and item columns).

Every reader validates as it parses: a malformed line, an id that is not a non-negative
integer, an item repeated within a user's line, a user on two lines, an empty file, or a held-out
pair that is also a training pair (or a test pair also a validation pair) is a ``DataError``
naming the file and the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchcf.data.interactions import IdMap, Interactions
from torchcf.data.loaders import _require_file, load_interactions_table
from torchcf.errors import DataError

__all__ = ["PublishedData", "PublishedFiles", "find_published_files", "load_published"]

_PARTS = ("train", "valid", "test")
_TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
_LINE = re.compile(rb"^\s*[0-9]+(\s+[0-9]+)*\s*$")
_DENSE_SLACK = 10  # ids beyond 10× the distinct count (+1000) are not LightGCN's dense ids


@dataclass(frozen=True)
class PublishedFiles:
    """The files of a published split: ``format`` is ``lightgcn`` or ``events``."""

    format: str
    train: Path
    test: Path
    valid: Path | None

    @property
    def paths(self) -> list[Path]:
        return [p for p in (self.train, self.valid, self.test) if p is not None]


def find_published_files(directory: str | Path) -> PublishedFiles | None:
    """``train.txt`` + ``test.txt`` (+ ``valid.txt``), or ``train``/``test`` (/``valid``) event
    tables, in ``directory``; None when it holds neither."""
    directory = Path(directory)
    if (directory / "train.txt").is_file():
        _require_file(directory / "test.txt")
        valid = directory / "valid.txt"
        return PublishedFiles(
            "lightgcn",
            directory / "train.txt",
            directory / "test.txt",
            valid if valid.exists() else None,
        )
    found: dict[str, Path] = {}
    for part in _PARTS:
        hits = [
            directory / f"{part}{s}" for s in _TABLE_SUFFIXES if (directory / f"{part}{s}").exists()
        ]
        if len(hits) > 1:
            raise DataError(
                f"{directory}: several {part} tables ({', '.join(p.name for p in hits)})"
            )
        if hits:
            found[part] = hits[0]
    if "train" not in found:
        return None
    if "test" not in found:
        raise DataError(f"{directory}: {found['train'].name} but no test table beside it")
    return PublishedFiles("events", found["train"], found["test"], found.get("valid"))


@dataclass(frozen=True)
class PublishedData:
    """A published split as read: training interactions (the catalogue: every id of any
    file), and the validation and test pairs with each pair's line in its file."""

    train: Interactions
    test: tuple[np.ndarray, np.ndarray]
    valid: tuple[np.ndarray, np.ndarray] | None
    files: PublishedFiles


def read_lightgcn(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Users, items and each pair's 1-based line of a LightGCN-format file."""
    _require_file(path)
    users, items, lines = [], [], []
    seen: dict[int, int] = {}
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            if not _LINE.match(raw):
                raise DataError(
                    f"{path}: line {number}: expected 'user item item ...' as non-negative "
                    f"integers, got {raw.strip()[:60].decode('utf-8', 'replace')!r}"
                )
            try:
                ids = np.array(raw.split(), dtype=np.int64)
            except OverflowError:
                raise DataError(f"{path}: line {number}: an id beyond 64 bits") from None
            user, row = int(ids[0]), ids[1:]
            if user in seen:
                raise DataError(f"{path}: line {number}: user {user} already has line {seen[user]}")
            seen[user] = number
            if len(np.unique(row)) != len(row):
                values, counts = np.unique(row, return_counts=True)
                raise DataError(
                    f"{path}: line {number}: item {int(values[counts > 1][0])} repeated in "
                    f"user {user}'s line"
                )
            users.append(np.full(len(row), user, dtype=np.int64))
            items.append(row)
            lines.append(np.full(len(row), number, dtype=np.int64))
    if not seen:
        raise DataError(f"empty file: {path}")
    if not any(len(r) for r in items):
        raise DataError(f"{path}: no user has an item")
    return np.concatenate(users), np.concatenate(items), np.concatenate(lines)


def _check_dense(kind: str, ids: np.ndarray, files: PublishedFiles) -> None:
    distinct = len(np.unique(ids))
    if int(ids.max()) + 1 > _DENSE_SLACK * distinct + 1000:
        raise DataError(
            f"{files.train.parent}: {kind} ids go up to {int(ids.max())} for {distinct} distinct "
            f"{kind}s: LightGCN's format numbers {kind}s densely from 0"
        )


def _read_tables(
    files: PublishedFiles, user_col: str = "user", item_col: str = "item", sep: str | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each event table's users and items on one shared id space (by the ids' values)."""
    tables = {
        part: load_interactions_table(path, user_col=user_col, item_col=item_col, sep=sep)
        for part, path in zip(_PARTS, (files.train, files.valid, files.test), strict=True)
        if path is not None
    }
    raw_users = {p: t.user_map.to_id(t.users) for p, t in tables.items() if t.user_map}
    raw_items = {p: t.item_map.to_id(t.items) for p, t in tables.items() if t.item_map}
    user_map, _ = IdMap.from_values(np.concatenate(list(raw_users.values())))
    item_map, _ = IdMap.from_values(np.concatenate(list(raw_items.values())))
    out = {}
    for part in tables:
        users = user_map.to_index(raw_users[part])
        items = item_map.to_index(raw_items[part])
        out[part] = (users, items, np.arange(len(users)) + 2)  # + the header line
    out["maps"] = (user_map.ids, item_map.ids, np.zeros(0, dtype=np.int64))
    return out


def _check_disjoint(
    name: str,
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
    path: Path,
    against: Interactions,
    other: Path,
) -> None:
    inside = np.flatnonzero(against.contains(pairs[0], pairs[1]))
    if len(inside):
        at = int(inside[0])
        raise DataError(
            f"{path}: line {int(pairs[2][at])}: user {int(pairs[0][at])}, item "
            f"{int(pairs[1][at])} is also in {other.name} ({len(inside)} such {name} pairs): "
            "the split leaks"
        )


def load_published(
    files: PublishedFiles, user_col: str = "user", item_col: str = "item", sep: str | None = None
) -> PublishedData:
    """Read a published split (``user_col``, ``item_col``, ``sep``: the event tables').

    The catalogue is every id of any file (items only a held-out file names are kept, as the
    published tables count them); held-out pairs must not be training pairs, nor test pairs
    validation pairs."""
    if files.format == "lightgcn":
        parts = {
            part: read_lightgcn(path)
            for part, path in zip(_PARTS, (files.train, files.valid, files.test), strict=True)
            if path is not None
        }
        user_map = item_map = None
    else:
        parts = _read_tables(files, user_col, item_col, sep)
        user_ids, item_ids, _ = parts.pop("maps")
        user_map, item_map = IdMap(user_ids), IdMap(item_ids)
    users = np.concatenate([p[0] for p in parts.values()])
    items = np.concatenate([p[1] for p in parts.values()])
    if files.format == "lightgcn":
        _check_dense("user", users, files)
        _check_dense("item", items, files)
    num_users = len(user_map) if user_map else int(users.max()) + 1
    num_items = len(item_map) if item_map else int(items.max()) + 1
    train_users, train_items, _ = parts["train"]
    train = Interactions(
        train_users,
        train_items,
        num_users,
        num_items,
        user_map=user_map or IdMap.identity(num_users),
        item_map=item_map or IdMap.identity(num_items),
    )
    if files.format == "events":
        train = train.deduplicate()
    if len(train) == 0:
        raise DataError(f"{files.train}: no training interaction")
    for part in ("valid", "test"):
        if part in parts:
            path = files.valid if part == "valid" else files.test
            assert path is not None
            _check_disjoint(part, parts[part], path, train, files.train)
    if "valid" in parts and files.valid is not None:
        valid = Interactions(parts["valid"][0], parts["valid"][1], num_users, num_items)
        _check_disjoint("test", parts["test"], files.test, valid, files.valid)
    valid_pairs = (parts["valid"][0], parts["valid"][1]) if "valid" in parts else None
    return PublishedData(train, (parts["test"][0], parts["test"][1]), valid_pairs, files)
