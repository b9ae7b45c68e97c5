"""Seeds, spreads and the temporal split: ``--seeds`` parsing, mean ± std and the test over
seeds, a multi-seed compare (its report agrees with its results, runs are reused, one model's
failure keeps the others), ``train --seeds``, and ``--split temporal`` (no test interaction
before a training one, cold users apart, a clear error without timestamps)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from conftest import write_ml1m
from test_cli import FAST, run_cli
from torchcf.data.interactions import Interactions
from torchcf.data.sources import DataSpec
from torchcf.data.split import SplitConfig, make_split, temporal_split
from torchcf.errors import ConfigError, DataError
from torchcf.evaluation.significance import over_seeds, seed_difference
from torchcf.runs.compare import parse_seeds, run_compare
from torchcf.runs.differences import significant


def interleaved_rows(num_users=16, num_items=24, per_user=8, seed=0):
    """MovieLens rows whose users interact throughout the time span (a temporal cut then
    leaves most test users with a training history)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, num_users + 1):
        items = rng.choice(np.arange(1, num_items + 1), size=per_user, replace=False)
        times = np.sort(rng.integers(978_300_000, 978_400_000, size=per_user))
        rows += [
            (u, int(i), int(rng.integers(1, 6)), int(t)) for i, t in zip(items, times, strict=False)
        ]
    return rows


@pytest.fixture()
def spec(tmp_path):
    write_ml1m(tmp_path / "ratings.dat", interleaved_rows())
    return DataSpec(path=str(tmp_path / "ratings.dat"))


CONFIG = {"embedding_dim": 4, "epochs": 2, "batch_size": 64, "eval_negatives": 8}


