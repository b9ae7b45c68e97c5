"""Training throughput of torchcf on a GPU (or any device), per model and batch size.

Everything stays on the device: the epoch's samples (negatives drawn there by rejection against
the sorted training keys), the shuffle, the batches, the optimizer and the evaluation; the host
only launches work. For each model it times one warm-up pass of a few hundred batches, then one
whole epoch (synchronised), and prints samples/s; then the fast mode's whole GMF run.

    python benchmarks/gpu_speed.py [--data ../shared/data/ml-1m/ncf] [--device cuda] [--amp]

Without ``--data`` (or when the directory is missing) it uses a synthetic data set shaped like
ML-1M (6,040 users, 3,706 items, ~1 M interactions), so it runs on any CUDA machine as is.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from torchcf.data.loaders import find_ncf_files, load_ncf_files
from torchcf.data.split import Split, leave_one_out, ncf_split
from torchcf.data.synthetic import powerlaw_interactions
from torchcf.models.registry import build_model
from torchcf.training.config import Recipe, applicable, recipe
from torchcf.training.trainer import Trainer

# (model, batch size): the seed's batch for every model, and each model's large-batch setting
RUNS = [
    ("mf", 256),
    ("gmf", 256),
    ("mlp", 256),
    ("neumf", 256),
    ("mf", 16384),
    ("gmf", 16384),
    ("mlp", 4096),
    ("neumf", 4096),
]


def load(data: str | None) -> tuple[Split, str]:
    if data and Path(data).is_dir() and find_ncf_files(data) is not None:
        return ncf_split(load_ncf_files(find_ncf_files(data)), validation=True), data
    synthetic = powerlaw_interactions(6040, 3706, 1_000_209, seed=0)
    return leave_one_out(synthetic, validation=True), "synthetic, ML-1M-shaped"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def epoch_rate(split: Split, recipe_: Recipe, warmup_batches: int = 300) -> dict[str, float]:
    """Samples/s of one whole epoch after a short warm-up, and the evaluation's seconds."""
    model = build_model(
        recipe_.model, split.num_users, split.num_items, seed=0, config=recipe_.model_config
    )
    config = recipe_.train
    trainer = Trainer(model, split, config)
    device = trainer.device
    users, items, labels = trainer.sampler.shuffled(0)  # warm-up: kernels, allocator, autotuning
    assert trainer.step is not None
    for b in range(min(warmup_batches, len(users) // config.batch_size)):
        part = slice(b * config.batch_size, (b + 1) * config.batch_size)
        trainer.step(users[part], items[part], labels[part])
    _sync(device)
    t0 = time.perf_counter()
    trainer.train_epoch(1)
    _sync(device)
    t1 = time.perf_counter()
    metrics = trainer.evaluate()
    _sync(device)
    samples = len(split.train) * (1 + config.num_negatives)
    return {
        "samples_s": samples / (t1 - t0),
        "epoch_s": t1 - t0,
        "eval_s": time.perf_counter() - t1,
        "hr": metrics["test"]["hr"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="an NCF split directory (ml-1m/ncf)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast for MLP/NeuMF")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_speed: CUDA is not available (use --device cpu to try it here)")
    split, source = load(args.data)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}; data: {source}, {len(split.train):,} pos.")
    print(f"{'model':<6} {'batch':>6} {'samples/s':>12} {'epoch':>8} {'eval':>7}  HR@10 (1 epoch)")
    for model, batch in RUNS:
        amp = args.amp and model in ("mlp", "neumf")
        settings = {"batch_size": batch, "epochs": 1, "device": args.device, "amp": amp}
        r = epoch_rate(split, recipe(model, applicable(model, {**settings, "dropout": 0.0})))
        print(
            f"{model:<6} {batch:>6} {r['samples_s']:>12,.0f} {r['epoch_s']:>7.2f}s "
            f"{r['eval_s']:>6.3f}s  {r['hr']:.4f}" + ("  (amp)" if amp else "")
        )
    t0 = time.perf_counter()
    fast = recipe("gmf", {"device": args.device, "prefetch": False}, recipes=("fast",))
    model = build_model("gmf", split.num_users, split.num_items, seed=0)
    fit = Trainer(model, split, fast.train).fit()
    print(
        f"gmf fast mode, {fast.train.epochs} epochs: {time.perf_counter() - t0:.1f}s, "
        "selected epoch "
        f"{fit.selected.epoch}: test HR@10 {fit.selected.metrics['test']['hr']:.4f} "
        f"NDCG@10 {fit.selected.metrics['test']['ndcg']:.4f}"
    )


if __name__ == "__main__":
    main()
