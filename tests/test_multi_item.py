"""The multi-item protocol: published splits (LightGCN's format and event tables), the ratio
split, the masking rules, and `torchcf train` on held-out sets end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import shared_data
from test_cli import run_cli
from torchcf.data.interactions import Interactions
from torchcf.data.published import find_published_files, load_published
from torchcf.data.sources import DataSpec, load_split
from torchcf.data.split import SplitConfig, ratio_split
from torchcf.errors import DataError
from torchcf.evaluation.sets import set_metrics, set_positions

TRAIN = "0 0 1 2\n1 1 2 3\n2 0 3 4\n3 2 4 5\n"
VALID = "0 3\n1 4\n2 5\n3 0\n"
TEST = "0 4 6\n1 5\n2 1 2\n"  # item 6: only the test file names it


def train(directory, out, model, *flags):
    """``torchcf train`` of ``model`` on ``directory`` into ``out`` (no progress bars)."""
    return run_cli("train", "--data", str(directory), "--model", model, "--no-progress",
                   "--out", str(out), *flags)  # fmt: skip


def write_split(directory, train=TRAIN, valid=VALID, test=TEST):
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        if text is not None:
            (directory / f"{name}.txt").write_text(text)
    return directory


def test_reader_keeps_the_published_catalogue(tmp_path):
    data = load_published(find_published_files(write_split(tmp_path / "s")))
    assert data.train.num_users == 4 and data.train.num_items == 7  # item 6 kept
    assert len(data.train) == 12
    split, source = load_split(DataSpec(path=str(tmp_path / "s")), SplitConfig())
    assert split.ranking == "sets" and source["format"] == "published"
    assert len(split.test) == 5 and len(split.validation) == 4
    notes = " ".join(split.protocol["notes"])
    assert "1 of 5 test interactions name an item training never sees" in notes
    assert split.protocol["users_without_test_items"] == 1  # user 3 has no test line


def test_event_tables_read_as_the_same_split(tmp_path):
    lightgcn = load_split(DataSpec(path=str(write_split(tmp_path / "a"))), SplitConfig())[0]
    tables = tmp_path / "b"
    tables.mkdir()
    for name, text in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
        rows = [(line.split()[0], i) for line in text.splitlines() for i in line.split()[1:]]
        pd.DataFrame(rows, columns=["user", "item"]).astype(int).to_csv(
            tables / f"{name}.csv", index=False
        )
    events = load_split(DataSpec(path=str(tables)), SplitConfig())[0]
    for a, b in ((lightgcn.test, events.test), (lightgcn.validation, events.validation)):
        assert np.array_equal(a.users, b.users) and np.array_equal(a.items, b.items)
    assert lightgcn.fingerprint() == events.fingerprint()


BAD = {
    "a letter": ("train", "0 0 1\n1 x 2\n", "train.txt: line 2: expected 'user item item"),
    "a negative id": ("test", "0 4\n1 -5\n", "test.txt: line 2: expected"),
    "a fraction": ("train", "0 0 1.5\n", "train.txt: line 1: expected"),
    "a repeated item": ("valid", "0 3 3\n", "valid.txt: line 1: item 3 repeated"),
    "a user twice": ("test", "0 4\n0 5\n", "test.txt: line 2: user 0 already has line 1"),
    "an empty file": ("test", "", "empty file"),
    "a test pair in training": (
        "test",
        "0 4\n1 2\n",
        "test.txt: line 2: user 1, item 2 is also in train.txt",
    ),
    "a test pair in validation": (
        "test",
        "1 4\n",
        "test.txt: line 1: user 1, item 4 is also in valid.txt",
    ),
    "ids far from dense": ("test", "0 99999999\n", "LightGCN's format numbers items densely"),
    "an id beyond 64 bits": ("test", "0 99999999999999999999999\n", "beyond 64 bits"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_naming_file_and_line(tmp_path, case):
    part, text, message = BAD[case]
    directory = write_split(tmp_path / "s", **{part: text})
    out = tmp_path / "run"
    result = run_cli("train", "--data", str(directory), "--model", "pop", "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr
    assert not out.exists()  # nothing half-written


def test_a_published_split_takes_no_other_split(tmp_path):
    directory = write_split(tmp_path / "s")
    result = run_cli("train", "--data", str(directory), "--model", "pop", "--split",
                     "ratio", "--out", str(tmp_path / "r"))  # fmt: skip
    assert result.returncode == 2 and "used as given" in result.stderr


# -- the ratio split ------------------------------------------------------------------------------


@st.composite
def interactions(draw):
    num_users = draw(st.integers(1, 8))
    num_items = draw(st.integers(1, 30))
    pairs = draw(
        st.lists(
            st.tuples(st.integers(0, num_users - 1), st.integers(0, num_items - 1)),
            min_size=1,
            max_size=120,
        )
    )
    users, items = (np.array(x, dtype=np.int64) for x in zip(*pairs, strict=True))
    return Interactions(users, items, num_users, num_items)


@settings(max_examples=120, deadline=None)
@given(
    interactions(),
    st.sampled_from([0.1, 0.2, 0.5]),
    st.sampled_from([0.0, 0.1, 0.25]),
    st.integers(0, 3),
)
def test_ratio_split_properties(data, test, valid, seed):
    try:
        split = ratio_split(data, test, valid, seed)
    except DataError as exc:  # every user too small for a test item
        assert "holds out no item" in str(exc)
        return
    parts = [set(zip(split.train.users.tolist(), split.train.items.tolist(), strict=True))]
    for holdout in (split.test, split.validation):
        if holdout is not None:
            parts.append(set(zip(holdout.users.tolist(), holdout.items.tolist(), strict=True)))
    everything = set(zip(data.users.tolist(), data.items.tolist(), strict=True))
    assert sum(len(p) for p in parts) == len(everything)  # disjoint ...
    assert set().union(*parts) == everything  # ... and complete
    distinct = data.deduplicate()
    for user in range(data.num_users):
        n = int((distinct.users == user).sum())
        if n == 0:
            continue
        n_test = int((split.test.users == user).sum())
        n_valid = 0 if split.validation is None else int((split.validation.users == user).sum())
        assert n - n_test - n_valid >= 1  # training keeps an item
        want_test, want_valid = math.floor(n * test + 0.5), math.floor(n * valid + 0.5)
        if want_test + want_valid <= n - 1:  # the rounded shares
            assert (n_test, n_valid) == (want_test, want_valid)
        else:  # cut down to leave one training item, validation first
            assert n_test + n_valid == n - 1
            assert n_valid == max(0, want_valid - (want_test + want_valid - (n - 1)))


def test_ratio_split_is_seeded():
    rng = np.random.default_rng(0)
    data = Interactions(rng.integers(0, 40, 2000), rng.integers(0, 300, 2000), 40, 300)
    a, b, c = (ratio_split(data, 0.2, 0.1, seed) for seed in (5, 5, 6))
    assert np.array_equal(a.test.items, b.test.items) and a.fingerprint() == b.fingerprint()
    assert not np.array_equal(a.test.items, c.test.items)


# -- masking --------------------------------------------------------------------------------------


class Fixed(torch.nn.Module):
    def __init__(self, scores):
        super().__init__()
        self.scores = torch.as_tensor(scores, dtype=torch.float32)
        self.num_items = self.scores.shape[1]

    def score_all(self, users):
        return self.scores[users].clone()


def test_both_masking_rules(tmp_path):
    """User 0's validation item 3 scores highest: `train` ranks it (a miss above the test
    items), `known` masks it."""
    directory = write_split(tmp_path / "s")
    scores = np.zeros((4, 7), dtype=np.float32)
    scores[0] = [9, 9, 9, 8, 7, 0, 6]  # training 0-2, validation 3, test 4 and 6
    figures = {}
    for mask in ("known", "train"):
        split = load_split(DataSpec(path=str(directory)), SplitConfig(mask=mask))[0]
        sets = split.sets(split.test)
        positions, _ = set_positions(Fixed(scores), sets, split.exclude(split.test), 2)
        figures[mask] = set_metrics(positions, sets.indptr, (1, 2))["recall@2"][0]
        assert split.exclude(split.validation).nnz == len(split.train)  # training only
    assert figures == {"known": 1.0, "train": 0.5}


# -- torchcf train on held-out sets ---------------------------------------------------------------


def test_train_on_a_published_split_end_to_end(tmp_path):
    directory = write_split(tmp_path / "s")
    out = tmp_path / "run"
    result = run_cli("train", "--data", str(directory), "--model", "bpr", "--epochs",
                     "3", "--factors", "4", "--mask", "train", "-k", "1,2,3",
                     "--select-metric", "recall@2", "--no-progress", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "RECALL@2" in result.stdout and "full ranking (test sets" in result.stdout
    summary = json.loads((out / "metrics.json").read_text())
    full = summary["full_ranking"]
    assert full["protocol"]["mask"] == "train" and full["protocol"]["ks"] == [1, 2, 3]
    assert summary["protocol"]["mask"] == "train"
    table = pd.read_parquet(out / "per_user.parquet")
    for holdout, figures in (("test", full), ("validation", full["validation"])):
        rows = table[table["holdout"] == holdout]
        for key in ("recall@1", "ndcg@3", "precision@2", "hr@3", "mrr@2", "map@3"):
            assert rows[key].mean() == pytest.approx(figures[key])  # per-user means = figures
    assert list(table[table["holdout"] == "test"]["user_id"]) == [0, 1, 2]
    assert list(summary["selected"]["test"]) == ["recall@2", "ndcg@2"]
    history = pd.read_csv(out / "metrics.csv")
    assert "val_recall@2" in history and "test_ndcg@2" in history


def test_ratio_split_trains_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"user": rng.integers(0, 30, 600), "item": rng.integers(0, 50, 600)})
    frame.to_csv(tmp_path / "events.csv", index=False)
    out = tmp_path / "run"
    result = run_cli("train", "--data", str(tmp_path / "events.csv"), "--model",
                     "itemknn", "--split", "ratio", "--test-fraction", "0.2",
                     "--no-progress", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["protocol"]["split"].startswith("ratio")
    assert summary["protocol"]["mask"] == "known" and "ndcg@40" in summary["full_ranking"]


# -- real data ------------------------------------------------------------------------------------


def _lightgcn(name):
    directory = shared_data() / "lightgcn" / name
    if not (directory / "train.txt").exists():
        pytest.fail(f"{directory} is missing: the multi-item checks read ../shared/data")
    return directory


@pytest.mark.slow
def test_shared_splits_read_as_published():
    """The counts ../shared/data/README.md gives for both splits."""
    for name, counts in (
        ("lastfm", (1885, 17388, 64315, 9143, 18321, "2543 of 18321 test")),
        ("gowalla", (29858, 40981, 719081, 91047, 217242, "21 of 217242 test")),
    ):
        split = load_split(DataSpec(path=str(_lightgcn(name))), SplitConfig(mask="train"))[0]
        got = (
            split.num_users,
            split.num_items,
            len(split.train),
            len(split.validation),
            len(split.test),
        )
        assert got == counts[:5]
        assert any(n.startswith(counts[5]) for n in split.protocol["notes"])


@pytest.mark.slow
def test_lastfm_popularity_band(tmp_path):
    """Most-popular on LastFM under the LightGCN code's masking: a band whose top would mean
    leakage (BPR-MF, the paper's weakest row, has Recall@10 0.136)."""
    out = tmp_path / "pop"
    result = run_cli("train", "--data", str(_lightgcn("lastfm")), "--model", "pop",
                     "--mask", "train", "--no-progress", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    full = json.loads((out / "metrics.json").read_text())["full_ranking"]
    assert 0.06 <= full["recall@10"] <= 0.09
    assert 0.10 <= full["ndcg@40"] <= 0.14


def test_evaluate_tune_and_recommend_on_held_out_sets(tmp_path):
    directory = write_split(tmp_path / "s")
    runs = {}
    for model in ("pop", "itemknn"):
        runs[model] = tmp_path / model
        done = run_cli("train", "--data", str(directory), "--model", model, "--mask",
                       "train", "--no-progress", "--out", str(runs[model]))  # fmt: skip
        assert done.returncode == 0, done.stderr
    again = run_cli("evaluate", str(runs["pop"]), "--json")
    assert again.returncode == 0, again.stderr
    summary = json.loads((runs["pop"] / "metrics.json").read_text())["full_ranking"]
    full = json.loads(again.stdout)["full"]
    for key in ("recall@10", "ndcg@20", "map@40", "coverage@10"):
        assert full[key] == pytest.approx(summary[key])
    against = run_cli("evaluate", str(runs["itemknn"]), "--against", str(runs["pop"]))
    assert against.returncode == 0, against.stderr
    assert "test, full" in against.stdout and "ΔRecall@10" in against.stdout
    sampled = run_cli("evaluate", str(runs["pop"]), "--protocol", "sampled")
    assert sampled.returncode == 2 and "no sampled protocol" in sampled.stderr
    tuned = run_cli("tune", "--data", str(directory), "--model", "itemknn", "--trials",
                    "2", "--metric", "recall", "--out", str(tmp_path / "tune"))  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr
    best = json.loads((tmp_path / "tune" / "best_config.json").read_text())
    assert best["metric"].startswith("validation recall@20")
    listed = run_cli("recommend", str(runs["itemknn"]), "--user", "0", "-k", "3")
    assert listed.returncode == 0, listed.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["-k", "0"], "-k"),
        (["-k", "10,x"], "-k"),
        (["--select-metric", "auc@10"], "select_metric"),
        (["--select-metric", "ndcg@0"], "select_metric"),
        (["--mask", "all"], "--mask"),
        (["--valid-fraction", "0.9"], "valid_fraction"),
        (["--cutoffs", "10,,20"], "cutoffs"),
    ],
)
def test_hostile_protocol_options(tmp_path, flags, message):
    directory = write_split(tmp_path / "s")
    out = tmp_path / "run"
    done = run_cli("train", "--data", str(directory), "--model", "pop", "--out", str(out), *flags)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) <= 2
    assert not out.exists()


