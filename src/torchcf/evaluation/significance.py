"""Is a difference real? Paired comparisons of two models on the same users.

Per-user results (``protocols.per_user``) of two models on the same holdout are paired by user.
For each metric: the mean difference with a paired bootstrap 95 % confidence interval over users
(the percentile interval ``scipy.stats.bootstrap`` gives under the same seed, computed by
``bootstrap_ci`` from resample counts shared by every metric and pair), and a paired test: the
exact sign test on the users whose hit differs (McNemar's exact form, ``scipy.stats.binomtest``)
for HR, the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``) for NDCG. ``holm`` adjusts
p-values for several comparisons.

Over several seeds: ``over_seeds`` summarises one model's metric (mean, standard deviation, a
95 % t interval), ``seed_difference`` tests two models' per-seed metrics paired by seed
(``scipy.stats.ttest_rel``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from torchcf.errors import DataError

__all__ = [
    "PairedDifference",
    "bootstrap_ci",
    "SeedDifference",
    "SeedSummary",
    "holm",
    "over_seeds",
    "paired_difference",
    "paired_metrics",
    "seed_difference",
    "significant",
    "verdict",
]


class _Record:
    """A frozen dataclass that reads out as a plain dict (results.json)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class PairedDifference(_Record):
    """``a − b`` of one metric over the same users: means, the difference, its bootstrap CI,
    the paired test's name and p-value."""

    metric: str
    users: int
    a: float
    b: float
    delta: float
    ci_low: float
    ci_high: float
    test: str
    p_value: float

    def words(self, a: str, b: str, alpha: float = 0.05, p_value: float | None = None) -> str:
        """``"GMF − MF: ΔHR@10 +0.002 [−0.004, +0.008], p = 0.52: no evidence of a difference
        at 5 %"`` (``p_value``: an adjusted one, e.g. Holm's, in place of the raw)."""
        p = self.p_value if p_value is None else p_value
        return (
            f"{a} − {b}: Δ{self.metric} {self.delta:+.4f} [{self.ci_low:+.4f}, "
            f"{self.ci_high:+.4f}], p = {p:.3g}: "
            + verdict(a, b, self.delta, self.ci_low, self.ci_high, p, alpha)
        )


def significant(ci_low: float, ci_high: float, p_value: float, alpha: float = 0.05) -> bool:
    """A difference is called significant when its test rejects at ``alpha`` **and** its CI
    excludes 0 (a rank test and the mean can disagree; then no side is called better)."""
    return bool(p_value < alpha and (ci_low > 0.0 or ci_high < 0.0))


def verdict(
    a: str, b: str, delta: float, ci_low: float, ci_high: float, p_value: float, alpha: float
) -> str:
    """The words for ``a − b``: who is better, no clear difference, or no evidence of one."""
    if significant(ci_low, ci_high, p_value, alpha):
        return f"{a if delta > 0 else b} better at {alpha:.0%}"
    if p_value < alpha:
        return (
            f"no clear difference at {alpha:.0%} (the paired test rejects, but the mean's CI "
            "includes 0)"
        )
    return f"no evidence of a difference at {alpha:.0%}"


_CACHED_COUNTS = 1 << 27  # resamples x users up to which the resample counts are kept (uint8)
_counts_cache: dict[tuple[int, int, int], list[np.ndarray]] = {}


def _resample_counts(n: int, seed: int, resamples: int, chunk: int = 500) -> list[np.ndarray]:
    """How often each of ``n`` users is drawn in each resample, ``(rows, n)`` chunks of uint8:
    the draws of ``scipy.stats.bootstrap`` (``rng.integers(0, n, (resamples, n))`` from
    ``default_rng(seed)``, drawn row after row). Kept for the last (n, seed, resamples) when
    small, as every metric and pair of a comparison resamples the same users."""
    key = (n, seed, resamples)
    if key in _counts_cache:
        return _counts_cache[key]
    rng = np.random.default_rng(seed)
    offsets = (np.arange(chunk, dtype=np.int64) * n)[:, None]
    out = []
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        drawn = rng.integers(0, n, (rows, n)) + offsets[:rows]
        counts = np.bincount(drawn.ravel(), minlength=rows * n).reshape(rows, n)
        out.append(counts.astype(np.uint8 if counts.max() < 256 else np.uint16))
    if resamples * n <= _CACHED_COUNTS:
        _counts_cache.clear()
        _counts_cache[key] = out
    return out


