"""Quality bands on real MovieLens data from ../shared/data (slow: about 90 s in all).

The lower bound catches a broken model or trainer, the upper bound catches test leakage.
"""

from __future__ import annotations

import pytest
import torch

from conftest import shared_data
from torchcf.data.sources import DataSpec, load_split
from torchcf.evaluation.metrics import hit_rate, positive_ranks
from torchcf.models.registry import build_model
from torchcf.training.config import recipe
from torchcf.training.trainer import Trainer

pytestmark = pytest.mark.slow


def _need(path):
    if not path.exists():
        pytest.skip(f"{path} not present (the team's shared data)")
    return path


def test_gmf_on_the_ncf_split_three_epochs():
    directory = _need(shared_data() / "ml-1m" / "ncf")
    config = recipe("gmf", {"epochs": 3})
    split, _ = load_split(DataSpec(path=str(directory)), config.split)
    model = build_model("gmf", split.num_users, split.num_items, seed=0)
    fit = Trainer(model, split, config.train).fit()
    hr = [r.metrics["test"]["hr"] for r in fit.history]
    # full 20-epoch runs reach 0.70-0.71 (benchmarks/RESULTS.md); after 3 epochs about 0.65
    assert 0.60 <= hr[-1] <= 0.70, hr
    assert hr[0] < hr[-1]  # it learns
    assert 0.35 <= fit.history[-1].metrics["test"]["ndcg"] <= 0.42


def test_ml100k_raw_leave_one_out_end_to_end():
    path = _need(shared_data() / "ml-100k" / "u.data")
    config = recipe("gmf", {"epochs": 8, "learning_rate": 0.005})
    split, source = load_split(DataSpec(path=str(path)), config.split)
    assert split.protocol["test_item"].startswith("latest by timestamp")
    assert len(split.test) == 943 and len(split.train) == 100_000 - 2 * 943
    model = build_model("gmf", split.num_users, split.num_items, seed=0)
    fit = Trainer(model, split, config.train).fit()
    # measured 0.61-0.62 (seed 0); the band's top catches leakage
    assert 0.55 <= fit.best_test.metrics["test"]["hr"] <= 0.70, fit.best_test
    counts = torch.as_tensor(split.train.item_counts(), dtype=torch.float32)
    candidates = torch.as_tensor(split.test.candidates())
    popularity = hit_rate(positive_ranks(counts[candidates.clamp(min=0)], candidates >= 0), 10)
    assert fit.best_test.metrics["test"]["hr"] > popularity + 0.1, popularity
    assert source["titles"].endswith("u.item")


def test_fold_in_on_ml100k_users_never_seen_in_training(tmp_path):
    """100 users are removed from ML-100K before training; folded in from all but their latest
    item, their latest item ranks far above where popularity puts it (sampled, 99 unseen)."""
    import numpy as np

    from torchcf.runs.train import run_training
    from torchcf.serving.recommender import Recommender

    rows = np.loadtxt(_need(shared_data() / "ml-100k" / "u.data"), dtype=np.int64)
    new_users = np.arange(5, 944, 9)[:100]  # every ninth user
    held = np.isin(rows[:, 0], new_users)
    np.savetxt(tmp_path / "u.data", rows[~held], fmt="%d", delimiter="\t")
    config = recipe("gmf", {"epochs": 8, "learning_rate": 0.005})
    quiet = {"progress": False, "echo": lambda _: None}
    run_training(DataSpec(path=str(tmp_path / "u.data")), config, tmp_path / "run", **quiet)
    rec = Recommender.load(tmp_path / "run")
    rng = np.random.default_rng(0)
    hits, pop_hits = [], []
    for user in new_users:
        mine = rows[rows[:, 0] == user]
        mine = mine[np.argsort(mine[:, 3], kind="stable")]
        known = np.isin(mine[:, 1], rec.item_map.ids)
        items = rec.item_map.to_index(mine[known, 1], what="item")
        history, target = items[:-1], items[-1]
        others = np.setdiff1d(np.arange(rec.num_items), items)
        candidates = np.append(target, rng.choice(others, 99, replace=False))
        for scores, out in (
            (rec.fold_in_scores(history).numpy(), hits),
            (rec.popularity, pop_hits),
        ):
            picked = scores[candidates]
            out.append((picked[1:] >= picked[0]).sum() < 10)
    fold_hr, pop_hr = float(np.mean(hits)), float(np.mean(pop_hits))
    # measured: see benchmarks/RESULTS.md; trained users reach 0.61-0.62 on the same protocol
    assert 0.45 <= fold_hr <= 0.80 and fold_hr >= pop_hr + 0.08, (fold_hr, pop_hr)


def test_blend_of_ials_and_ease_on_the_ncf_split(tmp_path):
    """iALS and EASE (its λ chosen on validation) blended with validation-chosen weights: the
    blend beats both parts on validation NDCG and lands in the band measured on test."""
    from torchcf.runs.blend import blend_runs
    from torchcf.runs.train import run_training

    directory = _need(shared_data() / "ml-1m" / "ncf")
    spec = DataSpec(path=str(directory))
    parts = []
    for model, settings in (
        ("ials", {"embedding_dim": 64, "epochs": 6, "solver": "cg"}),
        ("ease", {"l2": 1000.0}),
    ):
        parts.append(tmp_path / model)
        summary = run_training(
            spec, recipe(model, settings), parts[-1], progress=False, echo=lambda _: None
        )
        assert summary["selected"]["by"] == "validation"
    blend = blend_runs(parts, tmp_path / "blend", echo=lambda _: None)
    part_ndcg = [
        next(r["ndcg@10"] for r in blend["search"] if r["weights"][i] == 1.0) for i in range(2)
    ]
    assert blend["selected"]["validation"]["ndcg@10"] > max(part_ndcg) + 0.002, part_ndcg
    test = blend["selected"]["test"]
    # measured 0.7260 / 0.4535 (parts: 0.7050 / 0.4295, 0.7171 / 0.4488); the top catches leakage
    assert 0.705 <= test["hr@10"] <= 0.76 and 0.435 <= test["ndcg@10"] <= 0.48, test
