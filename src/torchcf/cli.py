"""``torchcf`` command line: a thin shell that parses flags and calls the library.

User errors (bad files, unknown ids, impossible options) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from torchcf.errors import TorchcfError

if TYPE_CHECKING:
    from torchcf.config import TrainConfig
    from torchcf.experiment import DataSpec

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    source = group.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--dataset",
        choices=None,
        metavar="NAME",
        help="a named dataset, downloaded on first use: ml-1m, ml-100k",
    )
    source.add_argument(
        "--data",
        metavar="PATH",
        help="an NCF split directory, a MovieLens ratings.dat/u.data (or its "
        "directory), or a CSV/TSV/Parquet table",
    )
    group.add_argument(
        "--data-dir",
        metavar="DIR",
        help="where named datasets are stored (default: $TORCHCF_DATA_DIR or ~/.cache/torchcf)",
    )
    group.add_argument("--no-download", action="store_true", help="never download; fail instead")
    group.add_argument("--user-col", default="user", help="table column of user ids (default user)")
    group.add_argument("--item-col", default="item", help="table column of item ids (default item)")
    group.add_argument("--rating-col", help="table column of ratings (optional)")
    group.add_argument("--time-col", help="table column of timestamps (optional)")
    group.add_argument("--sep", help="field separator of a CSV/TSV table (default by extension)")
    group.add_argument(
        "--min-rating", type=float, help="count only ratings ≥ this as positive interactions"
    )
    group.add_argument(
        "--min-user-interactions",
        type=int,
        default=0,
        metavar="N",
        help="drop users with fewer than N distinct items before splitting",
    )


def _switch(group: argparse._ArgumentGroup, flag: str, help: str) -> None:
    """An on/off TrainConfig flag whose parsed default is None ("not given")."""
    group.add_argument(flag, action="store_true", default=None, help=help)


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    """The TrainConfig flags. Their parsed default is None ("not given"): each model's recipe
    (``config.recipe``) fills what the user left out; the help shows the seed's defaults."""
    import dataclasses

    from torchcf.config import FINETUNE_DEFAULTS, MODEL_DEFAULTS, OPTIMIZERS, TrainConfig

    d = TrainConfig()
    per_model = "; ".join(
        f"{model}: " + ", ".join(f"{k}={v}" for k, v in values.items())
        for model, values in MODEL_DEFAULTS.items()
    )
    g = parser.add_argument_group("model and training")
    g.add_argument(
        "--factors",
        dest="embedding_dim",
        type=int,
        default=d.embedding_dim,
        help=f"embedding size (default {d.embedding_dim})",
    )
    g.add_argument(
        "--epochs", type=int, help=f"default {d.epochs} (per-model defaults: {per_model})"
    )
    g.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    g.add_argument(
        "--lr",
        dest="learning_rate",
        type=float,
        default=None,
        help=f"learning rate (default {d.learning_rate}; NeuMF fine-tuning after --pretrain: "
        f"{FINETUNE_DEFAULTS['learning_rate']})",
    )
    g.add_argument("--beta1", type=float, help=f"Adam's β₁ (default {d.beta1})")
    g.add_argument("--beta2", type=float, help=f"Adam's β₂ (default {d.beta2})")
    g.add_argument(
        "--lr-schedule",
        choices=["constant", "cosine"],
        help="constant (default) or cosine decay over the epochs",
    )
    _switch(g, "--prefetch", "draw the next epoch's samples in the background (large batches)")
    _switch(g, "--amp", "bfloat16 autocast of the forward pass (for GPUs; autograd steps)")
    g.add_argument(
        "--optimizer",
        default=None,
        choices=list(OPTIMIZERS),
        help=f"default adam (NeuMF fine-tuning after --pretrain: {FINETUNE_DEFAULTS['optimizer']}"
        f", {FINETUNE_DEFAULTS['epochs']} epochs)",
    )
    g.add_argument(
        "--layers", type=int, default=d.layers, help=f"MLP/NeuMF tower layers (default {d.layers})"
    )
    g.add_argument(
        "--dropout",
        type=float,
        default=d.dropout,
        help="MLP/NeuMF dropout per layer (default 0; see --epochs for per-model defaults)",
    )
    g.add_argument(
        "--weight-decay", type=float, default=d.weight_decay, help="L2 penalty (default 0)"
    )
    _switch(g, "--biases", "mf/bpr: add user, item and global biases")
    g.add_argument(
        "--loss",
        choices=["bce", "bpr"],
        help="bce (pointwise, default) or bpr (pairwise −log σ(s⁺ − s⁻); the bpr model's default)",
    )
    g.add_argument(
        "--negatives",
        dest="num_negatives",
        type=int,
        default=d.num_negatives,
        help=f"training negatives per positive, resampled every epoch (default {d.num_negatives})",
    )
    g.add_argument(
        "--init-std",
        type=float,
        default=d.init_std,
        help=f"std of the N(0, std) embedding init (default {d.init_std})",
    )
    g.add_argument(
        "--step",
        default=d.step,
        choices=["auto", "analytic", "autograd"],
        help="training step: auto = analytic gradients for mf/gmf (exact, faster)",
    )
    b = parser.add_argument_group("baselines (pop, itemknn, ease, ials)")
    b.add_argument("--l2", type=float, help="EASE λ (default 500) or iALS λ (default 0.002)")
    b.add_argument(
        "--unobserved-weight",
        type=float,
        help=f"iALS weight α₀ of every unobserved pair (default {d.unobserved_weight})",
    )
    b.add_argument(
        "--neighbours", type=int, help=f"item-kNN neighbours per item (default {d.neighbours})"
    )
    b.add_argument("--shrink", type=float, help="item-kNN similarity shrinkage (default 0)")
    b.add_argument(
        "--solver",
        choices=["exact", "cg"],
        help="iALS: exact batched solves (default) or conjugate gradient steps (faster)",
    )
    b.add_argument("--cg-steps", type=int, help="iALS conjugate-gradient steps per sweep (3)")
    g.add_argument("--seed", type=int, default=d.seed, help=f"default {d.seed}")
    g.add_argument("--device", default=d.device, help="auto (CUDA when available), cpu, cuda[:N]")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    e = parser.add_argument_group("evaluation")
    e.add_argument("-k", "--k", dest="k", type=int, default=d.k, help=f"cut-off (default {d.k})")
    e.add_argument(
        "--eval-negatives",
        type=int,
        default=d.eval_negatives,
        help=f"sampled candidates per held-out item (default {d.eval_negatives})",
    )
    e.add_argument(
        "--no-validation",
        dest="validation",
        action="store_false",
        help="no validation holdout (the seed's training set exactly)",
    )
    e.add_argument(
        "--select",
        dest="select_by",
        default=d.select_by,
        choices=["auto", "validation", "test"],
        help="holdout that selects the best epoch (auto: validation when present)",
    )
    e.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help="stop after this many epochs without improvement (0 = never)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(
        **{f.name: None for f in dataclasses.fields(TrainConfig) if f.name != "model"}
    )


