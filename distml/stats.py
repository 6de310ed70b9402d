"""The statistics pass: one read of every partition, reduced to small mergeable summaries.

Worker side: moments, category counts (capped), a HyperLogLog distinct-count
sketch (to name a column's cardinality when it is too high to keep) and a
log-bucket quantile sketch (for median imputation), gathered per partition into
a ``PartStats``. Each merges associatively, so the tree reduction gives one
answer whatever its shape. ``features`` and ``encoding`` read the merged result.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.gram import CrossMoments
from distml.tasks import MERGE_FAN_IN, task_key, tree_reduce

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client, Future

    from distml.data import Dataset, Piece, PieceGroup, Reader

MAX_CLASSES = 1000
HLL_BITS = 12  # 4096 one-byte registers per column: about 1.6% error on a cardinality
SKETCH_ACCURACY = 0.01  # relative error of a quantile from the log-bucket sketch
SKETCH_BUCKETS = 2048  # most buckets kept per sign; the smallest magnitudes collapse first

# --- mergeable summaries (run on workers) ------------------------------------


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
    """Count, mean and sum of squared deviations per column (Chan et al.'s parallel merge), and the
    largest magnitude seen, so a column whose statistics overflow float64 can be named with it."""

    n: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    peak: np.ndarray | None = None  # max |value| per column (None: not measured)

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        if np.isfinite(values).all():  # the usual case: plain sums, no NaN-replacing copies
            return cls._of_finite(values)
        n = np.sum(~np.isnan(values), axis=0).astype(np.float64)
        # Values beyond ~1e154 overflow the squares (beyond ~1e308 / n the sum): the result is inf or
        # nan, kept as it is so the plan refuses the column by name instead of scaling it to nothing.
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            mean = np.where(n > 0, np.nansum(values, axis=0) / np.maximum(n, 1), 0.0)
            m2 = np.nansum((values - mean) ** 2, axis=0)
            peak = np.max(np.where(np.isnan(values), 0.0, np.abs(values)), axis=0, initial=0.0)
        return cls(n, mean, m2, peak)

    @classmethod
    def _of_finite(cls, values: np.ndarray) -> Moments:
        """``of`` for finite values: the same statistics with one temporary instead of four."""
        rows = values.shape[0]
        n = np.full(values.shape[1], float(rows))
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            mean = values.sum(axis=0) / rows if rows else np.zeros(values.shape[1])
            centered = values - mean
            m2 = np.einsum("ij,ij->j", centered, centered)
            peak = np.maximum(values.max(axis=0, initial=0.0), -values.min(axis=0, initial=0.0))
        return cls(n, mean, m2, peak)

    def merge(self, other: Moments) -> Moments:
        n = self.n + other.n
        delta = other.mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            w = np.where(n > 0, other.n / np.maximum(n, 1), 0.0)
            m2 = self.m2 + other.m2 + delta**2 * self.n * w
        peak = other.peak if self.peak is None else self.peak if other.peak is None else np.maximum(
            self.peak, other.peak)
        return Moments(n, self.mean + delta * w, m2, peak)

    @property
    def var(self) -> np.ndarray:
        return np.where(self.n > 0, self.m2 / np.maximum(self.n, 1), 0.0)

    def overflowed(self) -> list[tuple[int, str, float]]:
        """Columns whose mean or variance is not finite: (index, which statistic, its value)."""
        out = []
        for j, (mean, var) in enumerate(zip(self.mean, self.var)):
            if not np.isfinite(mean):
                out.append((j, "mean", float(mean)))
            elif not np.isfinite(var):
                out.append((j, "variance", float(var)))
        return out


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


# --- one partition's statistics (run on workers) -----------------------------


@dataclass(frozen=True)
class StatsPlan:
    """What the statistics pass measures, decided on the client before it starts."""

    holdout: float
    regression: bool
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]  # strings, categories and booleans
    drop_nulls: bool  # missing: drop
    cap: int  # category counts kept per column while merging: max_categories + 1
    sketch: bool  # median imputation needs quantile sketches
    cross: bool = False  # the features' and target's cross moments (``distml.gram``: linear exact needs no pass)


@dataclass
class PartStats:
    """What one partition tells the plan; merged pairwise into the dataset's statistics."""

    rows: int  # rows used (after dropping null targets and, with missing: drop, incomplete rows)
    train_rows: int
    nulls: dict[str, int]  # per feature, in the rows read
    nonfinite: dict[str, int]
    moments: Moments  # numeric features on training rows
    target_moments: Moments | None  # regression target on training rows
    classes: dict[Any, int] = field(default_factory=dict)  # training rows per class
    holdout_classes: dict[Any, int] = field(default_factory=dict)
    first_bad_label: str | None = None
    categories: dict[str, dict[Any, int]] = field(default_factory=dict)  # training rows per category
    distinct: dict[str, np.ndarray] = field(default_factory=dict)  # HyperLogLog registers per category column
    sketches: list[QuantileSketch] | None = None  # numeric features, for median imputation
    dropped_target: int = 0
    dropped_nulls: int = 0
    memory_bytes: int = 0  # measured: the rows read, as pandas holds them
    target_bytes: int = 0  # measured: the training targets, as numpy holds them in a block
    cap: int = MAX_CLASSES + 1
    cross: CrossMoments | None = None  # asked by ``StatsPlan.cross``; None where a partition had non-finite values


def used_rows(frame: pd.DataFrame, target: str, features: list[str], drop_nulls: bool) -> np.ndarray:
    """Rows a job uses: a null target is always dropped; with missing: drop, a null feature too."""
    keep = frame[target].notna().to_numpy()
    if drop_nulls:
        keep = keep & frame[features].notna().all(axis=1).to_numpy()  # not &=: pandas may hand out read-only arrays
    return keep


def column_major_rows(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values[rows]``, stored column by column: each column's sum, min and max then read contiguous memory
    (numpy reduces a row-major matrix's columns with strided loops, several times slower)."""
    return values.T.compress(rows, axis=1).T


def _stats_part(piece: Piece | PieceGroup, reader: Reader, plan: StatsPlan) -> PartStats:
    """Statistics of one partition, all from one read.

    The numeric columns become one float64 matrix once; its NaNs give their null counts and the rows
    kept, so no column is copied by pandas on the way (only the categorical ones are looked at there).
    """
    frame, draws = reader.read(piece)
    target, numeric, categorical = reader.columns[-1], list(plan.numeric), list(plan.categorical)
    memory = int(frame.memory_usage(deep=True, index=False).sum())
    values = frame[numeric].to_numpy(dtype=np.float64, na_value=np.nan)
    finite = bool(np.isfinite(values).all())  # the usual case: no null, NaN or infinity to count
    missing = np.zeros((0, len(numeric)), dtype=bool) if finite else np.isnan(values)
    null_counts = dict(zip(numeric, missing.sum(axis=0).tolist()))
    null_counts.update({c: int(frame[c].isna().sum()) for c in categorical})
    nulls = {c: int(null_counts[c]) for c in reader.columns[:-1] if null_counts.get(c)}
    y = frame[target]
    keep = y.notna().to_numpy()
    dropped_target = int(len(keep) - keep.sum())
    if plan.drop_nulls and nulls:
        if not finite:
            keep = keep & ~missing.any(axis=1)
        for c in categorical:
            keep = keep & frame[c].notna().to_numpy()
    kept = int(keep.sum())
    if kept < len(keep):
        values, draws, y = column_major_rows(values, keep), draws[keep], y[keep]
    train = draws >= plan.holdout
    nonfinite = {} if finite else {c: int(n) for c, n in zip(numeric, np.isinf(values).sum(axis=0)) if n}
    train_values = column_major_rows(values, train)  # one copy, shared by the moments and the sketches
    moments = Moments._of_finite(train_values) if finite else Moments.of(train_values)
    stats = PartStats(kept, int(train.sum()), nulls, nonfinite, moments, None,
                      dropped_target=dropped_target, dropped_nulls=len(keep) - kept - dropped_target,
                      memory_bytes=memory, cap=plan.cap)
    if categorical:
        rows = np.flatnonzero(keep)[train] if kept < len(keep) else np.flatnonzero(train)
        train_frame = frame[categorical].iloc[rows]
        for column in categorical:
            stats.categories[column], stats.distinct[column] = summarize_categories(train_frame[column], plan.cap)
    if plan.sketch:
        stats.sketches = [QuantileSketch.of(train_values[:, j]) for j in range(len(numeric))]
    _target_stats(stats, y, train, plan.regression)
    if plan.cross and finite and not categorical and y.dtype.kind in "fiu":
        target = y.to_numpy(dtype=np.float64)[train]
        if np.isfinite(target).all():
            stats.cross = CrossMoments.of(np.column_stack([train_values, target]))
    return stats


def _target_stats(stats: PartStats, y: pd.Series, train: np.ndarray, regression: bool) -> None:
    """Classes (or the regression target's moments) and the measured size of the training targets."""
    y_train = y[train]
    if y.dtype.kind in "fiub":
        stats.target_bytes = 8 * len(y_train)
    else:  # a numpy object array: a pointer and a Python string per row
        text = y_train if y_train.dtype == "str" else y_train.astype(str)
        stats.target_bytes = int(text.str.len().sum()) + 57 * len(y_train)
    if regression:
        if y.dtype.kind not in "fiub":
            stats.first_bad_label = repr(y.iloc[0]) if len(y) else None
            return
        yv = y.to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isinf(yv).any():
            stats.nonfinite[str(y.name)] = int(np.isinf(yv).sum())
        stats.target_moments = Moments.of(yv[train][:, None])
    else:
        stats.classes = {k: int(v) for k, v in y_train.value_counts().items()}
        stats.holdout_classes = {k: int(v) for k, v in y[~train].value_counts().items()}


def _add_counts(a: dict[Any, int], b: dict[Any, int]) -> dict[Any, int]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


def _merge_stats_part(a: PartStats, b: PartStats) -> PartStats:
    """Combine two partitions' statistics (associative, so any tree shape gives one answer)."""
    tm = a.target_moments.merge(b.target_moments) if a.target_moments and b.target_moments else (
        a.target_moments or b.target_moments)
    classes = _add_counts(a.classes, b.classes)
    if len(classes) > MAX_CLASSES:  # keep the merged value bounded; the plan refuses it anyway
        classes = dict(list(classes.items())[: MAX_CLASSES + 1])
    sketches = None if a.sketches is None or b.sketches is None else [
        x.merge(y) for x, y in zip(a.sketches, b.sketches)]
    return PartStats(
        a.rows + b.rows, a.train_rows + b.train_rows, _add_counts(a.nulls, b.nulls),
        _add_counts(a.nonfinite, b.nonfinite), a.moments.merge(b.moments), tm, classes,
        _add_counts(a.holdout_classes, b.holdout_classes), a.first_bad_label or b.first_bad_label,
        {c: merge_counts(a.categories[c], b.categories[c], a.cap) for c in a.categories},
        {c: np.maximum(a.distinct[c], b.distinct[c]) for c in a.distinct}, sketches,
        a.dropped_target + b.dropped_target, a.dropped_nulls + b.dropped_nulls,
        a.memory_bytes + b.memory_bytes, a.target_bytes + b.target_bytes, a.cap,
        cross=a.cross.merge(b.cross) if a.cross is not None and b.cross is not None else None,
    )


# --- the pass (runs on the client) ------------------------------------------


def run_stats(dataset: Dataset, client: Client, job_id: str, plan: StatsPlan, report: Any) -> PartStats:
    """The dataset's statistics: one task per piece, tree-merged on the workers; only the total comes back."""
    # One task per partition; each worker runs as many at once as it has threads, and each
    # returns only small statistics, so the pass's memory is bounded whatever the data's size.
    from dataclasses import replace

    reader = replace(dataset.reader, verify=True)  # the one pass that checks pages against the footers
    futures = [client.submit(_stats_part, piece, reader, plan, key=task_key("stats", job_id, i))
               for i, piece in enumerate(dataset.pieces)]
    if report is not None:
        _report_progress(client, futures, lambda f: report("stats", f))
    total = tree_reduce(client, futures, _merge_stats_part,
                        key=lambda level, j: task_key("merge", job_id, "stats", level, j), fan_in=MERGE_FAN_IN)
    return total.result()


def _report_progress(client: Client, futures: list[Future], report: Any) -> None:
    from distributed import as_completed

    for n, _ in enumerate(as_completed(futures, loop=client.loop), start=1):
        report(n / len(futures))
