"""``torchcf evaluate``: a saved run's sampled and/or full-ranking metrics, again."""

from __future__ import annotations

import argparse
import json
from typing import Any

from torchcf.errors import TorchcfError
from torchcf.evaluation.metrics import metric_key

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="evaluate a saved run: sampled and/or full-ranking metrics",
        description="Rebuild a run's split from its recorded data and seed and evaluate its "
        "model: sampled candidates (the NCF protocol) and/or full ranking over all unseen items.",
    )
    ev.add_argument("run", metavar="RUN_DIR", help="a run directory written by train")
    ev.add_argument("--protocol", default="both", choices=["sampled", "full", "both"])
    ev.add_argument(
        "--against",
        metavar="OTHER_RUN",
        help="compare with another run on the same split: paired bootstrap CIs and tests",
    )
    ev.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default 0)")
    ev.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from torchcf.runs.evaluate import compare_runs, evaluate_run

    if args.against is not None:
        if not 0 <= args.seed < 2**32:
            raise TorchcfError(f"--seed must be in [0, 2^32), got {args.seed}")
        comparison = compare_runs(args.run, args.against, seed=args.seed)
        if args.json:
            print(json.dumps(comparison))
            return 0
        for row in comparison["differences"]:
            print(f"{row['holdout']}, {row['protocol']}: {row['words']}")
        return 0

    result = evaluate_run(args.run, args.protocol)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['model']} in {result['run']}")
    for name, metrics in result.get("sampled", {}).items():
        values = "  ".join(
            f"{key.upper()} {value:.4f}" for key, value in metrics.items() if "@" in key
        )
        print(f"sampled ({name}, held-out item among its candidates): {values}")
    if "full" in result:
        full = result["full"]
        sets = full["protocol"]["kind"].startswith("held-out sets")
        what = (
            f"held-out sets, mask {full['protocol']['mask']}"
            if sets
            else ("held-out item among all unseen items")
        )
        print(f"full ranking ({full['holdout']}, {what}):")
        names = ("hr", "recall", "ndcg", "mrr", "precision", "coverage")
        print("   k  " + "  ".join(f"{n:>9}" for n in names))
        for k in full["protocol"]["ks"]:
            print(f"{k:>4}  " + "  ".join(f"{full[metric_key(n, k)]:>9.4f}" for n in names))
    return 0
