"""``torchcf train``: split, train, evaluate and save one model (NeuMF from its pretrained parts
with ``--pretrain``)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from torchcf.cli.common import command_line, setup_torch
from torchcf.cli.flags import add_run_flags, add_seed_flags, data_spec, overrides
from torchcf.errors import TorchcfError
from torchcf.models.registry import TRAINABLE

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    train = sub.add_parser(
        "train",
        help="split, train, evaluate and save a model",
        description="Load data, split leave-one-out, train, evaluate every "
        "epoch and save the run directory.",
    )
    train.add_argument("--model", default="gmf", choices=sorted(TRAINABLE), help="default gmf")
    add_run_flags(train)
    train.add_argument(
        "--fast",
        action="store_true",
        help=f"the model's fast recipe ({', '.join(_fast())}; with --pretrain, the parts' and "
        "fine-tuning's): large batches, tuned Adam, a cosine schedule, chosen on the validation "
        "holdout; flags given explicitly win, and the run's config.json records what ran",
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
    add_seed_flags(train)
    d = train.add_argument_group(
        "several processes (torch.distributed; torchrun -m torchcf train ... works too)"
    )
    d.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train on N processes of this machine (started through torch.distributed.run); "
        "--batch-size is the global batch, each process trains on its 1/N",
    )
    d.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "gloo", "nccl"),
        help="process group backend (auto: NCCL on CUDA, else gloo)",
    )
    d.add_argument(
        "--dist-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="a rank that waits this long for the others (one died or hangs) stops with an error",
    )


def _fast() -> list[str]:
    """The models (and neumf-pre) with a fast recipe."""
    from torchcf.runs.train import recipe_names

    keys = [*TRAINABLE, "neumf-pre"]
    return [k for k in keys if any(n.startswith("fast") for n in recipe_names(k, fast=True))]


def _launch(args: argparse.Namespace) -> int:
    """``--nproc N``: this command again on N processes, through torchrun's own launcher."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    argv, skip = [], False
    for arg in sys.argv[1:]:  # the command without --nproc (torchrun's parser would take it)
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            argv.append(arg)
    try:
        torchrun.main(["--standalone", f"--nproc-per-node={args.nproc}", "-m", "torchcf", *argv])
    except ChildFailedError as exc:
        failures = "; ".join(
            f"rank {rank}: exit {failure.exitcode}" for rank, failure in exc.failures.items()
        )
        raise TorchcfError(
            f"the distributed run failed ({failures}); see the ranks' errors above"
        ) from None
    return 0


def run(args: argparse.Namespace) -> int:
    from torchcf import distributed

    setup_torch(args)
    if not 1 <= args.nproc <= 1024:
        raise TorchcfError(f"--nproc must be in [1, 1024], got {args.nproc}")
    if args.nproc > 1 and distributed.launched():
        raise TorchcfError("--nproc starts the processes itself: not under torchrun")
    if not args.dist_timeout > 0 or args.dist_timeout > 1e6:
        raise TorchcfError(f"--dist-timeout must be in (0, 1e6] seconds, got {args.dist_timeout}")
    if args.nproc > 1:
        if args.seeds is not None or args.split_seeds:
            raise TorchcfError("--nproc trains one run: not with --seeds")
        overrides(args)  # every option checked before the processes start
        from torchcf.models.registry import get_spec
        from torchcf.training.trainer import single_process

        why = single_process(get_spec(args.model).model)
        if why:
            raise TorchcfError(why)
        return _launch(args)
    try:
        distributed.setup(args.backend, args.dist_timeout, args.device or "auto")
        return _run(args)
    finally:
        distributed.teardown()


def _restarted(out: Path) -> bool:
    """Did torchrun restart this job (``--max-restarts``) with a checkpoint to go on from? Then
    it resumes by itself (with ``--out``: a default directory is new at every start)."""
    from torchcf.runs.rundir import RunDir

    try:
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return False
    return restarts > 0 and RunDir(out).checkpoint.is_file()


def _run(args: argparse.Namespace) -> int:
    from torchcf import distributed
    from torchcf.runs.train import pretrained_parts, recipe_names, run_training
    from torchcf.training.config import recipe

    spec = data_spec(args)
    given = overrides(args)
    parts = {"gmf": args.pretrain_gmf, "mlp": args.pretrain_mlp}
    wants_pretrain = bool(args.pretrain or any(parts.values()))
    if wants_pretrain and args.model != "neumf":
        raise TorchcfError(f"--pretrain initialises neumf, not {args.model}")
    stamp = distributed.same(distributed.current(), time.strftime("%Y%m%d-%H%M%S"))
    out = Path(args.out or os.path.join("runs", f"{args.model}-{stamp}"))
    if args.seeds is not None or args.split_seeds:
        return _seeds(args, spec, given, out, wants_pretrain)
    options = {
        "resume": args.resume or _restarted(out),
        "overwrite": args.overwrite,
        "progress": not args.no_progress,
        "command": command_line(),
    }
    key = "neumf-pre" if wants_pretrain else args.model
    names = recipe_names(key, args.fast)
    if args.fast and not any(name.startswith("fast") for name in names):
        raise TorchcfError(
            f"--fast: {key} has no fast recipe (those with one: {', '.join(_fast())})"
        )
    config = recipe(args.model, given, recipes=names)
    pretrained = None
    if wants_pretrain:  # every option is checked above, before the parts are trained
        missing = [part for part, run in parts.items() if run is None]
        if missing and not args.pretrain:
            raise TorchcfError(f"--pretrain-{missing[0]} RUN (or --pretrain) is needed too")
        pretrained = pretrained_parts(
            spec,
            given,
            out,
            alpha=args.alpha,
            parts=parts,
            fast=args.fast,
            progress=options["progress"],
        )
    run_training(spec, config, out, pretrained=pretrained, **options)
    return 0


def _seeds(
    args: argparse.Namespace, spec: Any, given: dict[str, Any], out: Path, pretrain: bool
) -> int:
    """``train --seeds``: the model once per seed in OUT/runs/seed-N, and a compare-style
    report of the spread over seeds in OUT (report.md, results.json, curves.png)."""
    from torchcf.runs.compare import parse_seeds, run_compare

    if args.seeds is None:
        raise TorchcfError("--split-seeds varies the split over --seeds: give --seeds too")
    if args.resume or args.pretrain_gmf or args.pretrain_mlp:
        raise TorchcfError(
            "--seeds trains (or reuses) one run per seed: not with --resume, --pretrain-gmf or "
            "--pretrain-mlp (--pretrain trains the parts per seed)"
        )
    report = run_compare(
        spec,
        given,
        ["neumf-pre" if pretrain else args.model],
        out,
        seeds=parse_seeds(args.seeds),
        split_seeds=args.split_seeds,
        fast=args.fast,
        rerun=args.overwrite,
        progress=not args.no_progress,
        command=command_line(),
        alpha=args.alpha,
    )
    return 1 if report["failed"] else 0
