"""Fold-in quality on the ML-1M NCF split: users folded in from their training items (as if new)
against the same users' trained vectors, on the same test candidates (HR@10 / NDCG@10).

    .venv/bin/python benchmarks/fold_in.py --data ../shared/data/ml-1m/ncf [--every 10]

Trains GMF with its defaults (20 epochs, the selected epoch's weights), then takes every
``--every``-th test user: the trained model ranks their test item among its candidates with the
user's own row, and again with a row fitted by ``Recommender.fold_in_scores`` from the user's
training items alone (30 Adam steps, everything else frozen). Prints both and the seconds per
folded-in user.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from torchcf.data.sources import DataSpec
from torchcf.evaluation.metrics import hit_rate, ndcg, positive_ranks
from torchcf.runs.evaluate import load_run_split
from torchcf.runs.rundir import RunDir
from torchcf.runs.train import run_training
from torchcf.serving.recommender import Recommender
from torchcf.training.config import recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an NCF split directory (ml-1m/ncf)")
    parser.add_argument("--model", default="gmf")
    parser.add_argument("--every", type=int, default=10, help="fold in every n-th test user")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    with tempfile.TemporaryDirectory() as out:
        run_training(
            DataSpec(path=args.data), recipe(args.model), out, progress=False, echo=lambda _: None
        )
        rec = Recommender.load(out)
        split = load_run_split(out, RunDir(out).read_config())
    test = split.test
    rows = np.arange(0, len(test), args.every)
    candidates = torch.as_tensor(test.candidates()[rows])
    valid = candidates >= 0
    users = torch.as_tensor(test.users[rows])
    with torch.no_grad():
        trained = rec.model.score_all(users).gather(1, candidates.clamp(min=0))
    started = time.perf_counter()
    folded = torch.stack(
        [
            rec.fold_in_scores(split.train.csr[int(u)].indices)[candidates[j].clamp(min=0)]
            for j, u in enumerate(users.tolist())
        ]
    )
    seconds = (time.perf_counter() - started) / len(rows)
    for name, scores in (("trained users", trained), ("folded-in users", folded)):
        ranks = positive_ranks(scores, valid)
        print(
            f"{args.model} {name:<16} ({len(rows)} users): HR@10 {hit_rate(ranks, 10):.4f}  "
            f"NDCG@10 {ndcg(ranks, 10):.4f}"
        )
    print(f"fold-in: {seconds * 1000:.1f} ms per user")


if __name__ == "__main__":
    main()
