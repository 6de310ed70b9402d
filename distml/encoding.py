"""Column summaries merged across partitions, and the fitted transformer built from them.

Worker side: bounded, mergeable summaries of one partition's columns —
moments, category counts (capped), a HyperLogLog distinct-count sketch (to
name a column's cardinality when it is too high to keep) and a log-bucket
quantile sketch (for median imputation). Each merges associatively, so the
tree reduction of the statistics pass gives one answer whatever its shape.

Client side: ``plan_columns`` decides categories, fill values and scaler
moments from the merged statistics; ``build_transformer`` turns them into a
plain scikit-learn ``ColumnTransformer`` (imputers, scaler, one-hot or
ordinal encoder) whose fitted state is exactly what the pass measured.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.errors import DataError

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.compose import ColumnTransformer

    from distml.data import Dataset
    from distml.features import PartStats, StatsPlan

HLL_BITS = 12  # 4096 one-byte registers per column: about 1.6% error on a cardinality
SKETCH_ACCURACY = 0.01  # relative error of a quantile from the log-bucket sketch
SKETCH_BUCKETS = 2048  # most buckets kept per sign; the smallest magnitudes collapse first

# --- runs on workers ---------------------------------------------------------


def summarize_categories(values: pd.Series, cap: int) -> tuple[dict[Any, int], np.ndarray]:
    """Non-null value counts of a column (at most ``cap``, the most frequent) and HyperLogLog
    registers of all its distinct values, so a cardinality above the cap can still be named."""
    counts = values.value_counts(dropna=True, sort=False)
    counts = counts[counts > 0]  # a pandas categorical lists unused categories with count 0
    out = {_plain(k): int(v) for k, v in counts.items()}
    return cap_counts(out, cap), hll_of(counts.index.to_numpy(dtype=object))


def cap_counts(counts: dict[Any, int], cap: int) -> dict[Any, int]:
    """The ``cap`` most frequent entries (ties by value, so the result is deterministic)."""
    if len(counts) <= cap:
        return counts
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    return dict(ranked[:cap])


def merge_counts(a: dict[Any, int], b: dict[Any, int], cap: int) -> dict[Any, int]:
    """Add two partitions' category counts, bounded to ``cap`` entries."""
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return cap_counts(out, cap)


def _plain(value: Any) -> Any:
    """numpy scalars to Python ones, so categories pickle small and compare equal across files."""
    return value.item() if isinstance(value, np.generic) else value


def hll_of(distinct: np.ndarray) -> np.ndarray:
    """HyperLogLog registers of some values (pandas' fixed-key hash: the same in every process)."""
    import pandas as pd

    registers = np.zeros(2**HLL_BITS, dtype=np.uint8)
    if not len(distinct):
        return registers
    hashed = pd.util.hash_array(np.array([str(v) for v in distinct], dtype=object))
    index = (hashed >> np.uint64(64 - HLL_BITS)).astype(np.int64)
    rest = (hashed << np.uint64(HLL_BITS)) | np.uint64(1 << (HLL_BITS - 1))  # a set bit bounds the rank
    top_bit = np.minimum(np.floor(np.log2(rest.astype(np.float64))), 63)  # float rounding can reach 2**64
    rank = (64 - top_bit).astype(np.uint8)
    np.maximum.at(registers, index, rank)
    return registers


def hll_count(registers: np.ndarray) -> int:
    """Estimated number of distinct values (with the small-range correction)."""
    m = float(len(registers))
    estimate = 0.7213 / (1 + 1.079 / m) * m * m / np.sum(2.0 ** -registers.astype(np.float64))
    zeros = int(np.sum(registers == 0))
    if estimate <= 2.5 * m and zeros:
        estimate = m * np.log(m / zeros)
    return int(round(estimate))


@dataclass
class Moments:
    """Count, mean and sum of squared deviations per column (Chan et al.'s parallel merge)."""

    n: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        n = np.sum(~np.isnan(values), axis=0).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, np.nansum(values, axis=0) / np.maximum(n, 1), 0.0)
            m2 = np.nansum((values - mean) ** 2, axis=0)
        return cls(n, mean, m2)

    def merge(self, other: Moments) -> Moments:
        n = self.n + other.n
        delta = other.mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.where(n > 0, other.n / np.maximum(n, 1), 0.0)
        return Moments(n, self.mean + delta * w, self.m2 + other.m2 + delta**2 * self.n * w)

    @property
    def var(self) -> np.ndarray:
        return np.where(self.n > 0, self.m2 / np.maximum(self.n, 1), 0.0)


