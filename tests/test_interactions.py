"""The Interactions currency and the IdMap."""

from __future__ import annotations

import numpy as np
import pytest

from torchcf.data.interactions import IdMap, Interactions
from torchcf.errors import DataError


def test_validation():
    with pytest.raises(DataError, match="out of range"):
        Interactions(np.array([0, 3]), np.array([0, 1]), 3, 2)
    with pytest.raises(DataError, match="differ in length"):
        Interactions(np.array([0]), np.array([0, 1]), 3, 2)
    with pytest.raises(DataError, match="integer"):
        Interactions(np.array([0.5]), np.array([0]), 3, 2)


def test_immutable_and_csr():
    data = Interactions(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 2]), 2, 3)
    with pytest.raises(ValueError):
        data.users[0] = 1
    assert data.csr.toarray().tolist() == [[0, 1, 0], [1, 0, 1]]
    assert data.contains(np.array([0, 0, 1]), np.array([0, 1, 2])).tolist() == [False, True, True]


def test_contains_sparse_path(monkeypatch):
    import torchcf.data.interactions as mod

    monkeypatch.setattr(mod, "_DENSE_LIMIT", 0)
    data = Interactions(np.array([0, 1]), np.array([2, 0]), 2, 3)
    assert data.contains(np.array([[0, 1], [1, 0]]), np.array([[2, 0], [2, 0]])).tolist() == [
        [True, True],
        [False, False],
    ]


def test_deduplicate_keeps_latest():
    data = Interactions(
        np.array([0, 0, 0]), np.array([1, 2, 1]), 1, 3, timestamps=np.array([5, 6, 1])
    )
    dedup = data.deduplicate()
    assert dedup.items.tolist() == [1, 2] and dedup.timestamps.tolist() == [5, 6]


def test_idmap_round_trip_and_errors():
    ids = IdMap(np.array(["b", "a", "c"]))
    assert ids.to_index(["c", "b"]).tolist() == [2, 0]
    assert ids.to_id([1]).tolist() == ["a"]
    with pytest.raises(DataError, match="unknown user 'zz'"):
        ids.to_index(["zz"], what="user")
    assert ids.to_index(["zz"], strict=False).tolist() == [-1]
    ints = IdMap(np.array([10, 20]))
    assert ints.to_index(["20"]).tolist() == [1]  # ids typed on a command line
    assert IdMap.from_json(ints.to_json()) == ints
    with pytest.raises(DataError, match="unique"):
        IdMap(np.array([1, 1]))


def test_idmap_canonical_turns_text_into_the_id_it_names():
    numbers = IdMap(np.array([5, 42, 7]))
    assert numbers.canonical("42") == 42 and isinstance(numbers.canonical("42"), int)
    assert numbers.canonical(7) == 7
    assert numbers.canonical("nope") == "nope" and numbers.canonical("99") == "99"  # unknown
    words = IdMap(np.array(["a", "b"]))
    assert words.canonical("b") == "b" and isinstance(words.canonical("b"), str)


def test_contains_large_queries_sorted_path(monkeypatch):
    """Many keys against a large (no dense mask) table: the sorted lookup answers the same."""
    import torchcf.data.interactions as module

    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 300, 5000), rng.integers(0, 400, 5000)
    data = Interactions(users, items, 300, 400)
    monkeypatch.setattr(module, "_DENSE_LIMIT", 0)
    q_users, q_items = rng.integers(0, 300, (60, 50)), rng.integers(0, 400, (60, 50))
    q_users[0, :10], q_items[0, :10] = users[:10], items[:10]
    plain = Interactions(users, items, 300, 400).contains(q_users, q_items)
    monkeypatch.setattr(module, "_SORTED_LOOKUP", 100)
    sorted_path = data.contains(q_users, q_items)
    assert sorted_path.shape == (60, 50) and sorted_path[0, :10].all()
    assert np.array_equal(sorted_path, plain)
    truth = {(u, i) for u, i in zip(users.tolist(), items.tolist(), strict=True)}
    expected = [(u, i) in truth for u, i in zip(q_users.ravel(), q_items.ravel(), strict=True)]
    assert sorted_path.ravel().tolist() == expected
