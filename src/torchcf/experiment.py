"""The end-to-end job behind ``torchcf train``: load → split → train → evaluate → save.

The CLI only parses flags into a ``DataSpec`` and a ``TrainConfig`` and calls ``run_training``.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import torchcf
from torchcf.baselines import FittedModel
from torchcf.config import TrainConfig, recipe
from torchcf.data.datasets import DATASETS, fetch_dataset
from torchcf.data.interactions import IdMap, Interactions
from torchcf.data.loaders import find_ncf_files, load_ncf_files, load_path
from torchcf.errors import ConfigError, DataError
from torchcf.evaluation import evaluate_full, evaluate_sampled
from torchcf.io import write_json
from torchcf.models import GMF, MLP, NeuMF, ScoringModel
from torchcf.persistence import LoadedModel, load_model, save_model
from torchcf.registry import build_model, model_kwargs
from torchcf.report import write_learning_curve, write_metrics_csv
from torchcf.split import Split, leave_one_out, ncf_split
from torchcf.training import EpochRecord, FitResult, Trainer, checkpoint_callback, resolve_device

__all__ = [
    "DataSpec",
    "Pretrained",
    "check_split",
    "ensure_run",
    "evaluate_run",
    "filter_users",
    "load_split",
    "pretrain_config",
    "read_run",
    "run_training",
]


PRETRAIN_DIR = "pretrain"  # inside a NeuMF run directory: the GMF and MLP runs it starts from


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

    def __post_init__(self) -> None:
        if (self.dataset is None) == (self.path is None):
            raise ConfigError("give exactly one of --dataset or --data")
        if self.dataset is not None and self.dataset not in DATASETS:
            raise ConfigError(
                f"unknown dataset {self.dataset!r} (known: {', '.join(sorted(DATASETS))})"
            )
        if self.min_user_interactions < 0:
            raise ConfigError("--min-user-interactions must be non-negative")


@dataclass(frozen=True)
class Pretrained:
    """Run (or model) directories of a trained GMF and MLP, and the head's mixing weight α."""

    gmf: str
    mlp: str
    alpha: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"--alpha must be in [0, 1], got {self.alpha}")

    def as_dict(self) -> dict[str, Any]:
        return {"gmf": str(self.gmf), "mlp": str(self.mlp), "alpha": self.alpha}


def init_from_runs(model: torch.nn.Module, pretrained: Pretrained, split: Split) -> None:
    """Initialise ``model`` (a NeuMF) from the two runs, after checking they saw the same data."""
    if not isinstance(model, NeuMF):
        raise ConfigError("pretraining initialises neumf models only")
    loaded: dict[str, ScoringModel] = {}
    for name, path, kind in (("gmf", pretrained.gmf, GMF), ("mlp", pretrained.mlp, MLP)):
        run = load_model(path)
        if not isinstance(run.model, kind):
            raise ConfigError(f"{path} holds a {run.model.name} model, expected {name}")
        if not _trained_on(run, split):
            raise ConfigError(f"{path} was trained on other data (its users or items differ)")
        loaded[name] = run.model
    gmf, mlp = loaded["gmf"], loaded["mlp"]
    assert isinstance(gmf, GMF) and isinstance(mlp, MLP)
    model.init_from_pretrained(gmf, mlp, pretrained.alpha)


def _trained_on(run: LoadedModel, split: Split) -> bool:
    """Do the saved model's users and items match ``split``'s (same ids, same sizes)?"""
    same_ids = split.train.user_map is None or (
        run.user_map == split.train.user_map and run.item_map == split.train.item_map
    )
    sizes = (run.model.num_users, run.model.num_items) == (split.num_users, split.num_items)
    return same_ids and sizes


def pretrain_config(part: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The settings of the GMF or MLP run a NeuMF starts from: the part's own recipe with the
    user's explicit settings, except the optimizer and learning rate (those are fine-tuning's)."""
    kept = {k: v for k, v in (overrides or {}).items() if k not in ("optimizer", "learning_rate")}
    return recipe(part, kept)


def finished_run(
    out: Path, spec: DataSpec, config: TrainConfig, pretrained: Pretrained | None = None
) -> bool:
    """Does ``out`` hold a finished run of exactly these settings?"""
    try:
        saved = json.loads((out / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    data = {k: v for k, v in asdict(spec).items() if v is not None}
    return (
        (out / "metrics.json").exists()
        and (out / "model" / "config.json").exists()
        and saved.get("train") == config.to_dict()
        and saved.get("data") == data
        and saved.get("pretrained") == (None if pretrained is None else pretrained.as_dict())
    )


def ensure_run(
    spec: DataSpec,
    config: TrainConfig,
    out: Path,
    *,
    rerun: bool = False,
    echo: Callable[[str], None] = print,
    pretrained: Pretrained | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The summary of a finished run in ``out`` with these settings, training it if needed."""
    if not rerun and finished_run(out, spec, config, pretrained):
        echo(f"reusing the finished {config.model} run in {out}")
        return json.loads((out / "metrics.json").read_text())
    return run_training(
        spec, config, out, overwrite=True, echo=echo, pretrained=pretrained, **options
    )


