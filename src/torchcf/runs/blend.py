"""The job behind ``torchcf blend``: trained runs on one split, weighed into one model.

The runs' scores are standardised per user (``models.Blend``) and summed with weights chosen on
the validation holdout: every point of a grid over the weight simplex is scored on validation
(sampled candidates, the run's ``k``; held-out sets: every item ranked, Recall and NDCG at 20),
the best by ``metric`` (ties: the other metric) wins. The
test holdout is evaluated once, at the chosen weights. The result is a run directory like
``train``'s: ``evaluate``, ``recommend`` and ``serve`` take it as it is.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from torchcf.data.split import Holdout, Split
from torchcf.errors import ConfigError
from torchcf.evaluation.metrics import hit_rate, ndcg, positive_ranks
from torchcf.evaluation.sets import BLOCK_FLOATS, set_metrics, set_positions
from torchcf.io import atomic_directory
from torchcf.models.base import ScoringModel
from torchcf.models.blend import Blend, standardise, weighted_sum
from torchcf.runs.evaluate import check_split, load_run_split
from torchcf.runs.rundir import RunConfig, RunDir, metric_key, metrics_at, versions
from torchcf.runs.train import (
    evaluate_selected,
    evaluate_sets,
    format_full,
    format_sets,
    sampled_metrics,
)
from torchcf.serving.persistence import LoadedModel, load_model, save_model

__all__ = ["blend_runs", "simplex_grid"]

# grid steps per number of parts: 21 points for two runs, 66 for three, 286 for four
GRID_STEPS = {2: 20, 3: 10, 4: 10}


def simplex_grid(parts: int) -> list[tuple[float, ...]]:
    """Weights ``≥ 0`` summing to 1 in steps of ``1 / GRID_STEPS[parts]``, each single part
    alone included (a blend may find that one run is best)."""
    if parts not in GRID_STEPS:
        raise ConfigError(
            f"choosing weights searches blends of 2–4 runs, got {parts}; give --weights"
        )
    steps = GRID_STEPS[parts]
    grid = []
    for bars in itertools.combinations(range(steps + parts - 1), parts - 1):
        edges = (-1, *bars, steps + parts - 1)
        grid.append(tuple((edges[j + 1] - edges[j] - 1) / steps for j in range(parts)))
    return grid


def standardised_candidates(model: ScoringModel, holdout: Holdout) -> torch.Tensor:
    """``(n, 1 + K)`` standardised scores of each user's candidates (``Blend``'s terms)."""
    candidates = torch.as_tensor(holdout.candidates())
    users = torch.as_tensor(holdout.users)
    chunk = max(1, 2**24 // model.num_items)
    out = []
    with torch.no_grad():
        for s in range(0, len(users), chunk):
            rows = standardise(model.score_all(users[s : s + chunk]).float())
            out.append(rows.gather(1, candidates[s : s + chunk].clamp(min=0)))
    return torch.cat(out)


def search_weights(models: list[ScoringModel], holdout: Holdout, k: int) -> list[dict[str, Any]]:
    """HR@k and NDCG@k on ``holdout`` of every grid point, in grid order."""
    terms = [standardised_candidates(m, holdout) for m in models]
    valid = torch.as_tensor(holdout.candidates()) >= 0
    table = []
    for weights in simplex_grid(len(models)):
        ranks = positive_ranks(weighted_sum(weights, list(terms)), valid)
        metrics = metrics_at({"hr": hit_rate(ranks, k), "ndcg": ndcg(ranks, k)}, k)
        table.append({"weights": list(weights), **metrics})
    return table


def search_weights_sets(
    models: list[ScoringModel], split: Split, cut: int, block_users: int | None = None
) -> list[dict[str, Any]]:
    """Held-out sets: Recall@cut and NDCG@cut on validation of every grid point (each point's
    blend ranks every unmasked item), in grid order.

    Users are taken in blocks (``block_users``; default: ``BLOCK_FLOATS`` scores a part): each
    part scores and standardises a block once, and every weighting of the grid is ranked from
    those rows, so a part is scored once, not once per weighting."""
    assert split.validation is not None
    held, exclude = split.sets(split.validation), split.exclude(split.validation)
    grid = simplex_grid(len(models))
    num_items = models[0].num_items
    if block_users is None:
        block_users = max(1, BLOCK_FLOATS // max(1, num_items))
    found: list[dict[str, list[np.ndarray]]] = [{"recall": [], "ndcg": []} for _ in grid]
    training = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        for lo in range(0, len(held), block_users):
            share = held.share(lo, min(lo + block_users, len(held)))
            users = torch.as_tensor(share.users)
            with torch.no_grad():
                terms = [standardise(m.score_all(users).float()) for m in models]
            for weights, table in zip(grid, found, strict=True):
                combined = _Combined(num_items, weights, terms)
                positions, _ = set_positions(combined, share, exclude, cut, batch_users=len(share))
                values = set_metrics(positions, share.indptr, (cut,))
                for name, kept in table.items():
                    kept.append(values[metric_key(name, cut)])
    finally:
        for m, was in zip(models, training, strict=True):
            m.train(was)
    rows = []
    for weights, table in zip(grid, found, strict=True):
        means = {name: float(np.concatenate(v).mean()) for name, v in table.items()}
        rows.append({"weights": list(weights), **metrics_at(means, cut)})
    return rows


class _Combined(torch.nn.Module):
    """One block of users' blend scores at ``weights``, from the parts' standardised rows
    (``terms``, each ``(B, I)``): a fresh sum on every call, as ``set_positions`` masks in
    place."""

    def __init__(
        self, num_items: int, weights: tuple[float, ...], terms: list[torch.Tensor]
    ) -> None:
        super().__init__()
        self.num_items, self.weights, self.terms = num_items, weights, terms

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        assert len(users) == len(self.terms[0])
        return weighted_sum(self.weights, list(self.terms))


def _parse_weights(weights: Sequence[float], parts: int) -> list[float]:
    if len(weights) != parts:
        raise ConfigError(f"--weights needs one weight per run ({parts}), got {len(weights)}")
    total = float(sum(weights))
    if not all(0 <= w < math.inf for w in weights) or not total > 0:
        raise ConfigError(f"--weights must be ≥ 0 and not all 0, got {list(weights)}")
    return [float(w) / total for w in weights]


def _same_split(runs: Sequence[str | Path]) -> RunConfig:
    """The first run's config, after checking every run was trained on the same split."""
    configs = [RunDir(run).read_config() for run in runs]
    first = configs[0]
    for run, config in zip(runs[1:], configs[1:], strict=True):
        if config.fingerprint is not None and first.fingerprint is not None:
            same = (config.fingerprint, config.split.k, config.split.mask) == (
                first.fingerprint,
                first.split.k,
                first.split.mask,
            )
        else:  # runs recorded before fingerprints: by their data and split settings
            same = config.data.to_dict() == first.data.to_dict() and config.split == first.split
        if not same:
            raise ConfigError(
                f"{run} was trained on another split than {runs[0]} (its data, seed, "
                "validation holdout, candidates, k or mask differ)"
            )
    return first


