"""Splits: leave-one-out with sampled evaluation candidates (raw events or NCF files), a global
time cut, and held-out **sets** per user (a published split used as given, or a seeded per-user
ratio) ranked among every item.

A ``Split`` holds the training interactions, a test ``Holdout`` and an optional validation
``Holdout`` (carved from training, the same way as the test), plus a ``protocol`` dict that travels
with every result so a number can always be traced to how it was measured. Its ``ranking`` says
how the holdouts are evaluated: ``sampled`` (each held-out item among its candidates) or
``sets`` (each user's held-out set among every item not masked, ``mask`` naming what is masked).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from torchcf.data.interactions import Interactions
from torchcf.data.loaders import NcfData
from torchcf.data.published import PublishedData
from torchcf.data.sampling import sample_unseen_candidates
from torchcf.errors import DataError
from torchcf.evaluation.sets import HeldOutSets
from torchcf.settings import Settings, above, between, setting

__all__ = [
    "SEED",
    "Holdout",
    "Split",
    "SplitConfig",
    "leave_one_out",
    "make_split",
    "ncf_split",
    "published_split",
    "ratio_split",
    "settings_not_used",
    "temporal_split",
]


SEED = between(0, 2**63 - 1)  # what NumPy's and torch's generators take


@dataclass(frozen=True)
class SplitConfig(Settings):
    """What defines a split and how its holdouts are ranked: shared by train, evaluate, blend
    and compare (two runs are on the same split when these and their data agree)."""

    owner: ClassVar[str] = "the split"

    seed: int = setting(
        0, "random seed (initialisation, negatives, order; and the split)", check=SEED
    )
    split_seed: int | None = setting(
        None,
        "seed of the split's random parts (validation items, sampled candidates) when it "
        "differs from --seed (default: --seed)",
        check=SEED,
    )
    split: str = setting(
        "leave-one-out",
        "leave-one-out: each user's latest interaction is test (the NCF protocol); temporal: "
        "every interaction after a global time cut is test (needs timestamps); ratio: a seeded "
        "random share of each user's items is test (and validation), ranked among all items. "
        "A directory with train.txt/test.txt (LightGCN's format) or train/test event tables is "
        "a published split, used as given",
        choices=("leave-one-out", "temporal", "ratio"),
    )
    test_fraction: float = setting(
        0.1,
        "temporal split: the latest fraction of interactions (by time) that is test; ratio "
        "split: each user's share of items that is test",
        check=above(0.0, 0.5),
    )
    valid_fraction: float | None = setting(
        None,
        "temporal and ratio splits: the fraction held out for validation (default: "
        "--test-fraction)",
        check=above(0.0, 0.5),
    )
    mask: str = setting(
        "known",
        "full ranking of held-out sets: which of the user's items are not ranked: known "
        "(training and validation items) or train (training items only, as the LightGCN "
        "code does)",
        choices=("known", "train"),
    )
    cutoffs: str = setting(
        "",
        "held-out sets: the cut-offs reported, comma-separated (default 10,20,40; -k 10,20,40 "
        "sets them too)",
        check=lambda v: _cutoffs_problem(v),
    )
    eval_negatives: int = setting(
        99, "sampled candidates per held-out item", check=between(0, 10_000_000)
    )
    validation: bool = setting(
        True,
        "hold out each user's latest remaining item for validation (--no-validation: the "
        "seed's training set exactly)",
    )
    k: int = setting(
        10,
        "cut-off of HR@k and NDCG@k; several (10,20,40) are held-out sets' cut-offs, the first "
        "one k",
        flag="-k",
        check=between(1, 100_000),
    )
    cold_users: str = setting(
        "keep",
        "NCF files and published splits: held-out users without training interactions are kept "
        "(evaluated with untrained "
        "vectors) or dropped; counted in the run's notes either way",
        choices=("keep", "drop"),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.split_seed == self.seed:  # one spelling per split: the same runs are reused
            object.__setattr__(self, "split_seed", None)

    @property
    def random_seed(self) -> int:
        """The seed the split's random parts are drawn with."""
        return self.seed if self.split_seed is None else self.split_seed

    @property
    def ks(self) -> tuple[int, ...]:
        """The cut-offs of held-out sets' full ranking: ``cutoffs`` (default 10, 20, 40)."""
        given = parse_cutoffs(self.cutoffs) if self.cutoffs else (10, 20, 40)
        return tuple(sorted(set(given)))


