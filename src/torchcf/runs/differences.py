"""The statistics of a comparison: each model's metrics over seeds, every pair's differences
(paired over users, and over seeds), Holm's adjustment across the pairs, the unbeaten models, and
the forest plot of the differences.

A pair is ``(a, b)`` read as ``a − b``. Per-user values are averaged over the seeds first (the
same users and held-out items in every seed when the split is fixed), so the paired test over
users asks whether ``a`` beats ``b`` on these users beyond what the users' spread explains; the
test over seeds (``ttest_rel`` of the per-seed metrics) asks whether another seed would keep the
order. Both are adjusted with Holm over the pairs, per holdout, protocol and metric.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from torchcf.evaluation.metrics import metric_key
from torchcf.evaluation.significance import (
    holm,
    over_seeds,
    paired_metrics,
    seed_difference,
    verdict,
)
from torchcf.evaluation.significance import significant as is_significant
from torchcf.io import atomic_path

__all__ = [
    "ALPHA",
    "METRICS",
    "metric_columns",
    "pair_differences",
    "seed_averaged",
    "summarise_seeds",
    "unbeaten",
    "write_forest",
]

ALPHA = 0.05  # the level a difference is called significant at (after Holm)

# (report name, per-user column, per-seed row key prefix)
METRICS = (("HR", "hit", "hr"), ("NDCG", "ndcg", "ndcg"))
_ROW_PREFIX = {"sampled": "", "full": "full_"}  # a compare row's key of a protocol's metric


def summarise_seeds(rows: Sequence[Mapping[str, Any]], k: int) -> dict[str, Any]:
    """One model's per-seed rows (compare's) as one: every metric's mean, with its spread over
    seeds (``over_seeds``) under ``seeds_summary``; the per-seed values under ``per_seed``."""
    first = rows[0]
    names = metric_columns(first)
    out: dict[str, Any] = dict(first)
    out["seeds"] = [r["seed"] for r in rows]
    out["runs"] = [r["run"] for r in rows]
    out["selected_epoch"] = [r["selected_epoch"] for r in rows]
    out["best_test_epoch"] = [r["best_test_epoch"] for r in rows]
    out.pop("run", None)
    out.pop("seed", None)
    summary = {}
    for name in names:
        values = [float(r[name]) for r in rows]
        if all(math.isfinite(v) for v in values):
            summary[name] = over_seeds(values).as_dict()
            out[name] = summary[name]["mean"]
    for name in ("wall_seconds", "seconds_per_epoch"):
        out[name] = sum(float(r[name]) for r in rows) / len(rows)
    out["epochs"] = [r["epochs"] for r in rows]
    out["seeds_summary"] = summary
    out["per_seed"] = {name: [r[name] for r in rows] for name in names}
    return out


def metric_columns(row: Mapping[str, Any]) -> list[str]:
    """A compare row's metric keys (``hr@10``, ``full_ndcg@10``, ``full_recall@40``...)."""
    return [n for n, v in row.items() if "@" in n and isinstance(v, int | float)]


def seed_averaged(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Per-user tables of one model, one per seed, as one: each (holdout, protocol, user, item)
    row's hit and NDCG (for held-out sets: each (holdout, protocol, user) row's every metric)
    averaged over the seeds that have it."""
    sets = "held_out" in tables[0].columns
    keys = ["holdout", "protocol", "user"] + ([] if sets else ["item"])
    values = [c for c in tables[0].columns if "@" in c] if sets else ["hit", "ndcg"]
    extra = ["held_out"] if sets else []
    joined = pd.concat([t[[*keys, *extra, *values]] for t in tables], ignore_index=True)
    return joined.groupby(keys + extra, sort=False, as_index=False)[values].mean()


def pair_differences(
    models: Sequence[str],
    per_user: Mapping[str, pd.DataFrame],
    per_seed: Mapping[str, Mapping[str, Sequence[float]]],
    k: int,
    seed: int = 0,
    resamples: int = 10_000,
) -> list[dict[str, Any]]:
    """Every pair of ``models`` (a later one minus an earlier one), per holdout, protocol and
    metric: the paired difference over users (``per_user``: seed-averaged tables) and, with
    two or more seeds, over seeds (``per_seed[model][row key]``: test values, one per seed),
    each p-value also Holm-adjusted over the pairs of its family."""
    rows: list[dict[str, Any]] = []
    for low, high in itertools.combinations(range(len(models)), 2):
        a, b = models[high], models[low]
        found = paired_metrics(per_user[a], per_user[b], k, seed=seed, resamples=resamples)
        for (holdout, protocol), differences in found.items():
            for d in differences:
                key = d.metric.split("@")[0].lower()  # HR@10 → hr, Recall@10 → recall
                values = d.as_dict()
                row: dict[str, Any] = {"a": a, "b": b, "holdout": holdout, "protocol": protocol}
                row.update(a_mean=values.pop("a"), b_mean=values.pop("b"), **values)
                column = f"{_ROW_PREFIX[protocol]}{metric_key(key, k)}"
                if holdout == "test" and column in per_seed[a] and column in per_seed[b]:
                    across = seed_difference(per_seed[a][column], per_seed[b][column], d.metric)
                    row["over_seeds"] = across.as_dict()
                rows.append(row)
    _adjust(rows, lambda r: r["p_value"], "p_holm")
    seeded = [r for r in rows if "over_seeds" in r and math.isfinite(r["over_seeds"]["p_value"])]
    _adjust(seeded, lambda r: r["over_seeds"]["p_value"], "over_seeds_p_holm")
    for r in rows:
        if "over_seeds" in r and "over_seeds_p_holm" in r:
            r["over_seeds"]["p_holm"] = r.pop("over_seeds_p_holm")
        r["words"] = words(r)
    return rows


def _adjust(rows: list[dict[str, Any]], p: Any, name: str) -> None:
    """Holm over the rows of each (holdout, protocol, metric) family, written to ``name``."""
    families: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        families.setdefault((r["holdout"], r["protocol"], r["metric"]), []).append(r)
    for family in families.values():
        for r, adjusted in zip(family, holm([p(r) for r in family]), strict=True):
            r[name] = adjusted


def significant(row: Mapping[str, Any]) -> bool:
    """Is the pair's difference significant at ``ALPHA`` (the test over users, after Holm)?"""
    return is_significant(row["ci_low"], row["ci_high"], row["p_holm"], ALPHA)


