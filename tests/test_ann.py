"""Catalogue scale (issue 27): batch recommendations for every user, and approximate top-k through
a faiss index whose candidates are re-scored exactly, seen and filtered items removed, stale
indexes refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from conftest import planted
from test_recommend import write_planted
from torchcf.cli.main import main
from torchcf.data.interactions import Interactions
from torchcf.data.sources import DataSpec
from torchcf.errors import ConfigError, DataError
from torchcf.models.registry import build_model
from torchcf.runs.train import run_training
from torchcf.serving.batch import write_recommendations
from torchcf.serving.http import create_app
from torchcf.serving.persistence import save_model
from torchcf.serving.recommender import Recommender
from torchcf.training.config import applicable, recipe

USERS, ITEMS = 300, 3000
SMALL = {"embedding_dim": 8, "epochs": 2, "batch_size": 64, "eval_negatives": 8}


def train_run(data, out, model):
    config = recipe(model, applicable(model, SMALL))
    run_training(DataSpec(path=str(data)), config, out, progress=False, echo=lambda _: None)
    return out


def synthetic_mf(path, seed=0, heavy=ITEMS - 12):
    """An MF with structured (clustered) vectors over 3,000 items; user 0 has seen all but 12
    items, user 1 all but 4, the others a few dozen."""
    rng = np.random.default_rng(seed)
    model = build_model("mf", USERS, ITEMS, seed=seed, embedding_dim=8, biases=True)
    centres = rng.normal(size=(20, 8))
    with torch.no_grad():
        model.user_embedding.weight.copy_(torch.from_numpy(centres[rng.integers(0, 20, USERS)]))
        model.user_embedding.weight.add_(torch.randn(USERS, 8) * 0.3)
        model.item_embedding.weight.copy_(torch.from_numpy(centres[rng.integers(0, 20, ITEMS)]))
        model.item_embedding.weight.add_(torch.randn(ITEMS, 8) * 0.3)
        model.item_bias.weight.normal_(0, 0.5)
    users = [np.zeros(heavy, np.int64), np.ones(ITEMS - 4, np.int64), rng.integers(2, USERS, 9000)]
    items = [rng.permutation(ITEMS)[:heavy], rng.permutation(ITEMS)[: ITEMS - 4]]
    items.append(rng.integers(0, ITEMS, 9000))
    train = Interactions(np.concatenate(users), np.concatenate(items), USERS, ITEMS).deduplicate()
    save_model(path, model, train)
    return path


@pytest.fixture(scope="module")
def mf_dir(tmp_path_factory):
    return synthetic_mf(tmp_path_factory.mktemp("ann") / "model")


@pytest.fixture(scope="module")
def exact(mf_dir):
    return Recommender.load(mf_dir)


@pytest.fixture(scope="module")
def approx(mf_dir):
    return Recommender.load(mf_dir, ann=True)


def test_the_index_is_built_once_tuned_and_reported(mf_dir, approx):
    card = approx.card()["ann"]
    assert set(card) == {"recommend", "similar"}
    for kind, info in card.items():
        assert info["recall@10"] >= 0.97 and info["effort"] >= 1
        assert info["setting"] == ("efSearch" if kind == "recommend" else "nprobe")
        assert info["recall_queries"] == (USERS if kind == "recommend" else 1000)
    saved = json.loads((mf_dir / "ann" / "index.json").read_text())
    assert saved["indexes"]["recommend"]["effort"] == card["recommend"]["effort"]
    again = Recommender.load(mf_dir, ann=True)  # loaded, not rebuilt
    assert again.card()["ann"] == card


def test_candidates_are_rescored_exactly_and_agree_with_exact_ranking(exact, approx):
    users = np.arange(2, USERS)
    ids, scores = approx.recommend(users, k=10)
    want, _ = exact.recommend(users, k=10)
    np.testing.assert_allclose(scores, exact.score(users[:, None], ids), rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)
    overlap = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(ids, want, strict=True)])
    assert overlap >= 0.95


def test_seen_and_filtered_items_never_come_back_and_lists_are_full(exact, approx):
    filtered = np.arange(0, ITEMS, 7)
    ids, scores = approx.recommend(np.arange(USERS), k=10, filter_items=filtered)
    for user, row in enumerate(ids):
        seen = approx.seen.indices[approx.seen.indptr[user] : approx.seen.indptr[user + 1]]
        assert not np.isin(row[row >= 0], seen).any() and not np.isin(row, filtered).any()
    left = ITEMS - 12 - len(np.setdiff1d(filtered, exact.seen[0].indices))
    assert np.isfinite(scores[0]).sum() == min(10, left)  # the heavy user: from what is left
    assert np.isfinite(scores[2:]).all()  # everyone else: k items
    short, short_scores = approx.recommend(1, k=10)  # 4 items left: 4 and padding
    assert np.isfinite(short_scores).sum() == 4 and list(short[4:]) == [-1] * 6
    np.testing.assert_array_equal(short[:4], exact.recommend(1, k=10)[0][:4])


def test_similar_through_the_index_matches_cosine(exact, approx):
    items = np.arange(0, ITEMS, 30)
    ids, scores = approx.similar_items(items, k=10)
    want, want_scores = exact.similar_items(items, k=10)
    assert not (ids == items[:, None]).any()
    overlap = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(ids, want, strict=True)])
    assert overlap >= 0.95
    same = ids == want
    np.testing.assert_allclose(scores[same], want_scores[same], rtol=1e-5, atol=1e-6)


def test_a_stale_index_is_refused_never_used(tmp_path, mf_dir, approx):
    other = synthetic_mf(tmp_path / "model", seed=1)
    shutil.copytree(mf_dir / "ann", other / "ann")
    with pytest.raises(DataError, match="built from other weights.*rebuild"):
        Recommender.load(other, ann=True)
    assert main(["recommend", str(other), "--user", "3", "--ann"]) == 2
    assert main(["index", str(other)]) == 0  # rebuilt: now it answers
    assert Recommender.load(other, ann=True).recommend(3, k=5)[0].shape == (5,)


def test_models_without_an_inner_product_form_say_so(tmp_path, capsys):
    data = write_planted(tmp_path / "data", planted(num_users=30, num_items=20, per_user=5))
    run = train_run(data, tmp_path / "ease", "ease")
    with pytest.raises(ConfigError, match="not inner products.*mf, gmf, bpr, ials, lightgcn"):
        Recommender.load(run, ann=True)
    assert main(["recommend", str(run), "--user", "1", "--ann"]) == 2
    assert main(["similar", str(run), "--item", "1", "--ann"]) == 2
    assert main(["serve", str(run), "--ann"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all("not inner products" in line for line in lines)


def test_serving_through_the_index(approx, exact):
    client = TestClient(create_app(approx))
    card = client.get("/model").json()
    assert card["ann"]["recommend"]["recall@10"] >= 0.97
    got = client.get("/recommend", params={"user": 5, "k": 10}).json()["items"]
    assert [row["item"] for row in got] == list(approx.recommend(5, k=10)[0])
    assert client.get("/similar", params={"item": 3, "k": 5}).status_code == 200
    assert client.get("/recommend", params={"user": "nobody"}).status_code == 404
    assert TestClient(create_app(exact)).get("/model").json()["ann"] is None


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    data = write_planted(root / "data", planted(num_users=60, num_items=30, per_user=6))
    return {m: train_run(data, root / m, m) for m in ("gmf", "ials", "ease")}


@pytest.mark.parametrize("model", ["gmf", "ials", "ease"])
def test_all_users_equals_one_user_at_a_time(runs, model, tmp_path, capsys):
    out = tmp_path / "recs.parquet"
    assert main(["recommend", str(runs[model]), "--all-users", "--out", str(out), "-k", "5"]) == 0
    assert "60 users" in capsys.readouterr().out
    table = pd.read_parquet(out)
    assert list(table.columns) == ["user", "rank", "item", "score"]
    rec = Recommender.load(runs[model])
    assert table["user"].nunique() == 60 and len(table) == 60 * 5
    for user in rec.user_map.ids[::7]:
        ids, scores = rec.recommend(user, k=5)
        mine = table[table["user"] == user].sort_values("rank")
        assert list(mine["rank"]) == [1, 2, 3, 4, 5] and list(mine["item"]) == list(ids)
        np.testing.assert_allclose(mine["score"], scores, rtol=1e-6)


def test_a_user_file_to_csv_and_the_python_api(runs, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("user\n3\n\n17\n3\n")
    out = tmp_path / "recs.csv"
    args = ["recommend", str(runs["ials"]), "--users", str(users), "--out", str(out)]
    assert main([*args, "--include-seen", "-k", "3", "--filter", "1,2"]) == 0
    table = pd.read_csv(out)
    assert list(table["user"]) == [3] * 3 + [17] * 3 + [3] * 3
    assert not table["item"].isin([1, 2]).any()
    rec = Recommender.load(runs["ials"])
    direct = pd.concat(rec.recommend_all([3, 17, 3], k=3, exclude_seen=False, filter_items=[1, 2]))
    np.testing.assert_array_equal(direct["item"], table["item"])
    frames = list(rec.recommend_all(k=2, chunk=7))  # bounded chunks
    assert [f.attrs["users"] for f in frames] == [7] * 8 + [4]


def test_batch_refusals_are_one_line_and_write_nothing(runs, tmp_path, capsys):
    users = tmp_path / "users.txt"
    users.write_text("3\nghost\n")
    out = tmp_path / "recs.parquet"
    run = str(runs["gmf"])
    assert main(["recommend", run, "--users", str(users), "--out", str(out)]) == 2
    assert main(["recommend", run, "--all-users", "--out", str(tmp_path / "recs.txt")]) == 2
    assert main(["recommend", run, "--all-users"]) == 2
    assert main(["recommend", run, "--user", "3", "--out", str(out)]) == 2
    assert main(["recommend", run, "--all-users", "--out", str(out), "-k", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and "ghost" in err[0] and ".parquet or .csv" in err[1]
    assert not out.exists() and list(tmp_path.iterdir()) == [users]
    out.write_text("x")
    assert main(["recommend", run, "--all-users", "--out", str(out)]) == 2  # exists
    assert main(["recommend", run, "--all-users", "--out", str(out), "--overwrite"]) == 0
    assert len(pd.read_parquet(out)) == 60 * 10


def test_batch_through_the_index_and_blends(approx, runs, tmp_path):
    out = tmp_path / "ann.parquet"
    done = write_recommendations(approx, out, k=10, progress=False)
    table = pd.read_parquet(out)
    assert done["users"] == USERS and len(table) == done["rows"] == (USERS - 2) * 10 + 10 + 4
    ids, _ = approx.recommend(approx.user_map.ids[:50], k=10)
    for user in range(50):
        got = table[table["user"] == user].sort_values("rank")["item"].to_numpy()
        np.testing.assert_array_equal(got, ids[user][ids[user] >= 0])
    blend = tmp_path / "blend"
    assert main(["blend", str(runs["ials"]), str(runs["ease"]), "--out", str(blend)]) == 0
    out = tmp_path / "blend.csv"
    assert main(["recommend", str(blend), "--all-users", "--out", str(out), "-k", "4"]) == 0
    rec = Recommender.load(blend)
    table = pd.read_csv(out)
    assert len(table) == 60 * 4
    np.testing.assert_array_equal(table["item"][:4], rec.recommend(table["user"][0], k=4)[0])
