"""``torchcf export``: a trained model's user and item vectors, for a vector store."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "export",
        help="write a model's user and item vectors (Parquet and NumPy)",
        description="Write the user and item vectors of a model whose scores are inner products "
        "(mf, bpr, gmf, ials, lightgcn), with their ids: users[u] · items[i] is the model's "
        "score, so they load into a vector store as they are. See export.json in the output.",
    )
    parser.add_argument("run", metavar="RUN_DIR", help="a run directory (or its model/)")
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    from torchcf.serving.vectors import export_vectors

    card = export_vectors(args.run, args.out, overwrite=args.overwrite)
    print(
        f"wrote {args.out}: {card['users']} users and {card['items']} items × "
        f"{card['dimensions']} ({card['model']}: {card['form']})"
    )
    return 0
