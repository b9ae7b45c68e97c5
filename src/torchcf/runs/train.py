"""The job behind ``torchcf train``: load → split → train → evaluate → save a run directory,
and NeuMF's pretraining (a GMF and an MLP run first, then NeuMF from both)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from torchcf import distributed
from torchcf.data.sources import DataSpec, load_split
from torchcf.data.split import Holdout, Split
from torchcf.errors import ConfigError
from torchcf.evaluation.metrics import hit_rate, ndcg
from torchcf.evaluation.protocols import (
    full_ks,
    full_metrics,
    full_ranks,
    holdout_ranks,
    per_user,
)
from torchcf.evaluation.sets import (
    SET_METRICS,
    per_user_table,
    set_metrics,
    set_positions,
    set_summary,
)
from torchcf.models.base import FittedModel, ScoringModel
from torchcf.models.gmf import GMF
from torchcf.models.mlp import MLP
from torchcf.models.neumf import NeuMF
from torchcf.models.registry import build_model, get_spec
from torchcf.runs.report import write_learning_curve
from torchcf.runs.rundir import RunConfig, RunDir, metric_key, metrics_at, versions
from torchcf.serving.persistence import load_model, save_model
from torchcf.training.config import Recipe, recipe, takes
from torchcf.training.trainer import (
    EpochRecord,
    FitResult,
    Trainer,
    checkpoint_callback,
    resolve_device,
)

__all__ = [
    "Pretrained",
    "ensure_run",
    "format_full",
    "pretrain_names",
    "pretrain_recipe",
    "recipe_names",
    "run_training",
    "evaluate_selected",
    "evaluate_sets",
    "format_sets",
    "sampled_metrics",
    "pretrained_parts",
]

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Pretrained:
    """Run (or model) directories of a trained GMF and MLP, and the head's mixing weight α."""

    gmf: str
    mlp: str
    alpha: float = 0.5

    def __post_init__(self) -> None:
        check_alpha(self.alpha)

    def as_dict(self) -> dict[str, Any]:
        """As a run records it: absolute paths (found again from any directory)."""
        gmf, mlp = (str(Path(p).expanduser().resolve()) for p in (self.gmf, self.mlp))
        return {"gmf": gmf, "mlp": mlp, "alpha": self.alpha}


def check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, int | float) and 0.0 <= alpha <= 1.0):
        raise ConfigError(f"--alpha must be in [0, 1], got {alpha}")


def init_from_runs(model: ScoringModel, pretrained: Pretrained, split: Split) -> None:
    """Initialise ``model`` (a NeuMF) from the two runs, after checking they saw the same data."""
    if not isinstance(model, NeuMF):
        raise ConfigError("pretraining initialises neumf models only")
    loaded: dict[str, ScoringModel] = {}
    for name, path, kind in (("gmf", pretrained.gmf, GMF), ("mlp", pretrained.mlp, MLP)):
        run = load_model(path)
        if not isinstance(run.model, kind):
            raise ConfigError(f"{path} holds a {run.model.name} model, expected {name}")
        if not run.trained_on(split):
            raise ConfigError(f"{path} was trained on other data (its users or items differ)")
        loaded[name] = run.model
    gmf, mlp = loaded["gmf"], loaded["mlp"]
    assert isinstance(gmf, GMF) and isinstance(mlp, MLP)
    model.init_from_pretrained(gmf, mlp, pretrained.alpha)


def recipe_names(key: str, fast: bool = False) -> tuple[str, ...]:
    """The named recipes a run of ``key`` applies (a model, or ``neumf-pre``: NeuMF fine-tuned
    from its pretrained parts): ``finetune`` for neumf-pre; with ``fast``, the fast recipe
    (``fast-finetune`` for neumf-pre) where the model has one."""
    pretrained = key == "neumf-pre"
    spec = get_spec("neumf" if pretrained else key)
    fast_name = "fast-finetune" if pretrained else "fast"
    names = ("finetune",) if pretrained else ()
    return names + ((fast_name,) if fast and fast_name in spec.recipes else ())


def pretrain_names(part: str, fast: bool = False) -> tuple[str, ...]:
    """The named recipes of the GMF or MLP run a NeuMF starts from: the part's own (``fast``:
    its fast recipe, then ``fast-pretrain`` where the part has one)."""
    extra = ("fast-pretrain",) if fast and "fast-pretrain" in get_spec(part).recipes else ()
    return recipe_names(part, fast) + extra