def parse_cutoffs(text: str) -> tuple[int, ...]:
    """``"10,20,40"`` → ``(10, 20, 40)``; a ``ConfigError``-worthy text raises ``ValueError``."""
    values = tuple(int(part) for part in text.split(","))
    if not values or any(not 1 <= v <= 100_000 for v in values):
        raise ValueError(text)
    return values


def _cutoffs_problem(text: str) -> str | None:
    if text == "":
        return None
    try:
        parse_cutoffs(text)
    except ValueError:
        return f"must be cut-offs in [1, 100000] separated by commas, got {text!r}"
    return None


@dataclass(frozen=True, eq=False)
class Holdout:
    """One held-out positive per user, ranked against ``negatives`` (``-1`` = padding).

    ``users``, ``items``: ``(n,)``; ``negatives``: ``(n, K)``.
    """

    name: str
    users: np.ndarray
    items: np.ndarray
    negatives: np.ndarray

    def __post_init__(self) -> None:
        if not (len(self.users) == len(self.items) == len(self.negatives)):
            raise DataError(f"{self.name} holdout: users, items and negatives differ in length")
        if self.negatives.ndim != 2:
            raise DataError(f"{self.name} holdout: negatives must be (n, K)")

    def __len__(self) -> int:
        return len(self.users)

    def candidates(self) -> np.ndarray:
        """``(n, 1 + K)``: the positive in column 0, then the negatives (``-1`` = padding)."""
        return np.concatenate([self.items[:, None], self.negatives], axis=1)

    def as_interactions(self, like: Interactions) -> Interactions:
        return Interactions(
            self.users,
            self.items,
            like.num_users,
            like.num_items,
            user_map=like.user_map,
            item_map=like.item_map,
        )


@dataclass(frozen=True, eq=False)
class Split:
    """Training interactions and the holdouts to evaluate on: ``ranking`` ``sampled`` (each
    held-out item among its candidates) or ``sets`` (each user's held-out items among every item
    not masked; ``mask``: ``known`` masks training and validation items at test time,
    ``train`` training items only)."""

    train: Interactions
    test: Holdout
    validation: Holdout | None
    protocol: dict[str, Any] = field(default_factory=dict)
    ranking: str = "sampled"
    mask: str = "known"

    def sets(self, holdout: Holdout) -> HeldOutSets:
        """``holdout``'s items grouped into one set per user."""
        return HeldOutSets.from_pairs(holdout.name, holdout.users, holdout.items)

    def exclude(self, holdout: Holdout) -> sp.csr_matrix:
        """The items full ranking does not rank for ``holdout``'s users: training items, and for
        the test holdout under ``mask="known"`` validation items too."""
        parts = [self.train]
        if holdout.name == "test" and self.mask == "known" and self.validation is not None:
            parts.append(self.validation.as_interactions(self.train))
        users = np.concatenate([p.users for p in parts])
        items = np.concatenate([p.items for p in parts])
        known = sp.csr_matrix(
            (np.ones(len(users), dtype=np.float32), (users, items)),
            shape=(self.num_users, self.num_items),
        )
        known.sum_duplicates()
        return known

    @property
    def num_users(self) -> int:
        return self.train.num_users

    def known_items(self) -> sp.csr_matrix:
        """Users × items: every interaction the split holds (training, validation, test), what
        full ranking must not rank a held-out item against (it un-masks each row's own item, so
        a user's other held-out items of a temporal split are not counted as misses); with
        ``mask="train"``, training interactions only (as the LightGCN code masks)."""
        users, items = [self.train.users], [self.train.items]
        for holdout in (self.validation, self.test) if self.mask == "known" else ():
            if holdout is not None:
                users.append(holdout.users)
                items.append(holdout.items)
        u, i = np.concatenate(users), np.concatenate(items)
        known = sp.csr_matrix(
            (np.ones(len(u), dtype=np.float32), (u, i)), shape=(self.num_users, self.num_items)
        )
        known.sum_duplicates()
        return known

    @property
    def num_items(self) -> int:
        return self.train.num_items

    def fingerprint(self) -> str:
        """The split's identity by content: a SHA-256 of the training pairs, the sizes and every
        holdout's users, items and candidates. Two spellings of the same files give the same
        fingerprint; a changed file gives another."""
        digest = hashlib.sha256()
        digest.update(np.array([self.num_users, self.num_items], dtype=np.int64).tobytes())
        digest.update(self.train.deduplicate().pair_keys.astype(np.int64).tobytes())
        for holdout in (self.test, self.validation):
            if holdout is None:
                digest.update(b"none")
                continue
            for part in (holdout.users, holdout.items, holdout.negatives):
                digest.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
        return digest.hexdigest()