def bootstrap_ci(
    values: np.ndarray, seed: int = 0, resamples: int = 10_000, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """The percentile bootstrap ``level`` interval of the mean of each column of ``values``
    ``(n, m)``, every column over the same resamples of the ``n`` rows: for each column what
    ``scipy.stats.bootstrap((column,), np.mean, method="percentile", random_state=
    np.random.default_rng(seed))`` gives (tested equal), in one pass (a mean of a resample is
    its counts times the values)."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    means = np.concatenate([c @ values / n for c in _resample_counts(n, seed, resamples)])
    tail = (1 - level) / 2 * 100
    return np.percentile(means, tail, axis=0), np.percentile(means, 100 - tail, axis=0)


def paired_difference(
    a: np.ndarray,
    b: np.ndarray,
    metric: str,
    kind: str,
    seed: int = 0,
    resamples: int = 10_000,
    ci: tuple[float, float] | None = None,
) -> PairedDifference:
    """``a − b`` of per-user values (the same users, in the same order). ``kind`` ``"hit"``
    (0/1 values: exact sign test on the discordant users) or ``"ndcg"`` (Wilcoxon). ``ci``:
    the difference's bootstrap interval when the caller computed it (``bootstrap_ci``)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise DataError(f"paired values need the same users, got {a.shape} and {b.shape}")
    diff = a - b
    if np.all(diff == diff[0]):  # no spread: the bootstrap has nothing to resample
        low = high = float(diff[0])
    elif ci is not None:
        low, high = ci
    else:
        lows, highs = bootstrap_ci(diff[:, None], seed, resamples)
        low, high = float(lows[0]), float(highs[0])
    if kind == "hit":
        better, worse = int((diff > 0).sum()), int((diff < 0).sum())
        test = "exact sign test on discordant users (McNemar)"
        p = 1.0 if better + worse == 0 else stats.binomtest(better, better + worse).pvalue
    elif kind == "ndcg":
        test = "Wilcoxon signed-rank"
        p = 1.0 if not np.any(diff) else stats.wilcoxon(a, b).pvalue
    else:
        raise DataError(f"kind must be hit or ndcg, got {kind!r}")
    return PairedDifference(
        metric, len(a), float(a.mean()), float(b.mean()), float(diff.mean()), low, high, test,
        float(p),
    )  # fmt: skip


def paired_metrics(
    a: pd.DataFrame, b: pd.DataFrame, k: int, seed: int = 0, resamples: int = 10_000
) -> dict[tuple[str, str], list[PairedDifference]]:
    """HR@k and NDCG@k differences of two runs' per-user tables (for held-out sets, Recall@k
    and NDCG@k, both Wilcoxon), per (holdout, protocol) both have, paired by user (a user
    missing from one table is an error: not the same split)."""
    out: dict[tuple[str, str], list[PairedDifference]] = {}
    sets = "held_out" in a.columns  # one row per user and held-out set (evaluation.sets)
    keys = ["holdout", "protocol", "user"] + ([] if sets else ["item"])
    columns = (
        ((f"recall@{k}", "Recall", "ndcg"), (f"ndcg@{k}", "NDCG", "ndcg"))
        if sets
        else (("hit", "HR", "hit"), ("ndcg", "NDCG", "ndcg"))
    )
    missing = [c for c, _, _ in columns if c not in a.columns or c not in b.columns]
    if missing:
        raise DataError(f"the per-user tables have no {', '.join(missing)} (another cut-off)")
    joined = a.merge(b, on=keys, how="outer", suffixes=("_a", "_b"), indicator=True)
    if (joined["_merge"] != "both").any():
        raise DataError("the runs were not evaluated on the same users: not the same split")
    for (holdout, protocol), rows in joined.groupby(["holdout", "protocol"], sort=False):
        diffs = np.stack(
            [
                rows[f"{c}_a"].to_numpy(float) - rows[f"{c}_b"].to_numpy(float)
                for c, _, _ in columns
            ],
            axis=1,
        )
        lows, highs = bootstrap_ci(diffs, seed, resamples)
        out[(str(holdout), str(protocol))] = [
            paired_difference(
                rows[f"{column}_a"].to_numpy(),
                rows[f"{column}_b"].to_numpy(),
                f"{name}@{k}",
                kind,
                seed,
                resamples,
                ci=(float(lows[j]), float(highs[j])),
            )
            for j, (column, name, kind) in enumerate(columns)
        ]
    return out


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` for their number (SciPy has none):
    ``p_(i) · (m − i + 1)``, made monotone, capped at 1, in the input's order."""
    order = np.argsort(p_values, kind="stable")
    m = len(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


@dataclass(frozen=True)
class SeedSummary(_Record):
    """One metric over seeds: mean, sample standard deviation and the 95 % t interval of the
    mean (``nan`` with a single seed)."""

    seeds: int
    mean: float
    std: float
    ci_low: float
    ci_high: float

    def text(self) -> str:
        """``0.7046 ± 0.0031 [0.7007, 0.7085]`` (the mean alone for one seed)."""
        if self.seeds < 2:
            return f"{self.mean:.4f}"
        return f"{self.mean:.4f} ± {self.std:.4f} [{self.ci_low:.4f}, {self.ci_high:.4f}]"


def over_seeds(values: Sequence[float] | np.ndarray) -> SeedSummary:
    """``values`` (one per seed) as mean ± std with a 95 % confidence interval of the mean."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or not len(x):
        raise DataError("over_seeds needs one value per seed")
    mean = float(x.mean())
    if len(x) < 2:
        return SeedSummary(1, mean, float("nan"), float("nan"), float("nan"))
    std = float(x.std(ddof=1))
    if std == 0.0:
        return SeedSummary(len(x), mean, 0.0, mean, mean)
    low, high = stats.t.interval(0.95, len(x) - 1, loc=mean, scale=std / np.sqrt(len(x)))
    return SeedSummary(len(x), mean, std, float(low), float(high))


@dataclass(frozen=True)
class SeedDifference(_Record):
    """``a − b`` of one metric paired by seed: the mean difference, its 95 % t interval and the
    paired t-test's p-value (``nan`` below two seeds)."""

    metric: str
    seeds: int
    delta: float
    ci_low: float
    ci_high: float
    p_value: float


def seed_difference(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, metric: str
) -> SeedDifference:
    """Two models' metric, one value per seed in the same seed order: ``ttest_rel``."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or not len(x):
        raise DataError(f"seed values need the same seeds, got {x.shape} and {y.shape}")
    diff = x - y
    delta = float(diff.mean())
    if len(x) < 2:
        return SeedDifference(metric, 1, delta, float("nan"), float("nan"), float("nan"))
    if np.all(diff == diff[0]):  # no spread: the t statistic is undefined
        p = 1.0 if delta == 0.0 else 0.0
        return SeedDifference(metric, len(x), delta, delta, delta, p)
    result = stats.ttest_rel(x, y)
    ci = result.confidence_interval(0.95)
    return SeedDifference(
        metric, len(x), delta, float(ci.low), float(ci.high), float(result.pvalue)
    )