def pretrain_recipe(
    part: str, overrides: Mapping[str, Any] | None = None, fast: bool = False
) -> Recipe:
    """The recipe of the GMF or MLP run a NeuMF starts from (:func:`pretrain_names`) with the
    user's explicit settings that it takes, except the optimizer and learning rate (those are
    fine-tuning's)."""
    kept = {
        name: value
        for name, value in (overrides or {}).items()
        if name not in ("optimizer", "learning_rate") and takes(part, name)
    }
    return recipe(part, kept, recipes=pretrain_names(part, fast))


def pretrained_parts(
    data: DataSpec,
    overrides: Mapping[str, Any],
    out: str | Path,
    *,
    alpha: float = 0.5,
    parts: Mapping[str, str | None] | None = None,
    reuse: Mapping[str, tuple[Recipe, Path]] | None = None,
    fast: bool = False,
    **options: Any,
) -> Pretrained:
    """The GMF and MLP runs a NeuMF in ``out`` starts from: ``parts`` names existing run
    directories; a part not given is trained (or reused, when finished with the same settings)
    in ``out/pretrain/``, or in ``reuse``'s directory when its recipe is the part's (compare's
    own gmf and mlp runs); ``fast``: the parts' fast recipes. ``options`` go to ``ensure_run``
    (progress, echo, rerun)."""
    check_alpha(alpha)
    echo: Echo = options.get("echo", print) if distributed.current().main else _silent
    given = dict(parts or {})
    for part in ("gmf", "mlp"):
        if given.get(part) is not None:
            continue
        part_recipe = pretrain_recipe(part, overrides, fast)
        reused = (reuse or {}).get(part)
        run = reused[1] if reused and reused[0] == part_recipe else RunDir(out).pretrain(part).path
        names = pretrain_names(part, fast)
        echo(f"== pretraining {part} ({' + '.join(names) or 'its own'} recipe) in {run}")
        ensure_run(data, part_recipe, run, **options)
        given[part] = str(run)
    echo(f"== neumf from {given['gmf']} and {given['mlp']}")
    return Pretrained(str(given["gmf"]), str(given["mlp"]), alpha)