def build_parser() -> argparse.ArgumentParser:
    from torchcf import __version__
    from torchcf.config import FAST_DEFAULTS
    from torchcf.registry import TRAINABLE

    parser = _Parser(prog="torchcf", description="Collaborative filtering from implicit feedback.")
    parser.add_argument("--version", action="version", version=f"torchcf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = sub.add_parser(
        "train",
        help="split, train, evaluate and save a model",
        description="Load data, split leave-one-out, train, evaluate every "
        "epoch and save the run directory.",
    )
    train.add_argument("--model", default="gmf", choices=sorted(TRAINABLE), help="default gmf")
    _add_data_flags(train)
    _add_train_flags(train)
    train.add_argument(
        "--fast",
        action="store_true",
        help="mf/gmf: the fast recipe, "
        + "; ".join(
            f"{m}: " + ", ".join(f"{k}={v}" for k, v in values.items())
            for m, values in FAST_DEFAULTS.items()
        )
        + " (flags given explicitly win)",
    )
    p = train.add_argument_group("NeuMF pretraining")
    p.add_argument(
        "--pretrain",
        action="store_true",
        help="train (or reuse) a GMF and an MLP in OUT/pretrain and start NeuMF from them",
    )
    p.add_argument("--pretrain-gmf", metavar="RUN", help="start NeuMF from this GMF run directory")
    p.add_argument("--pretrain-mlp", metavar="RUN", help="start NeuMF from this MLP run directory")
    p.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="weight of the GMF head in the pretrained NeuMF head (default 0.5)",
    )
    o = train.add_argument_group("output")
    o.add_argument("--out", help="run directory (default runs/<model>-<timestamp>)")
    o.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its checkpoint"
    )
    o.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    compare = sub.add_parser(
        "compare",
        help="train every model on the same split; one report",
        description="Run several models on the same split and seed and "
        "write report.md, curves.png and results.json to --out.",
    )
    compare.add_argument(
        "--models",
        default="mf,gmf,mlp,neumf,neumf-pre",
        help="comma-separated: mf, gmf, mlp, neumf, neumf-pre (default all)",
    )
    _add_data_flags(compare)
    _add_train_flags(compare)
    compare.add_argument(
        "--alpha", type=float, default=0.5, help="neumf-pre head mix (default 0.5)"
    )
    compare.add_argument("--out", required=True, help="report directory (runs go in OUT/runs)")
    compare.add_argument("--rerun", action="store_true", help="retrain even finished runs")

    tune = sub.add_parser(
        "tune",
        help="hyperparameter search (Optuna) scored on the validation holdout",
        description="Search a model's hyperparameters with Optuna, scoring each trial on the "
        "validation holdout only; resumable (OUT/study.db); writes OUT/trials.csv and "
        "OUT/best_config.json. Flags given explicitly are held fixed.",
    )
    tune.add_argument("--model", required=True, choices=sorted(TRAINABLE))
    _add_data_flags(tune)
    _add_train_flags(tune)
    tune.add_argument("--trials", type=int, default=20, help="finished trials wanted (default 20)")
    tune.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    tune.add_argument("--metric", default="ndcg", choices=["ndcg", "hr"], help="default ndcg")
    tune.add_argument("--out", required=True, help="study directory")

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

    ev = sub.add_parser(
        "evaluate",
        help="evaluate a saved run: sampled and/or full-ranking metrics",
        description="Rebuild a run's split from its recorded data and seed and evaluate its "
        "model: sampled candidates (the NCF protocol) and/or full ranking over all unseen items.",
    )
    ev.add_argument("run", metavar="RUN_DIR", help="a run directory written by train")
    ev.add_argument("--protocol", default="both", choices=["sampled", "full", "both"])
    ev.add_argument("--json", action="store_true", help="machine-readable output")

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
    _add_output_flags(rec)

    similar = sub.add_parser(
        "similar",
        help="items most similar to an item",
        description="Items nearest to an item by cosine similarity of the item embeddings.",
    )
    similar.add_argument("run", metavar="RUN_DIR", help="a run directory (or its model/)")
    similar.add_argument("--item", metavar="ID", required=True, help="an item id")
    similar.add_argument("-k", "--k", type=int, default=10, help="list length (default 10)")
    _add_output_flags(similar)

    srv = sub.add_parser(
        "serve",
        help="HTTP service: /recommend, /similar, /model, /health, /docs",
        description="Serve a trained model over HTTP (FastAPI + uvicorn).",
    )
    srv.add_argument("run", metavar="RUN_DIR", help="a run directory (or its model/)")
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
    srv.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    return parser


