"""A LightGCN epoch the reference code's way beside torchcf's, same settings, one process.

The reference-style epoch is the LightGCN code's algorithm written here: the normalised graph as
a coalesced ``torch.sparse`` COO tensor, the whole graph propagated for every batch (K layers,
the mean of the layers), BPR on the batch with the L2 penalty on its E⁰ rows, autograd, dense
``torch.optim.Adam``. torchcf's epoch is ``Trainer.train_epoch`` of ``lightgcn`` with the same
settings (64 factors, 3 layers, batch 2,048, Adam 1e-3, decay 1e-4): the same mathematics, its
graph products through the compiled CSR kernel. Both train on the same epoch of samples (every
training pair once with one fresh negative, torchcf's sampler).

    python benchmarks/lightgcn_speed.py --data ../shared/data/lightgcn/gowalla

``--steps N`` times the first N batches of each and scales to the epoch (the per-step cost
is flat); without it, whole epochs.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from torchcf import native
from torchcf.cli.main import _tame_malloc
from torchcf.data.sources import DataSpec, load_split
from torchcf.data.split import SplitConfig
from torchcf.models.lightgcn import normalised_graph
from torchcf.models.registry import build_model
from torchcf.training.config import recipe
from torchcf.training.epochs import EpochSampler
from torchcf.training.trainer import Trainer


def reference_epoch(split, batches, dim: int, layers: int, decay: float) -> float:
    """Seconds for the batches, the reference's way."""
    users, items = split.num_users, split.num_items
    graph = normalised_graph(split.train.deduplicate().csr)
    indptr, indices, values = graph.forward
    rows = torch.repeat_interleave(torch.arange(len(indptr) - 1), indptr.diff())
    adjacency = torch.sparse_coo_tensor(
        torch.stack([rows, indices]), values, (users + items, users + items),
        check_invariants=False,
    ).coalesce()  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    user_table = torch.nn.Parameter(torch.randn(users, dim, generator=gen) * 0.1)
    item_table = torch.nn.Parameter(torch.randn(items, dim, generator=gen) * 0.1)
    optimizer = torch.optim.Adam([user_table, item_table], lr=1e-3)
    start = time.perf_counter()
    for u, pos, neg in batches:
        all_emb = torch.cat([user_table, item_table])
        layer, embs = all_emb, [all_emb]
        for _ in range(layers):
            layer = torch.sparse.mm(adjacency, layer)
            embs.append(layer)
        out = torch.stack(embs, dim=1).mean(dim=1)
        eu, ep, en = out[u], out[users + pos], out[users + neg]
        loss = F.softplus((eu * en).sum(1) - (eu * ep).sum(1)).mean()
        reg = (user_table[u].norm(2).pow(2) + item_table[pos].norm(2).pow(2)
               + item_table[neg].norm(2).pow(2)) / 2 / len(u)  # fmt: skip
        optimizer.zero_grad()
        (loss + decay * reg).backward()
        optimizer.step()
    return time.perf_counter() - start


def torchcf_epoch(split, steps: int | None) -> tuple[float, int]:
    """Seconds of torchcf's epoch (or its first ``steps`` batches) and the batches it ran."""
    config = recipe("lightgcn", {"epochs": 1})
    model = build_model("lightgcn", split.num_users, split.num_items, seed=0,
                        config=config.model_config)  # fmt: skip
    trainer = Trainer(model, split, config.train)
    if steps is not None:  # the first ``steps`` batches only
        trainer.sampler.pos_users = trainer.sampler.pos_users[: steps * config.train.batch_size]
        trainer.sampler.pos_items = trainer.sampler.pos_items[: steps * config.train.batch_size]
    start = time.perf_counter()
    trainer.train_epoch(1)
    trainer.sampler.close()
    seconds = time.perf_counter() - start
    return seconds, -(-len(trainer.sampler.pos_users) // config.train.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a published split (LightGCN's format)")
    parser.add_argument("--steps", type=int, help="time this many batches of each and scale")
    args = parser.parse_args()
    _tame_malloc()
    split, _ = load_split(DataSpec(path=args.data), SplitConfig(mask="train"), progress=False)
    batch, total = 2048, len(split.train.deduplicate())
    epoch_steps = -(-total // batch)
    sampler = EpochSampler(split.train, 1, 0, torch.device("cpu"), pairs=True)
    users, items, _, order = sampler.draw(1)
    users, items = users[order, 0], items[order]
    steps = args.steps or epoch_steps
    batches = [
        (users[s : s + batch], items[s : s + batch, 0], items[s : s + batch, 1])
        for s in range(0, min(len(users), steps * batch), batch)
    ]
    kernel = native.load() is not None
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads); {split.num_users:,} "
          f"users, {split.num_items:,} items, {total:,} training pairs; batch {batch}: "
          f"{epoch_steps} steps an epoch; compiled kernel: {kernel}")  # fmt: skip
    reference = reference_epoch(split, batches, 64, 3, 1e-4) * epoch_steps / len(batches)
    ours, ran = torchcf_epoch(split, args.steps)
    ours *= epoch_steps / ran
    print("| epoch (batch 2,048, 64 factors, 3 layers) | seconds | ratio |")
    print("|---|---|---|")
    print(f"| reference-style (torch.sparse COO, autograd, dense Adam) | {reference:.1f} | 1.0 |")
    print(f"| torchcf lightgcn | {ours:.1f} | {reference / ours:.1f}x |")
    scaled = "" if args.steps is None else f" (timed {len(batches)} steps, scaled)"
    print(f"per step: reference {1000 * reference / epoch_steps:.0f} ms, torchcf "
          f"{1000 * ours / epoch_steps:.0f} ms{scaled}")  # fmt: skip


if __name__ == "__main__":
    main()