@dataclass
class QuantileSketch:
    """Counts of values in log-spaced buckets (DDSketch's idea): mergeable, relative error bounded.

    Written here rather than taken from a library because it is thirty lines and
    must travel inside the statistics pass's merged value.
    """

    pos: dict[int, int]
    neg: dict[int, int]
    zeros: int

    @staticmethod
    def _keys(magnitudes: np.ndarray) -> dict[int, int]:
        gamma = (1 + SKETCH_ACCURACY) / (1 - SKETCH_ACCURACY)
        keys, counts = np.unique(np.ceil(np.log(magnitudes) / np.log(gamma)).astype(np.int64), return_counts=True)
        return dict(zip(keys.tolist(), counts.tolist()))

    @classmethod
    def of(cls, values: np.ndarray) -> QuantileSketch:
        values = values[np.isfinite(values)]
        tiny = np.abs(values) < 1e-300
        return cls(cls._keys(values[(values > 0) & ~tiny]), cls._keys(-values[(values < 0) & ~tiny]),
                   int(tiny.sum()))

    def merge(self, other: QuantileSketch) -> QuantileSketch:
        return QuantileSketch(_collapse(merge_counts(self.pos, other.pos, 1 << 62)),
                              _collapse(merge_counts(self.neg, other.neg, 1 << 62)), self.zeros + other.zeros)

    def quantile(self, q: float) -> float:
        """The value at rank ``q`` (0..1), within SKETCH_ACCURACY relative error."""
        gamma = (1 + SKETCH_ACCURACY) / (1 - SKETCH_ACCURACY)
        ordered = ([(-2 * gamma**k / (gamma + 1), n) for k, n in sorted(self.neg.items(), reverse=True)]
                   + [(0.0, self.zeros)] + [(2 * gamma**k / (gamma + 1), n) for k, n in sorted(self.pos.items())])
        total = sum(n for _, n in ordered)
        if total == 0:
            return float("nan")
        rank, seen = q * (total - 1), 0
        for value, n in ordered:
            seen += n
            if seen > rank:
                return float(value)
        return float(ordered[-1][0])


def _collapse(buckets: dict[int, int]) -> dict[int, int]:
    """Fold the smallest-magnitude buckets into one so a sketch stays bounded."""
    if len(buckets) <= SKETCH_BUCKETS:
        return buckets
    keys = sorted(buckets)
    cut = keys[len(keys) - SKETCH_BUCKETS]
    out = {k: n for k, n in buckets.items() if k > cut}
    out[cut] = sum(n for k, n in buckets.items() if k <= cut)
    return out


# --- runs on the client ------------------------------------------------------


@dataclass
class ColumnPlan:
    """What the transformer needs to know, column by column, from the statistics pass."""

    numeric: list[str]
    categorical: list[str]
    fill: dict[str, Any]  # imputation value per column (mean/median, or the most frequent category)
    center: np.ndarray  # numeric: mean after imputation
    var: np.ndarray  # numeric: variance after imputation
    n: np.ndarray  # numeric: rows the scaler saw
    categories: dict[str, list[Any]]  # categorical: the categories the encoder knows
    strategy: str  # "mean" or "median"
    encoding: str  # "onehot" or "ordinal"


