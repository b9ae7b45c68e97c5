"""``torchcf tune``: hyperparameter search with Optuna, scored on the validation holdout only.

Each trial trains one configuration on the run's split and is scored by its best validation
NDCG@k (or HR@k) over the epochs; the test holdout never informs a choice (its metrics are not
even recorded). The study lives in ``OUT/study.db`` (SQLite), so an interrupted or finished search
continues where it stopped when run again; ``OUT/trials.csv`` and ``OUT/best_config.json`` are
rewritten (atomically) after every trial. Hyperparameters the user sets explicitly are held fixed.
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchcf.config import TrainConfig, recipe
from torchcf.errors import ConfigError
from torchcf.experiment import DataSpec, load_split, versions
from torchcf.io import atomic_open, write_json
from torchcf.registry import TRAINABLE, build_model, model_kwargs
from torchcf.training import EpochRecord, Trainer

__all__ = ["SEARCH_SPACES", "run_tune"]

# name → (kind, low, high[, log]) or ("choice", [values]); one space per model
SEARCH_SPACES: dict[str, dict[str, tuple[Any, ...]]] = {
    "mf": {
        "learning_rate": ("float", 1e-4, 1e-2, True),
        "weight_decay": ("float", 1e-9, 1e-5, True),
        "num_negatives": ("int", 2, 10),
    },
    "gmf": {
        "learning_rate": ("float", 1e-4, 1e-2, True),
        "weight_decay": ("float", 1e-9, 1e-5, True),
        "num_negatives": ("int", 2, 10),
    },
    "mlp": {
        "learning_rate": ("float", 3e-4, 3e-3, True),
        "dropout": ("float", 0.0, 0.5),
        "batch_size": ("choice", [512, 1024, 2048]),
    },
    "neumf": {
        "learning_rate": ("float", 3e-4, 3e-3, True),
        "dropout": ("float", 0.0, 0.5),
        "batch_size": ("choice", [512, 1024, 2048]),
    },
    "ials": {
        "embedding_dim": ("choice", [32, 64, 128, 192]),
        "l2": ("float", 1e-4, 3e-2, True),
        "unobserved_weight": ("float", 0.01, 1.0, True),
    },
    "ease": {"l2": ("float", 10.0, 10_000.0, True)},
    "itemknn": {"neighbours": ("int", 10, 1000, True), "shrink": ("float", 0.0, 100.0)},
}


def _suggest(trial: Any, name: str, spec: tuple[Any, ...]) -> Any:
    kind = spec[0]
    if kind == "float":
        return trial.suggest_float(name, spec[1], spec[2], log=len(spec) > 3 and spec[3])
    if kind == "int":
        return trial.suggest_int(name, spec[1], spec[2], log=len(spec) > 3 and spec[3])
    return trial.suggest_categorical(name, spec[1])


def run_tune(
    spec: DataSpec,
    model: str,
    overrides: dict[str, Any],
    trials: int,
    out: str | Path,
    *,
    metric: str = "ndcg",
    timeout: float | None = None,
    echo: Callable[[str], None] = print,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Run trials until the study in ``out`` has ``trials`` finished ones, run to the end or
    pruned (or until ``timeout`` seconds have passed)."""
    import optuna

    if model not in TRAINABLE:
        raise ConfigError(f"unknown model {model!r} (known: {', '.join(TRAINABLE)})")
    space = {k: v for k, v in SEARCH_SPACES.get(model, {}).items() if k not in overrides}
    if not space:
        raise ConfigError(f"{model} has no hyperparameters left to tune")
    if metric not in ("ndcg", "hr"):
        raise ConfigError(f"metric must be ndcg or hr, got {metric!r}")
    if trials < 1:
        raise ConfigError(f"trials must be positive, got {trials}")
    base = recipe(model, {**overrides, "select_by": "validation"})
    if not base.validation:
        raise ConfigError("tuning needs the validation holdout (drop --no-validation)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    split, source = load_split(spec, base, progress=False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=f"torchcf-{model}",
        storage=f"sqlite:///{(out / 'study.db').resolve()}",
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=base.seed),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=5, n_warmup_steps=max(2, base.epochs // 2)
        ),  # iterative models learn at different speeds: judge them past half-way
    )
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = [t for t in study.trials if t.state in finished]
    if done:
        echo(f"resuming the study in {out / 'study.db'}: {len(done)} trials finished")

    def objective(trial: Any) -> float:
        params = {name: _suggest(trial, name, spec_) for name, spec_ in space.items()}
        config = base.replace(**params)
        built = build_model(
            model,
            split.num_users,
            split.num_items,
            seed=config.seed,
            **model_kwargs(model, config.to_dict()),
        )

        def report(trainer: Trainer, record: EpochRecord) -> None:
            value = _validation(record, metric)
            trial.report(value, record.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        started = time.perf_counter()
        fit = Trainer(built, split, config, callbacks=[report]).fit()
        value = _validation(fit.selected, metric)
        trial.set_user_attr("epoch", fit.selected.epoch)
        trial.set_user_attr("seconds", time.perf_counter() - started)
        return value

    def after(study_: Any, trial: Any) -> None:
        state = trial.state.name.lower()
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
        value = (
            ""
            if trial.value is None
            else f"  validation {metric.upper()}@{base.k} {trial.value:.4f}"
        )
        echo(f"trial {trial.number:>3} {state:<8} {shown}{value}")
        _write_results(study_, out, model, base, metric, source, command)

    remaining = trials - len(done)
    if remaining > 0:
        study.optimize(
            objective,
            n_trials=remaining,
            timeout=timeout,
            callbacks=[after],
            catch=(),
        )
    return _write_results(study, out, model, base, metric, source, command)


def _validation(record: EpochRecord, metric: str) -> float:
    hr, nd = record.score("validation")
    return nd if metric == "ndcg" else hr


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _write_results(
    study: Any,
    out: Path,
    model: str,
    base: TrainConfig,
    metric: str,
    source: dict[str, Any],
    command: list[str] | None,
) -> dict[str, Any]:
    import optuna

    trials = study.trials
    names = sorted({name for t in trials for name in t.params})
    with atomic_open(out / "trials.csv") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["trial", "state", *names, f"validation_{metric}@{base.k}", "epoch", "seconds"]
        )
        for t in trials:
            writer.writerow(
                [t.number, t.state.name.lower()]
                + [t.params.get(n, "") for n in names]
                + [
                    t.value if t.value is not None else "",
                    t.user_attrs.get("epoch", ""),
                    round(t.user_attrs.get("seconds", 0.0), 1),
                ]
            )
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    summary: dict[str, Any] = {
        "model": model,
        "metric": f"validation {metric}@{base.k} at the best validation epoch",
        "trials": {"complete": len(complete), "total": len(trials)},
        "source": source,
        "command": command if command is not None else sys.argv,
        "versions": versions(),
    }
    if complete:
        best = max(complete, key=lambda t: t.value)
        config = base.replace(**best.params)
        summary["best"] = {
            "trial": best.number,
            "value": best.value,
            "epoch": best.user_attrs.get("epoch"),
            "params": best.params,
            "config": config.to_dict(),
        }
    write_json(out / "best_config.json", summary)
    return summary
