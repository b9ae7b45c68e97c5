"""``torchcf blend``: trained runs weighed into one model, weights chosen on validation."""

from __future__ import annotations

import argparse
from typing import Any

from torchcf.cli.common import command_line
from torchcf.errors import TorchcfError

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    blend = sub.add_parser(
        "blend",
        help="weigh trained runs into one model, weights chosen on validation",
        description="Blend the models of runs trained on one split: each model's scores are "
        "standardised per user and summed with weights chosen on the validation holdout (a "
        "grid over the weight simplex) or given. Writes a run directory that evaluate, "
        "recommend and serve take.",
    )
    blend.add_argument("runs", metavar="RUN_DIR", nargs="+", help="two to four run directories")
    blend.add_argument(
        "--weights", metavar="W,W,...", help="one weight per run (default: chosen on validation)"
    )
    blend.add_argument(
        "--metric", default="ndcg", choices=["ndcg", "hr"], help="validation metric (default ndcg)"
    )
    blend.add_argument("--out", required=True, help="run directory to write")
    blend.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    blend.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from torchcf.runs.blend import blend_runs

    weights = None
    if args.weights is not None:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise TorchcfError(
                f"--weights must be numbers separated by commas, got {args.weights!r}"
            ) from None
    blend_runs(
        args.runs,
        args.out,
        weights=weights,
        metric=args.metric,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        command=command_line(),
    )
    return 0