def plan_columns(dataset: Dataset, stats: PartStats, plan: StatsPlan, encoding: str) -> ColumnPlan:
    """Categories, fill values and scaler moments for each feature, from the merged statistics."""
    fill: dict[str, Any] = {}
    categories: dict[str, list[Any]] = {}
    for column in plan.categorical:
        counts = stats.categories[column]
        if not counts:
            raise DataError(f"{dataset.url}: column '{column}' has no values in the training rows; "
                            "expected at least one category")
        if len(counts) > dataset.max_categories:
            if dataset.rare_categories != "other":
                found = max(hll_count(stats.distinct[column]), len(counts))
                raise DataError(f"{dataset.url}: column '{column}' has about {found:,} distinct values, more than "
                                f"data.max_categories ({dataset.max_categories}); expected a categorical column "
                                "(drop it from data.features, or set data.rare_categories: other)")
            counts = cap_counts(counts, dataset.max_categories)  # the rest encode as one unseen group
        categories[column] = sorted_categories(counts)
        fill[column] = min(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[0]
    moments = stats.moments
    if len(plan.numeric) and np.any(moments.n == 0):
        empty = plan.numeric[int(np.argmin(moments.n))]
        raise DataError(f"{dataset.url}: column '{empty}' has no values in the training rows; expected numbers")
    missing = stats.train_rows - moments.n
    if plan.sketch:
        centers = np.array([s.quantile(0.5) for s in stats.sketches or []])
        filled = moments.merge(Moments(missing, centers, np.zeros_like(centers)))
    else:  # mean imputation leaves the mean and the squared deviations as they were
        centers = moments.mean
        filled = Moments(moments.n + missing, moments.mean, moments.m2)
    fill.update(zip(plan.numeric, centers.tolist()))
    return ColumnPlan(list(plan.numeric), list(plan.categorical), fill, filled.mean, filled.var, filled.n,
                      categories, "median" if plan.sketch else "mean", encoding)


def sorted_categories(counts: dict[Any, int]) -> list[Any]:
    try:
        return sorted(counts)
    except TypeError:  # values of mixed Python types: order by their text
        return sorted(counts, key=str)


def build_transformer(plan: ColumnPlan, features: list[str]) -> ColumnTransformer:
    """A fitted ColumnTransformer: impute + scale numeric columns, impute + encode the others.

    Unseen categories at prediction time encode as all zeros (one-hot) or -1
    (ordinal); nulls, whether NaN or None, are filled as in training.
    """
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    steps = []
    if plan.numeric:
        steps.append(("num", Pipeline([("impute", SimpleImputer(strategy=plan.strategy)),
                                       ("scale", StandardScaler())]), plan.numeric))
    if plan.categorical:
        cats = [plan.categories[c] for c in plan.categorical]
        if plan.encoding == "ordinal":
            encoder: Any = OrdinalEncoder(categories=cats, handle_unknown="use_encoded_value", unknown_value=-1,
                                          encoded_missing_value=-1)
        else:
            encoder = OneHotEncoder(categories=cats, handle_unknown="ignore", sparse_output=False)
        # Two imputers: SimpleImputer's NaN mask misses None in object columns, and the other way round.
        steps.append(("cat", Pipeline([("impute", SimpleImputer(strategy="most_frequent")),
                                       ("impute_none", SimpleImputer(missing_values=None, strategy="most_frequent")),
                                       ("encode", encoder)]), plan.categorical))
    transformer = ColumnTransformer(steps, remainder="drop", sparse_threshold=0.0)
    # Fitting on one row of the fill values gives every imputer exactly the pass's statistics.
    prototype = pd.DataFrame({c: pd.Series([plan.fill[c]], dtype=float if c in plan.numeric else object)
                              for c in features})
    transformer.fit(prototype)
    if plan.numeric:
        scaler: StandardScaler = transformer.named_transformers_["num"].named_steps["scale"]
        scaler.mean_ = plan.center.copy()
        scaler.var_ = plan.var.copy()
        scaler.scale_ = np.where(plan.var > 0, np.sqrt(plan.var), 1.0)
        scaler.n_samples_seen_ = plan.n.astype(np.int64)
    return transformer


def output_variance(plan: ColumnPlan, counts: dict[str, dict[Any, int]]) -> tuple[int, float]:
    """(columns out of the transformer, variance of all its values on the training rows)."""
    means = [0.0] * len(plan.numeric)
    variances = [1.0 if v > 0 else 0.0 for v in plan.var]
    for column in plan.categorical:
        cats = plan.categories[column]
        n = np.array([counts[column].get(c, 0) for c in cats], dtype=np.float64)
        total = max(sum(counts[column].values()), 1.0)
        p = n / total
        if plan.encoding == "ordinal":
            codes = np.arange(len(cats), dtype=np.float64)
            other = 1.0 - p.sum()  # rare categories grouped as -1
            mean = float(p @ codes - other)
            means.append(mean)
            variances.append(float(p @ (codes - mean) ** 2 + other * (1.0 + mean) ** 2))
        else:
            means.extend(p.tolist())
            variances.extend((p * (1 - p)).tolist())
    if not means:
        return 0, 0.0
    m, v = np.array(means), np.array(variances)
    return len(m), float(v.mean() + m.var())