def filter_users(data: Interactions, min_count: int) -> Interactions:
    """Drop users with fewer than ``min_count`` distinct items; re-index users and items densely."""
    if min_count <= 1:
        return data
    data = data.deduplicate()
    counts = data.user_counts()
    keep = counts[data.users] >= min_count
    if not keep.any():
        raise DataError(f"no user has at least {min_count} interactions")
    kept = data.subset(keep)
    user_ids, users = np.unique(kept.users, return_inverse=True)
    item_ids, items = np.unique(kept.items, return_inverse=True)
    user_map = IdMap(data.user_map.to_id(user_ids)) if data.user_map else IdMap(user_ids)
    item_map = IdMap(data.item_map.to_id(item_ids)) if data.item_map else IdMap(item_ids)
    return Interactions(
        users,
        items,
        len(user_ids),
        len(item_ids),
        timestamps=kept.timestamps,
        ratings=kept.ratings,
        user_map=user_map,
        item_map=item_map,
    )


def load_split(
    spec: DataSpec, config: TrainConfig, progress: bool = True
) -> tuple[Split, dict[str, Any]]:
    """Read the data named by ``spec`` and split it as ``config`` says; returns a source summary."""
    source: dict[str, Any] = {}
    if spec.dataset is not None:
        root = Path(spec.data_dir).expanduser() if spec.data_dir else None
        directory = fetch_dataset(spec.dataset, root, download=spec.download, progress=progress)
        source.update(dataset=spec.dataset, path=str(directory))
        files = DATASETS[spec.dataset]
        ratings = directory / Path(files.ratings).name
        data = load_path(ratings, min_rating=spec.min_rating)
        if files.titles:
            source["titles"] = str((directory / Path(files.titles).name).resolve())
    else:
        assert spec.path is not None  # DataSpec holds exactly one of dataset and path
        path = Path(spec.path).expanduser()
        source.update(dataset=None, path=str(path))
        ncf = find_ncf_files(path) if path.is_dir() else None
        if ncf is not None:
            if spec.min_rating is not None or spec.min_user_interactions > 1:
                raise ConfigError(
                    "--min-rating/--min-user-interactions do not apply to an NCF split"
                )
            data_ncf = load_ncf_files(ncf)
            split = ncf_split(
                data_ncf, config.eval_negatives, validation=config.validation, seed=config.seed
            )
            source.update(format="ncf", files=[str(ncf.train), str(ncf.test), str(ncf.negative)])
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
        for name in ("movies.dat", "u.item"):
            candidate = (path if path.is_dir() else path.parent) / name
            if candidate.exists():
                source["titles"] = str(candidate.resolve())
    data = filter_users(data, spec.min_user_interactions)
    source["format"] = "interactions"
    split = leave_one_out(
        data, config.eval_negatives, validation=config.validation, seed=config.seed
    )
    return split, source


def _ncf_titles(directory: Path) -> dict[str, str]:
    """An NCF split renumbers items; with ``movies.dat`` beside it and an ``ncf_item_map.tsv``
    (NCF item id → MovieID) here, beside it or in ``derived/``, recommendations get titles."""
    movies = directory.parent / "movies.dat"
    for where in (directory, directory.parent, directory.parent / "derived"):
        id_map = where / "ncf_item_map.tsv"
        if movies.exists() and id_map.exists():
            return {"titles": str(movies.resolve()), "title_ids": str(id_map.resolve())}
    return {}


