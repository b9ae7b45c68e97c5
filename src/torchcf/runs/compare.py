"""``torchcf compare``: every model on the same split and seed, one report.

Each model is an ordinary run directory under ``OUT/runs/<model>``, so a re-run reuses finished
runs (same settings) and a failure of one model keeps the others' results.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from torchcf.data.sources import DataSpec
from torchcf.data.split import SEED, settings_not_used
from torchcf.errors import ConfigError, TorchcfError
from torchcf.evaluation.significance import SeedSummary
from torchcf.io import atomic_open, atomic_path, write_json
from torchcf.models.registry import TRAINABLE
from torchcf.runs.differences import (
    ALPHA,
    pair_differences,
    seed_averaged,
    summarise_seeds,
    unbeaten,
    write_forest,
)
from torchcf.runs.evaluate import per_user_results
from torchcf.runs.rundir import RunDir, history_column, metric_key, versions
from torchcf.runs.train import (
    check_alpha,
    ensure_run,
    pretrain_names,
    pretrained_parts,
    recipe_names,
)
from torchcf.training.config import Recipe, applicable, recipe, takes

__all__ = ["COMPARABLE", "parse_seeds", "run_compare"]

COMPARABLE = (*TRAINABLE, "neumf-pre")


def _model(key: str) -> str:
    return "neumf" if key == "neumf-pre" else key


def model_recipe(key: str, overrides: dict[str, Any], fast: bool = False) -> Recipe:
    """A compared model's recipe under the user's explicit settings that it takes (``fast``:
    its fast recipe, where it has one)."""
    return recipe(_model(key), applicable(_model(key), overrides), recipe_names(key, fast))


def _check(
    models: Sequence[str], overrides: dict[str, Any], fast: bool = False
) -> dict[str, Recipe]:
    """Every compared model's recipe, before anything is trained; a setting that no compared
    model takes is an error."""
    unknown = [m for m in models if m not in COMPARABLE]
    if unknown or not models:
        raise ConfigError(
            f"unknown model(s) {', '.join(unknown) or '(none)'} (known: {', '.join(COMPARABLE)})"
        )
    unused = [n for n in overrides if not any(takes(_model(m), n) for m in models)]
    if unused:
        raise ConfigError(f"no compared model takes {', '.join(sorted(unused))}")
    return {key: model_recipe(key, overrides, fast) for key in models}


def _train_one(
    key: str,
    spec: DataSpec,
    config: Recipe,
    overrides: dict[str, Any],
    runs: Path,
    alpha: float,
    fast: bool,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Train (or reuse) one compared model's run in ``runs/key``; its summary."""
    pretrained = None
    if key == "neumf-pre":
        # the compare's own gmf/mlp runs serve where they are the pretraining recipes
        reuse = {
            part: (model_recipe(part, overrides, fast), runs / part) for part in ("gmf", "mlp")
        }
        pretrained = pretrained_parts(
            spec, overrides, runs / key, alpha=alpha, reuse=reuse, fast=fast, **options
        )
    return ensure_run(spec, config, runs / key, pretrained=pretrained, **options)


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: ``"5"`` is seeds 0…4, ``"0,3,7"`` those seeds (a single seed: ``"7,"``)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) == 1:
            count = int(parts[0])
            if not 1 <= count <= 1000:
                raise ConfigError(f"--seeds {text}: a count must be in [1, 1000]")
            return list(range(count))
        seeds = [int(p) for p in parts if p]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: give a count (5) or seeds (0,1,2)") from None
    problem = SEED(min(seeds, default=0)) or SEED(max(seeds, default=0))
    if not seeds or problem or len(set(seeds)) != len(seeds):
        raise ConfigError(
            f"--seeds {text!r}: give distinct seeds in [0, 2^63) ({problem or 'none given'})"
        )
    return seeds


