"""Leave-one-out split properties and NCF candidate cleaning."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import planted
from torchcf.data.interactions import Interactions
from torchcf.data.loaders import NcfData
from torchcf.data.split import leave_one_out, ncf_split
from torchcf.errors import DataError


def _pairs(users, items):
    return set(zip(np.asarray(users).tolist(), np.asarray(items).tolist(), strict=True))


def test_test_item_is_latest_and_disjoint():
    data = planted()
    split = leave_one_out(data, num_negatives=20, validation=True, seed=1)
    ts = {(u, i): t for u, i, t in zip(data.users, data.items, data.timestamps, strict=True)}
    for u, i in zip(split.test.users, split.test.items, strict=True):
        user_ts = data.timestamps[data.users == u]
        assert ts[(u, i)] == user_ts.max()
    for u, i in zip(split.validation.users, split.validation.items, strict=True):
        remaining = data.timestamps[(data.users == u) & (data.items != split.test.items[u])]
        assert ts[(u, i)] == remaining.max()
    train = _pairs(split.train.users, split.train.items)
    assert not train & _pairs(split.test.users, split.test.items)
    assert not train & _pairs(split.validation.users, split.validation.items)
    assert len(train) + 2 * data.num_users == len(data)


def test_candidates_are_unseen_distinct_and_seeded():
    data = planted()
    split = leave_one_out(data, num_negatives=30, seed=3)
    for holdout in (split.test, split.validation):
        negs = holdout.negatives
        assert negs.shape == (data.num_users, 30)
        assert (negs >= 0).all()
        assert not data.contains(np.broadcast_to(holdout.users[:, None], negs.shape), negs).any()
        assert all(len(set(row)) == len(row) for row in negs.tolist())
    again = leave_one_out(data, num_negatives=30, seed=3)
    assert np.array_equal(again.test.negatives, split.test.negatives)
    other = leave_one_out(data, num_negatives=30, seed=4)
    assert not np.array_equal(other.test.negatives, split.test.negatives)


def test_users_with_few_unseen_items_get_all_of_them():
    # 6 items; user 0 has seen 4, so only 2 candidates exist
    data = Interactions(
        np.array([0, 0, 0, 0, 1, 1]),
        np.array([0, 1, 2, 3, 0, 1]),
        2,
        6,
        timestamps=np.arange(6),
    )
    split = leave_one_out(data, num_negatives=4, validation=False)
    row = split.test.negatives[0]
    assert sorted(row[row >= 0].tolist()) == [4, 5] and (row[2:] == -1).all()


def test_timestamp_ties_are_broken_by_line_order():
    data = Interactions(
        np.array([0, 0, 0]), np.array([2, 0, 1]), 1, 5, timestamps=np.array([7, 7, 7])
    )
    split = leave_one_out(data, num_negatives=1, validation=True)
    assert split.test.items.tolist() == [1] and split.validation.items.tolist() == [0]


def test_single_interaction_user_is_an_error():
    data = Interactions(np.array([0, 0, 1]), np.array([0, 1, 1]), 2, 3, timestamps=np.arange(3))
    with pytest.raises(DataError, match="single interaction"):
        leave_one_out(data)


def test_two_item_users_are_not_in_validation():
    data = Interactions(
        np.array([0, 0, 1, 1, 1]), np.array([0, 1, 0, 1, 2]), 2, 4, timestamps=np.arange(5)
    )
    split = leave_one_out(data, num_negatives=1)
    assert split.validation.users.tolist() == [1]
    assert split.protocol["validation_users"] == 1


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), per_user=st.integers(2, 9))
def test_split_properties_hold_for_random_data(seed, per_user):
    data = planted(num_users=15, num_items=40, groups=2, per_user=per_user, seed=seed)
    split = leave_one_out(data, num_negatives=10, seed=seed)
    assert len(split.test) == 15
    assert not _pairs(split.train.users, split.train.items) & _pairs(
        split.test.users, split.test.items
    )
    negs = split.test.negatives
    valid = negs >= 0
    assert not (
        data.contains(np.broadcast_to(split.test.users[:, None], negs.shape), np.maximum(negs, 0))
        & valid
    ).any()


def test_ncf_split_cleans_candidates():
    train = Interactions(np.array([0, 0, 1]), np.array([0, 1, 2]), 2, 6)
    ncf = NcfData(
        train=train,
        test_users=np.array([0, 1]),
        test_items=np.array([3, 4]),
        test_negatives=[np.array([4, 3, 5, 5]), np.array([0, 1, 2])],
    )
    split = ncf_split(ncf, num_negatives=2, validation=False)
    assert split.test.negatives[0].tolist() == [4, 5]  # positive and duplicate dropped
    assert split.test.negatives[1].tolist() == [0, 1]  # training item 2 dropped
    notes = " ".join(split.protocol["notes"])
    assert "1 users had their own test item" in notes
    assert "1 duplicate" in notes and "1 given negatives were training items" in notes


def test_real_ncf_split_if_present():
    from conftest import shared_data
    from torchcf.data.loaders import find_ncf_files, load_ncf_files

    directory = shared_data() / "ml-1m" / "ncf"
    if not directory.exists():
        pytest.skip(f"{directory} not present")
    split = ncf_split(load_ncf_files(find_ncf_files(directory)), validation=True, seed=0)
    assert len(split.test) == 6040 and len(split.validation) == 6040
    assert len(split.train) == 994_169 - 6040
    # exactly the 156 documented users lose their own test item from the candidates
    assert ((split.test.negatives >= 0).sum(axis=1) == 98).sum() == 156
    assert "156 users" in split.protocol["notes"][0]


def test_more_candidates_than_items_are_clamped_with_a_note():
    data = Interactions(np.array([0, 0, 0, 1, 1, 1]), np.array([0, 1, 2, 1, 2, 3]), 2, 6)
    split = leave_one_out(data, num_negatives=5000, validation=False, seed=0)
    assert split.protocol["eval_negatives"] == 5
    assert any(
        "eval_negatives 5000 exceeds the 5 other items" in n for n in split.protocol["notes"]
    )
    assert split.test.negatives.shape == (2, 5)


def test_ncf_test_users_without_training_are_counted():
    train = Interactions(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 2]), 3, 5)
    ncf = NcfData(train, np.array([0, 2]), np.array([2, 3]), [np.array([4]), np.array([4])])
    split = ncf_split(ncf, num_negatives=2, validation=False)
    assert any(
        "1 test users have no training interaction: kept" in n for n in split.protocol["notes"]
    )
    assert split.test.users.tolist() == [0, 2]
    dropped = ncf_split(ncf, num_negatives=2, validation=False, cold_users="drop")
    assert dropped.test.users.tolist() == [0] and "dropped" in dropped.protocol["notes"][0]
