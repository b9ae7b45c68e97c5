"""tune: validation-only scoring, results on disk, resumable, explicit flags held fixed."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import tiny_rows, write_ml1m
from test_cli import run_cli
from torchcf.data.sources import DataSpec
from torchcf.errors import ConfigError
from torchcf.runs.tune import run_tune


@pytest.fixture()
def spec(tmp_path):
    write_ml1m(tmp_path / "ratings.dat", tiny_rows(num_users=20, num_items=30, per_user=8))
    return DataSpec(path=str(tmp_path / "ratings.dat"))


FIXED = {"embedding_dim": 4, "epochs": 2, "batch_size": 64, "eval_negatives": 10}


def test_tune_writes_results_and_resumes(spec, tmp_path):
    out = tmp_path / "study"
    logs: list[str] = []
    first = run_tune(spec, "gmf", FIXED, 2, out, echo=logs.append)
    assert first["trials"]["complete"] == 2 and (out / "study.db").is_file()
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 2 and set(rows[0]) >= {"learning_rate", "num_negatives", "weight_decay"}
    assert "validation_ndcg@10" in rows[0] and not any("test" in key for key in rows[0])
    best = json.loads((out / "best_config.json").read_text())["best"]
    assert best["value"] == max(float(r["validation_ndcg@10"]) for r in rows)
    assert best["settings"]["embedding_dim"] == 4  # explicit settings are held fixed
    assert "embedding_dim" not in best["params"]
    assert best["settings"]["select_by"] == "validation"
    again = run_tune(spec, "gmf", FIXED, 3, out, echo=logs.append)
    assert again["trials"]["complete"] == 3  # one more trial, the first two reused
    assert any("resuming" in line for line in logs)


def test_tune_refuses_what_it_cannot_do(spec, tmp_path):
    with pytest.raises(ConfigError, match="no hyperparameters"):
        run_tune(spec, "pop", FIXED, 2, tmp_path / "a")
    with pytest.raises(ConfigError, match="validation"):
        run_tune(spec, "ease", {"epochs": 1, "validation": False}, 2, tmp_path / "b")
    with pytest.raises(ConfigError, match="ease does not take batch_size, embedding_dim"):
        run_tune(spec, "ease", FIXED, 2, tmp_path / "b")
    with pytest.raises(ConfigError, match="unknown model"):
        run_tune(spec, "bert4rec", FIXED, 2, tmp_path / "c")


def test_tune_command(spec, tmp_path):
    result = run_cli(
        "tune", "--data", spec.path, "--model", "ease", "--trials", "2", "--out",
        str(tmp_path / "s"), "--eval-negatives", "10", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "best trial" in result.stdout and "torchcf train --model ease --l2" in result.stdout


def test_the_reported_value_is_the_validation_metric_of_the_trial(spec, tmp_path):
    """Tune's best value, checked independently: the best trial's settings trained again, the
    selected epoch's weights evaluated on the validation holdout by the evaluation module."""
    from torchcf.data.sources import load_split
    from torchcf.evaluation.protocols import evaluate_sampled
    from torchcf.models.registry import build_model
    from torchcf.training.config import recipe
    from torchcf.training.trainer import Trainer

    best = run_tune(spec, "gmf", FIXED, 2, tmp_path / "s", echo=lambda _: None)["best"]
    config = recipe("gmf", {**FIXED, **best["params"], "select_by": "validation"})
    split, _ = load_split(spec, config.split, progress=False)
    model = build_model("gmf", split.num_users, split.num_items, seed=0, config=config.model_config)
    fit = Trainer(model, split, config.train).fit()
    model.load_state_dict(fit.state)
    again = evaluate_sampled(model, split.validation, config.split.k)
    assert again.ndcg == pytest.approx(best["value"], abs=1e-12)
    assert fit.selected.epoch == best["epoch"]