def _choose(
    models: list[ScoringModel],
    split: Split,
    k: int,
    metric: str,
    first_run: str | Path,
) -> tuple[list[float], list[dict[str, Any]], str]:
    """Weights of the best grid point on validation by ``metric`` (ties: the other metric;
    held-out sets: Recall and NDCG at ``k``, the selection's cut-off)."""
    if split.validation is None:
        raise ConfigError(
            f"{first_run} has no validation holdout to choose the weights on; give --weights"
        )
    if split.ranking == "sets":
        search = search_weights_sets(models, split, k)
        metric = "recall" if metric == "hr" else metric
        other = "ndcg" if metric == "recall" else "recall"
    else:
        search = search_weights(models, split.validation, k)
        other = "hr" if metric == "ndcg" else "ndcg"
    best = max(search, key=lambda row: (row[metric_key(metric, k)], row[metric_key(other, k)]))
    return best["weights"], search, f"validation {metric.upper()}@{k} over {len(search)} weightings"


def blend_runs(
    runs: Sequence[str | Path],
    out: str | Path,
    *,
    weights: Sequence[float] | None = None,
    metric: str = "ndcg",
    overwrite: bool = False,
    progress: bool = False,
    echo: Callable[[str], None] = print,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Blend the models of ``runs`` (trained on one split), write the run directory ``out``;
    returns its ``metrics.json`` summary. ``weights`` given: used as they are (normalised)."""
    started = time.perf_counter()
    if metric not in ("ndcg", "hr"):
        raise ConfigError(f"--metric must be ndcg or hr, got {metric!r}")
    if len(runs) < 2:
        raise ConfigError(f"a blend needs two or more runs, got {len(runs)}")
    if Path(out).exists() and not overwrite:
        raise ConfigError(f"output directory {out} exists; use --overwrite or another --out")
    config = _same_split(runs)
    if weights is not None:
        weights = _parse_weights(weights, len(runs))
    else:
        simplex_grid(len(runs))  # fail before loading anything: too many runs to search
    loaded = [load_model(run) for run in runs]
    if any(run.model.name == Blend.name for run in loaded):
        raise ConfigError("a blend's runs must be trained models, not blends")
    split = load_run_split(runs[0], config, progress=progress)
    source = config.source
    for run, model in zip(runs, loaded, strict=True):
        check_split(model, split, run)
    models = [run.model for run in loaded]
    names = [f"{m.name} ({run})" for m, run in zip(models, runs, strict=True)]
    echo(f"blend of {len(runs)} runs: {', '.join(names)}")
    k = config.split.k if split.ranking == "sampled" else 20  # held-out sets: Recall/NDCG@20
    search: list[dict[str, Any]] = []
    chosen_by = "given"
    if weights is None:
        weights, search, chosen_by = _choose(models, split, k, metric, runs[0])
    blend = Blend.of(models, list(weights))
    full, users, figures = _evaluate(blend, split, config, k)
    selected: dict[str, Any] = {"by": "validation" if search else "given", **figures}
    summary = {
        "model": Blend.name,
        "weights": dict(zip([f"{i}:{m.name}" for i, m in enumerate(models)], weights, strict=True)),
        "chosen_by": chosen_by,
        "parts": [
            {
                "run": str(run),
                "model": m.model.name,
                "selected": m.metadata.get("metrics", {}).get("selected"),
            }
            for run, m in zip(runs, loaded, strict=True)
        ],
        "selected": selected,
        "search": search,
        "full_ranking": full,
        "parameters": int(sum(p.numel() for p in blend.parameters())),
        "protocol": {**split.protocol, "k": k},
        "wall_seconds": time.perf_counter() - started,
        "versions": versions(),
    }
    recorded = RunConfig(
        Blend.name,
        config.split,
        config.data,
        source=source,
        blend={"runs": [str(r) for r in runs], "weights": list(weights), "metric": metric},
        command=command if command is not None else sys.argv,
        versions=versions(),
        fingerprint=config.fingerprint,
    )
    _write(out, recorded, blend, split, summary, users)
    _report(summary, models, list(weights), k, echo)
    echo(f"wrote {out}  ({summary['wall_seconds']:.1f}s)")
    return summary


def _evaluate(
    blend: Blend, split: Split, config: RunConfig, k: int
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """The blend's full-ranking figures, per-user table and each holdout's selected metrics."""
    if split.ranking == "sampled":
        full, users = evaluate_selected(blend, split, k)
        return full, users, sampled_metrics(users, k)
    full, users = evaluate_sets(blend, split, tuple(sorted({*config.split.ks, k})))
    return full, users, _set_figures(full, users, k)


def _set_figures(full: dict[str, Any], users: pd.DataFrame, k: int) -> dict[str, Any]:
    """Held-out sets: each holdout's Recall@k and NDCG@k (the per-user table's means)."""
    out = {}
    for holdout, rows in users.groupby("holdout", sort=False):
        out[str(holdout)] = {key: float(rows[key].mean()) for key in (f"recall@{k}", f"ndcg@{k}")}
    return out


def _part(run: str | Path, loaded: LoadedModel) -> dict[str, Any]:
    """A part as the summary lists it: its run, model and selected epoch's metrics."""
    selected = (loaded.metadata.get("metrics") or {}).get("selected")
    return {"run": str(run), "model": loaded.model.name, "selected": selected}


