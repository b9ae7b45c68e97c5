"""Loaders on hand-written fixtures of every format, and their one-line errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from torchcf.data.loaders import (
    find_ncf_files,
    load_interactions_table,
    load_ml1m,
    load_ml100k,
    load_ncf_files,
    load_path,
    load_titles,
)
from torchcf.errors import DataError


def test_ml1m_ratings_dat(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    data = load_ml1m(path)
    assert len(data) == 3
    assert (data.num_users, data.num_items) == (2, 2)
    assert data.user_map.to_id(data.users).tolist() == [1, 1, 2]
    assert data.item_map.to_id(data.items).tolist() == [1193, 661, 1193]
    assert data.timestamps.tolist() == [978300760, 978302109, 978298413]
    assert data.ratings.tolist() == [5.0, 3.0, 4.0]


def test_min_rating_keeps_only_high_ratings(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("1::10::5::1\n1::11::2::2\n2::10::4::3\n")
    data = load_ml1m(path, min_rating=4)
    assert len(data) == 2 and data.item_map.to_id(data.items).tolist() == [10, 10]


def test_ml100k_u_data(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n")
    data = load_ml100k(path)
    assert len(data) == 3 and data.num_users == 3
    assert sorted(data.user_map.ids.tolist()) == [22, 186, 196]
    assert load_path(tmp_path).num_items == 3  # a directory holding u.data


def test_ncf_directory(tmp_path):
    (tmp_path / "toy.train.rating").write_text("0\t0\t5\n0\t1\t3\n1\t2\t4\n1\t0\t1\n")
    (tmp_path / "toy.test.rating").write_text("0\t2\t4\t978300000\n1\t1\t5\t978300001\n")
    (tmp_path / "toy.test.negative").write_text("(0,2)\t3\t4\n(1,1)\t3\t1\n")
    files = find_ncf_files(tmp_path)
    with pytest.raises(DataError, match=r"toy.test.negative: line 1: item 3 is not an item of"):
        load_ncf_files(files)  # items 3 and 4 appear in no training line
    ncf = load_ncf_files(files, allow_cold_items=True)
    assert ncf.train.num_users == 2 and ncf.train.num_items == 5
    assert ncf.test_items.tolist() == [2, 1]
    assert [n.tolist() for n in ncf.test_negatives] == [[3, 4], [3, 1]]
    assert ncf.train.timestamps is None


def test_ncf_train_with_timestamps(tmp_path):
    (tmp_path / "x.train.rating").write_text("0\t0\t5\t10\n0\t1\t3\t20\n")
    (tmp_path / "x.test.rating").write_text("0\t2\t4\t30\n")
    (tmp_path / "x.test.negative").write_text("(0,2)\t3\n")
    ncf = load_ncf_files(find_ncf_files(tmp_path), allow_cold_items=True)
    assert ncf.train.timestamps.tolist() == [10, 20]


def test_ncf_negative_file_must_match_test(tmp_path):
    (tmp_path / "x.train.rating").write_text("0\t0\t5\n")
    (tmp_path / "x.test.rating").write_text("0\t2\t4\t30\n")
    (tmp_path / "x.test.negative").write_text("(0,3)\t1\n")
    with pytest.raises(DataError, match="do not match"):
        load_ncf_files(find_ncf_files(tmp_path))


def test_ncf_bad_negative_line(tmp_path):
    (tmp_path / "x.train.rating").write_text("0\t0\t5\n")
    (tmp_path / "x.test.rating").write_text("0\t2\t4\t30\n")
    (tmp_path / "x.test.negative").write_text("0,2\t1\n")
    with pytest.raises(DataError, match=r"x.test.negative: line 1"):
        load_ncf_files(find_ncf_files(tmp_path))


def _ncf(path, train: str, test: str, negative: str):
    (path / "s.train.rating").write_text(train)
    (path / "s.test.rating").write_text(test)
    (path / "s.test.negative").write_text(negative)
    return find_ncf_files(path)


def test_ncf_items_outside_the_training_catalogue_are_named(tmp_path):
    train = "".join(f"{u}\t{i}\t5\n" for u in range(3) for i in range(4) if i != u)
    files = _ncf(tmp_path, train, "0\t0\t5\t1\n1\t1\t5\t1\n", "(0,0)\t2\t3\n(1,1)\t999999\n")
    with pytest.raises(DataError) as error:
        load_ncf_files(files)
    assert "s.test.negative: line 2: item 999999" in str(error.value)
    assert "0..3" in str(error.value) and "--allow-cold-items" in str(error.value)
    assert load_ncf_files(files, allow_cold_items=True).train.num_items == 1_000_000
    cold_test = _ncf(tmp_path, train, "0\t0\t5\t1\n1\t7\t5\t1\n", "(0,0)\t2\n(1,7)\t3\n")
    with pytest.raises(DataError, match=r"s.test.rating: line 2: item 7"):
        load_ncf_files(cold_test)


def test_ncf_test_pairs_in_the_training_file_are_a_leak(tmp_path):
    train = "0\t0\t5\n0\t1\t5\n1\t1\t5\n1\t2\t5\n"
    files = _ncf(tmp_path, train, "0\t2\t5\t1\n1\t2\t5\t1\n", "(0,2)\t0\n(1,2)\t0\n")
    with pytest.raises(DataError) as error:
        load_ncf_files(files)
    assert "1 test pairs are also in s.train.rating" in str(error.value)
    assert "line 2, user 1, item 2" in str(error.value) and "leaks" in str(error.value)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_generic_tables(tmp_path, suffix):
    frame = pd.DataFrame(
        {
            "uid": ["a", "a", "b", "c"],
            "iid": [10, 20, 10, 30],
            "stars": [5.0, 1.0, 4.0, 3.0],
            "when": [3, 1, 2, 4],
        }
    )
    path = tmp_path / f"events{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False)
    data = load_interactions_table(
        path, user_col="uid", item_col="iid", rating_col="stars", time_col="when", min_rating=3
    )
    assert len(data) == 3
    assert data.user_map.to_id(data.users).tolist() == ["a", "b", "c"]
    assert data.item_map.to_id(data.items).tolist() == [10, 10, 30]
    assert data.timestamps.tolist() == [3, 2, 4]


def test_table_with_dates(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user,item,time\n1,2,2020-01-01T00:00:10Z\n1,3,2020-01-01T00:00:00Z\n")
    data = load_interactions_table(path, time_col="time")
    assert data.timestamps.tolist() == [1577836810, 1577836800]


def test_table_missing_column(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user,product\n1,2\n")
    with pytest.raises(DataError, match=r"no item column 'item' \(columns: user, product\)"):
        load_interactions_table(path)


def test_titles_both_formats(tmp_path):
    movies = tmp_path / "movies.dat"
    movies.write_bytes(
        "1::Toy Story (1995)::Animation\n2::Caf\xe9 (1999)::Drama\n".encode("latin-1")
    )
    assert load_titles(movies) == {1: "Toy Story (1995)", 2: "Caf\xe9 (1999)"}
    uitem = tmp_path / "u.item"
    uitem.write_bytes(b"1|Toy Story (1995)|01-Jan-1995||http://x|0|0\n")
    assert load_titles(uitem) == {1: "Toy Story (1995)"}


@pytest.mark.parametrize(
    "content, message",
    [
        ("1::2::3::4\n1::2::3::4::5\n", r"line 2: expected at most 4 fields, saw 5"),
        ("1::2::3::4\n1::x::3::4\n", r"line 2: field 'item' not a number: 'x'"),
        ("1::2::3::4\n\n1::2\n", r"line 3: field 'rating' missing"),
        ("", "empty file"),
        ("\n\n", "empty file"),
    ],
)
def test_malformed_ml1m(tmp_path, content, message):
    path = tmp_path / "ratings.dat"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_ml1m(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_path(tmp_path / "nope.csv")


def test_directory_without_data(tmp_path):
    with pytest.raises(DataError, match="no ratings.dat, u.data"):
        load_path(tmp_path)


def test_real_ml100k_if_present():
    from conftest import shared_data

    path = shared_data() / "ml-100k" / "u.data"
    if not path.exists():
        pytest.skip(f"{path} not present")
    data = load_ml100k(path)
    assert (len(data), data.num_users, data.num_items) == (100_000, 943, 1682)
    assert np.all(data.user_counts() >= 20)
