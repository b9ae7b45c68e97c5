"""The job behind ``torchcf blend``: trained runs on one split, weighed into one model.

The runs' scores are standardised per user (``models.Blend``) and summed with weights chosen on
the validation holdout: every point of a grid over the weight simplex is scored on validation
(sampled candidates, the run's ``k``), the best by ``metric`` (ties: the other metric) wins. The
test holdout is evaluated once, at the chosen weights. The result is a run directory like
``train``'s: ``evaluate``, ``recommend`` and ``serve`` take it as it is.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from torchcf.errors import ConfigError
from torchcf.evaluation import evaluate_full, evaluate_sampled, hit_rate, ndcg, positive_ranks
from torchcf.experiment import (
    check_split,
    format_full,
    full_ks,
    load_split,
    read_run,
    versions,
)
from torchcf.io import atomic_directory, write_json
from torchcf.models import Blend, ScoringModel, standardise, weighted_sum
from torchcf.persistence import load_model, save_model
from torchcf.split import Holdout

__all__ = ["blend_runs", "simplex_grid"]

# grid steps per number of parts: 21 points for two runs, 66 for three, 286 for four
GRID_STEPS = {2: 20, 3: 10, 4: 10}
# what makes two runs' splits the same, beyond the data spec
SPLIT_SETTINGS = ("seed", "eval_negatives", "validation")


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
        table.append(
            {"weights": list(weights), f"hr@{k}": hit_rate(ranks, k), f"ndcg@{k}": ndcg(ranks, k)}
        )
    return table


def _parse_weights(weights: Sequence[float], parts: int) -> list[float]:
    if len(weights) != parts:
        raise ConfigError(f"--weights needs one weight per run ({parts}), got {len(weights)}")
    total = float(sum(weights))
    if not all(0 <= w < math.inf for w in weights) or not total > 0:
        raise ConfigError(f"--weights must be ≥ 0 and not all 0, got {list(weights)}")
    return [float(w) / total for w in weights]


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
    out = Path(out)
    if metric not in ("ndcg", "hr"):
        raise ConfigError(f"--metric must be ndcg or hr, got {metric!r}")
    if len(runs) < 2:
        raise ConfigError(f"a blend needs two or more runs, got {len(runs)}")
    if out.exists() and not overwrite:
        raise ConfigError(f"output directory {out} exists; use --overwrite or another --out")
    recorded = [read_run(run) for run in runs]
    _, spec, config = recorded[0]
    for run, (_, run_spec, run_config) in zip(runs[1:], recorded[1:], strict=True):
        same = asdict(run_spec) == asdict(spec) and all(
            getattr(run_config, name) == getattr(config, name) for name in SPLIT_SETTINGS
        )
        if not same:
            raise ConfigError(
                f"{run} was trained on another split than {runs[0]} (its data, seed, "
                "validation holdout or candidates differ)"
            )
    if weights is not None:
        weights = _parse_weights(weights, len(runs))
    else:
        simplex_grid(len(runs))  # fail before loading anything: too many runs to search
    loaded = [load_model(run) for run in runs]
    if any(run.model.name == Blend.name for run in loaded):
        raise ConfigError("a blend's runs must be trained models, not blends")
    split, source = load_split(spec, config, progress=progress)
    for run, model in zip(runs, loaded, strict=True):
        check_split(model, split, run)
    models = [run.model for run in loaded]
    names = [f"{m.name} ({run})" for m, run in zip(models, runs, strict=True)]
    echo(f"blend of {len(runs)} runs: {', '.join(names)}")
    k = config.k
    search: list[dict[str, Any]] = []
    if weights is None:
        if split.validation is None:
            raise ConfigError(
                f"{runs[0]} has no validation holdout to choose the weights on; give --weights"
            )
        search = search_weights(models, split.validation, k)
        other = "hr" if metric == "ndcg" else "ndcg"
        best = max(search, key=lambda row: (row[f"{metric}@{k}"], row[f"{other}@{k}"]))
        weights = best["weights"]
        chosen_by = f"validation {metric.upper()}@{k} over {len(search)} weightings"
    else:
        chosen_by = "given"
    blend = Blend.of(models, list(weights))
    holdouts = [h for h in (split.test, split.validation) if h is not None]
    sampled = {h.name: evaluate_sampled(blend, h, k, protocol=split.protocol) for h in holdouts}
    full = evaluate_full(blend, split.test, split.known_items(), ks=full_ks(k))
    parts = [
        {
            "run": str(run),
            "model": model.model.name,
            "selected": (model.metadata.get("metrics") or {}).get("selected"),
        }
        for run, model in zip(runs, loaded, strict=True)
    ]
    selected: dict[str, Any] = {"by": "validation" if search else "given"}
    for name, result in sampled.items():
        selected[name] = {f"hr@{k}": result.hr, f"ndcg@{k}": result.ndcg}
    summary = {
        "model": Blend.name,
        "weights": dict(zip([f"{i}:{m.name}" for i, m in enumerate(models)], weights, strict=True)),
        "chosen_by": chosen_by,
        "parts": parts,
        "selected": selected,
        "search": search,
        "full_ranking": full,
        "parameters": int(sum(p.numel() for p in blend.parameters())),
        "protocol": {**split.protocol, "k": k},
        "wall_seconds": time.perf_counter() - started,
        "versions": versions(),
    }
    train_config = {**config.to_dict(), "model": Blend.name}
    recorded_config = {
        "train": train_config,
        "data": {key: v for key, v in asdict(spec).items() if v is not None},
        "source": source,
        "blend": {"runs": [str(r) for r in runs], "weights": list(weights), "metric": metric},
        "command": command if command is not None else sys.argv,
        "versions": versions(),
    }
    with atomic_directory(out) as tmp:
        write_json(tmp / "config.json", recorded_config)
        save_model(
            tmp / "model",
            blend,
            split.train,
            metadata={"train_config": train_config, "source": source, "metrics": summary},
        )
        write_json(tmp / "metrics.json", summary)
    shares = " + ".join(f"{w:.2f} {m.name}" for w, m in zip(weights, models, strict=True))
    line = f"weights ({chosen_by}): {shares}"
    if "validation" in selected:
        v = selected["validation"]
        line += f"  (validation HR@{k} {v[f'hr@{k}']:.4f}  NDCG@{k} {v[f'ndcg@{k}']:.4f})"
    echo(line)
    t = selected["test"]
    echo(f"test HR@{k} {t[f'hr@{k}']:.4f}  NDCG@{k} {t[f'ndcg@{k}']:.4f}")
    echo(format_full(full, k))
    echo(f"wrote {out}  ({summary['wall_seconds']:.1f}s)")
    return summary