def test_the_page_lists_a_users_held_out_set_with_hits_marked(tmp_path):
    from fastapi.testclient import TestClient

    from torchcf.runs.rundir import RunDir
    from torchcf.serving.explore import History
    from torchcf.serving.http import create_app
    from torchcf.serving.recommender import Recommender

    directory = write_split(tmp_path / "s")
    out = tmp_path / "pop"
    done = run_cli("train", "--data", str(directory), "--model", "pop", "--mask",
                   "train", "--no-progress", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = RunDir(out).read_config()
    history = History.from_split(load_split(config.data, config.split)[0])
    client = TestClient(create_app(Recommender.load(out), history=history))
    body = client.get("/explore/user", params={"user": 0, "k": 4}).json()
    held = {(row["item"], row["holdout"]) for row in body["held_out"]}
    assert held == {(4, "test"), (6, "test"), (3, "validation")}
    listed = [row["item"] for row in body["recommendations"]]
    for row in body["held_out"]:  # a hit gives its position in the list, a miss None
        want = listed.index(row["item"]) + 1 if row["item"] in listed else None
        assert row["position"] == want
    assert any(row["position"] for row in body["held_out"])  # pop lists item 4 (3 users)
    assert body["user"] == 0


def test_compare_and_blend_on_held_out_sets(tmp_path):
    directory = write_split(tmp_path / "s")
    out = tmp_path / "cmp"
    done = run_cli("compare", "--data", str(directory), "--models", "pop,itemknn,bpr",
                   "--epochs", "2", "--mask", "train", "--seeds", "2", "--no-progress",
                   "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "results.json").read_text())
    pop = report["models"]["pop"]
    first = json.loads((out / "runs" / "seed-0" / "pop" / "metrics.json").read_text())
    assert pop["full_recall@40"] == pytest.approx(first["full_ranking"]["recall@40"])
    assert {p["metric"] for p in report["pairs"]} == {"Recall@10", "NDCG@10"}
    assert {p["protocol"] for p in report["pairs"]} == {"full"}
    text = (out / "report.md").read_text()
    assert "| NDCG@40 |" in text and "mask train" in text
    # the published split is used as given: no split or sampled-candidate settings claimed
    settings = text.split("## Settings")[1].split("## Command")[0]
    assert "mask=train" in settings and "split=" not in settings
    assert "test_fraction" not in settings and "eval_negatives" not in settings
    blended = tmp_path / "blend"
    runs = [str(out / "runs" / "seed-0" / m) for m in ("itemknn", "bpr")]
    done = run_cli("blend", *runs, "--out", str(blended))
    assert done.returncode == 0, done.stderr
    summary = json.loads((blended / "metrics.json").read_text())
    assert len(summary["search"]) == 21 and "ndcg@20" in summary["search"][0]
    best = max(summary["search"], key=lambda r: (r["ndcg@20"], r["recall@20"]))
    assert list(summary["weights"].values()) == pytest.approx(best["weights"])
    assert summary["selected"]["validation"]["ndcg@20"] == pytest.approx(best["ndcg@20"])
    table = pd.read_parquet(blended / "per_user.parquet")
    test = table[table["holdout"] == "test"]
    assert test["ndcg@40"].mean() == pytest.approx(summary["full_ranking"]["ndcg@40"])


def test_cold_users_of_a_published_split_follow_the_policy(tmp_path):
    """User 4 has test items but no training line: kept (counted) or dropped (counted)."""
    directory = write_split(tmp_path / "s", test=TEST + "4 0 1\n")
    for policy, users in (("keep", [0, 1, 2, 4]), ("drop", [0, 1, 2])):
        split = load_split(DataSpec(path=str(directory)), SplitConfig(cold_users=policy))[0]
        assert sorted(set(split.test.users.tolist())) == users
        notes = " ".join(split.protocol["notes"])
        assert "1 test users have no training interaction" in notes


def test_two_processes_evaluate_held_out_sets_as_one(tmp_path):
    """--nproc 2: each rank ranks its share of the users; the gathered figures and per-user
    table equal one process's."""
    directory = write_split(tmp_path / "s")
    args = ["train", "--data", str(directory), "--model", "mf", "--epochs", "2", "--factors",
            "4", "--batch-size", "8", "--no-progress"]  # fmt: skip
    one = run_cli(*args, "--out", str(tmp_path / "one"))
    two = run_cli(*args, "--out", str(tmp_path / "two"), "--nproc", "2", "--threads", "1")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    figures = [json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("one", "two")]
    for key in ("recall@10", "ndcg@40", "map@20", "coverage@10"):
        assert figures[0]["full_ranking"][key] == pytest.approx(figures[1]["full_ranking"][key])
    tables = [pd.read_parquet(tmp_path / r / "per_user.parquet") for r in ("one", "two")]
    pd.testing.assert_frame_equal(tables[0], tables[1], rtol=1e-6)


def test_leave_one_out_full_ranking_follows_the_mask(tmp_path):
    """On the NCF-style protocol `--mask train` lets the validation item compete in the test
    item's full ranking: a rank can only grow, and the rule is written down."""
    rng = np.random.default_rng(0)
    rows = [(u, i) for u in range(30) for i in rng.choice(40, 8, replace=False)]
    pd.DataFrame(rows, columns=["user", "item"]).to_csv(tmp_path / "e.csv", index=False)
    ranks = {}
    for mask in ("known", "train"):
        out = tmp_path / mask
        done = run_cli("train", "--data", str(tmp_path / "e.csv"), "--model", "pop",
                       "--mask", mask, "--eval-negatives", "5", "--no-progress",
                       "--out", str(out))  # fmt: skip
        assert done.returncode == 0, done.stderr
        summary = json.loads((out / "metrics.json").read_text())
        assert summary["full_ranking"]["protocol"]["mask"] == mask
        assert summary["protocol"]["mask"] == mask
        table = pd.read_parquet(out / "per_user.parquet")
        full = table[(table["protocol"] == "full") & (table["holdout"] == "test")]
        ranks[mask] = full.set_index("user")["rank"]
    assert (ranks["train"] >= ranks["known"]).all() and (ranks["train"] > ranks["known"]).any()


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(alphabet="0123456789 \t-+.xé\x00", max_size=30),
            st.lists(st.integers(-5, 2**70), min_size=1, max_size=6).map(
                lambda ids: " ".join(map(str, ids))
            ),
        ),
        max_size=8,
    ),
    st.sampled_from(["train", "valid", "test"]),
)
def test_any_file_content_is_read_or_refused_in_words(tmp_path_factory, lines, part):
    """Generated lines (junk, signs, huge ids, NUL, blank) in any file: the split is read, or a
    DataError says why; never another exception."""
    directory = write_split(tmp_path_factory.mktemp("h"), **{part: "\n".join(lines) + "\n"})
    try:
        data = load_published(find_published_files(directory))
    except DataError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert data.train.num_items >= 1
