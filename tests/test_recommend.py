"""The Python recommendation API: external ids, batch == single, policies, fold-in, titles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import planted
from torchcf.data.sources import DataSpec
from torchcf.errors import ConfigError, UnknownIdError
from torchcf.runs.train import run_training
from torchcf.serving.recommender import Recommender
from torchcf.training.config import recipe

GROUPS = 4


def write_planted(directory: Path, data, skip_users=()) -> Path:
    """``data`` as ML-1M files (1-based ids, ``movies.dat`` titles), minus ``skip_users``."""
    directory.mkdir(parents=True, exist_ok=True)
    keep = ~np.isin(data.users, list(skip_users))
    lines = [
        f"{u + 1}::{i + 1}::5::{t}\n"
        for u, i, t in zip(data.users[keep], data.items[keep], data.timestamps[keep], strict=True)
    ]
    (directory / "ratings.dat").write_text("".join(lines))
    (directory / "movies.dat").write_text(
        "".join(
            f"{i + 1}::Movie {i + 1} (block {i % GROUPS})::Drama\n" for i in range(data.num_items)
        )
    )
    return directory


def train_run(directory: Path, out: Path, model: str = "gmf", epochs: int = 20, **kw) -> Path:
    settings = {"embedding_dim": 8, "epochs": epochs, "batch_size": 64, "eval_negatives": 20}
    config = recipe(model, {**settings, "learning_rate": 0.01, **kw})
    run_training(DataSpec(path=str(directory)), config, out, progress=False, echo=lambda _: None)
    return out


@pytest.fixture(scope="module")
def gmf_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rec")
    data = planted(num_users=80, num_items=40, groups=GROUPS, per_user=6)
    return train_run(write_planted(root / "data", data), root / "gmf")


@pytest.fixture(scope="module")
def rec(gmf_run) -> Recommender:
    return Recommender.load(gmf_run)


def block(item_id) -> int:
    return (int(item_id) - 1) % GROUPS


def test_scalar_gives_1d_list_gives_2d_and_batch_equals_single(rec):
    ids, scores = rec.recommend(1, k=5)
    assert ids.shape == scores.shape == (5,)
    assert np.all(np.diff(scores) <= 0)  # best first
    batch_ids, batch_scores = rec.recommend([1, 2, 3], k=5)
    assert batch_ids.shape == (3, 5)
    for row, user in enumerate([1, 2, 3]):
        single_ids, single_scores = rec.recommend(user, k=5)
        assert np.array_equal(batch_ids[row], single_ids)
        np.testing.assert_allclose(batch_scores[row], single_scores, rtol=1e-5)


def test_recommends_unseen_items_of_the_users_block(rec):
    users = np.arange(1, 81)
    ids, _ = rec.recommend(users, k=3)
    seen = {u: set(rec.item_map.to_id(rec.seen[u - 1].indices).tolist()) for u in users}
    assert all(not (set(row.tolist()) & seen[u]) for u, row in zip(users, ids, strict=True))
    in_block = np.mean(
        [block(i) == (u - 1) % GROUPS for u, row in zip(users, ids, strict=True) for i in row]
    )
    assert in_block > 0.9  # the planted structure; popularity would give ~0.25


def test_include_seen_and_filter_items(rec):
    seen = set(rec.item_map.to_id(rec.seen[0].indices).tolist())
    ids, _ = rec.recommend(1, k=40, exclude_seen=False)
    assert seen <= set(ids.tolist())
    top, _ = rec.recommend(1, k=3)
    filtered, _ = rec.recommend(1, k=3, filter_items=[top[0]])
    assert top[0] not in filtered and filtered[0] == top[1]


def test_k_is_clamped_and_short_lists_are_padded(rec):
    ids, scores = rec.recommend(1, k=10_000)
    assert len(ids) == rec.num_items == 40
    unseen = 40 - rec.seen[0].nnz
    assert np.isfinite(scores[:unseen]).all() and np.isneginf(scores[unseen:]).all()
    assert (ids[unseen:] == -1).all()
    assert len(rec.rows(ids, scores)) == unseen  # padding never reaches users
    with pytest.raises(ConfigError):
        rec.recommend(1, k=0)


def test_unknown_users_error_or_popular(gmf_run, rec):
    with pytest.raises(UnknownIdError, match="unknown user 999"):
        rec.recommend(999)
    with pytest.raises(UnknownIdError):
        rec.recommend([1, 999])
    popular = Recommender.load(gmf_run, unknown_user="popular")
    ids, scores = popular.recommend([999, 1], k=5)
    order = np.argsort(-popular.popularity, kind="stable")
    assert np.array_equal(np.sort(scores[0])[::-1], np.sort(popular.popularity[order[:5]])[::-1])
    assert np.array_equal(ids[1], rec.recommend(1, k=5)[0])  # known users are unaffected
    with pytest.raises(ConfigError):
        Recommender.load(gmf_run, unknown_user="guess")


def test_unknown_items_are_errors(rec):
    with pytest.raises(UnknownIdError, match="unknown item 4242"):
        rec.recommend(1, filter_items=[4242])
    with pytest.raises(UnknownIdError):
        rec.similar_items(4242)
    with pytest.raises(UnknownIdError):
        rec.score(1, 4242)
    with pytest.raises(UnknownIdError):
        rec.recommend_for_items([1, 4242])


def test_score_agrees_with_recommend_and_broadcasts(rec):
    ids, scores = rec.recommend(3, k=4)
    np.testing.assert_allclose(rec.score(3, ids), scores, rtol=1e-5)
    grid = rec.score(np.array([[1], [2]]), np.array([1, 2, 3]))
    assert grid.shape == (2, 3)
    np.testing.assert_allclose(grid[1, 2], rec.score(2, 3), rtol=1e-6)


def test_similar_items_are_cosine_neighbours_in_the_same_block(rec):
    ids, scores = rec.similar_items(1, k=5)
    assert 1 not in ids and np.all(np.diff(scores) <= 0) and np.all(scores <= 1.0 + 1e-6)
    assert np.mean([block(i) == block(1) for i in ids]) >= 0.8
    batch, _ = rec.similar_items([1, 2], k=5)
    assert np.array_equal(batch[0], ids)
    vectors = torch.nn.functional.normalize(rec.model.item_vectors().detach(), dim=1)
    np.testing.assert_allclose(scores[0], float(vectors[0] @ vectors[ids[0] - 1]), rtol=1e-5)


def test_titles_come_from_the_training_source(rec):
    ids, scores = rec.recommend(1, k=2)
    rows = rec.rows(ids, scores)
    assert rows[0]["title"] == f"Movie {ids[0]} (block {block(ids[0])})"
    assert rows[0]["item"] == int(ids[0]) and isinstance(rows[0]["item"], int)


def test_neumf_has_no_single_item_embedding_and_still_recommends(tmp_path):
    data = planted(num_users=40, num_items=20, groups=GROUPS, per_user=4)
    run = train_run(write_planted(tmp_path / "d", data), tmp_path / "neumf", "neumf", epochs=2)
    rec = Recommender.load(run)
    with pytest.raises(ConfigError, match="no single item embedding"):
        rec.similar_items(1)
    ids, _ = rec.recommend([1, 2], k=3)
    assert ids.shape == (2, 3)
    folded, _ = rec.recommend_for_items([1, 5], k=3)  # fold-in through autograd on any model
    assert len(folded) == 3 and not {1, 5} & set(folded.tolist())


def _fold_in_hit_rate(rec: Recommender, histories, held_out, rng) -> tuple[float, float]:
    """Sampled HR@10 (held-out item among 99 unseen items) of fold-in and of popularity."""
    hits, pop_hits = [], []
    for history, target in zip(histories, held_out, strict=True):
        items = rec.item_map.to_index(history, what="item")
        others = np.setdiff1d(np.arange(rec.num_items), np.append(items, target))
        candidates = np.append(target, rng.choice(others, 99, replace=False))
        scores = rec.fold_in_scores(items).numpy()[candidates]
        pops = rec.popularity[candidates]
        hits.append((scores[1:] >= scores[0]).sum() < 10)
        pop_hits.append((pops[1:] >= pops[0]).sum() < 10)
    return float(np.mean(hits)), float(np.mean(pop_hits))


def test_fold_in_serves_users_never_seen_in_training(tmp_path):
    """Users held out of training entirely get recommendations from their history alone."""
    data = planted(num_users=200, num_items=240, groups=GROUPS, per_user=20, seed=1)
    new_users = np.arange(160, 200)
    run = train_run(write_planted(tmp_path / "d", data, skip_users=new_users), tmp_path / "r")
    rec = Recommender.load(run)
    with pytest.raises(UnknownIdError):
        rec.recommend(int(new_users[0]) + 1)
    rng = np.random.default_rng(0)
    histories, held_out = [], []
    for u in new_users:
        items = data.items[data.users == u] + 1  # external ids
        histories.append(items[:-1])
        held_out.append(rec.item_map.to_index(items[-1:], what="item")[0])
    fold_hr, pop_hr = _fold_in_hit_rate(rec, histories, held_out, rng)
    # ~1/4 of the 99 candidates share the target's block, so a perfect block model gets ~0.4
    assert fold_hr >= 0.3 and fold_hr >= 4 * pop_hr, (fold_hr, pop_hr)
    ids, _ = rec.recommend_for_items(histories[0], k=5)
    assert not set(ids.tolist()) & set(histories[0].tolist())
    assert np.mean([block(i) == new_users[0] % GROUPS for i in ids]) >= 0.8


def test_ncf_split_items_get_titles_through_the_item_map(tmp_path):
    """An NCF split renumbers items; movies.dat beside it plus derived/ncf_item_map.tsv map back."""
    root = tmp_path / "ml"
    ncf, derived = root / "ncf", root / "derived"
    ncf.mkdir(parents=True)
    derived.mkdir()
    train = [(u, i) for u in range(6) for i in range(8) if (u + i) % 3]
    (ncf / "t.train.rating").write_text("".join(f"{u}\t{i}\t5\n" for u, i in train))
    tests = [(u, next(i for i in range(8) if (u + i) % 3 == 0)) for u in range(6)]
    (ncf / "t.test.rating").write_text("".join(f"{u}\t{i}\t5\t1\n" for u, i in tests))
    (ncf / "t.test.negative").write_text("".join(f"({u},{i})\t9\t10\n" for u, i in tests))
    movie_of = {i: 100 + 7 * i for i in range(11)}  # NCF item i is MovieID 100 + 7i
    (derived / "ncf_item_map.tsv").write_text(
        "ncf_item_id\tMovieID\n" + "".join(f"{i}\t{m}\n" for i, m in movie_of.items())
    )
    (root / "movies.dat").write_text(
        "".join(f"{m}::Film {m} (1999)::Drama\n" for m in movie_of.values())
    )
    config = recipe("gmf", {"embedding_dim": 4, "epochs": 1, "eval_negatives": 2})
    spec = DataSpec(path=str(ncf), allow_cold_items=True)  # negatives 9, 10: never trained on
    run_training(spec, config, tmp_path / "run", progress=False, echo=print)
    rec = Recommender.load(tmp_path / "run")
    ids, scores = rec.recommend(0, k=3)
    for row in rec.rows(ids, scores):
        assert row["title"] == f"Film {movie_of[row['item']]} (1999)"