def versions() -> dict[str, str]:
    """Software versions recorded with every result."""
    return {
        "torchcf": torchcf.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _source_name(source: dict[str, Any]) -> str:
    if source.get("dataset"):
        return str(source["dataset"])
    if source.get("format") == "ncf":
        return Path(source["files"][0]).name.removesuffix(".train.rating") + " (NCF split)"
    return Path(source["path"]).name


def format_epoch(record: EpochRecord, epochs: int, k: int) -> str:
    """The one line printed per epoch."""
    loss = "" if math.isnan(record.loss) else f"loss {record.loss:.4f}  "  # NaN: a fitted model
    line = (
        f"epoch {record.epoch:>3}/{epochs}  {loss}"
        f"HR@{k} {record.test_hr:.4f}  NDCG@{k} {record.test_ndcg:.4f}"
    )
    if record.val_hr is not None:
        line += f"  (val HR@{k} {record.val_hr:.4f}  NDCG@{k} {record.val_ndcg:.4f})"
    return line + f"  train {record.train_seconds:.1f}s  eval {record.eval_seconds:.2f}s"


def summarise(fit: FitResult, config: TrainConfig, split: Split) -> dict[str, Any]:
    """The ``metrics.json`` summary: selected epoch, test-selected best, protocol, timings."""
    k = config.k
    sel, best = fit.selected, fit.best_test

    def metrics(record: EpochRecord, holdout: str) -> dict[str, float]:
        hr, nd = record.score(holdout)
        return {f"hr@{k}": hr, f"ndcg@{k}": nd}

    selected: dict[str, Any] = {
        "by": fit.selected_by,
        "epoch": sel.epoch,
        "test": metrics(sel, "test"),
    }
    if sel.val_hr is not None:
        selected["validation"] = metrics(sel, "validation")
    history = fit.history
    return {
        "selected": selected,
        "best_test": {
            "epoch": best.epoch,
            **metrics(best, "test"),
            "note": "the epoch with the best test HR, as the seed write-up reported it "
            "(optimistic: "
            "chosen on the test set)",
        },
        "epochs_run": len(history),
        "stopped_early": fit.stopped_early,
        "seconds_per_epoch": {
            "train": float(np.mean([r.train_seconds for r in history])),
            "eval": float(np.mean([r.eval_seconds for r in history])),
        },
        "protocol": {
            **split.protocol,
            "k": k,
            "metrics": f"HR@{k} and NDCG@{k} from the rank of the held-out item among its "
            "candidates; ties count against it",
        },
    }


def run_training(
    spec: DataSpec,
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    command: list[str] | None = None,
    pretrained: Pretrained | None = None,
) -> dict[str, Any]:
    """Train, evaluate and save one model; returns the ``metrics.json`` summary.

    ``pretrained`` initialises a NeuMF from a GMF and an MLP run directory before training.
    """
    out = Path(out)
    checkpoint = out / "checkpoint.pt"
    existing = [p for p in out.iterdir() if p.name != PRETRAIN_DIR] if out.exists() else []
    if existing and not resume:
        if not overwrite:
            raise ConfigError(
                f"output directory {out} exists; use --resume, --overwrite or another --out"
            )
        for path in existing:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if pretrained is not None and config.model != "neumf":
        raise ConfigError(f"pretraining initialises neumf, not {config.model}")
    if resume and not checkpoint.exists():
        raise ConfigError(f"nothing to resume: {checkpoint} does not exist")
    resolve_device(config.device)  # fail before the (slow) data loading
    started = time.perf_counter()
    split, source = load_split(spec, config, progress=progress)
    echo(
        f"data: {split.num_users} users, {split.num_items} items, {len(split.train)} training "
        f"interactions; test {len(split.test)} users"
        + (f", validation {len(split.validation)} users" if split.validation is not None else "")
    )
    for note in split.protocol.get("notes", []):
        echo(f"note: {note}")
    model = build_model(
        config.model,
        split.num_users,
        split.num_items,
        seed=config.seed,
        **model_kwargs(config.model, config.to_dict()),
    )
    if pretrained is not None:
        init_from_runs(model, pretrained, split)
        echo(
            f"initialised from gmf {pretrained.gmf} and mlp {pretrained.mlp} "
            f"(alpha {pretrained.alpha})"
        )
    run_config = {
        "train": config.to_dict(),
        "data": {k: v for k, v in asdict(spec).items() if v is not None},
        "source": source,
        "pretrained": None if pretrained is None else pretrained.as_dict(),
        "command": command if command is not None else sys.argv,
        "versions": versions(),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", run_config)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=0, unit="sample", unit_scale=True, leave=False, file=sys.stderr, disable=None
        )

    def on_step(epoch: int, n: int, total: int) -> None:
        assert bar is not None
        if n == 0:  # a new epoch
            bar.reset(total=total)
            bar.set_description(f"epoch {epoch}/{config.epochs}")
        bar.update(n)

    epochs = config.epochs
    if isinstance(model, FittedModel) and model.max_epochs is not None:
        epochs = min(epochs, model.max_epochs)  # a closed form fits once

    def on_epoch(trainer: Trainer, record: EpochRecord) -> None:
        if bar is not None:
            bar.clear()
        echo(format_epoch(record, epochs, config.k))
        write_metrics_csv(out / "metrics.csv", trainer.history, config.k)

    trainer = Trainer(
        model,
        split,
        config,
        callbacks=[on_epoch, checkpoint_callback(checkpoint)],
        progress=on_step if bar is not None else None,
        evaluate_initial=pretrained is not None,
    )
    if resume:
        trainer.load_checkpoint(checkpoint)
        echo(f"resumed after epoch {len(trainer.history)}")
    try:
        fit = trainer.fit()
    finally:
        if bar is not None:
            bar.close()
    model.load_state_dict(fit.state)  # the selected epoch's weights: evaluated and saved
    full = evaluate_full(
        model, split.test, split.known_items(), ks=full_ks(config.k), device=trainer.device
    )
    summary = {
        "model": config.model,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "source": source,
        **summarise(fit, config, split),
        "full_ranking": full,
        "wall_seconds": time.perf_counter() - started,
        "versions": versions(),
    }
    save_model(
        out / "model",
        model,
        split.train,
        metadata={"train_config": config.to_dict(), "source": source, "metrics": summary},
        state=fit.state,
    )
    write_metrics_csv(out / "metrics.csv", fit.history, config.k)
    write_learning_curve(
        out / "learning_curve.png",
        fit.history,
        config.k,
        title=f"{config.model.upper()} on {_source_name(source)}",
        selected_epoch=fit.selected.epoch,
    )
    write_json(out / "metrics.json", summary)
    checkpoint.unlink(missing_ok=True)
    k = config.k
    sel = summary["selected"]
    best = summary["best_test"]
    echo(
        f"selected epoch {sel['epoch']} by {sel['by']}: test HR@{k} {sel['test'][f'hr@{k}']:.4f}  "
        f"NDCG@{k} {sel['test'][f'ndcg@{k}']:.4f}"
    )
    echo(
        f"best test epoch {best['epoch']} (chosen on test, as the seed did): HR@{k} "
        f"{best[f'hr@{k}']:.4f}  NDCG@{k} {best[f'ndcg@{k}']:.4f}"
    )
    echo(format_full(full, k))
    echo(f"wrote {out}  ({summary['wall_seconds']:.1f}s)")
    return summary


def read_run(run: str | Path) -> tuple[dict[str, Any], DataSpec, TrainConfig]:
    """A run directory's recorded ``config.json``, data spec and training config."""
    run = Path(run)
    try:
        recorded = json.loads((run / "config.json").read_text())
        return recorded, DataSpec(**recorded["data"]), TrainConfig(**recorded["train"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{run} is not a torchcf run directory ({type(exc).__name__})") from None


def check_split(loaded: LoadedModel, split: Split, run: str | Path) -> None:
    """``DataError`` unless the saved model was trained on ``split``'s training set."""
    if not _trained_on(loaded, split) or loaded.seen.nnz != len(split.train.deduplicate()):
        raise DataError(f"the data of {run} changed since training: its split differs")


def evaluate_run(run: str | Path, protocol: str = "both", progress: bool = False) -> dict[str, Any]:
    """Evaluate a saved run again on the split it was trained on (rebuilt from its recorded
    data and seed): ``sampled`` (test and validation), ``full`` ranking (test), or ``both``."""
    if protocol not in ("sampled", "full", "both"):
        raise ConfigError(f"protocol must be sampled, full or both, got {protocol!r}")
    _, spec, config = read_run(run)
    loaded = load_model(run)
    split, _ = load_split(spec, config, progress=progress)
    check_split(loaded, split, run)
    out: dict[str, Any] = {"run": str(run), "model": loaded.model.name}
    if protocol in ("sampled", "both"):
        holdouts = [h for h in (split.test, split.validation) if h is not None]
        out["sampled"] = {
            h.name: evaluate_sampled(loaded.model, h, config.k, protocol=split.protocol).as_dict()
            for h in holdouts
        }
    if protocol in ("full", "both"):
        out["full"] = evaluate_full(
            loaded.model, split.test, split.known_items(), ks=full_ks(config.k)
        )
    return out


def full_ks(k: int) -> tuple[int, ...]:
    """The cut-offs of full-ranking reports: 5, 10, 20 and the run's own ``k``."""
    return tuple(sorted({5, 10, 20, k}))


def format_full(full: dict[str, Any], k: int) -> str:
    return (
        f"full ranking ({full['holdout']} item among all the user's unseen items): "
        f"HR@{k} {full[f'hr@{k}']:.4f}  NDCG@{k} {full[f'ndcg@{k}']:.4f}  "
        f"MRR@{k} {full[f'mrr@{k}']:.4f}  coverage@{k} {full[f'coverage@{k}']:.3f}"
    )