def _write(
    out: str | Path,
    config: RunConfig,
    blend: Blend,
    split: Any,
    summary: dict[str, Any],
    users: pd.DataFrame,
) -> None:
    """The blend's run directory, whole or not at all."""
    with atomic_directory(out) as tmp:
        run = RunDir(tmp)
        run.write_config(config)
        run.write_per_user(users, split.train)
        save_model(
            run.model_dir,
            blend,
            split.train,
            metadata={
                "train_config": config.to_dict(),
                "source": config.source,
                "metrics": summary,
            },
        )
        run.write_summary(summary)


def _report(
    summary: dict[str, Any], models: list[ScoringModel], weights: list[float], k: int, echo: Any
) -> None:
    shares = " + ".join(f"{w:.2f} {m.name}" for w, m in zip(weights, models, strict=True))
    line = f"weights ({summary['chosen_by']}): {shares}"
    selected = summary["selected"]
    if summary["full_ranking"]["protocol"]["kind"].startswith("held-out sets"):
        shown = {h: "  ".join(f"{n.upper()} {v:.4f}" for n, v in selected[h].items())
                 for h in ("validation", "test") if h in selected}  # fmt: skip
        echo(line + (f"  (validation {shown['validation']})" if "validation" in shown else ""))
        echo(f"test {shown['test']}")
        echo(format_sets(summary["full_ranking"]))
        return
    hr, nd = metric_key("hr", k), metric_key("ndcg", k)
    if "validation" in selected:
        v = selected["validation"]
        line += f"  (validation HR@{k} {v[hr]:.4f}  NDCG@{k} {v[nd]:.4f})"
    echo(line)
    t = selected["test"]
    echo(f"test HR@{k} {t[hr]:.4f}  NDCG@{k} {t[nd]:.4f}")
    echo(format_full(summary["full_ranking"], k))