# -- parsing and statistics ----------------------------------------------------------------------
def test_seeds_parse_as_a_count_or_a_list():
    assert parse_seeds("5") == [0, 1, 2, 3, 4]
    assert parse_seeds("0,3,7") == [0, 3, 7]
    assert parse_seeds("7,") == [7]
    for bad in ("0", "x", "1,1", "-1,2", "", "2001"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


def test_over_seeds_is_mean_std_and_a_t_interval():
    s = over_seeds([0.70, 0.71, 0.72])
    assert s.mean == pytest.approx(0.71) and s.std == pytest.approx(0.01)
    half = 4.302652729911275 * 0.01 / np.sqrt(3)  # t(0.975, 2)
    assert (s.ci_low, s.ci_high) == pytest.approx((0.71 - half, 0.71 + half))
    assert "0.7100 ± 0.0100" in s.text()
    one = over_seeds([0.5])
    assert one.seeds == 1 and np.isnan(one.std) and one.text() == "0.5000"


def test_the_test_over_seeds():
    same = seed_difference([0.7, 0.71, 0.69], [0.7, 0.71, 0.69], "HR@10")
    assert (same.delta, same.p_value) == (0.0, 1.0)
    rng = np.random.default_rng(0)
    b = 0.70 + rng.normal(0, 0.005, size=5)
    better = seed_difference(b + 0.02 + rng.normal(0, 0.001, size=5), b, "HR@10")
    assert better.p_value < 0.01 and better.ci_low > 0
    assert np.isnan(seed_difference([0.7], [0.6], "HR@10").p_value)


# -- the temporal split ----------------------------------------------------------------------------
def _events(seed=0, users=40, items=30, n=600):
    rng = np.random.default_rng(seed)
    return Interactions(
        rng.integers(0, users, n),
        rng.integers(0, items, n),
        users,
        items,
        timestamps=rng.integers(0, 10_000, n),
    )


@pytest.mark.parametrize("validation", [True, False])
def test_the_temporal_split_puts_every_test_interaction_after_training(validation):
    data = _events()
    split = temporal_split(data, fraction=0.1, num_negatives=5, validation=validation, seed=0)
    train_times = split.train.timestamps
    assert train_times is not None
    pair_time = {}
    for u, i, t in zip(
        data.users, data.items, data.timestamps, strict=False
    ):  # earliest event of a pair
        pair_time[(u, i)] = min(t, pair_time.get((u, i), t))
    holdouts = [split.test] + ([split.validation] if validation else [])
    for holdout in holdouts:
        times = np.array(
            [pair_time[(u, i)] for u, i in zip(holdout.users, holdout.items, strict=False)]
        )
        assert times.min() > train_times.max()
        assert not split.train.contains(holdout.users, holdout.items).any()
        assert (split.train.user_counts()[holdout.users] > 0).all()  # cold users apart
        negatives = holdout.negatives
        assert not data.contains(
            np.broadcast_to(holdout.users[:, None], negatives.shape), negatives
        ).any()
    if validation:
        val_times = [pair_time[p] for p in zip(*_pairs(split.validation), strict=True)]
        test_times = [pair_time[p] for p in zip(*_pairs(split.test), strict=True)]
        assert max(val_times) < min(test_times)
    protocol = split.protocol
    assert protocol["split"].startswith("temporal")
    assert protocol["test_interactions"] == len(split.test)
    cold = protocol["test_cold_interactions"]
    later = sum(t > protocol["test_cut"] for t in pair_time.values())
    assert len(split.test) + cold == later  # every later interaction: in the test, or cold
    # full ranking must not count a user's other held-out items against one
    known = split.known_items()
    assert known[split.test.users, split.test.items].min() == 1


def _pairs(holdout):
    return holdout.users, holdout.items


def test_the_temporal_split_needs_timestamps():
    data = _events()
    bare = Interactions(data.users, data.items, data.num_users, data.num_items)
    with pytest.raises(DataError, match="--split temporal needs timestamps"):
        make_split(bare, SplitConfig(split="temporal"))
    with pytest.raises(ConfigError, match="test_fraction"):
        SplitConfig(split="temporal", test_fraction=0.7)


def test_a_temporal_run_end_to_end_and_its_error_without_timestamps(tmp_path):
    data = tmp_path / "ratings.dat"
    write_ml1m(data, interleaved_rows(num_users=30, per_user=10))
    out = tmp_path / "run"
    result = run_cli("train", "--data", str(data), "--split", "temporal", "--out", str(out), *FAST)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["split"]["split"] == "temporal"
    table = pd.read_parquet(out / "per_user.parquet")
    test = table[(table["holdout"] == "test") & (table["protocol"] == "sampled")]
    assert test["hit"].mean() == pytest.approx(summary["selected"]["test"]["hr@10"], abs=1e-12)
    full = table[(table["holdout"] == "test") & (table["protocol"] == "full")]
    assert full["ndcg"].mean() == pytest.approx(summary["full_ranking"]["ndcg@10"], abs=1e-12)
    sets = summary["full_ranking"]["sets"]  # each user's held-out interactions as one set
    assert sets["users"] == test["user"].nunique() and sets["protocol"]["mask"] == "known"
    assert 0.0 <= sets["recall@10"] <= sets["recall@40"] <= 1.0
    assert "full ranking (test sets" in result.stdout
    assert run_cli("evaluate", str(out)).returncode == 0  # the split is rebuilt the same

    table_file = tmp_path / "events.csv"
    table_file.write_text("user,item\n" + "".join(f"{u},{i}\n" for u in range(5) for i in range(4)))
    bad = run_cli("train", "--data", str(table_file), "--split", "temporal", *FAST)
    assert bad.returncode == 2
    assert "--split temporal needs timestamps" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


# -- a comparison over seeds ------------------------------------------------------------------
def _cell(text):
    """``0.7046 ± 0.0031 [0.7007, 0.7085]`` as four numbers."""
    return [float(x) for x in re.findall(r"-?\d+\.\d+", text)]


def test_a_compare_over_seeds(spec, tmp_path):
    out = tmp_path / "cmp"
    logs: list[str] = []
    report = run_compare(
        spec, CONFIG, ["mf", "gmf"], out, seeds=[0, 1], progress=False, echo=logs.append,
        resamples=500,
    )  # fmt: skip
    assert not report["failed"]
    for name in ("report.md", "results.json", "curves.png", "differences.png"):
        assert (out / name).is_file()
    assert (out / "differences.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1] and results["split_seeds"] is False
    # one run per model and seed; the model's seed varied, the split fixed
    configs = {
        (s, m): json.loads((out / "runs" / f"seed-{s}" / m / "config.json").read_text())
        for s in (0, 1)
        for m in ("mf", "gmf")
    }
    assert {c["train"]["seed"] for (s, m), c in configs.items() if m == "mf"} == {0, 1}
    assert len({c["fingerprint"] for c in configs.values()}) == 1
    # the table is results.json's
    table = (out / "report.md").read_text()
    for key, row in results["models"].items():
        line = next(line for line in table.splitlines() if line.startswith(f"| {key} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert int(cells[1]) == 2
        summary = row["seeds_summary"]["hr@10"]
        mean, std, low, high = _cell(cells[2])
        assert mean == pytest.approx(summary["mean"], abs=5e-5)
        assert std == pytest.approx(summary["std"], abs=5e-5)
        assert (low, high) == pytest.approx((summary["ci_low"], summary["ci_high"]), abs=5e-5)
        assert summary["mean"] == pytest.approx(np.mean(row["per_seed"]["hr@10"]))
        assert _cell(cells[3])[0] == pytest.approx(row["ndcg@10"], abs=5e-5)
    # every pair's words and row in the report are results.json's
    assert [p["a"] + p["b"] for p in results["pairs"]] == ["gmfmf"] * 6  # 2 metrics × 3
    for pair in results["pairs"]:
        if pair["holdout"] == "test":
            assert f"- {pair['words']}" in table
            assert pair["over_seeds"]["seeds"] == 2
        row = next(
            line
            for line in table.splitlines()
            if line.startswith("| gmf − mf |")
            and f"| {pair['holdout']} | {pair['protocol']} | {pair['metric']} |" in line
        )
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[6]) == pytest.approx(pair["delta"], abs=5e-5)
        assert float(cells[10]) == pytest.approx(pair["p_holm"], rel=1e-2)
    unbeaten = [m for m in ("mf", "gmf") if not any(
        significant(p) and p["holdout"] == "test" and p["protocol"] == "sampled"
        and (p["b"] if p["delta"] > 0 else p["a"]) == m
        for p in results["pairs"]
    )]  # fmt: skip
    assert results["unbeaten"] == unbeaten

    logs.clear()
    again = run_compare(
        spec, CONFIG, ["mf", "gmf"], out, seeds=[0, 1], progress=False, echo=logs.append,
        resamples=500,
    )  # fmt: skip
    assert sum("reusing" in line for line in logs) == 4
    assert not any(line.startswith("epoch ") for line in logs)
    assert again["models"]["mf"]["seeds_summary"] == results["models"]["mf"]["seeds_summary"]


def test_split_seeds_vary_the_split(spec, tmp_path):
    out = tmp_path / "cmp"
    run_compare(
        spec, CONFIG, ["mf"], out, seeds=[0, 1], split_seeds=True, progress=False,
        echo=lambda _: None, resamples=200,
    )  # fmt: skip
    prints = {json.loads((out / "runs" / f"seed-{s}" / "mf" / "config.json").read_text())[
        "fingerprint"] for s in (0, 1)}  # fmt: skip
    assert len(prints) == 2
    with pytest.raises(ConfigError, match="--split-seeds"):
        run_compare(spec, CONFIG, ["mf"], out, split_seeds=True)


def test_a_model_failing_in_one_seed_keeps_the_others(spec, tmp_path, monkeypatch):
    import torchcf.runs.compare as compare

    real = compare.ensure_run

    def broken(spec_, config, out, **options):
        if config.model == "gmf" and config.train.seed == 1:
            raise RuntimeError("simulated crash")
        return real(spec_, config, out, **options)

    monkeypatch.setattr(compare, "ensure_run", broken)
    report = run_compare(
        spec, CONFIG, ["mf", "gmf"], tmp_path / "c", seeds=[0, 1], progress=False,
        echo=lambda _: None, resamples=200,
    )  # fmt: skip
    assert list(report["models"]) == ["mf"] and report["pairs"] == []
    assert report["failed"]["gmf"].startswith("seed 1: RuntimeError: simulated crash")
    assert "simulated crash" in (tmp_path / "c" / "report.md").read_text()


def test_train_seeds_from_the_command_line(tmp_path):
    data = tmp_path / "ratings.dat"
    write_ml1m(data, interleaved_rows())
    out = tmp_path / "seeds"
    result = run_cli(
        "train", "--data", str(data), "--model", "mf", "--seeds", "2", "--out", str(out), *FAST
    )
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1] and list(results["models"]) == ["mf"]
    assert (out / "runs" / "seed-1" / "mf" / "metrics.json").is_file()
    assert "± " in (out / "report.md").read_text()
    for bad, message in (
        (["--seeds", "1,1"], "--seeds"),
        (["--split-seeds"], "--split-seeds"),
        (["--seeds", "2", "--resume"], "--resume"),
    ):
        refused = run_cli("train", "--data", str(data), "--model", "mf", *bad, *FAST)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
