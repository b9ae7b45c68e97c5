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

from torchcf.data.sources import DataSpec
from torchcf.errors import ConfigError, TorchcfError
from torchcf.io import atomic_open, atomic_path, write_json
from torchcf.models.registry import TRAINABLE
from torchcf.runs.rundir import RunDir, history_column, metric_key, versions
from torchcf.runs.train import check_alpha, ensure_run, pretrained_parts
from torchcf.training.config import Recipe, applicable, recipe, takes

__all__ = ["COMPARABLE", "run_compare"]

COMPARABLE = (*TRAINABLE, "neumf-pre")


def _model(key: str) -> str:
    return "neumf" if key == "neumf-pre" else key


def model_recipe(key: str, overrides: dict[str, Any]) -> Recipe:
    """A compared model's recipe under the user's explicit settings that it takes."""
    own = applicable(_model(key), overrides)
    if key == "neumf-pre":
        return recipe("neumf", own, recipes=("finetune",))
    return recipe(key, own)


def _check(models: Sequence[str], overrides: dict[str, Any]) -> dict[str, Recipe]:
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
    return {key: model_recipe(key, overrides) for key in models}


def _train_one(
    key: str,
    spec: DataSpec,
    config: Recipe,
    overrides: dict[str, Any],
    runs: Path,
    alpha: float,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Train (or reuse) one compared model's run in ``runs/key``; its summary."""
    pretrained = None
    if key == "neumf-pre":
        # the compare's own gmf/mlp runs serve where they are the pretraining recipes
        reuse = {part: (model_recipe(part, overrides), runs / part) for part in ("gmf", "mlp")}
        pretrained = pretrained_parts(
            spec, overrides, runs / key, alpha=alpha, reuse=reuse, **options
        )
    return ensure_run(spec, config, runs / key, pretrained=pretrained, **options)


def run_compare(
    spec: DataSpec,
    overrides: dict[str, Any],
    models: Sequence[str],
    out: str | Path,
    *,
    rerun: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    command: list[str] | None = None,
    alpha: float = 0.5,
) -> dict[str, Any]:
    """Train (or reuse) each model; write ``results.json``, ``report.md`` and ``curves.png``.

    Every model gets the same split and seed, its own recipe and on top of that the
    ``overrides`` (settings the user set explicitly) that it takes.
    """
    check_alpha(alpha)
    configs = _check(models, overrides)
    k = next(iter(configs.values())).split.k
    out = Path(out)
    runs = out / "runs"
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    histories: dict[str, list[dict[str, Any]]] = {}
    for key, config in configs.items():
        echo(f"== {key}")
        options: dict[str, Any] = {"progress": progress, "echo": echo, "rerun": rerun}
        try:
            summary = _train_one(key, spec, config, overrides, runs, alpha, options)
            results[key] = _row(key, summary, runs / key)
            histories[key] = RunDir(runs / key).read_history()
        except KeyboardInterrupt:
            raise
        except TorchcfError as exc:
            failed[key] = str(exc)
            echo(f"{key} failed: {exc}")
        except Exception as exc:  # one model's bug must not lose the others' results
            failed[key] = f"{type(exc).__name__}: {exc}"
            echo(f"{key} failed: {type(exc).__name__}: {exc}")
            traceback.print_exc(file=sys.stderr)
    report = {
        "models": results,
        "failed": failed,
        "protocol": next(iter(results.values()))["protocol"] if results else None,
        "overrides": overrides,
        "settings": {key: config.settings() for key, config in configs.items()},
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
    if histories:
        write_curves(out / "curves.png", histories, k)
    echo(f"wrote {out / 'report.md'}, {out / 'results.json'}, {out / 'curves.png'}")
    return report


def _row(key: str, summary: dict[str, Any], run: Path) -> dict[str, Any]:
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


def render_report(report: dict[str, Any]) -> str:
    """The Markdown report: one table row per model, then protocol, command and versions."""
    rows = report["models"]
    k = report["k"]
    lines = ["# torchcf compare", ""]
    lines += [
        f"| model | selected by | epoch | test HR@{k} | test NDCG@{k} | best test epoch | "
        f"best test HR@{k} | best test NDCG@{k} | full HR@{k} | full NDCG@{k} | s/epoch | "
        "epochs | wall s | parameters |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    hr, nd = metric_key("hr", k), metric_key("ndcg", k)
    for key, r in rows.items():
        lines.append(
            f"| {key} | {r['selected_by']} | {r['selected_epoch']} | {r[hr]:.4f} | "
            f"{r[nd]:.4f} | {r['best_test_epoch']} | {r[f'best_test_{hr}']:.4f} | "
            f"{r[f'best_test_{nd}']:.4f} | {r[f'full_{hr}']:.4f} | "
            f"{r[f'full_{nd}']:.4f} | {r['seconds_per_epoch']:.1f} | {r['epochs']} | "
            f"{r['wall_seconds']:.0f} | {r['parameters']:,} |"
        )
    lines += [
        "",
        f"*Test HR@{k}/NDCG@{k}* are measured at the epoch the named holdout selected, ranking "
        "the held-out item among its sampled candidates; the *best test* columns pick the epoch "
        "on the test set itself, as the NCF paper and the seed write-up did (optimistic); *full* "
        "ranks it among every item the user has not interacted with, at the selected epoch.",
    ]
    if report["failed"]:
        lines += ["", "## Failed", ""]
        lines += [f"- **{key}**: {reason}" for key, reason in report["failed"].items()]
    protocol = report.get("protocol") or {}
    lines += ["", "## Protocol", ""]
    lines += [f"- {name}: {value}" for name, value in protocol.items() if name != "notes"]
    lines += [f"- note: {note}" for note in protocol.get("notes", [])]
    varying = ("epochs", "batch_size", "optimizer", "learning_rate", "dropout", "weight_decay")
    first: dict[str, Any] = next(iter(report["settings"].values()), {})
    shared = {
        name: value
        for name, value in first.items()
        if name != "model" and all(s.get(name) == value for s in report["settings"].values())
    }
    lines += ["", "## Settings", ""]
    lines += ["- every model: " + ", ".join(f"{n}={v}" for n, v in shared.items())]
    for key, settings in report["settings"].items():
        own = [f"{n}={settings[n]}" for n in varying if n in settings and n not in shared]
        lines.append(f"- {key}: " + (", ".join(own) if own else "as above"))
    if "neumf-pre" in report["settings"]:
        lines.append(
            f"- neumf-pre starts from the gmf and mlp runs (head mix alpha={report['alpha']}); "
            "its epoch 0 is the pretrained mix before fine-tuning"
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


def write_curves(path: Path, histories: dict[str, list[dict[str, Any]]], k: int) -> None:
    """HR@k and NDCG@k (test) per epoch for every model, two labelled panels."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for ax, metric, label in zip(axes, ("hr", "ndcg"), ("HR", "NDCG"), strict=True):
        for key, rows in histories.items():
            epochs = [int(r["epoch"]) for r in rows]
            ax.plot(
                epochs,
                [float(r[history_column("test", metric, k)]) for r in rows],
                marker="o",
                ms=3,
                label=key,
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"test {label}@{k}")
        ax.set_title(f"{label}@{k} on the test holdout")
        ax.grid(alpha=0.3)
        ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