def _add_output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--titles",
        metavar="FILE",
        help="movies.dat or u.item for titles (default: the one the model was trained beside)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _setup_torch(args: argparse.Namespace) -> None:
    import torch

    if args.threads < 0:
        raise TorchcfError("--threads must be non-negative")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # Adam's moments of rarely-seen rows decay into denormals


def _spec(args: argparse.Namespace) -> DataSpec:
    from torchcf.experiment import DataSpec

    return DataSpec(
        dataset=args.dataset,
        path=args.data,
        data_dir=args.data_dir,
        user_col=args.user_col,
        item_col=args.item_col,
        rating_col=args.rating_col,
        time_col=args.time_col,
        sep=args.sep,
        min_rating=args.min_rating,
        min_user_interactions=args.min_user_interactions,
        download=not args.no_download,
    )


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    """The TrainConfig fields the user set on the command line."""
    import dataclasses

    from torchcf.config import TrainConfig

    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "model"]
    return {name: getattr(args, name) for name in fields if getattr(args, name) is not None}


def _config(args: argparse.Namespace, model: str, finetune: bool = False) -> TrainConfig:
    """The training config of the flags on top of the model's recipe."""
    from torchcf.config import recipe

    return recipe(model, _overrides(args), finetune=finetune, fast=getattr(args, "fast", False))


