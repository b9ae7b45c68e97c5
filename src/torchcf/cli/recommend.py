"""``torchcf recommend`` and ``torchcf similar``: top-k lists from a trained run."""

from __future__ import annotations

import argparse
from typing import Any

from torchcf.cli.common import id_list, print_rows

__all__ = ["add_parsers", "recommend", "similar"]


def _output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--titles",
        metavar="FILE",
        help="movies.dat or u.item for titles (default: the one the model was trained beside)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def add_parsers(sub: Any) -> None:
    rec = sub.add_parser(
        "recommend",
        help="top-k items for a user (or for a new user's items)",
        description="Recommend from a trained run or model directory.",
    )
    rec.add_argument("run", metavar="RUN_DIR", help="a run directory (or its model/)")
    who = rec.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="ID", help="a user id of the training data")
    who.add_argument(
        "--items", metavar="ID,ID,...", help="a new user's items: fold-in recommendations"
    )
    rec.add_argument("-k", "--k", type=int, default=10, help="list length (default 10)")
    rec.add_argument(
        "--include-seen", action="store_true", help="allow items the user already interacted with"
    )
    rec.add_argument("--filter", metavar="ID,ID,...", help="never recommend these items")
    rec.add_argument(
        "--unknown-user",
        default="error",
        choices=["error", "popular"],
        help="a user not in training: error (default) or the most popular items",
    )
    _output_flags(rec)

    similar = sub.add_parser(
        "similar",
        help="items most similar to an item",
        description="Items nearest to an item by cosine similarity of the item embeddings.",
    )
    similar.add_argument("run", metavar="RUN_DIR", help="a run directory (or its model/)")
    similar.add_argument("--item", metavar="ID", required=True, help="an item id")
    similar.add_argument("-k", "--k", type=int, default=10, help="list length (default 10)")
    _output_flags(similar)


def recommend(args: argparse.Namespace) -> int:
    from torchcf.serving.recommender import Recommender

    rec = Recommender.load(args.run, unknown_user=args.unknown_user, titles=args.titles)
    filtered = id_list(args.filter, "--filter") if args.filter else None
    if args.items is not None:
        ids, scores = rec.recommend_for_items(
            id_list(args.items, "--items"),
            k=args.k,
            exclude_seen=not args.include_seen,
            filter_items=filtered,
        )
        header: dict[str, object] = {"user": None}
    else:
        ids, scores = rec.recommend(
            args.user, k=args.k, exclude_seen=not args.include_seen, filter_items=filtered
        )
        header = {"user": rec.user_map.canonical(args.user)}
    print_rows(header, rec.rows(ids, scores), args.json)
    return 0


def similar(args: argparse.Namespace) -> int:
    from torchcf.serving.recommender import Recommender

    rec = Recommender.load(args.run, titles=args.titles)
    ids, scores = rec.similar_items(args.item, k=args.k)
    print_rows({"item": rec.item_map.canonical(args.item)}, rec.rows(ids, scores), args.json)
    return 0
