"""``torchcf compare``: every model on the same split and seed, one report."""

from __future__ import annotations

import argparse
from typing import Any

from torchcf.cli.common import command_line, setup_torch
from torchcf.cli.flags import add_run_flags, add_seed_flags, data_spec, overrides

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    compare = sub.add_parser(
        "compare",
        help="train every model on the same split; one report",
        description="Run several models on the same split and seed and "
        "write report.md, curves.png and results.json to --out. A setting applies to the "
        "compared models that take it.",
    )
    compare.add_argument(
        "--models",
        default="mf,gmf,mlp,neumf,neumf-pre",
        help="comma-separated: any trainable model, and neumf-pre (default "
        "mf,gmf,mlp,neumf,neumf-pre)",
    )
    add_run_flags(compare)
    compare.add_argument(
        "--alpha", type=float, default=0.5, help="neumf-pre head mix (default 0.5)"
    )
    compare.add_argument("--out", required=True, help="report directory (runs go in OUT/runs)")
    compare.add_argument("--rerun", action="store_true", help="retrain even finished runs")
    compare.add_argument(
        "--fast",
        action="store_true",
        help="each model's fast recipe where it has one (the report names it; flags given "
        "explicitly win)",
    )
    add_seed_flags(compare)


def run(args: argparse.Namespace) -> int:
    from torchcf.runs.compare import parse_seeds, run_compare

    seeds = None if args.seeds is None else parse_seeds(args.seeds)
    setup_torch(args)
    report = run_compare(
        data_spec(args),
        overrides(args),
        [m.strip() for m in args.models.split(",") if m.strip()],
        args.out,
        rerun=args.rerun,
        progress=not args.no_progress,
        command=command_line(),
        alpha=args.alpha,
        seeds=seeds,
        split_seeds=args.split_seeds,
        fast=args.fast,
    )
    return 1 if report["failed"] else 0