def _order_within_users(data: Interactions, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Row order sorted by user, then by time (latest last); the rule as words."""
    rows = np.arange(len(data))
    if data.timestamps is not None:
        order = np.lexsort((rows, data.timestamps, data.users))
        return order, "latest by timestamp (ties: later line wins)"
    order = np.lexsort((rng.random(len(data)), data.users))
    return order, "one random interaction per user (seeded; the data has no timestamps)"


def _last_per_user(sorted_users: np.ndarray) -> np.ndarray:
    """Positions in a user-sorted array of each user's last entry."""
    if len(sorted_users) == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.flatnonzero(sorted_users[1:] != sorted_users[:-1])
    return np.append(change, len(sorted_users) - 1)


def _hold_out_last(
    data: Interactions, rng: np.random.Generator, min_left: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """Row indices of each eligible user's last interaction, the rows left, and the rule.

    A user is eligible when at least ``min_left`` interactions remain after holding one out.
    """
    order, rule = _order_within_users(data, rng)
    last = _last_per_user(data.users[order])
    counts = data.user_counts()
    eligible = counts[data.users[order[last]]] > min_left
    held = order[last[eligible]]
    keep = np.ones(len(data), dtype=bool)
    keep[held] = False
    return held, np.flatnonzero(keep), rule


def _holdout(
    name: str,
    known: Interactions,
    users: np.ndarray,
    items: np.ndarray,
    num: int,
    rng: np.random.Generator,
) -> Holdout:
    order = np.argsort(users, kind="stable")
    users, items = users[order], items[order]
    negatives = sample_unseen_candidates(known, users, num, rng)
    return Holdout(name, users, items, negatives)


def _add_validation(
    train: Interactions,
    known: Interactions,
    num_negatives: int,
    rng: np.random.Generator,
) -> tuple[Interactions, Holdout, str]:
    held, keep, rule = _hold_out_last(train, rng, min_left=1)
    validation = _holdout(
        "validation", known, train.users[held], train.items[held], num_negatives, rng
    )
    return train.subset(keep), validation, rule


def _candidates(num_negatives: int, num_items: int, notes: list[str]) -> int:
    """``num_negatives``, clamped to the items a user can have besides the held-out one (with a
    note: a larger request ranks against every unseen item, which is what it then means)."""
    most = max(num_items - 1, 0)
    if num_negatives > most:
        notes.append(
            f"eval_negatives {num_negatives} exceeds the {most} other items: clamped to {most} "
            "(every unseen item is a candidate)"
        )
        return most
    return num_negatives


def leave_one_out(
    data: Interactions,
    num_negatives: int = 99,
    validation: bool = True,
    seed: int = 0,
) -> Split:
    """Hold out each user's latest interaction for test (and the next latest for validation).

    Duplicated (user, item) events are collapsed first, so train ∩ test = ∅. Every user needs at
    least two distinct items (one to train on, one to test). Validation holds out a user's latest
    remaining item when at least one other remains; users with only two items are not in it.
    Candidates: ``num_negatives`` distinct items the user never interacted with, sampled once.
    """
    if len(data) == 0:
        raise DataError("no interactions")
    data = data.deduplicate()
    counts = data.user_counts()
    present = counts > 0
    single = np.flatnonzero(present & (counts < 2))
    if single.size:
        raw = (
            data.user_map.to_id(single[:1]) if data.user_map is not None else single[:1]
        ).tolist()[0]
        raise DataError(
            f"user {raw!r} has a single interaction ({single.size} such users); "
            "leave-one-out needs "
            "at least 2 per user: drop them with --min-user-interactions 2"
        )
    notes: list[str] = []
    num_negatives = _candidates(num_negatives, data.num_items, notes)
    rng = np.random.default_rng(seed)
    held, keep, rule = _hold_out_last(data, rng, min_left=0)
    test = _holdout("test", data, data.users[held], data.items[held], num_negatives, rng)
    train = data.subset(keep)
    val_holdout = None
    val_rule = None
    if validation:
        train, val_holdout, val_rule = _add_validation(train, data, num_negatives, rng)
    protocol: dict[str, Any] = {
        "split": "leave-one-out",
        "test_item": rule,
        "validation_item": val_rule,
        "candidates": f"the held-out item + {num_negatives} distinct sampled items the user never "
        "interacted with (fewer only if the user has not that many unseen items)",
        "eval_negatives": num_negatives,
        "seed": seed,
        "test_users": len(test),
        "validation_users": 0 if val_holdout is None else len(val_holdout),
        "train_interactions": len(train),
        "notes": notes,
    }
    return Split(train, test, val_holdout, protocol)


def make_split(data: Interactions | NcfData | PublishedData, config: SplitConfig) -> Split:
    """The split of ``data`` that ``config`` defines: leave-one-out of raw interactions, the
    given test items and candidates of an NCF split, a published split's sets as given, a
    temporal cut or a per-user ratio."""
    return dataclasses.replace(_make_split(data, config), mask=config.mask)


def _make_split(data: Interactions | NcfData | PublishedData, config: SplitConfig) -> Split:
    seed = config.random_seed
    if isinstance(data, PublishedData):
        if config.split != "leave-one-out":
            raise DataError(
                f"{data.files.train.parent} is a published split, used as given: it takes no "
                f"--split {config.split}"
            )
        return published_split(data, config.validation, config.cold_users, config.mask)
    if config.split == "temporal":
        if isinstance(data, NcfData):
            data = data.all_interactions()
        return temporal_split(
            data,
            config.test_fraction,
            config.eval_negatives,
            config.validation,
            seed,
            config.valid_fraction,
        )
    if config.split == "ratio":
        if isinstance(data, NcfData):
            data = data.all_interactions()
        valid = (config.valid_fraction or config.test_fraction) if config.validation else 0.0
        return ratio_split(data, config.test_fraction, valid, seed, config.mask)
    if isinstance(data, NcfData):
        return ncf_split(data, config.eval_negatives, config.validation, seed, config.cold_users)
    return leave_one_out(data, config.eval_negatives, config.validation, seed)


def _cold_users(test: Holdout, train: Interactions, policy: str, notes: list[str]) -> Holdout:
    """The test holdout with its users who have no training interaction kept or dropped, and
    their count in ``notes`` either way."""
    cold = train.user_counts()[test.users] == 0
    if not cold.any():
        return test
    if policy == "drop":
        notes.append(f"{int(cold.sum())} test users have no training interaction: dropped")
        keep = ~cold
        return Holdout(test.name, test.users[keep], test.items[keep], test.negatives[keep])
    notes.append(
        f"{int(cold.sum())} test users have no training interaction: kept, evaluated with "
        "untrained vectors (--cold-users drop leaves them out)"
    )
    return test


def ncf_split(
    ncf: NcfData,
    num_negatives: int = 99,
    validation: bool = True,
    seed: int = 0,
    cold_users: str = "keep",
) -> Split:
    """An NCF split: the given test items and negatives, plus an optional validation holdout.

    Given candidates are cleaned: duplicates, the positive itself and the user's training items
    are dropped (``ml-1m.test.negative`` lists 156 users' own test item as a "negative"); the
    counts go into ``protocol['notes']``. Test users without a training interaction are counted
    there too, and kept (``cold_users="keep"``: evaluated with untrained vectors) or dropped.
    """
    train = ncf.train.deduplicate()
    users, items = ncf.test_users, ncf.test_items
    width = max((len(n) for n in ncf.test_negatives), default=0)
    raw = np.full((len(users), width), -1, dtype=np.int64)
    lengths = np.array([len(n) for n in ncf.test_negatives])
    if width:
        mask = np.arange(width)[None, :] < lengths[:, None]
        raw[mask] = np.concatenate(ncf.test_negatives)
    valid = raw >= 0
    is_positive = valid & (raw == items[:, None])
    in_train = valid & train.contains(
        np.broadcast_to(users[:, None], raw.shape), np.maximum(raw, 0)
    )
    sorted_idx = np.argsort(
        np.where(valid, raw, -1 - np.arange(width)[None, :]), axis=1, kind="stable"
    )
    ordered = np.take_along_axis(raw, sorted_idx, axis=1)
    dup_sorted = np.zeros_like(valid)
    dup_sorted[:, 1:] = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    duplicate = np.zeros_like(valid)
    np.put_along_axis(duplicate, sorted_idx, dup_sorted, axis=1)
    drop = is_positive | in_train | duplicate
    keep = valid & ~drop
    # compact each row: kept negatives first, in their given order, then -1 padding
    new_width = int(keep.sum(axis=1).max(initial=0))
    position = np.cumsum(keep, axis=1) - 1
    negatives = np.full((len(users), new_width), -1, dtype=np.int64)
    rows = np.broadcast_to(np.arange(len(users))[:, None], raw.shape)
    negatives[rows[keep], position[keep]] = raw[keep]
    order = np.argsort(users, kind="stable")
    test = Holdout("test", users[order], items[order], negatives[order])
    notes: list[str] = []
    test = _cold_users(test, train, cold_users, notes)
    n_pos = int(is_positive.any(axis=1).sum())
    if n_pos:
        notes.append(
            f"{n_pos} users had their own test item among the given negatives; it was dropped "
            "from their candidates"
        )
    if int(duplicate.sum()):
        notes.append(f"{int(duplicate.sum())} duplicate given negatives were dropped")
    if int(in_train.sum()):
        notes.append(f"{int(in_train.sum())} given negatives were training items and were dropped")
    known = Interactions(
        np.concatenate([train.users, users]),
        np.concatenate([train.items, items]),
        train.num_users,
        train.num_items,
    )
    rng = np.random.default_rng(seed)
    val_holdout, val_rule = None, None
    if validation:
        num_negatives = _candidates(num_negatives, train.num_items, notes)
    if validation:
        train, val_holdout, val_rule = _add_validation(train, known, num_negatives, rng)
    protocol = {
        "split": "NCF files (leave-one-out)",
        "test_item": "as given in *.test.rating",
        "validation_item": val_rule,
        "candidates": f"test: the held-out item + the given negatives, cleaned (up to {width}); "
        f"validation: + {num_negatives} distinct sampled unseen items",
        "eval_negatives": width,
        "seed": seed,
        "test_users": len(test),
        "validation_users": 0 if val_holdout is None else len(val_holdout),
        "train_interactions": len(train),
        "notes": notes,
    }
    return Split(train, test, val_holdout, protocol)


def _first_events(data: Interactions) -> Interactions:
    """One event per (user, item): the earliest (a repeat is not a new discovery)."""
    assert data.timestamps is not None
    order = np.lexsort((np.arange(len(data)), data.timestamps))
    keys = data.users[order] * np.int64(data.num_items) + data.items[order]
    _, first = np.unique(keys, return_index=True)
    keep = np.sort(order[first])
    return data if len(keep) == len(data) else data.subset(keep)


def _time_cut(timestamps: np.ndarray, fraction: float) -> Any:
    """The latest timestamp of the earliest ``1 − fraction`` of the events: later is held out."""
    return np.quantile(timestamps, 1.0 - fraction, method="lower")


def temporal_split(
    data: Interactions,
    fraction: float = 0.1,
    num_negatives: int = 99,
    validation: bool = True,
    seed: int = 0,
    valid_fraction: float | None = None,
) -> Split:
    """A global time cut: every interaction after the ``1 − fraction`` quantile of the
    timestamps is test, and (``validation``) every one after the ``1 − fraction −
    valid_fraction`` quantile (``valid_fraction`` default: ``fraction``) and up to the test cut
    is validation; training is what precedes the first cut, so no training
    interaction of any user comes after a held-out one (per-user leave-last-out lets training
    see other users' future; Ji et al. 2023).

    A held-out row is one (user, item) interaction; repeats keep their earliest event. Held-out
    interactions of users without training history cannot be ranked by what the model learnt:
    they are left out of the holdout and counted apart in the protocol. Candidates: the held-out
    item + ``num_negatives`` sampled items the user never interacted with (at any time).
    """
    if data.timestamps is None:
        raise DataError(
            "--split temporal needs timestamps, and the data has none (give --time-col, or use "
            "--split leave-one-out)"
        )
    if len(data) == 0:
        raise DataError("no interactions")
    if not 0.0 < fraction <= 0.5:
        raise DataError(f"the temporal test fraction must be in (0, 0.5], got {fraction}")
    data = _first_events(data)
    notes: list[str] = []
    num_negatives = _candidates(num_negatives, data.num_items, notes)
    rng = np.random.default_rng(seed)
    t = data.timestamps
    assert t is not None
    test_cut = _time_cut(t, fraction)
    train_cut = _time_cut(t, fraction + (valid_fraction or fraction)) if validation else test_cut
    train = data.subset(t <= train_cut)
    if len(train) == 0 or not (t > test_cut).any():
        raise DataError(
            f"the temporal cut at the {1 - fraction:.0%} time quantile leaves no training or no "
            "test interaction (too many equal timestamps?)"
        )
    seen = train.user_counts() > 0
    counts: dict[str, Any] = {}

    def holdout(name: str, rows: np.ndarray) -> Holdout:
        users, items = data.users[rows], data.items[rows]
        warm = seen[users]
        counts[f"{name}_cold_users"] = int(len(np.unique(users[~warm])))
        counts[f"{name}_cold_interactions"] = int((~warm).sum())
        return _holdout(name, data, users[warm], items[warm], num_negatives, rng)

    test = holdout("test", np.flatnonzero(t > test_cut))
    val_holdout = (
        holdout("validation", np.flatnonzero((t > train_cut) & (t <= test_cut)))
        if validation
        else None
    )
    if len(test) == 0:
        raise DataError("no test interaction of a user with training history after the time cut")
    _temporal_notes(counts, train, test, val_holdout, notes)
    protocol: dict[str, Any] = {
        **_temporal_protocol(fraction, valid_fraction, test_cut, train_cut, val_holdout),
        "candidates": f"the held-out item + {num_negatives} distinct sampled items the user "
        "never interacted with; one row per held-out interaction",
        "eval_negatives": num_negatives,
        "seed": seed,
        "test_users": int(len(np.unique(test.users))),
        "test_interactions": len(test),
        "validation_users": 0 if val_holdout is None else int(len(np.unique(val_holdout.users))),
        "train_interactions": len(train),
        **counts,
        "notes": notes,
    }
    return Split(train, test, val_holdout, protocol)


def _temporal_notes(
    counts: dict[str, Any],
    train: Interactions,
    test: Holdout,
    validation: Holdout | None,
    notes: list[str],
) -> None:
    """The held-out interactions left out (users without training history) and the test
    interactions of items never trained on, as notes."""
    for name in ("test", "validation") if validation is not None else ("test",):
        if counts[f"{name}_cold_interactions"]:
            notes.append(
                f"{counts[f'{name}_cold_interactions']} {name} interactions of "
                f"{counts[f'{name}_cold_users']} users without training history: reported "
                "apart, not in the metrics"
            )
    cold_items = int((train.item_counts()[test.items] == 0).sum())
    if cold_items:
        notes.append(f"{cold_items} test interactions are of items never trained on (kept)")


def _temporal_protocol(
    fraction: float,
    valid_fraction: float | None,
    test_cut: Any,
    train_cut: Any,
    val_holdout: Holdout | None,
) -> dict[str, Any]:
    """How a temporal split cut the data, in words and numbers."""
    return {
        "split": "temporal (global time cut)",
        "test_item": f"every interaction after the {1 - fraction:.0%} time quantile "
        f"(timestamp > {test_cut})",
        "validation_item": None
        if val_holdout is None
        else f"every interaction after the {1 - fraction - (valid_fraction or fraction):.0%} "
        f"quantile (timestamp > {train_cut}) up to the test cut; training ends there",
        "test_fraction": fraction,
        "test_cut": test_cut.item(),
        "train_cut": train_cut.item(),
    }


def _set_holdout(name: str, users: np.ndarray, items: np.ndarray) -> Holdout:
    """A holdout of (user, item) pairs ordered by user then item, without sampled candidates."""
    order = np.lexsort((items, users))
    users, items = np.asarray(users)[order], np.asarray(items)[order]
    return Holdout(name, users, items, np.zeros((len(users), 0), dtype=np.int64))


_PUBLISHED = "published"
_SETS_RANKING = "held-out sets among every item (full ranking)"


def settings_not_used(protocol: dict[str, Any]) -> set[str]:
    """The split settings a split's protocol record shows it did not use (a report leaves them
    out): a published split is used as given, and held-out sets are ranked among every item,
    without sampled candidates."""
    unused = set()
    if str(protocol.get("split", "")).startswith(_PUBLISHED):
        unused |= {"split", "split_seed", "test_fraction", "valid_fraction"}
    if protocol.get("ranking") == _SETS_RANKING:
        unused.add("eval_negatives")
    return unused


def _set_protocol(
    kind: str, train: Interactions, test: Holdout, validation: Holdout | None, mask: str
) -> dict[str, Any]:
    """The protocol record of a split with held-out sets."""
    users = train.num_users
    tested = len(np.unique(test.users))
    return {
        "split": kind,
        "ranking": _SETS_RANKING,
        "mask": mask,
        "masked": "training items"
        + (" and validation items (test); training items (validation)" if mask == "known" else ""),
        "test_users": tested,
        "test_interactions": len(test),
        "users_without_test_items": users - tested,
        "validation_users": 0 if validation is None else int(len(np.unique(validation.users))),
        "validation_interactions": 0 if validation is None else len(validation),
        "train_interactions": len(train),
    }


def _cold_set_users(
    holdout: Holdout, train: Interactions, policy: str, notes: list[str]
) -> Holdout:
    """``holdout`` with the pairs of users without training items kept or dropped (counted)."""
    cold = train.user_counts()[holdout.users] == 0
    if not cold.any():
        return holdout
    n = len(np.unique(holdout.users[cold]))
    if policy == "drop":
        notes.append(f"{n} {holdout.name} users have no training interaction: dropped")
        return _set_holdout(holdout.name, holdout.users[~cold], holdout.items[~cold])
    notes.append(
        f"{n} {holdout.name} users have no training interaction: kept, evaluated with untrained "
        "vectors (--cold-users drop leaves them out)"
    )
    return holdout


def _cold_item_notes(train: Interactions, holdouts: list[Holdout], notes: list[str]) -> None:
    """Count the held-out interactions whose item training never names (kept in the catalogue
    and in |T|, as published tables count them: no model can rank them on evidence)."""
    trained = train.item_counts() > 0
    for holdout in holdouts:
        cold = int((~trained[holdout.items]).sum())
        if cold:
            notes.append(
                f"{cold} of {len(holdout)} {holdout.name} interactions name an item training never "
                "sees: kept in the catalogue and counted in the held-out sets"
            )


def published_split(
    data: PublishedData, validation: bool = True, cold_users: str = "keep", mask: str = "known"
) -> Split:
    """A published split used as given: training, validation (when the files have one and
    ``validation``) and test sets, ranked among every item not masked."""
    notes: list[str] = []
    train = data.train
    test = _cold_set_users(_set_holdout("test", *data.test), train, cold_users, notes)
    valid = None
    if validation and data.valid is not None:
        valid = _cold_set_users(_set_holdout("validation", *data.valid), train, cold_users, notes)
    if len(test) == 0:
        raise DataError(f"{data.files.test}: no test interaction left to evaluate")
    _cold_item_notes(train, [h for h in (test, valid) if h is not None], notes)
    if not validation and data.files.valid is not None:
        notes.append(f"{data.files.valid.name} not used (--no-validation)")
    files = data.files
    protocol = {
        **_set_protocol(
            f"{_PUBLISHED} ({files.format} files, used as given)", train, test, valid, mask
        ),
        "files": [str(p) for p in files.paths],
        "notes": notes,
    }
    return Split(train, test, valid, protocol, ranking="sets", mask=mask)


def _ratio_counts(n: np.ndarray, test: float, valid: float) -> tuple[np.ndarray, np.ndarray]:
    """Held-out counts per user of ``n`` items: ``round(n·test)`` test and ``round(n·valid)``
    validation items (halves up), at least one item left for training (validation gives way
    first); a user with one item is training only."""
    n_test = np.floor(n * test + 0.5).astype(np.int64)
    n_valid = np.floor(n * valid + 0.5).astype(np.int64)
    over = np.maximum(n_test + n_valid - (n - 1), 0)
    cut = np.minimum(over, n_valid)
    n_valid -= cut
    n_test -= over - cut
    return np.maximum(n_test, 0), np.maximum(n_valid, 0)


def ratio_split(
    data: Interactions,
    test_fraction: float = 0.1,
    valid_fraction: float = 0.1,
    seed: int = 0,
    mask: str = "known",
) -> Split:
    """Per user, a seeded random ``test_fraction`` of the items is test and ``valid_fraction``
    validation (``_ratio_counts``: rounded, at least one training item), ranked among every
    item not masked (RecBole's ``RO`` split; 0.1 / 0.1 is its 0.8 / 0.1 / 0.1)."""
    if len(data) == 0:
        raise DataError("no interactions")
    data = data.deduplicate()
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(data)), data.users))
    users = data.users[order]
    counts = np.bincount(users, minlength=data.num_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    place = np.arange(len(users)) - starts[users]
    n_test, n_valid = _ratio_counts(counts, test_fraction, valid_fraction)
    is_test = place < n_test[users]
    is_valid = ~is_test & (place < (n_test + n_valid)[users])
    rows = {"test": order[is_test], "validation": order[is_valid]}
    train = data.subset(np.sort(order[~is_test & ~is_valid]))
    test = _set_holdout("test", data.users[rows["test"]], data.items[rows["test"]])
    if len(test) == 0:
        raise DataError(
            f"--test-fraction {test_fraction} holds out no item of any user (users too small)"
        )
    valid = None
    if valid_fraction > 0:
        valid = _set_holdout(
            "validation", data.users[rows["validation"]], data.items[rows["validation"]]
        )
    notes: list[str] = []
    small = int(((counts > 0) & (n_test == 0)).sum())
    if small:
        notes.append(f"{small} users have too few items for a test item: training only")
    protocol = {
        **_set_protocol("ratio (per-user random holdout)", train, test, valid, mask),
        "test_fraction": test_fraction,
        "valid_fraction": valid_fraction,
        "rule": "per user: round(n·test_fraction) test and round(n·valid_fraction) validation "
        "items drawn at random (halves up), at least one left for training (validation gives "
        "way first); a user with one item trains only",
        "seed": seed,
        "notes": notes,
    }
    return Split(train, test, valid, protocol, ranking="sets", mask=mask)
