"""torchcf at ML-20M's scale on a CPU: a synthetic data set shaped like ML-20M, one GMF epoch at
the fast mode's batch size, and full-ranking evaluation over every user, with time and memory.

The data (``torchcf.data.synthetic.powerlaw_interactions`` with ``ML20M_SHAPE``: 138,493 users,
26,744 items, ~20 M positives, power-law popularity and activity) is split leave-one-out (the
latest item per user for test, 99 sampled negatives). The epoch (~100 M samples with 4 negatives)
is drawn in parts of at most 2^24 samples; full ranking scores users in chunks of ~2^24 floats.

    python benchmarks/scale.py [--users 138493 --items 26744 --interactions 20000263]

Prints each stage's seconds, the process's resident memory after it and its peak so far.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

from torchcf.data.split import leave_one_out
from torchcf.data.synthetic import ML20M_SHAPE, powerlaw_interactions
from torchcf.evaluation.metrics import hit_rate, ndcg
from torchcf.evaluation.protocols import evaluate_full, holdout_ranks
from torchcf.models.registry import build_model
from torchcf.training.config import recipe
from torchcf.training.trainer import Trainer


def _memory() -> str:
    """Resident memory now and the peak so far, in GB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    now = pages * resource.getpagesize() / 1e9
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB on Linux
    return f"RSS {now:.2f} GB, peak {peak:.2f} GB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=ML20M_SHAPE["num_users"])
    parser.add_argument("--items", type=int, default=ML20M_SHAPE["num_items"])
    parser.add_argument("--interactions", type=int, default=ML20M_SHAPE["num_interactions"])
    parser.add_argument("--model", default="gmf", choices=["gmf", "mf"])
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {_memory()}")

    t = time.perf_counter()
    data = powerlaw_interactions(args.users, args.items, args.interactions)
    print(
        f"generate   {time.perf_counter() - t:7.1f}s  {data.num_users:,} users, "
        f"{data.num_items:,} items, {len(data):,} interactions; {_memory()}"
    )
    t = time.perf_counter()
    split = leave_one_out(data, num_negatives=99, validation=False)
    del data
    print(
        f"split      {time.perf_counter() - t:7.1f}s  {len(split.train):,} training positives, "
        f"{len(split.test):,} test users; {_memory()}"
    )
    settings = {"epochs": 1, "validation": False, "prefetch": False}
    config = recipe(args.model, settings, recipes=("fast",)).train
    model = build_model(args.model, split.num_users, split.num_items, seed=0)
    trainer = Trainer(model, split, config)
    samples = len(split.train) * (1 + config.num_negatives)
    t = time.perf_counter()
    loss = trainer.train_epoch(1)
    seconds = time.perf_counter() - t
    print(
        f"epoch      {seconds:7.1f}s  {args.model}, batch {config.batch_size}, {samples:,} samples "
        f"in {trainer.sampler.parts()} parts, {samples / seconds:,.0f} samples/s, loss {loss:.4f}; "
        f"{_memory()}"
    )
    t = time.perf_counter()
    ranks = holdout_ranks(model, split.test)
    print(
        f"sampled    {time.perf_counter() - t:7.1f}s  HR@10 {hit_rate(ranks, 10):.4f} "
        f"NDCG@10 {ndcg(ranks, 10):.4f} (1 + 99 candidates); {_memory()}"
    )
    t = time.perf_counter()
    full = evaluate_full(model, split.test, split.known_items(), ks=(10,))
    print(
        f"full rank  {time.perf_counter() - t:7.1f}s  {full['users']:,} users x "
        f"{split.num_items:,} items: HR@10 {full['hr@10']:.4f} NDCG@10 {full['ndcg@10']:.4f}; "
        f"{_memory()}"
    )


if __name__ == "__main__":
    main()
