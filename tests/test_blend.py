"""Blends of trained runs: the model's contract, the weight search on validation, the run
directory (evaluate, recommend, fold-in), and the CLI's one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from conftest import tiny_rows, write_ml1m
from torchcf.cli.main import main
from torchcf.data.sources import DataSpec, load_split
from torchcf.data.split import SplitConfig
from torchcf.errors import ConfigError
from torchcf.evaluation.sets import set_metrics, set_positions
from torchcf.models.blend import Blend, standardise
from torchcf.runs.blend import blend_runs, search_weights_sets, simplex_grid
from torchcf.runs.evaluate import evaluate_run
from torchcf.runs.train import run_training
from torchcf.serving.http import create_app
from torchcf.serving.persistence import load_model
from torchcf.serving.recommender import Recommender
from torchcf.training.config import applicable, recipe

SMALL = {"embedding_dim": 4, "epochs": 2, "batch_size": 64, "eval_negatives": 8}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("blend")
    write_ml1m(root / "ratings.dat", tiny_rows(num_users=30, num_items=24, per_user=8))
    spec = DataSpec(path=str(root / "ratings.dat"))
    out = {}
    for name, model, extra in (
        ("ials", "ials", {}),
        ("ease", "ease", {"l2": 10.0}),
        ("mf", "mf", {}),
        ("ials-seed1", "ials", {"seed": 1}),
    ):
        out[name] = root / name
        run_training(
            spec,
            recipe(model, applicable(model, {**SMALL, **extra})),
            out[name],
            progress=False,
            echo=lambda _: None,
        )
    return out


def test_simplex_grid_covers_the_simplex():
    for parts, size in ((2, 21), (3, 66), (4, 286)):
        grid = simplex_grid(parts)
        assert len(grid) == len(set(grid)) == size
        assert all(min(w) >= 0 and sum(w) == pytest.approx(1.0) for w in grid)
        for j in range(parts):  # each run alone is a candidate
            assert tuple(float(i == j) for i in range(parts)) in grid
    with pytest.raises(ConfigError, match="2–4 runs"):
        simplex_grid(5)


def test_blend_scores_agree_and_reduce_to_one_part(runs):
    ials, ease = (load_model(runs[n]).model for n in ("ials", "ease"))
    users = torch.arange(ials.num_users)
    blend = Blend.of([ials, ease], [0.6, 0.4])
    rows = blend.score_all(users)
    z = standardise(ease.score_all(users))
    assert torch.allclose(z.mean(1), torch.zeros(len(users)), atol=1e-5)
    assert torch.allclose(z.std(1), torch.ones(len(users)), atol=1e-5)
    assert torch.allclose(rows, 0.6 * standardise(ials.score_all(users)) + 0.4 * z, atol=1e-6)
    items = torch.randint(0, ials.num_items, (len(users), 5))
    assert torch.equal(blend(users[:, None], items), rows.gather(1, items))
    assert torch.equal(blend(users, items[:, 0]), rows[users, items[:, 0]])
    # all the weight on one part: that part's ranking, whatever the other scores
    alone = Blend.of([ials, ease], [1.0, 0.0]).score_all(users)
    assert torch.equal(alone.argsort(1), ials.score_all(users).argsort(1))
    with pytest.raises(ConfigError, match="not all 0"):
        Blend.of([ials, ease], [0.0, 0.0])
    with pytest.raises(ConfigError, match="one weight each"):
        Blend.of([ials, ease], [1.0])


def test_blend_chooses_weights_on_validation_and_writes_a_run(runs, tmp_path):
    out = tmp_path / "blend"
    lines: list[str] = []
    summary = blend_runs([runs["ials"], runs["ease"]], out, echo=lines.append)
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "metrics.json",
        "model",
        "per_user.parquet",
    }
    search = summary["search"]
    assert len(search) == 21
    best = max(row["ndcg@10"] for row in search)
    chosen = next(row for row in search if row["weights"] == list(summary["weights"].values()))
    assert chosen["ndcg@10"] == best
    # the search scored validation exactly as the saved blend's evaluation does
    assert summary["selected"]["validation"] == {
        "hr@10": chosen["hr@10"],
        "ndcg@10": chosen["ndcg@10"],
    }
    assert json.loads((out / "metrics.json").read_text())["selected"] == summary["selected"]
    again = evaluate_run(out)
    assert again["model"] == "blend"
    assert again["sampled"]["test"]["hr@10"] == summary["selected"]["test"]["hr@10"]
    assert again["sampled"]["test"]["ndcg@10"] == summary["selected"]["test"]["ndcg@10"]
    assert again["full"]["hr@10"] == summary["full_ranking"]["hr@10"]
    assert any(line.startswith("weights (validation NDCG@10 over 21") for line in lines)
    # the saved model is the blend of the two saved parts
    loaded = load_model(out).model
    assert isinstance(loaded, Blend) and loaded.weights == list(summary["weights"].values())
    parts = [load_model(runs[n]).model for n in ("ials", "ease")]
    users = torch.arange(loaded.num_users)
    expected = Blend.of(parts, loaded.weights).score_all(users)
    assert torch.equal(loaded.score_all(users), expected)


def test_a_blend_recommends_and_folds_in_new_users(runs, tmp_path):
    out = tmp_path / "blend"
    summary = blend_runs([runs["mf"], runs["ease"]], out, weights=[3, 1], echo=lambda _: None)
    assert summary["weights"] == {"0:mf": 0.75, "1:ease": 0.25} and summary["search"] == []
    assert summary["selected"]["by"] == "given"
    rec = Recommender.load(out)
    ids, scores = rec.recommend("1", k=4)
    assert len(ids) == 4 and list(scores) == sorted(scores, reverse=True)
    seen = set(rec.item_map.to_id(rec.seen[rec.user_map.to_index(["1"])[0]].indices))
    assert not seen & set(ids)
    new_ids, _ = rec.recommend_for_items(["1", "2", "3"], k=5)
    assert len(new_ids) == 5 and not {"1", "2", "3"} & set(map(str, new_ids))
    client = TestClient(create_app(rec))  # served like any run
    card = client.get("/model").json()
    assert card["model"] == "blend" and [p["model"] for p in card["hparams"]["parts"]] == [
        "mf",
        "ease",
    ]
    served = client.get("/recommend", params={"user": "1", "k": 4}).json()
    assert [row["item"] for row in served["items"]] == [int(i) for i in ids]
    # fold-in of the blend = the blend of the parts' fold-ins (MF: Adam steps, EASE: closed form)
    items = rec.item_map.to_index(["1", "2", "3"])
    parts = [Recommender.load(runs[n]) for n in ("mf", "ease")]
    expected = rec.model.combine([p.fold_in_scores(items) for p in parts])
    assert torch.allclose(rec.fold_in_scores(items), expected)


def test_blend_cli_errors_are_one_line(runs, tmp_path, capsys):
    def error(*args: str) -> str:
        assert main(["blend", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("torchcf: error:")
        return err

    out = str(tmp_path / "b")
    ials, ease = str(runs["ials"]), str(runs["ease"])
    assert "two or more runs" in error(ials, "--out", out)
    assert "another split" in error(ials, str(runs["ials-seed1"]), "--out", out)
    assert "one weight per run" in error(ials, ease, "--weights", "1", "--out", out)
    assert "numbers" in error(ials, ease, "--weights", "a,b", "--out", out)
    assert "not all 0" in error(ials, ease, "--weights", "0,0", "--out", out)
    assert "not all 0" in error(ials, ease, "--weights", "inf,1", "--out", out)
    assert "2–4 runs" in error(*[ials] * 5, "--out", out)
    assert "not a torchcf run" in error(ials, str(tmp_path), "--out", out)
    assert main(["blend", ials, ease, "--out", out, "--no-progress"]) == 0
    assert "test HR@10" in capsys.readouterr().out
    assert "exists" in error(ials, ease, "--out", out)
    assert "not blends" in error(out, ease, "--out", str(tmp_path / "c"))


def test_runs_without_validation_blend_only_with_given_weights(tmp_path):
    write_ml1m(tmp_path / "ratings.dat", tiny_rows(num_users=20, num_items=16, per_user=6))
    spec = DataSpec(path=str(tmp_path / "ratings.dat"))
    runs = []
    for model in ("pop", "ease"):
        runs.append(tmp_path / model)
        config = recipe(model, applicable(model, {**SMALL, "validation": False}))
        run_training(spec, config, runs[-1], progress=False, echo=lambda _: None)
    with pytest.raises(ConfigError, match="no validation holdout"):
        blend_runs(runs, tmp_path / "auto", echo=lambda _: None)
    assert not (tmp_path / "auto").exists()
    summary = blend_runs(runs, tmp_path / "given", weights=[1, 1], echo=lambda _: None)
    assert set(summary["selected"]) == {"by", "test"} and summary["selected"]["by"] == "given"


def test_weight_search_on_held_out_sets_scores_each_part_once(runs, tmp_path):
    """The set search scores a block of users once per part and ranks every weighting from
    those rows: its table equals ranking each weighting's ``Blend`` directly, over blocks of
    any size (here 7 users: several blocks, the last one short)."""
    write_ml1m(tmp_path / "ratings.dat", tiny_rows(num_users=30, num_items=24, per_user=8))
    split = load_split(DataSpec(path=str(tmp_path / "ratings.dat")),
                       SplitConfig(split="ratio", mask="train"))[0]  # fmt: skip
    assert split.ranking == "sets" and split.validation is not None
    models = [load_model(runs[name]).model for name in ("ials", "ease", "mf")]
    calls = {"n": 0}
    first = models[0].score_all

    def counted(users):
        calls["n"] += 1
        return first(users)

    models[0].score_all = counted  # type: ignore[method-assign]
    table = search_weights_sets(models, split, 5, block_users=7)
    held, exclude = split.sets(split.validation), split.exclude(split.validation)
    assert calls["n"] == -(-len(held) // 7)  # once per block, not once per weighting
    assert len(table) == 66
    for row in table:
        positions, _ = set_positions(Blend.of(models, row["weights"]), held, exclude, 5)
        values = set_metrics(positions, held.indptr, (5,))
        for metric in ("recall@5", "ndcg@5"):
            assert row[metric] == pytest.approx(float(np.mean(values[metric])), abs=1e-12)
    assert len({round(r["ndcg@5"], 9) for r in table}) > 1  # the weights change the ranking
