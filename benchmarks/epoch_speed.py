"""Epochs of the seed write-up's pipeline next to torchcf's modes, same data, same process.

The seed-style reference is written here to mirror the write-up's code: negatives drawn in a
Python loop (4 per positive, re-drawn while the pair is a training positive), a per-sample
``Dataset`` and ``DataLoader(batch_size=256, shuffle=True)``, the model returning sigmoid
probabilities with ``nn.BCELoss``, default ``torch.optim.Adam``, and a per-user evaluation loop;
MLP and NeuMF as the common public PyTorch NCF code writes them, in the same pipeline.

torchcf's exact mode is the seed's semantics (batch 256, dense Adam, 4 negatives); its fast mode
is ``torchcf train --fast`` (the models' ``fast`` recipes), also run whole (load, split, train,
evaluate) and compared with 20 seed-style epochs; where a fast recipe takes bfloat16 products
(``--amp``), its epoch in float is timed beside it.

    python benchmarks/epoch_speed.py --data ../shared/data/ml-1m/ncf [--models mf,gmf,mlp,neumf]

Prints seconds per epoch (negatives, training, evaluation), samples/s and the ratios.
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

from torchcf.data.loaders import find_ncf_files, load_ncf_files
from torchcf.data.split import ncf_split
from torchcf.models.registry import SPECS, build_model
from torchcf.training.config import Recipe, applicable, recipe
from torchcf.training.trainer import Trainer


# --- the seed-style reference ------------------------------------------------------------------
class SeedGMF(nn.Module):
    """The write-up's GMF / MF (MF: no head), returning sigmoid probabilities for BCELoss."""

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


