"""``torchcf evaluate``: a saved run evaluated again on the split it was trained on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from torchcf.data.sources import changed_files, load_split
from torchcf.data.split import Split
from torchcf.errors import ConfigError, DataError
from torchcf.evaluation.protocols import evaluate_full, evaluate_sampled, full_ks
from torchcf.evaluation.significance import paired_metrics
from torchcf.runs.rundir import RunConfig, RunDir
from torchcf.runs.train import evaluate_selected, evaluate_sets
from torchcf.serving.persistence import LoadedModel, load_model

__all__ = [
    "check_split",
    "compare_runs",
    "evaluate_run",
    "load_run_split",
    "per_user_results",
]


def check_split(loaded: LoadedModel, split: Split, run: str | Path) -> None:
    """``DataError`` unless the saved model was trained on ``split``'s training set."""
    if not loaded.trained_on(split):
        raise DataError(f"the data of {run} changed since training: its split differs")


def load_run_split(run: str | Path, config: RunConfig, progress: bool = False) -> Split:
    """The split a run was trained on, rebuilt from its recorded data and split settings;
    ``DataError`` saying which file changed when it is not the same split any more."""
    try:
        split, _ = load_split(config.data, config.split, progress=progress)
    except DataError as exc:
        changed = changed_files(config.source.get("checksums") or {})
        if changed:
            raise DataError(
                f"the data of {run} changed since training: {_files(changed)}"
            ) from None
        raise exc
    if config.fingerprint is not None and split.fingerprint() != config.fingerprint:
        changed = changed_files(config.source.get("checksums") or {})
        what = _files(changed) if changed else "its split differs"
        raise DataError(f"the data of {run} changed since training: {what}")
    return split


def _files(paths: list[str]) -> str:
    return ", ".join(paths) + (" has" if len(paths) == 1 else " have") + " other content now"


def evaluate_run(run: str | Path, protocol: str = "both", progress: bool = False) -> dict[str, Any]:
    """Evaluate a saved run again on the split it was trained on (rebuilt from its recorded
    data and seed): ``sampled`` (test and validation), ``full`` ranking (test), or ``both``."""
    if protocol not in ("sampled", "full", "both"):
        raise ConfigError(f"protocol must be sampled, full or both, got {protocol!r}")
    config = RunDir(run).read_config()
    loaded = load_model(run)
    split = load_run_split(run, config, progress)
    check_split(loaded, split, run)
    k = config.split.k
    out: dict[str, Any] = {"run": str(run), "model": loaded.model.name}
    if split.ranking == "sets":  # held-out sets have one protocol: full ranking
        if protocol == "sampled":
            raise ConfigError(f"{run} holds out sets ranked among every item: no sampled protocol")
        out["full"] = evaluate_sets(loaded.model, split, config.split.ks)[0]
        return out
    if protocol in ("sampled", "both"):
        holdouts = [h for h in (split.test, split.validation) if h is not None]
        out["sampled"] = {
            h.name: evaluate_sampled(loaded.model, h, k, protocol=split.protocol).as_dict()
            for h in holdouts
        }
    if protocol in ("full", "both"):
        out["full"] = evaluate_full(loaded.model, split.test, split.known_items(), ks=full_ks(k))
        out["full"]["protocol"]["mask"] = split.mask
    return out


def per_user_results(run: str | Path) -> pd.DataFrame:
    """A run's per-user table: its ``per_user.parquet``, or (a run from before those files)
    computed again from its saved model on its rebuilt split."""
    directory = RunDir(run)
    if directory.per_user_file.exists():
        return directory.read_per_user()
    config = directory.read_config()
    loaded = load_model(run)
    split = load_run_split(run, config)
    check_split(loaded, split, run)
    if split.ranking == "sets":
        return evaluate_sets(loaded.model, split, config.split.ks)[1]
    return evaluate_selected(loaded.model, split, config.split.k)[1]


def compare_runs(
    run: str | Path, other: str | Path, seed: int = 0, resamples: int = 10_000
) -> dict[str, Any]:
    """``run`` − ``other`` on the same users: per holdout and protocol, HR@k and NDCG@k with
    paired bootstrap CIs and paired tests (``evaluation.significance``)."""
    configs = [RunDir(r).read_config() for r in (run, other)]
    a, b = ((c.fingerprint, c.split.k, c.split.mask) for c in configs)
    if a != b:
        raise ConfigError(f"{other} was trained on another split than {run} (or another k or mask)")
    k = configs[0].split.k
    tables = [per_user_results(r) for r in (run, other)]
    differences = paired_metrics(tables[0], tables[1], k, seed=seed, resamples=resamples)
    names = [f"{c.model} ({r})" for c, r in zip(configs, (run, other), strict=True)]
    return {
        "a": names[0],
        "b": names[1],
        "k": k,
        "differences": [
            {
                "holdout": holdout,
                "protocol": protocol,
                **d.as_dict(),
                "words": d.words(names[0], names[1]),
            }
            for (holdout, protocol), found in sorted(differences.items(), key=_order)
            for d in found
        ],
    }


def _order(item: tuple[tuple[str, str], Any]) -> tuple[int, int]:
    """Sampled before full ranking, test before validation."""
    (holdout, protocol), _ = item
    return (protocol != "sampled", holdout != "test")