def ensure_run(
    data: DataSpec,
    config: Recipe,
    out: str | Path,
    *,
    rerun: bool = False,
    echo: Echo = print,
    pretrained: Pretrained | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The summary of a finished run in ``out`` with these settings, training it if needed."""
    run = RunDir(out)
    data = data.resolved()
    if not rerun and run.is_finished(_run_config(data, config, pretrained)):
        echo(f"reusing the finished {config.model} run in {out}")
        return run.read_summary()
    return run_training(
        data, config, out, overwrite=True, echo=echo, pretrained=pretrained, **options
    )


def _run_config(
    data: DataSpec, config: Recipe, pretrained: Pretrained | None, **recorded: Any
) -> RunConfig:
    """What a run of ``config`` on ``data`` records (``recorded``: source, command, versions)."""
    parts = None if pretrained is None else pretrained.as_dict()
    return RunConfig(config.model, config.split, data, config, pretrained=parts, **recorded)


def _source_name(source: dict[str, Any]) -> str:
    if source.get("dataset"):
        return str(source["dataset"])
    if source.get("format") == "ncf":
        return Path(source["files"][0]).name.removesuffix(".train.rating") + " (NCF split)"
    return Path(source["path"]).name


def format_epoch(record: EpochRecord, epochs: int, k: int) -> str:
    """The one line printed per epoch."""
    loss = "" if math.isnan(record.loss) else f"loss {record.loss:.4f}  "  # NaN: a fitted model
    test = record.metrics["test"]
    line = f"epoch {record.epoch:>3}/{epochs}  {loss}" + _metric_text(test, k)
    if "validation" in record.metrics:
        line += f"  (val {_metric_text(record.metrics['validation'], k)})"
    return line + f"  train {record.train_seconds:.1f}s  eval {record.eval_seconds:.2f}s"


def _metric_text(values: Mapping[str, float], k: int) -> str:
    return "  ".join(f"{name.upper()}@{k} {value:.4f}" for name, value in values.items())


def summarise(fit: FitResult, k: int, split: Split) -> dict[str, Any]:
    """The ``metrics.json`` summary: selected epoch, test-selected best, protocol, timings."""
    sel, best = fit.selected, fit.best_test
    selected: dict[str, Any] = {
        "by": fit.selected_by,
        "epoch": sel.epoch,
        **{name: metrics_at(values, k) for name, values in sel.metrics.items()},
    }
    history = fit.history
    return {
        "selected": selected,
        "best_test": {
            "epoch": best.epoch,
            **metrics_at(best.metrics["test"], k),
            "note": f"the epoch with the best test {next(iter(best.metrics['test'])).upper()}, "
            "as the seed write-up reported it (optimistic: chosen on the test set)",
        },
        "epochs_run": history[-1].epoch,
        "stopped_early": fit.stopped_early,
        "seconds_per_epoch": {  # (eval: per evaluation, every ``eval_every`` epochs)
            "train": sum(r.train_seconds for r in history) / max(1, history[-1].epoch),
            "eval": float(np.mean([r.eval_seconds for r in history])),
        },
        "protocol": {
            **split.protocol,
            "mask": split.mask,
            "k": k,
            "metrics": f"HR@{k} and NDCG@{k} from the rank of the held-out item among its "
            "candidates; ties count against it"
            if split.ranking == "sampled"
            else f"per user over the held-out set, every unmasked item ranked (ties count "
            f"against the held-out items), averaged over users with held-out items; epochs "
            f"selected by {fit.selected_by} {' then '.join(sel.metrics['test'])} @{k}",
        },
    }


def _progress_bar(progress: bool, epochs: int) -> tuple[Any, Callable[[int, int, int], None]]:
    """A tqdm bar over each epoch's samples (None without ``progress``) and its callback."""
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
            bar.set_description(f"epoch {epoch}/{epochs}")
        bar.update(n)

    return bar, on_step


def _start(
    data: DataSpec,
    config: Recipe,
    run: RunDir,
    pretrained: Pretrained | None,
    progress: bool,
    echo: Echo,
    command: list[str] | None,
    world: distributed.World,
) -> tuple[Split, ScoringModel, dict[str, Any]]:
    """Load and split the data, build the model (from the pretrained parts), write the config
    (rank 0)."""
    split, source = load_split(data, config.split, progress=progress)
    echo(
        f"data: {split.num_users} users, {split.num_items} items, {len(split.train)} training "
        f"interactions; test {_holdout_size(split.test)}"
        + (f", validation {_holdout_size(split.validation)}" if split.validation else "")
    )
    for note in split.protocol.get("notes", []):
        echo(f"note: {note}")
    model = build_model(
        config.model,
        split.num_users,
        split.num_items,
        seed=config.train.seed,
        config=config.model_config,
    )
    if pretrained is not None:
        init_from_runs(model, pretrained, split)
        echo(
            f"initialised from gmf {pretrained.gmf} and mlp {pretrained.mlp} "
            f"(alpha {pretrained.alpha})"
        )
    if not world.main:
        return split, model, source
    run.path.mkdir(parents=True, exist_ok=True)
    recorded = {
        "source": source,
        "command": command if command is not None else sys.argv,
        "versions": versions(),
        "fingerprint": split.fingerprint(),
    }
    run.write_config(_run_config(data, config, pretrained, **recorded))
    return split, model, source


def _holdout_size(holdout: Holdout) -> str:
    users = len(np.unique(holdout.users))
    return f"{users} users" + (f" ({len(holdout)} items)" if users != len(holdout) else "")


def _fit(
    model: ScoringModel,
    split: Split,
    config: Recipe,
    run: RunDir,
    resume: bool,
    progress: bool,
    echo: Echo,
    initial: bool,
    world: distributed.World,
) -> tuple[Trainer, FitResult]:
    """Train with the per-epoch line, metrics.csv and checkpoint after every epoch (written by
    rank 0; every rank resumes from the checkpoint)."""
    epochs = config.train.epochs
    if isinstance(model, FittedModel) and model.max_epochs is not None:
        epochs = min(epochs, model.max_epochs)  # a closed form fits once
    bar, on_step = _progress_bar(progress, epochs)

    def on_epoch(trainer: Trainer, record: EpochRecord) -> None:
        if bar is not None:
            bar.clear()
        echo(format_epoch(record, epochs, trainer.k))
        run.write_history(trainer.history, trainer.k)

    trainer = Trainer(
        model,
        split,
        config.train,
        k=config.split.k,
        callbacks=[on_epoch, checkpoint_callback(run.checkpoint)] if world.main else [],
        progress=on_step if bar is not None else None,
        evaluate_initial=initial,
        world=world,
    )
    if resume:
        trainer.load_checkpoint(run.checkpoint)
        echo(f"resumed after epoch {trainer.history[-1].epoch if trainer.history else 0}")
    try:
        return trainer, trainer.fit()
    finally:
        if bar is not None:
            bar.close()


def run_training(
    data: DataSpec,
    config: Recipe,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    echo: Echo = print,
    command: list[str] | None = None,
    pretrained: Pretrained | None = None,
) -> dict[str, Any]:
    """Train, evaluate and save one model; returns the ``metrics.json`` summary.

    ``pretrained`` initialises a NeuMF from a GMF and an MLP run directory before training.
    In a distributed run (torchrun) every rank trains and evaluates its share; rank 0 alone
    prints and writes the run directory (the others return ``{}`` once it is written).
    """
    run = RunDir(out)
    data = data.resolved()
    if pretrained is not None and config.model != "neumf":
        raise ConfigError(f"pretraining initialises neumf, not {config.model}")
    world = distributed.current()
    if not world.main:
        progress, echo = False, _silent
    distributed.agree(world, lambda: run.prepare(resume=resume, overwrite=overwrite))
    resolve_device(config.train.device)  # fail before the (slow) data loading
    started = time.perf_counter()
    split, model, source = _start(data, config, run, pretrained, progress, echo, command, world)
    trainer, fit = _fit(
        model, split, config, run, resume, progress, echo, pretrained is not None, world
    )
    model.load_state_dict(fit.state)  # the selected epoch's weights: evaluated and saved
    if split.ranking == "sampled":
        evaluated = evaluate_selected(model, split, config.split.k, trainer.device, world)
        if str(split.protocol.get("split", "")).startswith("temporal"):  # the set metrics too
            sets = evaluate_sets(model, split, config.split.ks, trainer.device, world)[0]
            evaluated[0]["sets"] = sets
    else:
        evaluated = evaluate_sets(model, split, config.split.ks, trainer.device, world)
    if not world.main:
        distributed.barrier(world)  # until rank 0 has written the run
        return {}
    try:
        return _finish(
            run, out, config, split, model, (fit, trainer.k), evaluated, source, started, echo
        )
    finally:
        distributed.barrier(world)


def _silent(message: str) -> None:
    """The echo of a rank other than 0: it prints nothing."""


def _finish(
    run: RunDir,
    out: str | Path,
    config: Recipe,
    split: Split,
    model: ScoringModel,
    fitted: tuple[FitResult, int],
    evaluated: tuple[dict[str, Any], pd.DataFrame],
    source: dict[str, Any],
    started: float,
    echo: Echo,
) -> dict[str, Any]:
    """Every file of the run directory, from the selected epoch's weights and evaluation
    (``fitted``: the fit and the cut-off of its epochs' metrics)."""
    fit, k = fitted
    full, users = evaluated
    run.write_per_user(users, split.train)
    summary = {
        "model": config.model,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "source": source,
        **summarise(fit, k, split),
        "full_ranking": full,
        "wall_seconds": time.perf_counter() - started,
        "versions": versions(),
    }
    save_model(
        run.model_dir,
        model,
        split.train,
        metadata={"train_config": config.to_dict(), "source": source, "metrics": summary},
        state=fit.state,
    )
    run.write_history(fit.history, k)
    write_learning_curve(
        run.curve_file,
        fit.history,
        k,
        title=f"{config.model.upper()} on {_source_name(source)}",
        selected_epoch=fit.selected.epoch,
    )
    run.write_summary(summary)
    run.checkpoint.unlink(missing_ok=True)
    if split.ranking == "sampled":
        _report(summary, k, echo)
        if "sets" in full:
            echo(format_sets(full["sets"]))
    else:
        _report_sets(summary, k, echo)
    echo(f"wrote {out}  ({summary['wall_seconds']:.1f}s)")
    return summary


def evaluate_selected(
    model: ScoringModel,
    split: Split,
    k: int,
    device: torch.device | str = "cpu",
    world: distributed.World | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """The full-ranking metrics of the test holdout and the per-user table: every user of each
    holdout under the sampled protocol, and of the test holdout under full ranking. In a
    distributed run each rank ranks its share of the users and every rank gets all of them."""
    world = world or distributed.World()
    ks = full_ks(k)
    test = split.test
    lo, hi = world.span(len(test))
    ranks, lists = full_ranks(
        model, test, split.known_items(), device, top_k=max(ks), share=slice(lo, hi)
    )
    ranks = distributed.gather(ranks, len(test), world)
    lists = distributed.gather(torch.from_numpy(lists), len(test), world).numpy()
    rows = [per_user(test, ranks, k, "full")]
    for holdout in (test, split.validation):
        if holdout is not None:
            lo, hi = world.span(len(holdout))
            sampled = holdout_ranks(model, holdout, device, share=slice(lo, hi))
            sampled = distributed.gather(sampled, len(holdout), world)
            rows.insert(-1, per_user(holdout, sampled, k, "sampled"))
    full = full_metrics(ranks, lists, test, model.num_items, ks)
    full["protocol"]["mask"] = split.mask
    return full, pd.concat(rows)


def evaluate_sets(
    model: ScoringModel,
    split: Split,
    ks: tuple[int, ...],
    device: torch.device | str = "cpu",
    world: distributed.World | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Held-out sets: every metric at each cut-off of ``ks`` on the test holdout (with item
    coverage, the users evaluated and left out) and on validation, and the per-user table (one
    row per user and holdout, every metric's value: their means are the figures)."""
    world = world or distributed.World()
    out: dict[str, Any] = {}
    tables = []
    for holdout in (split.test, split.validation):
        if holdout is None:
            continue
        sets = split.sets(holdout)
        share = sets.share(*world.span(len(sets)))
        positions, lists = set_positions(model, share, split.exclude(holdout), max(ks), device)
        values = set_metrics(positions, share.indptr, ks)
        values = {
            key: distributed.gather(torch.as_tensor(v), len(sets), world).numpy()
            for key, v in values.items()
        }
        lists = distributed.gather(torch.from_numpy(lists), len(sets), world).numpy()
        figures = set_summary(values, lists, model.num_items, ks)
        out[holdout.name] = {
            "holdout": holdout.name,
            **figures,
            "users": len(sets),
            "users_without_items": split.num_users - len(sets),
        }
        tables.append(per_user_table(sets, values))
    full = out.pop("test")
    full["validation"] = out.get("validation")
    full["protocol"] = {
        "kind": "held-out sets, full ranking",
        "candidates": "every item except the user's masked ones "
        + ("(training and validation items)" if split.mask == "known" else "(training items)")
        + "; ties count against the held-out items",
        "mask": split.mask,
        "ks": list(ks),
        "metrics": list(SET_METRICS) + ["coverage"],
    }
    return full, pd.concat(tables, ignore_index=True)


def sampled_metrics(users: pd.DataFrame, k: int) -> dict[str, dict[str, float]]:
    """Each holdout's sampled HR@k and NDCG@k from a per-user table's ranks (the same figures
    as evaluating again, without scoring again)."""
    out = {}
    for holdout, rows in users[users["protocol"] == "sampled"].groupby("holdout", sort=False):
        ranks = torch.as_tensor(rows["rank"].to_numpy().copy())
        out[str(holdout)] = metrics_at({"hr": hit_rate(ranks, k), "ndcg": ndcg(ranks, k)}, k)
    return out


def _report(summary: Mapping[str, Any], k: int, echo: Echo) -> None:
    sel, best = summary["selected"], summary["best_test"]
    hr, nd = metric_key("hr", k), metric_key("ndcg", k)
    echo(
        f"selected epoch {sel['epoch']} by {sel['by']}: test HR@{k} {sel['test'][hr]:.4f}  "
        f"NDCG@{k} {sel['test'][nd]:.4f}"
    )
    echo(
        f"best test epoch {best['epoch']} (chosen on test, as the seed did): HR@{k} "
        f"{best[hr]:.4f}  NDCG@{k} {best[nd]:.4f}"
    )
    echo(format_full(summary["full_ranking"], k))


def _report_sets(summary: Mapping[str, Any], k: int, echo: Echo) -> None:
    sel = summary["selected"]
    chosen = "  ".join(f"{key.upper()} {value:.4f}" for key, value in sel["test"].items())
    echo(f"selected epoch {sel['epoch']} by {sel['by']}: test {chosen}")
    echo(format_sets(summary["full_ranking"]))


def format_sets(full: Mapping[str, Any]) -> str:
    """Held-out sets' figures in one line: Recall and NDCG at every cut-off."""
    ks = full["protocol"]["ks"]
    figures = "  ".join(
        f"{name.capitalize() if name != 'ndcg' else 'NDCG'}@{k} {full[metric_key(name, k)]:.4f}"
        for name in ("recall", "ndcg")
        for k in ks
    )
    return (
        f"full ranking ({full['holdout']} sets, {full['users']} users, mask "
        f"{full['protocol']['mask']}): {figures}"
    )


def format_full(full: Mapping[str, Any], k: int) -> str:
    key = {name: metric_key(name, k) for name in ("hr", "ndcg", "mrr", "coverage")}
    return (
        f"full ranking ({full['holdout']} item among all the user's unseen items): "
        f"HR@{k} {full[key['hr']]:.4f}  NDCG@{k} {full[key['ndcg']]:.4f}  "
        f"MRR@{k} {full[key['mrr']]:.4f}  coverage@{k} {full[key['coverage']]:.3f}"
    )