class SeedNCF(nn.Module):
    """MLP and NeuMF as the common public PyTorch NCF code writes them (a GMF and an MLP branch
    of embeddings, Dropout/Linear/ReLU layers halving the width, one predict layer), returning
    sigmoid probabilities for BCELoss like the write-up's models."""

    def __init__(self, num_users, num_items, factors=32, layers=3, neumf=False) -> None:
        super().__init__()
        self.neumf = neumf
        width = factors * 2 ** (layers - 1)
        self.user_mlp = nn.Embedding(num_users, width)
        self.item_mlp = nn.Embedding(num_items, width)
        modules = []
        for level in range(layers):
            size = factors * 2 ** (layers - level)
            modules += [nn.Dropout(0.0), nn.Linear(size, size // 2), nn.ReLU()]
        self.mlp = nn.Sequential(*modules)
        if neumf:
            self.user_gmf = nn.Embedding(num_users, factors)
            self.item_gmf = nn.Embedding(num_items, factors)
        self.predict = nn.Linear(2 * factors if neumf else factors, 1)
        for embedding in self.modules():
            if isinstance(embedding, nn.Embedding):
                nn.init.normal_(embedding.weight, std=0.01)

    def forward(self, user, item):
        x = self.mlp(torch.cat([self.user_mlp(user), self.item_mlp(item)], dim=-1))
        if self.neumf:
            x = torch.cat([self.user_gmf(user) * self.item_gmf(item), x], dim=-1)
        return torch.sigmoid(self.predict(x).squeeze(-1))


def seed_model(name: str, num_users: int, num_items: int) -> nn.Module:
    if name in ("mf", "gmf"):
        return SeedGMF(num_users, num_items, head=name == "gmf")
    return SeedNCF(num_users, num_items, neumf=name == "neumf")


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
    model = seed_model(model_name, train.num_users, train.num_items)
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


def torchcf_epoch(split, config: Recipe) -> dict[str, float]:
    """One epoch (sampling, training, evaluation) of torchcf with ``config``, timed."""
    model = build_model(
        config.model, split.num_users, split.num_items, seed=0, config=config.model_config
    )
    trainer = Trainer(model, split, config.train.replace(epochs=1, prefetch=False))
    t0 = time.perf_counter()
    samples = len(trainer.sampler.draw(1)[3])
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
        "samples": samples,
        "hr": metrics["test"]["hr"],
    }


def fast_run(data: str, model_name: str) -> dict[str, float]:
    """The fast mode's whole run in this process: load, split, train, select, evaluate."""
    t0 = time.perf_counter()
    split = ncf_split(load_ncf_files(find_ncf_files(data)), validation=True)
    config = recipe(model_name, recipes=("fast",))
    model = build_model(
        model_name, split.num_users, split.num_items, seed=0, config=config.model_config
    )
    fit = Trainer(model, split, config.train).fit()
    return {
        "wall_s": time.perf_counter() - t0,
        "epochs": config.train.epochs,
        "selected": fit.selected.epoch,
        "hr": fit.selected.metrics["test"]["hr"],
        "ndcg": fit.selected.metrics["test"]["ndcg"],
    }


def _row(name: str, label: str, r: dict[str, float]) -> str:
    return (
        f"{name:<6} {label:<17} {r['negatives_s']:>8.2f}s {r['train_s']:>7.2f}s "
        f"{r['eval_s']:>6.2f}s {r['epoch_s']:>7.2f}s "
        f"{r['samples'] / r['train_s']:>11,.0f}  {r['hr']:.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an NCF split directory (ml-1m/ncf)")
    parser.add_argument("--models", default="mf,gmf,mlp,neumf")
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
        help="train the MF/GMF reference on this share of its epoch and extrapolate",
    )
    parser.add_argument(
        "--tower-fraction",
        type=float,
        default=0.2,
        help="the same for the MLP/NeuMF references (their epochs take minutes)",
    )
    parser.add_argument("--no-fast-run", action="store_true", help="skip the fast whole runs")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    split = ncf_split(load_ncf_files(find_ncf_files(args.data)), validation=False)
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}; data: {len(split.train)} training positives, "
        f"{len(split.test)} test users"
    )
    random.seed(0)
    print(
        f"{'model':<6} {'pipeline':<17} {'negatives':>9} {'train':>8} {'eval':>7} {'epoch':>8} "
        f"{'samples/s':>11}  HR@10"
    )
    seed_epochs = {}
    for name in args.models.split(","):
        tower = name in ("mlp", "neumf")
        fraction = args.tower_fraction if tower else args.reference_fraction
        # the seed's settings, no dropout
        exact = recipe(name, applicable(name, {"batch_size": 256, "dropout": 0.0}))
        refs, ours = [], []
        for repeat in range(args.repeats):  # alternate: both see the same load
            if repeat == 0 or not tower:  # a tower reference epoch takes minutes: once
                refs.append(seed_epoch(split, name, fraction))
            ours.append(torchcf_epoch(split, exact))
        ref = min(refs, key=lambda r: r["epoch_s"])
        mine = min(ours, key=lambda r: r["epoch_s"])
        seed_epochs[name] = ref["epoch_s"]
        all_ref = ", ".join(f"{r['epoch_s']:.2f}" for r in refs)
        all_ours = ", ".join(f"{r['epoch_s']:.2f}" for r in ours)
        print(f"{name:<6} all epochs (s): seed-style {all_ref}; torchcf exact {all_ours}")
        print(_row(name, "seed-style", ref))
        print(_row(name, "torchcf exact", mine))
        note = f" (reference extrapolated from {fraction:.0%} of its epoch)" if fraction < 1 else ""
        print(
            f"{name:<6} ratio, exact mode (batch 256, dense Adam): "
            f"{ref['epoch_s'] / mine['epoch_s']:.1f}x{note}"
        )
        if tower:  # the compiled kernel with lazy Adam: only the sampled rows move
            lazy = min(
                (torchcf_epoch(split, exact.replace(optimizer="lazy-adam")) for _ in ours),
                key=lambda r: r["epoch_s"],
            )
            print(_row(name, "torchcf lazy-adam", lazy))
            print(
                f"{name:<6} ratio, lazy Adam (batch 256): {ref['epoch_s'] / lazy['epoch_s']:.1f}x"
            )
        if "fast" in SPECS[name].recipes:
            fast_recipe = recipe(name, recipes=("fast",))
            fast = torchcf_epoch(split, fast_recipe)
            label = "torchcf fast" + (" (amp)" if fast_recipe.train.amp else "")
            print(_row(name, label, fast))
            print(f"{name:<6} ratio, fast mode epoch: {ref['epoch_s'] / fast['epoch_s']:.1f}x")
            if fast_recipe.train.amp:  # the same epoch in float, beside it
                exact_fast = torchcf_epoch(split, fast_recipe.replace(amp=False))
                print(_row(name, "torchcf fast float", exact_fast))
                print(
                    f"{name:<6} ratio, bfloat16 products / float: "
                    f"{exact_fast['epoch_s'] / fast['epoch_s']:.2f}x"
                )
    if args.no_fast_run:
        return
    for name in (m for m in args.models.split(",") if "fast" in SPECS[m].recipes):
        run = fast_run(args.data, name)
        reference = 20 * seed_epochs[name]
        print(
            f"{name:<6} fast run (load, split, {run['epochs']} epochs, evaluation): "
            f"{run['wall_s']:.1f}s, selected epoch {run['selected']}: test HR@10 {run['hr']:.4f} "
            f"NDCG@10 {run['ndcg']:.4f}; seed-style 20 epochs (20 x its epoch): "
            f"{reference:.0f}s -> {reference / run['wall_s']:.0f}x"
        )


if __name__ == "__main__":
    main()