def _train(args: argparse.Namespace) -> int:
    from torchcf.experiment import (
        PRETRAIN_DIR,
        Pretrained,
        ensure_run,
        pretrain_config,
        run_training,
    )

    _setup_torch(args)
    spec = _spec(args)
    wants_pretrain = bool(args.pretrain or args.pretrain_gmf or args.pretrain_mlp)
    if wants_pretrain and args.model != "neumf":
        raise TorchcfError(f"--pretrain initialises neumf, not {args.model}")
    config = _config(args, args.model, finetune=wants_pretrain)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or os.path.join("runs", f"{config.model}-{stamp}"))
    progress = not args.no_progress
    pretrained = None
    if wants_pretrain:
        parts = {"gmf": args.pretrain_gmf, "mlp": args.pretrain_mlp}
        for part, given in parts.items():
            if given is None:
                if not args.pretrain:
                    raise TorchcfError(f"--pretrain-{part} RUN (or --pretrain) is needed too")
                part_dir = out / PRETRAIN_DIR / part
                print(f"== pretraining {part} in {part_dir}")
                ensure_run(
                    spec, pretrain_config(part, _overrides(args)), part_dir, progress=progress
                )
                parts[part] = str(part_dir)
        pretrained = Pretrained(parts["gmf"], parts["mlp"], args.alpha)
        print(f"== neumf from {parts['gmf']} and {parts['mlp']}")
    run_training(
        spec,
        config,
        out,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=progress,
        command=["torchcf", *sys.argv[1:]],
        pretrained=pretrained,
    )
    return 0


def _compare(args: argparse.Namespace) -> int:
    from torchcf.compare import run_compare

    _setup_torch(args)
    report = run_compare(
        _spec(args),
        _overrides(args),
        [m.strip() for m in args.models.split(",") if m.strip()],
        args.out,
        rerun=args.rerun,
        progress=not args.no_progress,
        command=["torchcf", *sys.argv[1:]],
        alpha=args.alpha,
    )
    return 1 if report["failed"] else 0


def _id_list(text: str, flag: str) -> list[str]:
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if not ids:
        raise TorchcfError(f"{flag} needs at least one id")
    return ids


def _print_rows(header: dict[str, object], rows: list[dict[str, object]], as_json: bool) -> None:
    import json

    if as_json:
        print(json.dumps({**header, "items": rows}))
        return
    shown = "  ".join(f"{key} {value}" for key, value in header.items() if value is not None)
    print(shown or "new user (fold-in from the given items)")
    titled = any(row["title"] is not None for row in rows)
    width = max([len(str(row["item"])) for row in rows] + [4])
    print(f"{'rank':>4}  {'item':>{width}}  {'score':>8}" + ("  title" if titled else ""))
    for rank, row in enumerate(rows, start=1):
        line = f"{rank:>4}  {row['item']!s:>{width}}  {row['score']:>8.4f}"
        print(line + (f"  {row['title'] or ''}" if titled else ""))


def _flag_of(dest: str) -> str:
    """The command-line flag that sets TrainConfig field ``dest`` (``learning_rate``: ``--lr``)."""
    parser = argparse.ArgumentParser()
    _add_train_flags(parser)
    flags = {a.dest: max(a.option_strings, key=len) for a in parser._actions if a.option_strings}
    return flags[dest]


