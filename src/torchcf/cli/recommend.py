"""``torchcf recommend`` and ``torchcf similar``: top-k lists from a trained run."""

from __future__ import annotations

import argparse
from typing import Any

from torchcf.cli.common import id_list, print_rows
from torchcf.errors import TorchcfError

__all__ = ["add_parsers", "index", "recommend", "similar"]


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
    who.add_argument(
        "--all-users", action="store_true", help="every training user, written to --out"
    )
    who.add_argument("--users", metavar="FILE", help="the users in FILE (one id a line), to --out")
    rec.add_argument(
        "--out",
        metavar="FILE",
        help="with --all-users/--users: the table to write (.parquet, .csv)",
    )
    rec.add_argument("--overwrite", action="store_true", help="replace an existing --out")
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
    _ann_flag(rec)
    _output_flags(rec)

    similar = sub.add_parser(
        "similar",
        help="items most similar to an item",
        description="Items nearest to an item by cosine similarity of the item embeddings.",
    )
    similar.add_argument("run", metavar="RUN_DIR", help="a run directory (or its model/)")
    similar.add_argument("--item", metavar="ID", required=True, help="an item id")
    similar.add_argument("-k", "--k", type=int, default=10, help="list length (default 10)")
    _ann_flag(similar)
    _output_flags(similar)

    index = sub.add_parser(
        "index",
        help="build the approximate top-k index of a run (for --ann)",
        description="Build the faiss indexes --ann answers from (inner-product recommendations "
        "and cosine similar items) into the model directory, replacing an older one; the search "
        "effort is the smallest whose recall@10 against exact ranking reaches --target-recall.",
    )
    index.add_argument("run", metavar="RUN_DIR", help="a run directory (or its model/)")
    index.add_argument(
        "--target-recall", type=float, default=0.97, help="recall@10 to reach (default 0.97)"
    )


def _ann_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ann",
        action="store_true",
        help="approximate top-k through the run's faiss index (built on first use; "
        "inner-product models only)",
    )


def recommend(args: argparse.Namespace) -> int:
    from torchcf.serving.recommender import Recommender

    batch = args.all_users or args.users is not None
    if batch != (args.out is not None):
        raise TorchcfError("--out goes with --all-users or --users (and they need it)")
    if batch:
        return _batch(args)
    rec = Recommender.load(
        args.run, unknown_user=args.unknown_user, titles=args.titles, ann=args.ann
    )
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


def _batch(args: argparse.Namespace) -> int:
    """``--all-users`` / ``--users FILE``: every list to one table."""
    from pathlib import Path

    from torchcf.serving.batch import output_format, read_user_file, write_recommendations
    from torchcf.serving.recommender import Recommender

    output_format(args.out)
    if Path(args.out).exists() and not args.overwrite:
        raise TorchcfError(f"{args.out} exists (use --overwrite to replace it)")
    if isinstance(args.k, bool) or args.k < 1:
        raise TorchcfError(f"-k must be a positive integer, got {args.k}")
    users = read_user_file(args.users) if args.users is not None else None
    rec = Recommender.load(args.run, unknown_user=args.unknown_user, ann=args.ann)
    done = write_recommendations(
        rec,
        args.out,
        users=users,
        k=args.k,
        exclude_seen=not args.include_seen,
        filter_items=id_list(args.filter, "--filter") if args.filter else None,
    )
    how = "through the ANN index" if rec.ann else "exactly"
    print(
        f"wrote {args.out}: top {args.k} of {done['users']:,} users ({done['rows']:,} rows, "
        f"{rec.name}, scored {how}) in {done['seconds']:.1f} s"
    )
    return 0


def similar(args: argparse.Namespace) -> int:
    from torchcf.serving.recommender import Recommender

    rec = Recommender.load(args.run, titles=args.titles, ann=args.ann)
    ids, scores = rec.similar_items(args.item, k=args.k)
    print_rows({"item": rec.item_map.canonical(args.item)}, rec.rows(ids, scores), args.json)
    return 0


def index(args: argparse.Namespace) -> int:
    import math

    from torchcf.serving.persistence import model_directory
    from torchcf.serving.recommender import Recommender

    if not (math.isfinite(args.target_recall) and 0 < args.target_recall <= 1):
        raise TorchcfError(f"--target-recall must be in (0, 1], got {args.target_recall}")
    rec = Recommender.load(args.run)
    model_dir = model_directory(args.run)
    rec.use_ann(model_dir, args.target_recall, rebuild=True)
    print(f"wrote {model_dir / 'ann'}")
    for kind, ann in rec.ann.items():
        info = ann.info
        print(
            f"  {kind}: {info['index']}; recall@10 {info['recall@10']:.4f} against exact on "
            f"{info['recall_queries']:,} {'users' if kind == 'recommend' else 'items'} "
            f"(built in {info['build_seconds']:.1f} s, tuned in {info['tune_seconds']:.1f} s)"
        )
    return 0