def words(row: Mapping[str, Any]) -> str:
    """``"gmf − mf: ΔHR@10 +0.0003 [−0.0079, +0.0084], p = 0.97 (Holm): no evidence of a
    difference at 5 %"``, and the test over seeds when there is one."""
    said = verdict(
        row["a"], row["b"], row["delta"], row["ci_low"], row["ci_high"], row["p_holm"], ALPHA
    )
    text = (
        f"{row['a']} − {row['b']}: Δ{row['metric']} {row['delta']:+.4f} "
        f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}], p = {row['p_holm']:.2g} (Holm): {said}"
    )
    seeds = row.get("over_seeds")
    if seeds and "p_holm" in seeds:
        text += (
            f"; over {seeds['seeds']} seeds Δ {seeds['delta']:+.4f} "
            f"[{seeds['ci_low']:+.4f}, {seeds['ci_high']:+.4f}], p = {seeds['p_holm']:.2g} "
            "(paired t, Holm)"
        )
    return text


def unbeaten(models: Sequence[str], pairs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The models that no other model significantly beats on the test holdout (sampled
    candidates; held-out sets: full ranking), in HR@k or NDCG@k (held-out sets: Recall@k or
    NDCG@k)."""
    beaten = set()
    protocol = "sampled" if any(r["protocol"] == "sampled" for r in pairs) else "full"
    for r in pairs:
        if r["holdout"] == "test" and r["protocol"] == protocol and significant(r):
            beaten.add(r["b"] if r["delta"] > 0 else r["a"])
    return [m for m in models if m not in beaten]


def write_forest(path: Path, pairs: Sequence[Mapping[str, Any]]) -> None:
    """The pairs' test differences with their 95 % CIs (over users), one panel per protocol and
    metric, a line at zero; significant ones (Holm) drawn solid."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    test = [r for r in pairs if r["holdout"] == "test"]
    panels = sorted({(r["protocol"], r["metric"]) for r in test}, key=lambda p: p[0] != "sampled")
    labels = list(dict.fromkeys(f"{r['a']} − {r['b']}" for r in test))
    height = 1.2 + 0.35 * max(1, len(labels))
    fig, axes = plt.subplots(
        1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), height), squeeze=False
    )
    for ax, (protocol, metric) in zip(axes[0], panels, strict=False):
        rows = [r for r in test if (r["protocol"], r["metric"]) == (protocol, metric)]
        for y, r in enumerate(rows):
            solid = significant(r)
            ax.errorbar(
                r["delta"],
                y,
                xerr=[[r["delta"] - r["ci_low"]], [r["ci_high"] - r["delta"]]],
                fmt="o",
                mfc=None if solid else "white",
                color="C3" if solid else "C0",
                capsize=3,
            )
        ax.axvline(0.0, color="grey", lw=1)
        ax.set_yticks(range(len(rows)), [f"{r['a']} − {r['b']}" for r in rows])
        ax.invert_yaxis()
        ax.set_title(f"Δ{metric}, test ({protocol})", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(
        "Differences with 95 % CIs over users (filled red: significant, Holm)", fontsize=10
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
