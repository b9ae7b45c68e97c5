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