def _tune(args: argparse.Namespace) -> int:
    from torchcf.tune import run_tune

    _setup_torch(args)
    summary = run_tune(
        _spec(args),
        args.model,
        _overrides(args),
        args.trials,
        args.out,
        metric=args.metric,
        timeout=args.timeout,
        command=["torchcf", *sys.argv[1:]],
    )
    best = summary.get("best")
    if best is None:
        print("no trial finished")
        return 1
    flags = " ".join(
        f"{_flag_of(name)} {value:.4g}" if isinstance(value, float) else f"{_flag_of(name)} {value}"
        for name, value in best["params"].items()
    )
    print(
        f"best trial {best['trial']}: validation {args.metric.upper()} {best['value']:.4f} "
        f"(epoch {best['epoch']}); wrote {Path(args.out) / 'best_config.json'}"
    )
    print(f"train it: torchcf train --model {args.model} {flags} (plus your data flags)")
    return 0


def _blend(args: argparse.Namespace) -> int:
    from torchcf.blend import blend_runs

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
        command=["torchcf", *sys.argv[1:]],
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from torchcf.experiment import evaluate_run

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
        ks = full["protocol"]["ks"]
        names = ("hr", "recall", "ndcg", "mrr", "precision", "coverage")
        print("   k  " + "  ".join(f"{n:>9}" for n in names))
        for k in ks:
            print(f"{k:>4}  " + "  ".join(f"{full[f'{n}@{k}']:>9.4f}" for n in names))
    return 0


def _recommend(args: argparse.Namespace) -> int:
    from torchcf.recommend import Recommender

    rec = Recommender.load(args.run, unknown_user=args.unknown_user, titles=args.titles)
    filtered = _id_list(args.filter, "--filter") if args.filter else None
    if args.items is not None:
        ids, scores = rec.recommend_for_items(
            _id_list(args.items, "--items"),
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
    _print_rows(header, rec.rows(ids, scores), args.json)
    return 0


def _similar(args: argparse.Namespace) -> int:
    from torchcf.recommend import Recommender

    rec = Recommender.load(args.run, titles=args.titles)
    ids, scores = rec.similar_items(args.item, k=args.k)
    _print_rows({"item": rec.item_map.canonical(args.item)}, rec.rows(ids, scores), args.json)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import torch

    from torchcf.recommend import Recommender
    from torchcf.serve import serve

    if args.threads < 1 or args.max_k < 1 or not 0 < args.port < 65536:
        raise TorchcfError("--threads and --max-k must be positive, --port in 1–65535")
    torch.set_num_threads(args.threads)
    rec = Recommender.load(args.run, unknown_user=args.unknown_user, titles=args.titles)
    print(f"serving {rec.name} from {args.run} on http://{args.host}:{args.port} (docs: /docs)")
    serve(rec, host=args.host, port=args.port, log_level=args.log_level, max_k=args.max_k)
    return 0


def _tame_malloc() -> None:
    """Fix glibc's malloc thresholds for this process (Linux only; a no-op elsewhere).

    With its default *dynamic* mmap threshold, glibc serves the tower models' ~100 KB–100 MB
    temporaries from a heap it then cannot trim: full-ranking evaluation of an MLP/NeuMF on
    ML-1M grew to 4–15 GB RSS (480 MB with fixed thresholds; benchmarks/RESULTS.md).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not sys.platform.startswith("linux") or name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 1 << 20)
        libc.mallopt(m_trim_threshold, 1 << 26)
    except (OSError, AttributeError):  # not glibc
        return


def main(argv: Sequence[str] | None = None) -> int:
    _tame_malloc()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "compare":
            return _compare(args)
        commands = {
            "tune": _tune,
            "blend": _blend,
            "evaluate": _evaluate,
            "recommend": _recommend,
            "similar": _similar,
            "serve": _serve,
        }
        if args.command in commands:
            return commands[args.command](args)
        parser.error(f"unknown command {args.command}")
    except TorchcfError as exc:
        print(f"torchcf: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("torchcf: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # unwritable output directory, full disk, ...
        where = f": {exc.filename}" if exc.filename else ""
        print(f"torchcf: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
