"""Recommendations at catalogue scale: 100,000 users × 1,000,000 items, a 64-factor MF, exact
against the faiss index (``--ann``).

Stages (each printed with its seconds and, for the CLI jobs, the child's peak memory):

1. data and model (skipped when ``OUT/model`` exists): power-law interactions
   (``torchcf.data.synthetic``), the latest item per user held out, and a 64-factor MF saved as
   a model directory. ``--vectors planted`` (default): the MF's vectors are drawn around 2,000
   cluster centres (items' norms spread like popularity), so users' lists differ as they do in
   a trained model of real data; ``--vectors trained``: MF trained on the synthetic pairs for
   ``--epochs`` epochs (the fast recipe) — those pairs have no structure beyond popularity, so
   the trained MF gives nearly everyone the same top items (76 distinct items in 2,000 users'
   top 10 after 3 epochs), which makes retrieval trivially easy;
2. ``torchcf index OUT/model``: the index, its build time and its recall as tuned;
3. ``torchcf recommend OUT/model --all-users --out exact.parquet`` and the same with ``--ann``:
   the whole job's wall time and peak memory, then recall@10 of the ANN lists against the exact
   ones over every user;
4. in process: ``Recommender.recommend(user)`` one user at a time for ``--lookups`` random users,
   exact and through the index, median and p99 latency and the ratio.

    .venv/bin/python benchmarks/catalogue_scale.py --out /tmp/catalogue

Run it alone: another torch process on the same two cores distorts every figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def child(command: list[str]) -> tuple[float, float]:
    """Run ``command``; its wall seconds and peak resident memory (GB). Exits on failure."""
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed with status {status}")
    return time.perf_counter() - start, usage.ru_maxrss / 1e6


def planted(model: torch.nn.Module, users: int, items: int, seed: int = 0) -> None:
    """Clustered user and item vectors (64 factors), item norms spread like popularity."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2000, 64)).astype(np.float32) / 8
    noise = 0.6 / 8
    user = centres[rng.integers(0, 2000, users)] + rng.normal(0, noise, (users, 64))
    item = centres[rng.integers(0, 2000, items)] + rng.normal(0, noise, (items, 64))
    item *= (rng.permutation(items) + 1.0)[:, None] ** -0.15  # a few items with larger norms
    with torch.no_grad():
        model.user_embedding.weight.copy_(torch.from_numpy(user.astype(np.float32)))
        model.item_embedding.weight.copy_(torch.from_numpy(item.astype(np.float32)))


def make_model(
    out: Path, users: int, items: int, interactions: int, epochs: int, vectors: str
) -> None:
    from torchcf.data.split import leave_one_out
    from torchcf.data.synthetic import powerlaw_interactions
    from torchcf.models.registry import build_model
    from torchcf.serving.persistence import save_model
    from torchcf.training.config import recipe
    from torchcf.training.trainer import Trainer

    start = time.perf_counter()
    data = powerlaw_interactions(users, items, interactions, min_per_user=20)
    split = leave_one_out(data, num_negatives=99, validation=False)
    print(
        f"data     {time.perf_counter() - start:7.1f}s  {users:,} users, {items:,} items, "
        f"{len(split.train):,} training pairs"
    )
    model = build_model("mf", split.num_users, split.num_items, seed=0, embedding_dim=64)
    if vectors == "planted":
        planted(model, split.num_users, split.num_items)
        epochs = 0
    settings = {"epochs": max(epochs, 1), "validation": False, "embedding_dim": 64}
    trainer = Trainer(model, split, recipe("mf", settings, recipes=("fast",)).train)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        loss = trainer.train_epoch(epoch)
        print(f"epoch {epoch}  {time.perf_counter() - start:7.1f}s  loss {loss:.4f}")
    save_model(out / "model", model, split.train, metadata={"source": {"synthetic": vectors}})


def recall(exact: Path, approx: Path, k: int) -> tuple[float, int]:
    """Mean share of each user's exact top-k that the ANN list has, over every user."""
    want = pd.read_parquet(exact, columns=["user", "item"])
    got = pd.read_parquet(approx, columns=["user", "item"])
    hits = want.merge(got, on=["user", "item"]).groupby("user").size()
    sizes = want.groupby("user").size()
    return float((hits.reindex(sizes.index, fill_value=0) / sizes).mean()), len(sizes)


def lookups(model: Path, count: int, k: int) -> None:
    from torchcf.serving.recommender import Recommender

    exact, approx = Recommender.load(model), Recommender.load(model, ann=True)
    users = np.random.default_rng(1).choice(exact.user_map.ids, size=count, replace=False)
    times = {}
    for name, rec in (("exact", exact), ("ann", approx)):
        rec.recommend(users[0], k=k)  # (warm)
        ms = []
        for user in users:
            start = time.perf_counter()
            rec.recommend(user, k=k)
            ms.append((time.perf_counter() - start) * 1e3)
        times[name] = np.array(ms)
        print(
            f"lookup {name:5s}  {count:,} users one at a time: median {np.median(ms):.2f} ms, "
            f"p99 {np.percentile(ms, 99):.2f} ms, mean {np.mean(ms):.2f} ms"
        )
    ratio = np.median(times["exact"]) / np.median(times["ann"])
    mean = times["exact"].mean() / times["ann"].mean()
    print(f"lookup ratio  exact / ann: {ratio:.1f}x (median), {mean:.1f}x (mean)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--interactions", type=int, default=3_000_000)
    parser.add_argument("--epochs", type=int, default=3, help="with --vectors trained")
    parser.add_argument("--vectors", choices=["planted", "trained"], default="planted")
    parser.add_argument("--lookups", type=int, default=1000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument(
        "--reuse-exact", action="store_true", help="keep OUT/exact.parquet from an earlier run"
    )
    args = parser.parse_args()
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    model = args.out / "model"
    if not (model / "config.json").exists():
        make_model(args.out, args.users, args.items, args.interactions, args.epochs, args.vectors)
    torchcf = [sys.executable, "-m", "torchcf"]
    seconds, peak = child([*torchcf, "index", str(model)])
    print(f"index    {seconds:7.1f}s  peak {peak:.2f} GB (torchcf index, whole command)")
    for name, extra in (("exact", []), ("ann", ["--ann"])):
        table = args.out / f"{name}.parquet"
        if name == "exact" and args.reuse_exact and table.exists():
            print(f"all-users exact: {table} kept from an earlier run (same model)")
            continue
        command = [*torchcf, "recommend", str(model), "--all-users", "--out", str(table)]
        seconds, peak = child([*command, "-k", str(args.k), "--overwrite", *extra])
        print(f"all-users {name:5s} {seconds:7.1f}s  peak {peak:.2f} GB (whole command)")
    share, users = recall(args.out / "exact.parquet", args.out / "ann.parquet", args.k)
    print(f"recall@{args.k} of --ann against exact: {share:.4f} over {users:,} users")
    lookups(model, args.lookups, args.k)


if __name__ == "__main__":
    main()
