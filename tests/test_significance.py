"""Paired comparisons: identical results give Δ = 0 and p = 1, a planted improvement is found,
a null difference is found about as often as the test's level says, the bootstrap repeats under
its seed, Holm's adjustment matches its definition; and ``evaluate --against`` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import tiny_rows, write_ml1m
from test_cli import FAST, run_cli
from torchcf.errors import DataError
from torchcf.evaluation.significance import holm, paired_difference


def _ranks(rng, n, better=0.0):
    """Per-user ranks among 100 candidates; ``better`` shifts mass to the top."""
    ranks = rng.integers(0, 40, size=n)
    improve = rng.random(n) < better
    ranks[improve] = rng.integers(0, 5, size=int(improve.sum()))
    return ranks


def _values(ranks, k=10):
    hit = (ranks < k).astype(float)
    return hit, np.where(ranks < k, 1 / np.log2(ranks + 2.0), 0.0)


def test_identical_results_give_zero_and_p_one():
    rng = np.random.default_rng(0)
    hit, ndcg = _values(_ranks(rng, 500))
    for values, kind in ((hit, "hit"), (ndcg, "ndcg")):
        d = paired_difference(values, values, "M@10", kind)
        assert (d.delta, d.ci_low, d.ci_high, d.p_value) == (0.0, 0.0, 0.0, 1.0)
        assert "no evidence of a difference" in d.words("A", "B")


def test_a_planted_improvement_is_detected():
    rng = np.random.default_rng(1)
    base = _ranks(rng, 2000)
    improved = base.copy()
    lucky = rng.random(2000) < 0.15  # 15 % of users get their item into the top 5
    improved[lucky] = rng.integers(0, 5, size=int(lucky.sum()))
    (hit_a, nd_a), (hit_b, nd_b) = _values(improved), _values(base)
    for a, b, kind in ((hit_a, hit_b, "hit"), (nd_a, nd_b, "ndcg")):
        d = paired_difference(a, b, "M@10", kind, seed=0, resamples=2000)
        assert d.p_value < 0.01 and d.delta > 0 and d.ci_low > 0, d
        assert "A better at 5%" in d.words("A", "B")


def test_a_null_difference_is_rarely_significant():
    """Two models that are the same in distribution: at 5 % the tests fire near 5 % of the time
    over repeated seeds (a loose band for 200 repetitions)."""
    rejections = {"hit": 0, "ndcg": 0}
    for seed in range(200):
        rng = np.random.default_rng(100 + seed)
        (hit_a, nd_a), (hit_b, nd_b) = _values(_ranks(rng, 300)), _values(_ranks(rng, 300))
        for a, b, kind in ((hit_a, hit_b, "hit"), (nd_a, nd_b, "ndcg")):
            d = paired_difference(a, b, "M@10", kind, seed=seed, resamples=200)
            rejections[kind] += d.p_value < 0.05
    for kind, count in rejections.items():
        assert 1 <= count <= 20, (kind, count)  # nominal 10 of 200


def test_the_bootstrap_repeats_under_its_seed():
    rng = np.random.default_rng(2)
    a, b = _values(_ranks(rng, 400, 0.1))[1], _values(_ranks(rng, 400))[1]
    first = paired_difference(a, b, "NDCG@10", "ndcg", seed=7, resamples=1000)
    again = paired_difference(a, b, "NDCG@10", "ndcg", seed=7, resamples=1000)
    other = paired_difference(a, b, "NDCG@10", "ndcg", seed=8, resamples=1000)
    assert first == again and (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)
    assert first.ci_low < first.delta < first.ci_high


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_unpaired_values_are_an_error():
    with pytest.raises(DataError, match="same users"):
        paired_difference(np.zeros(3), np.zeros(4), "HR@10", "hit")


def test_evaluate_against_another_run(tmp_path):
    write_ml1m(tmp_path / "ratings.dat", tiny_rows(num_users=40, num_items=30, per_user=8))
    runs = {}
    for model in ("gmf", "ease"):
        runs[model] = tmp_path / model
        flags = FAST if model == "gmf" else ["--eval-negatives", "5", "--no-progress"]
        result = run_cli(
            "train", "--data", str(tmp_path / "ratings.dat"), "--model", model,
            "--out", str(runs[model]), *flags,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    same = run_cli("evaluate", str(runs["gmf"]), "--against", str(runs["gmf"]), "--json")
    assert same.returncode == 0, same.stderr
    rows = json.loads(same.stdout)["differences"]
    assert {(r["holdout"], r["protocol"]) for r in rows} == {
        ("test", "sampled"),
        ("validation", "sampled"),
        ("test", "full"),
    }
    assert all(r["delta"] == 0.0 and r["p_value"] == 1.0 for r in rows)
    text = run_cli("evaluate", str(runs["gmf"]), "--against", str(runs["ease"]))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert len(lines) == 6 and all("ΔHR@10" in ln or "ΔNDCG@10" in ln for ln in lines)
    assert "gmf (" in lines[0] and "ease (" in lines[0] and "p = " in lines[0]
    other = tmp_path / "other"
    (tmp_path / "o").mkdir()
    rows = tiny_rows(num_users=40, num_items=30, per_user=8, seed=3)
    write_ml1m(tmp_path / "o" / "ratings.dat", rows)
    trained = run_cli("train", "--data", str(tmp_path / "o"), "--out", str(other), *FAST)
    assert trained.returncode == 0, trained.stderr
    refused = run_cli("evaluate", str(runs["gmf"]), "--against", str(other))
    assert refused.returncode == 2 and "another split" in refused.stderr


@pytest.mark.parametrize("n", [1, 7, 6040])
def test_bootstrap_ci_is_scipys_percentile_interval(n):
    """One pass over shared resample counts gives, for every column, the interval
    ``scipy.stats.bootstrap`` gives that column alone with the same seed."""
    from scipy import stats

    from torchcf.evaluation.significance import bootstrap_ci

    rng = np.random.default_rng(3)
    values = np.stack([rng.integers(-1, 2, n), rng.normal(size=n), rng.random(n)], axis=1)
    lows, highs = bootstrap_ci(values, seed=5, resamples=1200)
    for j in range(values.shape[1]):
        if n == 1:  # scipy refuses one observation; every resample is that value
            assert lows[j] == highs[j] == values[0, j]
            continue
        ci = stats.bootstrap(
            (values[:, j],),
            np.mean,
            n_resamples=1200,
            method="percentile",
            random_state=np.random.default_rng(5),
        ).confidence_interval
        assert lows[j] == pytest.approx(ci.low, abs=1e-12)
        assert highs[j] == pytest.approx(ci.high, abs=1e-12)