def _seed_overrides(
    overrides: dict[str, Any], seeds: Sequence[int] | None, split_seeds: bool
) -> dict[int | None, dict[str, Any]]:
    """Each seed's settings: the model's seed varied, the split's kept at ``--split-seed`` or
    ``--seed`` (default 0) unless ``split_seeds``. ``None``: the one run of a plain compare."""
    if seeds is None:
        if split_seeds:
            raise ConfigError("--split-seeds varies the split over --seeds: give --seeds too")
        return {None: dict(overrides)}
    if split_seeds and "split_seed" in overrides:
        raise ConfigError("--split-seeds varies the split seed: --split-seed fixes it")
    base = overrides.get("split_seed", overrides.get("seed", 0))
    out: dict[int | None, dict[str, Any]] = {}
    for seed in seeds:
        own = {**overrides, "seed": seed}
        own["split_seed"] = None if split_seeds else base
        if own["split_seed"] is None:
            own.pop("split_seed")
        out[seed] = own
    return out


def run_compare(
    spec: DataSpec,
    overrides: dict[str, Any],
    models: Sequence[str],
    out: str | Path,
    *,
    seeds: Sequence[int] | None = None,
    split_seeds: bool = False,
    fast: bool = False,
    rerun: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    command: list[str] | None = None,
    alpha: float = 0.5,
    resamples: int = 10_000,
) -> dict[str, Any]:
    """Train (or reuse) each model, once per seed; write ``results.json``, ``report.md``,
    ``curves.png`` and ``differences.png``.

    Every model gets the same split and seed, its own recipe and on top of that the
    ``overrides`` (settings the user set explicitly) that it takes. With ``seeds``, each model
    is trained once per seed (in ``runs/seed-N/<model>``; the split fixed unless
    ``split_seeds``) and reported as mean ± std with a 95 % CI over seeds. Every pair of models
    is compared on the same users (``runs.differences``). A model that fails (in any seed) is
    reported and left out; the others are kept.
    """
    check_alpha(alpha)
    per_seed_overrides = _seed_overrides(overrides, seeds, split_seeds)
    plans = {seed: _check(models, own, fast) for seed, own in per_seed_overrides.items()}
    configs = next(iter(plans.values()))
    k = next(iter(configs.values())).split.k
    out = Path(out)
    started = time.perf_counter()
    failed: dict[str, str] = {}
    rows: dict[str, list[dict[str, Any]]] = {key: [] for key in models}
    histories: dict[str, list[list[dict[str, Any]]]] = {key: [] for key in models}
    tables: dict[str, list[pd.DataFrame]] = {key: [] for key in models}
    for seed, plan in plans.items():
        runs = out / "runs" if seed is None else out / "runs" / f"seed-{seed}"
        for key, config in plan.items():
            if key in failed:
                continue
            echo(f"== {key}" + ("" if seed is None else f" (seed {seed})"))
            options: dict[str, Any] = {"progress": progress, "echo": echo, "rerun": rerun}
            try:
                own = per_seed_overrides[seed]
                summary = _train_one(key, spec, config, own, runs, alpha, fast, options)
                rows[key].append({**_row(key, summary, runs / key), "seed": config.train.seed})
                histories[key].append(RunDir(runs / key).read_history())
                tables[key].append(per_user_results(runs / key))
            except KeyboardInterrupt:
                raise
            except TorchcfError as exc:
                failed[key] = _failure(seed, str(exc), echo, key)
            except Exception as exc:  # one model's bug must not lose the others' results
                failed[key] = _failure(seed, f"{type(exc).__name__}: {exc}", echo, key)
                traceback.print_exc(file=sys.stderr)
    done = [key for key in models if key not in failed]
    if seeds is None:
        results = {key: rows[key][0] for key in done}
        per_seed = {key: {name: [v] for name, v in rows[key][0].items()} for key in done}
    else:
        results = {key: summarise_seeds(rows[key], k) for key in done}
        per_seed = {key: results[key]["per_seed"] for key in done}
    averaged = {key: seed_averaged(tables[key]) for key in done}
    pairs = pair_differences(done, averaged, per_seed, k, resamples=resamples)
    first = next(iter(results.values()), None)
    report = {
        "models": results,
        "failed": failed,
        "seeds": None if seeds is None else list(seeds),
        "split_seeds": split_seeds,
        "pairs": pairs,
        "unbeaten": unbeaten(done, pairs),
        "significance_level": ALPHA,
        "protocol": first["protocol"] if first else None,
        "overrides": overrides,
        "settings": {key: config.settings() for key, config in configs.items()},
        "recipes": {key: list(recipe_names(key, fast)) for key in models},
        "pretrain_recipes": (
            {part: list(pretrain_names(part, fast)) for part in ("gmf", "mlp")}
            if "neumf-pre" in models
            else {}
        ),
        "alpha": alpha,
        "k": k,
        "data": spec.to_dict(),
        "command": command if command is not None else sys.argv,
        "versions": versions(),
        "wall_seconds": time.perf_counter() - started,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", report)
    with atomic_open(out / "report.md") as handle:
        handle.write(render_report(report))
    written = [out / "report.md", out / "results.json"]
    if done:
        write_curves(out / "curves.png", {key: histories[key] for key in done}, k)
        written.append(out / "curves.png")
    if pairs:
        write_forest(out / "differences.png", pairs)
        written.append(out / "differences.png")
    echo("wrote " + ", ".join(str(p) for p in written))
    return report


def _failure(seed: int | None, reason: str, echo: Callable[[str], None], key: str) -> str:
    text = reason if seed is None else f"seed {seed}: {reason}"
    echo(f"{key} failed: {text}")
    return text


def _row(key: str, summary: dict[str, Any], run: Path) -> dict[str, Any]:
    if summary["full_ranking"]["protocol"]["kind"].startswith("held-out sets"):
        return _set_row(key, summary, run)
    k = summary["protocol"]["k"]
    selected, best = summary["selected"], summary["best_test"]
    full = summary.get("full_ranking", {})
    hr, nd = metric_key("hr", k), metric_key("ndcg", k)
    return {
        "model": key,
        "run": str(run),
        "selected_by": selected["by"],
        "selected_epoch": selected["epoch"],
        hr: selected["test"][hr],
        nd: selected["test"][nd],
        "best_test_epoch": best["epoch"],
        f"best_test_{hr}": best[hr],
        f"best_test_{nd}": best[nd],
        f"full_{hr}": full.get(hr, float("nan")),
        f"full_{nd}": full.get(nd, float("nan")),
        "wall_seconds": summary.get("wall_seconds", float("nan")),
        "seconds_per_epoch": summary["seconds_per_epoch"]["train"]
        + summary["seconds_per_epoch"]["eval"],
        "epochs": summary["epochs_run"],
        "parameters": summary["parameters"],
        "k": k,
        "protocol": summary["protocol"],
    }


def _set_row(key: str, summary: dict[str, Any], run: Path) -> dict[str, Any]:
    """A compare row of a run on held-out sets: test Recall and NDCG at every cut-off."""
    full = summary["full_ranking"]
    ks = full["protocol"]["ks"]
    selected = summary["selected"]
    return {
        "model": key,
        "run": str(run),
        "selected_by": f"{selected['by']} {next(iter(selected['test']))}",
        "selected_epoch": selected["epoch"],
        **{
            f"full_{metric_key(m, c)}": full[metric_key(m, c)]
            for c in ks
            for m in ("recall", "ndcg")
        },
        "best_test_epoch": summary["best_test"]["epoch"],
        "wall_seconds": summary.get("wall_seconds", float("nan")),
        "seconds_per_epoch": summary["seconds_per_epoch"]["train"]
        + summary["seconds_per_epoch"]["eval"],
        "epochs": summary["epochs_run"],
        "parameters": summary["parameters"],
        "k": summary["protocol"]["k"],
        "ks": ks,
        "protocol": summary["protocol"],
    }


def _set_table(report: dict[str, Any]) -> list[str]:
    """Held-out sets: every model's test Recall and NDCG at each cut-off (mean ± std [CI] over
    seeds with several)."""
    models = report["models"]
    ks = next(iter(models.values()))["ks"] if models else []
    columns = [f"full_{metric_key(m, c)}" for m in ("recall", "ndcg") for c in ks]
    titles = [
        f"{'Recall' if m == 'recall' else 'NDCG'}@{c}" for m in ("recall", "ndcg") for c in ks
    ]
    unbeaten = set(report.get("unbeaten", []))
    lines = [
        "| model | selected by | epoch | " + " | ".join(titles) + " | s/epoch | wall s | "
        "parameters | unbeaten |",
        "|---|---|---|" + "---|" * len(titles) + "---|---|---|---|",
    ]
    for key, r in models.items():
        spread = r.get("seeds_summary") or {}
        cells = [_spread(spread.get(c), r[c]) for c in columns]
        epochs = r["selected_epoch"]
        epochs = ",".join(map(str, epochs)) if isinstance(epochs, list) else epochs
        lines.append(
            f"| {key} | {r['selected_by']} | {epochs} | "
            + " | ".join(cells)
            + f" | {r['seconds_per_epoch']:.1f} | {r['wall_seconds']:.0f} | "
            f"{r['parameters']:,} | {'yes' if key in unbeaten else ''} |"
        )
    mask = (report.get("protocol") or {}).get("mask", "?")
    return lines + [
        "",
        f"Test figures over each user's held-out set, every item ranked except the masked ones "
        f"(mask {mask}), at the epoch validation selected. *Unbeaten*: no other model is "
        "significantly better on test Recall or NDCG (below).",
    ]


def _table(report: dict[str, Any]) -> list[str]:
    """One seed: every model's selected and best-test epochs and metrics."""
    k = report["k"]
    unbeaten = set(report.get("unbeaten", []))
    lines = [
        f"| model | selected by | epoch | test HR@{k} | test NDCG@{k} | best test epoch | "
        f"best test HR@{k} | best test NDCG@{k} | full HR@{k} | full NDCG@{k} | s/epoch | "
        "epochs | wall s | parameters | unbeaten |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    hr, nd = metric_key("hr", k), metric_key("ndcg", k)
    for key, r in report["models"].items():
        lines.append(
            f"| {key} | {r['selected_by']} | {r['selected_epoch']} | {r[hr]:.4f} | "
            f"{r[nd]:.4f} | {r['best_test_epoch']} | {r[f'best_test_{hr}']:.4f} | "
            f"{r[f'best_test_{nd}']:.4f} | {r[f'full_{hr}']:.4f} | "
            f"{r[f'full_{nd}']:.4f} | {r['seconds_per_epoch']:.1f} | {r['epochs']} | "
            f"{r['wall_seconds']:.0f} | {r['parameters']:,} | {'yes' if key in unbeaten else ''} |"
        )
    return lines + [
        "",
        f"*Test HR@{k}/NDCG@{k}* are measured at the epoch the named holdout selected, ranking "
        "the held-out item among its sampled candidates; the *best test* columns pick the epoch "
        "on the test set itself, as the NCF paper and the seed write-up did (optimistic); *full* "
        "ranks it among every item the user has not interacted with, at the selected epoch. "
        "*Unbeaten*: no other model is significantly better on test HR or NDCG (below).",
    ]


def _spread(summary: dict[str, Any] | None, mean: float) -> str:
    """``mean ± std [CI low, CI high]`` of one metric over seeds."""
    if not summary:
        return f"{mean:.4f}"
    return SeedSummary(**summary).text()


def _seeds_table(report: dict[str, Any]) -> list[str]:
    """Several seeds: every metric as mean ± standard deviation [95 % CI over seeds]."""
    k = report["k"]
    unbeaten = set(report.get("unbeaten", []))
    names = [metric_key(m, k) for m in ("hr", "ndcg")]
    columns = [*names, *(f"full_{n}" for n in names), *(f"best_test_{n}" for n in names)]
    titles = [f"test HR@{k}", f"test NDCG@{k}", f"full HR@{k}", f"full NDCG@{k}"]
    titles += [f"best test HR@{k}", f"best test NDCG@{k}"]
    lines = [
        "| model | seeds | " + " | ".join(titles) + " | selected epochs | s/epoch | parameters "
        "| unbeaten |",
        "|---|---|" + "---|" * len(titles) + "---|---|---|---|",
    ]
    for key, r in report["models"].items():
        cells = [_spread(r["seeds_summary"].get(c), r[c]) for c in columns]
        epochs = ",".join(str(e) for e in r["selected_epoch"])
        lines.append(
            f"| {key} | {len(r['seeds'])} | " + " | ".join(cells) + f" | {epochs} | "
            f"{r['seconds_per_epoch']:.1f} | {r['parameters']:,} | "
            f"{'yes' if key in unbeaten else ''} |"
        )
    split = "the split varied with the seed" if report["split_seeds"] else "the split fixed"
    models = list(report["models"].values())
    selected_by = models[0]["selected_by"] if models else "validation"
    return lines + [
        "",
        f"Each cell: mean ± standard deviation [95 % CI of the mean, t] over the seeds "
        f"{', '.join(str(s) for s in report['seeds'])} ({split}; the model's seed varied). "
        f"*Test* is measured at the epoch the {selected_by} holdout selected; *full* ranks the "
        "held-out item among every unseen item; *best test* "
        "picks the epoch on the test set itself (optimistic). *Unbeaten*: no other model is "
        "significantly better on test HR or NDCG (below).",
    ]


def _differences(report: dict[str, Any]) -> list[str]:
    """The pairs in words (test holdout), then every pair, holdout and protocol as a table."""
    pairs = report.get("pairs") or []
    if not pairs:
        return []
    level = report.get("significance_level", ALPHA)
    lines = [
        "",
        "## Differences",
        "",
        f"Each pair reads *a − b* on the same users: the mean difference with a paired "
        "bootstrap 95 % CI over users, the paired test (exact sign test on the users whose hit "
        "differs for HR; Wilcoxon signed-rank on per-user NDCG), p-values Holm-adjusted over the "
        f"{len({(p['a'], p['b']) for p in pairs})} pairs; significant: p < {level} after Holm "
        "and a CI that excludes 0."
        + (
            " Per-user values are averaged over the seeds; *over seeds* is the paired t-test "
            "of the per-seed metrics (Holm-adjusted too)."
            if report.get("seeds") and len(report["seeds"]) > 1
            else ""
        ),
        "",
    ]
    for protocol, title in (("sampled", "sampled candidates"), ("full", "full ranking")):
        shown = [p for p in pairs if p["holdout"] == "test" and p["protocol"] == protocol]
        if shown:
            lines += [f"Test, {title}:", ""] + [f"- {p['words']}" for p in shown] + [""]
    unbeaten = report.get("unbeaten", [])
    sets = not any(p["protocol"] == "sampled" for p in pairs)
    lines += [
        "Not significantly beaten by any other model "
        + ("(test, Recall or NDCG): " if sets else "(test, sampled, HR or NDCG): ")
        + (", ".join(f"**{m}**" for m in unbeaten) or "none"),
        "",
        "| a − b | holdout | protocol | metric | a | b | Δ | 95 % CI | test | p | p (Holm) | "
        "over seeds: Δ [95 % CI], p (Holm) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in pairs:
        seeds = p.get("over_seeds")
        across = (
            f"{seeds['delta']:+.4f} [{seeds['ci_low']:+.4f}, {seeds['ci_high']:+.4f}], "
            f"{seeds['p_holm']:.3g}"
            if seeds and "p_holm" in seeds
            else ""
        )
        lines.append(
            f"| {p['a']} − {p['b']} | {p['holdout']} | {p['protocol']} | {p['metric']} | "
            f"{p['a_mean']:.4f} | {p['b_mean']:.4f} | "
            f"{p['delta']:+.4f} | [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}] | {p['test']} | "
            f"{p['p_value']:.3g} | {p['p_holm']:.3g} | {across} |"
        )
    return lines


def render_report(report: dict[str, Any]) -> str:
    """The Markdown report: one table row per model, the pairs' differences in words and as a
    table, then protocol, settings, command and versions (every figure from ``report``)."""
    lines = ["# torchcf compare", ""]
    sets = any("ks" in r for r in report["models"].values())
    if sets:
        lines += _set_table(report)
    else:
        lines += _seeds_table(report) if report.get("seeds") else _table(report)
    lines += _differences(report)
    if report["failed"]:
        lines += ["", "## Failed", ""]
        lines += [f"- **{key}**: {reason}" for key, reason in report["failed"].items()]
    protocol = report.get("protocol") or {}
    lines += ["", "## Protocol", ""]
    lines += [f"- {name}: {value}" for name, value in protocol.items() if name != "notes"]
    lines += [f"- note: {note}" for note in protocol.get("notes", [])]
    varying = ("epochs", "batch_size", "optimizer", "learning_rate", "dropout", "weight_decay")
    first: dict[str, Any] = next(iter(report["settings"].values()), {})
    unused = settings_not_used(protocol) | {"model"}
    shared = {
        name: value
        for name, value in first.items()
        if name not in unused and all(s.get(name) == value for s in report["settings"].values())
    }
    lines += ["", "## Settings", ""]
    lines += ["- every model: " + ", ".join(f"{n}={v}" for n, v in shared.items())]
    for key, settings in report["settings"].items():
        own = [f"{n}={settings[n]}" for n in varying if n in settings and n not in shared]
        names = report.get("recipes", {}).get(key) or []
        ran = f" ({' + '.join(names)} recipe)" if names else ""
        lines.append(f"- {key}{ran}: " + (", ".join(own) if own else "as above"))
    if report.get("seeds"):
        lines.append(
            "- seed: the model's seed per run ("
            + ", ".join(str(seed) for seed in report["seeds"])
            + "); the runs are in runs/seed-N/<model>"
        )
    if "neumf-pre" in report["settings"]:
        parts = report.get("pretrain_recipes") or {}
        named = [
            f"{part} ({' + '.join(parts[part]) or 'its own'} recipe)" for part in sorted(parts)
        ]
        lines.append(
            f"- neumf-pre starts from {' and '.join(named) or 'gmf and mlp'} runs, the compare's "
            f"own where the recipes agree (head mix alpha={report['alpha']}); its epoch 0 is "
            "the pretrained mix before fine-tuning, and its wall time leaves out the parts'"
        )
    lines += [
        "",
        "## Command",
        "",
        "```",
        " ".join(report["command"]),
        "```",
        "",
        "## Versions",
        "",
    ]
    lines += [f"- {name}: {value}" for name, value in report["versions"].items()]
    lines += ["", f"Wall time: {report['wall_seconds']:.0f} s", ""]
    return "\n".join(lines)


def write_curves(path: Path, histories: dict[str, list[list[dict[str, Any]]]], k: int) -> None:
    """HR@k and NDCG@k (test) per epoch for every model, two labelled panels; with several
    seeds, the mean over seeds with a ± one standard deviation band."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    first = next((rows[0] for seeds in histories.values() for rows in seeds if rows), {})
    tested = [c for c in first if c.startswith("test_")] or [
        history_column("test", m, k) for m in ("hr", "ndcg")
    ]  # held-out sets: the selecting metric and its partner at their own cut-off
    for ax, column in zip(axes, tested[:2], strict=False):
        name, cut = column.removeprefix("test_").split("@")
        label = {"hr": "HR", "ndcg": "NDCG"}.get(name, name.capitalize())
        k = int(cut)
        for key, seeds in histories.items():
            by_epoch: dict[int, list[float]] = {}
            for rows in seeds:
                for r in rows:
                    by_epoch.setdefault(int(r["epoch"]), []).append(float(r[column]))
            epochs = sorted(by_epoch)
            mean = np.array([np.mean(by_epoch[e]) for e in epochs])
            several = len(seeds) > 1
            name = f"{key} (mean of {len(seeds)} seeds ± std)" if several else key
            (line,) = ax.plot(epochs, mean, marker="o", ms=3, label=name)
            if several:
                std = np.array([np.std(by_epoch[e], ddof=1) if len(by_epoch[e]) > 1 else 0.0
                                for e in epochs])  # fmt: skip
                ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"test {label}@{k}")
        ax.set_title(f"{label}@{k} on the test holdout")
        ax.grid(alpha=0.3)
        ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
