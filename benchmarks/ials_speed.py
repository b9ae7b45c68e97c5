"""iALS against the ``implicit`` library's ALS on the ML-1M NCF split, side by side in one process:
seconds per sweep (same factors, conjugate gradient, the same CG steps, every core) and both
models' test HR@10 / NDCG@10 on the NCF candidates.

    .venv/bin/pip install implicit      # an optional benchmark dependency, not a runtime one
    .venv/bin/python benchmarks/ials_speed.py --data ../shared/data/ml-1m/ncf

For each setting (64 factors with torchcf's defaults; the tuned 128-factor setting), torchcf's
iALS trains 15 sweeps through the ``Trainer`` (each sweep timed without its evaluation; the test
metrics at the epoch the validation holdout selected, as ``torchcf train`` reports them), and
``implicit``'s ALS fits 15 iterations of its own objective (confidence 1 + α·1, its defaults
otherwise) on the same training matrix; its factors are scored on the same test candidates.
Repeated ``--repeats`` times, alternating, the fastest kept. Prints the ratio implicit / torchcf
(above 1: torchcf is faster).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from torchcf.data.sources import DataSpec, load_split
from torchcf.data.split import SplitConfig
from torchcf.evaluation.protocols import evaluate_sampled
from torchcf.models.baselines.ials import IALS
from torchcf.training.config import TrainConfig
from torchcf.training.trainer import Trainer

SETTINGS = {
    "64 (defaults)": {"embedding_dim": 64, "l2": 0.002, "unobserved_weight": 0.1},
    "128 (tuned)": {"embedding_dim": 128, "l2": 0.009145, "unobserved_weight": 0.1142},
}


def torchcf_run(split, settings: dict, sweeps: int, cg_steps: int) -> dict:
    model = IALS(
        split.num_users,
        split.num_items,
        cg_steps=cg_steps,
        generator=torch.Generator().manual_seed(0),
        **settings,
    )
    result = Trainer(model, split, TrainConfig(epochs=sweeps)).fit()
    seconds = [r.train_seconds for r in result.history]
    return {
        "seconds_per_sweep": float(np.mean(seconds)),
        "hr": result.selected.metrics["test"]["hr"],
        "ndcg": result.selected.metrics["test"]["ndcg"],
        "epoch": result.selected.epoch,
    }


def implicit_run(split, factors: int, sweeps: int, cg_steps: int) -> dict:
    from implicit.cpu.als import AlternatingLeastSquares

    matrix = split.train.deduplicate().csr.astype(np.float32)
    model = AlternatingLeastSquares(
        factors=factors,
        iterations=sweeps,
        use_cg=True,
        calculate_training_loss=False,
        random_state=0,
        num_threads=0,
    )
    model.cg_steps = cg_steps  # an attribute, not a constructor argument (default 3)
    started = time.perf_counter()
    model.fit(matrix, show_progress=False)
    seconds = (time.perf_counter() - started) / sweeps
    scorer = IALS(split.num_users, split.num_items, embedding_dim=factors)
    scorer.user_embedding.weight.data = torch.as_tensor(np.asarray(model.user_factors))
    scorer.item_embedding.weight.data = torch.as_tensor(np.asarray(model.item_factors))
    test = evaluate_sampled(scorer, split.test, 10)
    return {"seconds_per_sweep": seconds, "hr": test.hr, "ndcg": test.ndcg}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an NCF split directory (ml-1m/ncf)")
    parser.add_argument("--sweeps", type=int, default=15)
    parser.add_argument("--cg-steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import implicit
    from threadpoolctl import threadpool_limits

    from torchcf import native

    torch.set_flush_denormal(True)
    if native.load() is None:  # built before anything is timed
        raise SystemExit(f"the compiled kernel is unavailable: {native.build_error()}")
    split, _ = load_split(DataSpec(path=args.data), SplitConfig(), progress=False)
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), implicit "
        f"{implicit.__version__}, {os.cpu_count()} cores; {args.sweeps} sweeps, "
        f"{args.cg_steps} CG steps"
    )
    print(
        "| factors | torchcf s/sweep | implicit s/sweep | implicit / torchcf | "
        "torchcf test HR@10 / NDCG@10 (epoch) | implicit test HR@10 / NDCG@10 |"
    )
    print("|---|---|---|---|---|---|")
    with threadpool_limits(limits=1, user_api="blas"):  # implicit asks for it; torch is apart
        for name, settings in SETTINGS.items():
            ours, theirs = [], []
            for _ in range(args.repeats):
                theirs.append(
                    implicit_run(split, settings["embedding_dim"], args.sweeps, args.cg_steps)
                )
                ours.append(torchcf_run(split, settings, args.sweeps, args.cg_steps))
            a = min(ours, key=lambda r: r["seconds_per_sweep"])
            b = min(theirs, key=lambda r: r["seconds_per_sweep"])
            print(
                f"| {name} | {a['seconds_per_sweep']:.3f} | {b['seconds_per_sweep']:.3f} | "
                f"{b['seconds_per_sweep'] / a['seconds_per_sweep']:.2f} | "
                f"{a['hr']:.4f} / {a['ndcg']:.4f} ({a['epoch']}) | "
                f"{b['hr']:.4f} / {b['ndcg']:.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
