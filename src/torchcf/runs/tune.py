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

from torchcf.data.sources import DataSpec, load_split
from torchcf.data.split import Split
from torchcf.errors import ConfigError
from torchcf.evaluation.metrics import metric_key
from torchcf.io import atomic_open, write_json
from torchcf.models.base import Choice, FloatRange, IntRange, Param
from torchcf.models.registry import build_model, get_spec
from torchcf.runs.rundir import versions
from torchcf.training.config import Recipe, recipe
from torchcf.training.trainer import EpochRecord, Trainer, selection

__all__ = ["run_tune"]


def _suggest(trial: Any, name: str, param: Param) -> Any:
    if isinstance(param, FloatRange):
        return trial.suggest_float(name, param.low, param.high, log=param.log)
    if isinstance(param, IntRange):
        return trial.suggest_int(name, param.low, param.high, log=param.log)
    assert isinstance(param, Choice)
    return trial.suggest_categorical(name, list(param.values))


def _study(out: Path, model: str, base: Recipe) -> Any:
    """The Optuna study of ``model`` in ``out/study.db`` (continued when it exists)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=f"torchcf-{model}",
        storage=f"sqlite:///{(out / 'study.db').resolve()}",
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=base.train.seed),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=5, n_warmup_steps=max(2, base.train.epochs // 2)
        ),  # iterative models learn at different speeds: judge them past half-way
    )


def _objective(
    base: Recipe, space: dict[str, Param], split: Split, metric: str
) -> Callable[[Any], float]:
    """One trial: the suggested settings trained on ``split``, scored by the best validation
    ``metric`` over the epochs (pruned when it lags behind the other trials)."""
    import optuna

    def objective(trial: Any) -> float:
        params = {name: _suggest(trial, name, param) for name, param in space.items()}
        config = base.replace(**params)
        built = build_model(
            config.model,
            split.num_users,
            split.num_items,
            seed=config.train.seed,
            config=config.model_config,
        )

        def report(trainer: Trainer, record: EpochRecord) -> None:
            trial.report(_validation(record, metric), record.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        started = time.perf_counter()
        fit = Trainer(built, split, config.train, k=config.split.k, callbacks=[report]).fit()
        trial.set_user_attr("epoch", fit.selected.epoch)
        trial.set_user_attr("seconds", time.perf_counter() - started)
        return _validation(fit.selected, metric)

    return objective


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

    space = {k: v for k, v in get_spec(model).search.items() if k not in overrides}
    if not space:
        raise ConfigError(f"{model} has no hyperparameters left to tune")
    if metric not in ("ndcg", "hr", "recall"):
        raise ConfigError(f"metric must be ndcg, hr or recall, got {metric!r}")
    if trials < 1:
        raise ConfigError(f"trials must be positive, got {trials}")
    base = recipe(model, {**overrides, "select_by": "validation"})
    if not base.split.validation:
        raise ConfigError("tuning needs the validation holdout (drop --no-validation)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    split, source = load_split(spec, base.split, progress=False)
    if split.ranking == "sets" and base.train.select_metric == "auto":  # held-out sets: @20
        base = base.replace(select_metric=f"{metric}@20")
    names, cut = selection(split, base.train.select_metric, base.split.k)
    if metric not in names:
        raise ConfigError(
            f"--metric {metric} is not what selects the epochs ({' then '.join(names)}@{cut})"
        )
    study = _study(out, model, base)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = [t for t in study.trials if t.state in finished]
    if done:
        echo(f"resuming the study in {out / 'study.db'}: {len(done)} trials finished")

    def after(study_: Any, trial: Any) -> None:
        state = trial.state.name.lower()
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
        value = "" if trial.value is None else f"  validation {metric.upper()}@{cut} "
        value += "" if trial.value is None else f"{trial.value:.4f}"
        echo(f"trial {trial.number:>3} {state:<8} {shown}{value}")
        _write_results(study_, out, model, base, (metric, cut), source, command)

    if trials > len(done):
        objective = _objective(base, space, split, metric)
        study.optimize(
            objective, n_trials=trials - len(done), timeout=timeout, callbacks=[after], catch=()
        )
    return _write_results(study, out, model, base, (metric, cut), source, command)


def _validation(record: EpochRecord, metric: str) -> float:
    return record.metrics["validation"][metric]


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _write_results(
    study: Any,
    out: Path,
    model: str,
    base: Recipe,
    measured: tuple[str, int],
    source: dict[str, Any],
    command: list[str] | None,
) -> dict[str, Any]:
    """``trials.csv`` and ``best_config.json`` (``measured``: the metric and its cut-off)."""
    import optuna

    metric, cut = measured
    trials = study.trials
    names = sorted({name for t in trials for name in t.params})
    with atomic_open(out / "trials.csv") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "trial",
                "state",
                *names,
                f"validation_{metric_key(metric, cut)}",
                "epoch",
                "seconds",
            ]
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
        "metric": f"validation {metric}@{cut} at the best validation epoch",
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
            "settings": config.settings(),
        }
    write_json(out / "best_config.json", summary)
    return summary
