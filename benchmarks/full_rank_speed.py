"""Full ranking of every user × item by an MLP and a NeuMF on the ML-1M NCF split, timed three
ways in one process: the generic ``score_all`` (the model's ``forward`` on chunks of users),
``layers.tower_scores`` in blocks of 2^18 pairs (the first blocked form) and in blocks of 2^13
pairs (the default: the blocks stay in cache). Each is ``full_ranks`` on the test holdout; the
ranks of the three are compared.

    .venv/bin/python benchmarks/full_rank_speed.py --data ../shared/data/ml-1m/ncf

With ``--sets``, on a published multi-item split: every user's held-out test set ranked among all
items by a 64-factor MF (``evaluation.sets``: scoring, masking and top-K in blocks) at
K = 10, 20, 40, with both masking rules; seconds and the process's peak memory:

    .venv/bin/python benchmarks/full_rank_speed.py --data ../shared/data/lightgcn/gowalla --sets

The models have their default settings and untrained weights (the cost does not depend on them).
The process sets glibc's malloc thresholds as the ``torchcf`` command does (``_tame_malloc``).
"""

from __future__ import annotations

import argparse
import functools
import time

import torch

from torchcf.cli.main import _tame_malloc
from torchcf.data.sources import DataSpec, load_split
from torchcf.data.split import SplitConfig
from torchcf.evaluation.protocols import full_ranks
from torchcf.models import layers
from torchcf.models.base import ScoringModel
from torchcf.models.registry import build_model


def timed_ranks(model: ScoringModel, split, form: str) -> tuple[float, torch.Tensor]:
    """Seconds and ranks of ``full_ranks`` with scoring ``form``: generic, or blocks of 2^N."""
    kept = layers.BLOCK_PAIRS
    if form == "generic":
        model.score_all = functools.partial(ScoringModel.score_all, model)  # type: ignore[method-assign]
    else:
        layers.BLOCK_PAIRS = 2 ** int(form.split("^")[1])
    try:
        start = time.perf_counter()
        ranks, _ = full_ranks(model, split.test, split.known_items(), top_k=10)
        return time.perf_counter() - start, ranks
    finally:
        layers.BLOCK_PAIRS = kept
        if form == "generic":
            del model.score_all


def sets(data: str) -> None:
    """Held-out sets of a published split ranked among every item by a 64-factor MF."""
    import resource

    from torchcf.evaluation.sets import set_metrics, set_positions, set_summary

    ks = (10, 20, 40)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print("| mask | users × items | seconds (ranking) | seconds (metrics) | peak RSS | R@20 |")
    print("|---|---|---|---|---|---|")
    for mask in ("train", "known"):
        split, _ = load_split(DataSpec(path=data), SplitConfig(mask=mask), progress=False)
        model = build_model("mf", split.num_users, split.num_items, seed=0, embedding_dim=64)
        held = split.sets(split.test)
        exclude = split.exclude(split.test)
        start = time.perf_counter()
        positions, lists = set_positions(model, held, exclude, max(ks))
        ranked = time.perf_counter()
        figures = set_summary(set_metrics(positions, held.indptr, ks), lists, model.num_items, ks)
        done = time.perf_counter()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"| {mask} | {len(held):,} × {split.num_items:,} | {ranked - start:.2f} | "
            f"{done - ranked:.2f} | {peak:.0f} MB | {figures['recall@20']:.5f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an NCF split directory")
    parser.add_argument("--models", default="mlp,neumf")
    parser.add_argument("--sets", action="store_true", help="a published multi-item split")
    args = parser.parse_args()
    _tame_malloc()
    if args.sets:
        sets(args.data)
        return
    split, _ = load_split(DataSpec(path=args.data), SplitConfig(), progress=False)
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); "
        f"{split.num_users:,} users x {split.num_items:,} items"
    )
    print("| model | generic score_all | blocks of 2^18 pairs | blocks of 2^13 pairs | ranks |")
    print("|---|---|---|---|---|")
    for name in args.models.split(","):
        model = build_model(name, split.num_users, split.num_items, seed=0)
        seconds, ranks = {}, {}
        for form in ("generic", "2^18", "2^13"):
            seconds[form], ranks[form] = timed_ranks(model, split, form)
        moved = max(int((ranks["generic"] != r).sum()) for r in ranks.values())
        agree = "identical" if moved == 0 else f"{moved} differ (ties, summation order)"
        print(
            f"| {name} | {seconds['generic']:.1f} s | {seconds['2^18']:.1f} s "
            f"({seconds['generic'] / seconds['2^18']:.1f}x) | {seconds['2^13']:.1f} s "
            f"({seconds['generic'] / seconds['2^13']:.1f}x) | "
            f"{agree} |"
        )


if __name__ == "__main__":
    main()
