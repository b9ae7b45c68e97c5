"""Where interactions come from (``DataSpec``: a named dataset or a path, and how to read it),
and ``load_split``: read them and split them as a ``SplitConfig`` says."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from torchcf.data.datasets import DATASETS, fetch_dataset
from torchcf.data.filters import filter_users
from torchcf.data.loaders import find_ncf_files, load_ncf_files, load_path
from torchcf.data.published import find_published_files, load_published
from torchcf.data.split import Split, SplitConfig, make_split
from torchcf.errors import ConfigError

__all__ = ["DataSpec", "changed_files", "checksums", "load_split"]


@dataclass(frozen=True)
class DataSpec:
    """Where the interactions come from and how to read them."""

    dataset: str | None = None  # a named dataset: ml-1m, ml-100k
    path: str | None = None  # a file, a MovieLens directory, or an NCF split directory
    data_dir: str | None = None  # where named datasets are stored (default: TORCHCF_DATA_DIR)
    user_col: str = "user"
    item_col: str = "item"
    rating_col: str | None = None
    time_col: str | None = None
    sep: str | None = None
    min_rating: float | None = None
    min_user_interactions: int = 0
    download: bool = True
    allow_cold_items: bool = False  # NCF files: test items and negatives never trained on

    def __post_init__(self) -> None:
        if (self.dataset is None) == (self.path is None):
            raise ConfigError("give exactly one of --dataset or --data")
        if self.dataset is not None and self.dataset not in DATASETS:
            raise ConfigError(
                f"unknown dataset {self.dataset!r} (known: {', '.join(sorted(DATASETS))})"
            )
        if self.min_user_interactions < 0:
            raise ConfigError("--min-user-interactions must be non-negative")

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set (what a run records)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def resolved(self) -> DataSpec:
        """The same data with absolute paths: what a run records, so that it is found again
        from any working directory."""

        def absolute(value: str | None) -> str | None:
            return None if value is None else str(Path(value).expanduser().resolve())

        return replace(self, path=absolute(self.path), data_dir=absolute(self.data_dir))


def checksums(paths: list[Path]) -> dict[str, str]:
    """SHA-256 of each file, by absolute path: what a run records to tell a changed file."""
    out = {}
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        out[str(path.resolve())] = digest.hexdigest()
    return out


def load_split(
    spec: DataSpec, config: SplitConfig, progress: bool = True
) -> tuple[Split, dict[str, Any]]:
    """Read the data named by ``spec`` and split it as ``config`` says; returns a source summary
    (where the data came from, its format, title files)."""
    source: dict[str, Any] = {}
    if spec.dataset is not None:
        root = Path(spec.data_dir).expanduser() if spec.data_dir else None
        directory = fetch_dataset(spec.dataset, root, download=spec.download, progress=progress)
        source.update(dataset=spec.dataset, path=str(directory))
        files = DATASETS[spec.dataset]
        ratings = directory / Path(files.ratings).name
        data = load_path(ratings, min_rating=spec.min_rating)
        source["checksums"] = checksums([ratings])
        if files.titles:
            source["titles"] = str((directory / Path(files.titles).name).resolve())
    else:
        assert spec.path is not None  # DataSpec holds exactly one of dataset and path
        path = Path(spec.path).expanduser()
        source.update(dataset=None, path=str(path))
        published = find_published_files(path) if path.is_dir() else None
        if published is not None:
            if spec.min_rating is not None or spec.min_user_interactions > 1:
                raise ConfigError(
                    "--min-rating/--min-user-interactions do not apply to a published split"
                )
            published_data = load_published(
                published, user_col=spec.user_col, item_col=spec.item_col, sep=spec.sep
            )
            split = make_split(published_data, config)
            source.update(format="published", files=[str(p) for p in published.paths])
            source["checksums"] = checksums(published.paths)
            return split, source
        ncf = find_ncf_files(path) if path.is_dir() else None
        if ncf is not None:
            if spec.min_rating is not None or spec.min_user_interactions > 1:
                raise ConfigError(
                    "--min-rating/--min-user-interactions do not apply to an NCF split"
                )
            split = make_split(load_ncf_files(ncf, spec.allow_cold_items), config)
            source.update(format="ncf", files=[str(ncf.train), str(ncf.test), str(ncf.negative)])
            source["checksums"] = checksums([ncf.train, ncf.test, ncf.negative])
            source.update(_ncf_titles(path))
            return split, source
        data = load_path(
            path,
            min_rating=spec.min_rating,
            user_col=spec.user_col,
            item_col=spec.item_col,
            rating_col=spec.rating_col,
            time_col=spec.time_col,
            sep=spec.sep,
        )
        read = [path] if path.is_file() else [path / n for n in ("ratings.dat", "u.data")]
        source["checksums"] = checksums([p for p in read if p.is_file()][:1])
        for name in ("movies.dat", "u.item"):
            candidate = (path if path.is_dir() else path.parent) / name
            if candidate.exists():
                source["titles"] = str(candidate.resolve())
    data = filter_users(data, spec.min_user_interactions)
    source["format"] = "interactions"
    return make_split(data, config), source


def _ncf_titles(directory: Path) -> dict[str, str]:
    """An NCF split renumbers items; with ``movies.dat`` beside it and an ``ncf_item_map.tsv``
    (NCF item id → MovieID) here, beside it or in ``derived/``, recommendations get titles."""
    movies = directory.parent / "movies.dat"
    for where in (directory, directory.parent, directory.parent / "derived"):
        id_map = where / "ncf_item_map.tsv"
        if movies.exists() and id_map.exists():
            return {"titles": str(movies.resolve()), "title_ids": str(id_map.resolve())}
    return {}


def changed_files(recorded: dict[str, str]) -> list[str]:
    """The recorded files whose content is not what was recorded (or that are gone)."""
    changed = []
    for name, digest in recorded.items():
        path = Path(name)
        if not path.is_file() or checksums([path])[str(path.resolve())] != digest:
            changed.append(name)
    return changed
