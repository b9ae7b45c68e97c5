"""One epoch of the seed write-up's pipeline next to one torchcf epoch, same data, same process.

The seed-style reference is written here to mirror the write-up's code: negatives drawn in a
Python loop (4 per positive, re-drawn while the pair is a training positive), a per-sample
``Dataset`` and ``DataLoader(batch_size=256, shuffle=True)``, the model returning sigmoid
probabilities with ``nn.BCELoss``, default ``torch.optim.Adam``, and a per-user evaluation loop.

    python benchmarks/epoch_speed.py --data ../shared/data/ml-1m/ncf [--models gmf,mf]

Prints seconds per epoch (training, evaluation, negatives), samples/s, and the ratio.
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from torchcf.config import TrainConfig
from torchcf.data.loaders import find_ncf_files, load_ncf_files
from torchcf.registry import build_model
from torchcf.split import ncf_split
from torchcf.training import Trainer


# --- the seed-style reference ------------------------------------------------------------------
class SeedGMF(nn.Module):
    def __init__(
        self, num_users: int, num_items: int, factors: int = 32, head: bool = True
    ) -> None:
        super().__init__()
        self.user = nn.Embedding(num_users, factors)
        self.item = nn.Embedding(num_items, factors)
        nn.init.normal_(self.user.weight, std=0.01)
        nn.init.normal_(self.item.weight, std=0.01)
        self.head = nn.Linear(factors, 1) if head else None

    def forward(self, user, item):
        x = self.user(user) * self.item(item)
        logits = self.head(x).squeeze(-1) if self.head is not None else x.sum(-1)
        return torch.sigmoid(logits)


class SeedDataset(Dataset):
    def __init__(self, users, items, labels):
        self.users, self.items, self.labels = users, items, labels

    def __len__(self):
        return len(self.users)

    def __getitem__(self, idx):
        return self.users[idx], self.items[idx], self.labels[idx]


def seed_negatives(train_users, train_items, num_items, num_neg=4):
    positives = set(zip(train_users.tolist(), train_items.tolist(), strict=True))
    users, items, labels = [], [], []
    for u, i in zip(train_users.tolist(), train_items.tolist(), strict=True):
        users.append(u)
        items.append(i)
        labels.append(1.0)
        for _ in range(num_neg):
            j = random.randint(0, num_items - 1)
            while (u, j) in positives:
                j = random.randint(0, num_items - 1)
            users.append(u)
            items.append(j)
            labels.append(0.0)
    return users, items, labels


def seed_evaluate(model, test_users, test_items, test_negatives, k=10):
    hits, ndcgs = [], []
    model.eval()
    with torch.no_grad():
        for u, i, negs in zip(test_users, test_items, test_negatives, strict=True):
            items = [i, *negs]
            scores = model(torch.full((len(items),), int(u)), torch.tensor(items))
            _, top = torch.topk(scores, k)
            ranked = [items[t] for t in top.tolist()]
            hits.append(1.0 if i in ranked else 0.0)
            ndcgs.append(math.log(2) / math.log(ranked.index(i) + 2) if i in ranked else 0.0)
    model.train()
    return float(np.mean(hits)), float(np.mean(ndcgs))


def seed_epoch(split, model_name: str, fraction: float) -> dict[str, float]:
    train = split.train
    t0 = time.perf_counter()
    users, items, labels = seed_negatives(train.users, train.items, train.num_items)
    t1 = time.perf_counter()
    loader = DataLoader(SeedDataset(users, items, labels), batch_size=256, shuffle=True)
    model = SeedGMF(train.num_users, train.num_items, head=model_name == "gmf")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    criterion = nn.BCELoss()
    steps = math.ceil(len(loader) * fraction)
    for n, (u, i, y) in enumerate(loader):
        if n >= steps:
            break
        optimizer.zero_grad()
        loss = criterion(model(u, i), y.float())
        loss.backward()
        optimizer.step()
    t2 = time.perf_counter()
    test = split.test
    negs = [row[row >= 0].tolist() for row in test.negatives]
    hr, nd = seed_evaluate(model, test.users.tolist(), test.items.tolist(), negs)
    t3 = time.perf_counter()
    train_s = (t2 - t1) / fraction
    return {
        "negatives_s": t1 - t0,
        "train_s": train_s,
        "eval_s": t3 - t2,
        "epoch_s": (t1 - t0) + train_s + (t3 - t2),
        "samples": len(users),
        "hr": hr,
    }


def torchcf_epoch(split, model_name: str) -> dict[str, float]:
    config = TrainConfig(model=model_name, epochs=1)
    model = build_model(model_name, split.num_users, split.num_items, seed=0)
    trainer = Trainer(model, split, config)
    t0 = time.perf_counter()
    samples = trainer.epoch_samples(1)
    t1 = time.perf_counter()
    trainer.train_epoch(1)  # draws its own samples again: the whole epoch is timed below
    t2 = time.perf_counter()
    metrics = trainer.evaluate()
    t3 = time.perf_counter()
    return {
        "negatives_s": t1 - t0,
        "train_s": t2 - t1,
        "eval_s": t3 - t2,
        "epoch_s": (t2 - t1) + (t3 - t2),
        "samples": len(samples[0]),
        "hr": metrics["test"][0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an NCF split directory (ml-1m/ncf)")
    parser.add_argument("--models", default="gmf,mf")
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="epochs of each pipeline, alternating; the fastest of each is compared (noisy box)",
    )
    parser.add_argument(
        "--reference-fraction",
        type=float,
        default=1.0,
        help="train the reference on this share of its epoch and extrapolate (1 = whole epoch)",
    )
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    split = ncf_split(load_ncf_files(find_ncf_files(args.data)), validation=False)
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}; data: {len(split.train)} training positives, "
        f"{len(split.test)} test users"
    )
    random.seed(0)
    header = (
        f"{'model':<6} {'pipeline':<12} {'negatives':>9} {'train':>8} {'eval':>7} {'epoch':>8} "
        f"{'samples/s':>11}  HR@10"
    )
    print(header)
    for name in args.models.split(","):
        refs, ourss = [], []
        for _ in range(args.repeats):  # alternate, so both see the same machine load
            refs.append(seed_epoch(split, name, args.reference_fraction))
            ourss.append(torchcf_epoch(split, name))
        ref = min(refs, key=lambda r: r["epoch_s"])
        ours = min(ourss, key=lambda r: r["epoch_s"])
        all_ref = ", ".join(f"{r['epoch_s']:.2f}" for r in refs)
        all_ours = ", ".join(f"{r['epoch_s']:.2f}" for r in ourss)
        print(f"{name:<6} all epochs (s): seed-style {all_ref}; torchcf {all_ours}")
        for label, r in (("seed-style", ref), ("torchcf", ours)):
            print(
                f"{name:<6} {label:<12} {r['negatives_s']:>8.2f}s {r['train_s']:>7.2f}s "
                f"{r['eval_s']:>6.2f}s {r['epoch_s']:>7.2f}s "
                f"{r['samples'] / r['train_s']:>11,.0f}  {r['hr']:.4f}"
            )
        print(
            f"{name:<6} ratio of the fastest epochs (negatives + training + evaluation): "
            f"{ref['epoch_s'] / ours['epoch_s']:.1f}x"
        )


if __name__ == "__main__":
    main()
