"""``torchcf evaluate``: a saved run's sampled and/or full-ranking metrics, again."""

from __future__ import annotations

import argparse
import json
from typing import Any

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
    ev.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from torchcf.runs.evaluate import evaluate_run

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
        print(f"full ranking ({full['holdout']}, held-out item among all unseen items):")
        names = ("hr", "recall", "ndcg", "mrr", "precision", "coverage")
        print("   k  " + "  ".join(f"{n:>9}" for n in names))
        for k in full["protocol"]["ks"]:
            print(f"{k:>4}  " + "  ".join(f"{full[metric_key(n, k)]:>9.4f}" for n in names))
    return 0
