"""``torchcf serve``: the HTTP service over a trained run."""

from __future__ import annotations

import argparse
from typing import Any

from torchcf.errors import TorchcfError

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    srv = sub.add_parser(
        "serve",
        help="HTTP service: /recommend, /similar, /model, /health, /docs",
        description="Serve a trained model over HTTP (FastAPI + uvicorn).",
    )
    srv.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="a run directory (or its model/); a second one is shown beside it on the page",
    )
    srv.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    srv.add_argument("--port", type=int, default=8000, help="default 8000")
    srv.add_argument(
        "--unknown-user",
        default="error",
        choices=["error", "popular"],
        help="a user not in training: 404 (error, default) or the most popular items",
    )
    srv.add_argument("--max-k", type=int, default=1000, help="largest k accepted (default 1000)")
    srv.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: requests are small)"
    )
    srv.add_argument("--titles", metavar="FILE", help="movies.dat or u.item for titles")
    srv.add_argument(
        "--ann",
        action="store_true",
        help="answer /recommend and /similar through the (first) run's faiss index (built on "
        "first use; inner-product models only): for catalogues of 10^5+ items",
    )
    srv.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")


def run(args: argparse.Namespace) -> int:
    import torch

    from torchcf.serving.http import serve
    from torchcf.serving.recommender import Recommender

    if args.threads < 1 or args.max_k < 1 or not 0 < args.port < 65536:
        raise TorchcfError("--threads and --max-k must be positive, --port in 1–65535")
    torch.set_num_threads(args.threads)
    if len(args.runs) > 2:
        raise TorchcfError(f"serve takes one run, or two for the page; got {len(args.runs)}")
    loaded = [
        (
            Recommender.load(
                r, unknown_user=args.unknown_user, titles=args.titles, ann=args.ann and i == 0
            ),
            _history(r),
        )
        for i, r in enumerate(args.runs)
    ]
    rec, history = loaded[0]
    where = f"http://{args.host}:{args.port}"
    print(f"serving {rec.name} from {args.runs[0]} on {where} (page: /, docs: /docs)")
    for kind, ann in rec.ann.items():
        print(f"--ann {kind}: {ann.info['index']}, recall@10 {ann.info['recall@10']:.4f}")
    if len(loaded) > 1:
        print(f"the page shows {loaded[1][0].name} from {args.runs[1]} beside it")
    serve(
        rec,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        max_k=args.max_k,
        history=history,
        other=loaded[1] if len(loaded) > 1 else None,
    )
    return 0


def _history(run: str) -> Any:
    """The page's user histories and held-out items from the run's rebuilt split; ``None``
    (the model's own training matrix, no held-out items) when that cannot be had, said once."""
    from torchcf.runs.evaluate import load_run_split
    from torchcf.runs.rundir import RunDir
    from torchcf.serving.explore import History

    directory = RunDir(run)
    if not directory.config_file.exists():
        return None
    try:
        return History.from_split(load_run_split(run, directory.read_config()))
    except TorchcfError as exc:
        print(f"the page shows no held-out items: {exc}")
        return None
