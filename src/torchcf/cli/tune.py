"""``torchcf tune``: a model's hyperparameters searched with Optuna on the validation holdout."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torchcf.cli.common import command_line, setup_torch
from torchcf.cli.flags import add_run_flags, data_spec, flag_of, overrides
from torchcf.models.registry import TRAINABLE

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    tune = sub.add_parser(
        "tune",
        help="hyperparameter search (Optuna) scored on the validation holdout",
        description="Search a model's hyperparameters with Optuna, scoring each trial on the "
        "validation holdout only; resumable (OUT/study.db); writes OUT/trials.csv and "
        "OUT/best_config.json. Flags given explicitly are held fixed.",
    )
    tune.add_argument("--model", required=True, choices=sorted(TRAINABLE))
    add_run_flags(tune)
    tune.add_argument("--trials", type=int, default=20, help="finished trials wanted (default 20)")
    tune.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    tune.add_argument(
        "--metric",
        default="ndcg",
        choices=["ndcg", "hr", "recall"],
        help="the validation metric to maximise (default ndcg; recall for held-out sets)",
    )
    tune.add_argument("--out", required=True, help="study directory")


def run(args: argparse.Namespace) -> int:
    from torchcf.runs.tune import run_tune

    setup_torch(args)
    summary = run_tune(
        data_spec(args),
        args.model,
        overrides(args),
        args.trials,
        args.out,
        metric=args.metric,
        timeout=args.timeout,
        command=command_line(),
    )
    best = summary.get("best")
    if best is None:
        print("no trial finished")
        return 1
    flags = " ".join(
        f"{flag_of(name)} {value:.4g}" if isinstance(value, float) else f"{flag_of(name)} {value}"
        for name, value in best["params"].items()
    )
    print(
        f"best trial {best['trial']}: validation {args.metric.upper()} {best['value']:.4f} "
        f"(epoch {best['epoch']}); wrote {Path(args.out) / 'best_config.json'}"
    )
    print(f"train it: torchcf train --model {args.model} {flags} (plus your data flags)")
    return 0
