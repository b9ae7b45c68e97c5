"""Named public datasets: where they live on disk, and a verified download from GroupLens."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from torchcf.errors import DataError

__all__ = ["DATASETS", "DatasetSpec", "data_dir", "fetch_dataset"]


@dataclass(frozen=True)
class DatasetSpec:
    """A zip archive to download, its checksums, and the files it must contain."""

    name: str
    url: str
    md5: str
    sha256: str | None
    ratings: str  # member path of the ratings file inside the archive
    titles: str | None = None  # member path of the titles file, if any

    @property
    def archive_name(self) -> str:
        return f"{self.name}.zip"


DATASETS: dict[str, DatasetSpec] = {
    "ml-1m": DatasetSpec(
        name="ml-1m",
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        md5="c4d9eecfca2ab87c1945afe126590906",
        sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        ratings="ml-1m/ratings.dat",
        titles="ml-1m/movies.dat",
    ),
    "ml-100k": DatasetSpec(
        name="ml-100k",
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        md5="0e33842e24a9c977be4e0107933c0723",
        sha256=None,
        ratings="ml-100k/u.data",
        titles="ml-100k/u.item",
    ),
}


def data_dir() -> Path:
    """``$TORCHCF_DATA_DIR``, else ``$XDG_CACHE_HOME/torchcf``, else ``~/.cache/torchcf``."""
    env = os.environ.get("TORCHCF_DATA_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "torchcf"


def _checksums(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            md5.update(block)
            sha.update(block)
    return md5.hexdigest(), sha.hexdigest()


def _verify(spec: DatasetSpec, archive: Path) -> str | None:
    """None if ``archive`` matches the spec's checksums, else a description of the mismatch."""
    md5, sha = _checksums(archive)
    if md5 != spec.md5:
        return f"MD5 {md5}, expected {spec.md5}"
    if spec.sha256 is not None and sha != spec.sha256:
        return f"SHA-256 {sha}, expected {spec.sha256}"
    return None


def _download(spec: DatasetSpec, target: Path, progress: bool) -> None:
    from tqdm.auto import tqdm

    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(spec.url, timeout=60) as response:  # noqa: S310 (https URL)
            total = int(response.headers.get("Content-Length") or 0) or None
            with (
                open(partial, "wb") as out,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=f"downloading {spec.name}",
                    disable=not progress,
                    file=sys.stderr,
                ) as bar,
            ):
                for block in iter(lambda: response.read(1 << 16), b""):
                    out.write(block)
                    bar.update(len(block))
        if total is not None and partial.stat().st_size != total:
            raise DataError(
                f"download of {spec.url} was cut short "
                f"({partial.stat().st_size} of {total} bytes); "
                "the partial file was removed, run again"
            )
        os.replace(partial, target)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"cannot download {spec.name} from {spec.url} ({reason}); download it by hand and put "
            f"{spec.archive_name} in {target.parent} (or set TORCHCF_DATA_DIR)"
        ) from None
    finally:
        partial.unlink(missing_ok=True)


def fetch_dataset(
    spec: DatasetSpec | str,
    root: Path | None = None,
    download: bool = True,
    progress: bool = True,
) -> Path:
    """Path of the extracted dataset directory, downloading and verifying the archive if needed.

    Layout: ``root/<name>.zip`` and ``root/<name>/...`` (the archive's members). A corrupt or
    partial archive is removed and reported. Extraction is atomic (temp dir + rename).
    """
    if isinstance(spec, str):
        if spec not in DATASETS:
            raise DataError(f"unknown dataset {spec!r} (known: {', '.join(sorted(DATASETS))})")
        spec = DATASETS[spec]
    root = Path(root) if root is not None else data_dir()
    ratings = root / spec.ratings
    if ratings.is_file():
        return ratings.parent
    root.mkdir(parents=True, exist_ok=True)
    archive = root / spec.archive_name
    if not archive.exists():
        if not download:
            raise DataError(f"{spec.name} is not in {root}: put {spec.archive_name} there")
        _download(spec, archive, progress)
    problem = _verify(spec, archive)
    if problem is not None:
        archive.unlink(missing_ok=True)
        raise DataError(
            f"{archive} is corrupt or incomplete ({problem}); "
            "it was removed, run again to re-download"
        )
    staging = root / f".{spec.name}.extract"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            if spec.ratings not in names:
                raise DataError(f"{archive} has no {spec.ratings}")
            zf.extractall(staging)
        top = spec.ratings.split("/")[0]
        os.replace(staging / top, root / top)
    except zipfile.BadZipFile:
        archive.unlink(missing_ok=True)
        raise DataError(f"{archive} is not a valid zip archive; it was removed") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ratings.parent
