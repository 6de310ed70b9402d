"""The feature plan: one distributed statistics pass, expressed as a fitted ColumnTransformer.

The pass also finds the classes, counts the rows of each split and refuses
data that cannot be trained on (nulls, infinities, a single class). Its
result, ``Partitions``, tells trainers how to get each partition's ``(X, y)``
block on a worker.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.errors import DataError
from distml.tasks import tree_reduce

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client, Future
    from sklearn.compose import ColumnTransformer

    from distml.data import Dataset, Piece, Reader

MAX_CLASSES = 1000

# --- runs on workers ---------------------------------------------------------


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
class PartStats:
    """What one partition tells the plan; merged pairwise into the dataset's statistics."""

    rows: int
    train_rows: int
    nulls: dict[str, int]
    nonfinite: dict[str, int]
    moments: Moments  # features on training rows
    target_moments: Moments | None  # regression target on training rows
    classes: dict[Any, int] = field(default_factory=dict)  # training rows per class
    holdout_classes: dict[Any, int] = field(default_factory=dict)
    first_bad_label: str | None = None


def _stats_part(piece: Piece, reader: Reader, holdout: float, regression: bool) -> PartStats:
    """Statistics of one partition: nulls, non-finite values, moments, class counts."""
    frame, draws = reader.read(piece)
    train = draws >= holdout
    features = list(reader.columns[:-1])
    target = reader.columns[-1]
    values = frame[features].to_numpy(dtype=np.float64, na_value=np.nan)
    nulls = {c: int(n) for c, n in frame.isna().sum().items() if n}
    nonfinite = {c: int(n) for c, n in zip(features, np.isinf(values).sum(axis=0)) if n}
    y = frame[target]
    stats = PartStats(len(frame), int(train.sum()), nulls, nonfinite, Moments.of(values[train]), None)
    if regression:
        if y.dtype.kind not in "fiub":
            stats.first_bad_label = repr(y.iloc[0]) if len(y) else None
            return stats
        yv = y.to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isinf(yv).any():
            stats.nonfinite[target] = int(np.isinf(yv).sum())
        stats.target_moments = Moments.of(yv[train][:, None])
    else:
        stats.classes = {k: int(v) for k, v in y[train].value_counts().items()}
        stats.holdout_classes = {k: int(v) for k, v in y[~train].value_counts().items()}
    return stats


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
    return PartStats(
        a.rows + b.rows, a.train_rows + b.train_rows, _add_counts(a.nulls, b.nulls),
        _add_counts(a.nonfinite, b.nonfinite), a.moments.merge(b.moments), tm, classes,
        _add_counts(a.holdout_classes, b.holdout_classes), a.first_bad_label or b.first_bad_label,
    )


@dataclass(frozen=True)
class Block:
    """A partition's training rows as numpy: features, target and each row's uniform draw."""

    X: np.ndarray
    y: np.ndarray
    u: np.ndarray  # in [0, 1), independent of partitioning; families carve validation slices from it

    def load(self) -> Block:
        return self

    @property
    def nbytes(self) -> int:
        return self.X.nbytes + self.y.nbytes + self.u.nbytes


@dataclass(frozen=True)
class PartSource:
    """How a worker builds one partition's block: read the piece, split, transform."""

    piece: Piece
    reader: Reader
    transformer: ColumnTransformer
    holdout: float
    split: str  # "train" or "holdout"

    def load(self) -> Block:
        frame, draws = self.reader.read(self.piece)
        if self.split == "train":
            keep = draws >= self.holdout
            u = (draws[keep] - self.holdout) / (1.0 - self.holdout)
        else:
            keep = draws < self.holdout
            u = draws[keep] / self.holdout
        frame = frame.loc[keep]
        if len(frame):
            X = np.asarray(self.transformer.transform(frame[list(self.reader.columns[:-1])]), dtype=np.float64)
        else:  # scikit-learn refuses to transform zero rows
            X = np.empty((0, len(self.transformer.get_feature_names_out())))
        return Block(X, frame[self.reader.columns[-1]].to_numpy(), u)


def _load_part(source: PartSource) -> Block:
    return source.load()


# --- runs on the client ------------------------------------------------------


@dataclass
class Partitions:
    """Per-partition sources of ``(X, y)`` blocks; each ``source.load()`` runs on a worker.

    A source is either a ``PartSource`` (re-read from Parquet at every pass) or a
    future of a ``Block`` already held in cluster memory (after ``persist``).
    """

    train: list[Any]
    holdout: list[Any]
    train_rows: int
    holdout_rows: int
    persisted: bool = False

    @property
    def n_parts(self) -> int:
        return len(self.train)


@dataclass
class FeaturePlan:
    """The fitted transformer plus what the statistics pass learned about the data."""

    transformer: ColumnTransformer
    stats: PartStats
    target_kind: str
    classes: np.ndarray | None
    class_counts: np.ndarray | None
    n_features: int
    x_var: float
    parts: Partitions


def plan_features(dataset: Dataset, client: Client, job_id: str, task: str | None,
                  report: Any = None) -> FeaturePlan:
    """Run the one statistics pass on the cluster and build the feature transformer."""
    from distml.tasks import task_key

    kinds = dataset.kinds
    regression = task == "regression" or (task is None and kinds[dataset.target] == "numeric"
                                          and _looks_continuous(dataset))
    futures = [
        client.submit(_stats_part, piece, dataset.reader, dataset.holdout, regression,
                      key=task_key("stats", job_id, i))
        for i, piece in enumerate(dataset.pieces)
    ]
    if report is not None:
        _report_progress(client, futures, lambda f: report("stats", f))
    total = tree_reduce(client, futures, _merge_stats_part,
                        key=lambda level, j: task_key("merge", job_id, "stats", level, j))
    stats: PartStats = total.result()
    _check_stats(dataset, stats, regression)
    transformer, n_features, x_var = _build_transformer(dataset, stats)
    classes = counts = None
    if regression:
        target_kind = "regression"
    else:
        labels = sorted(stats.classes)
        classes = np.array(labels)
        counts = np.array([stats.classes[c] for c in labels], dtype=np.int64)
        target_kind = "binary" if len(labels) == 2 else "multiclass"
    holdout_rows = stats.rows - stats.train_rows
    parts = Partitions(
        [PartSource(p, dataset.reader, transformer, dataset.holdout, "train") for p in dataset.pieces],
        [PartSource(p, dataset.reader, transformer, dataset.holdout, "holdout") for p in dataset.pieces]
        if holdout_rows else [],
        stats.train_rows, holdout_rows,
    )
    return FeaturePlan(transformer, stats, target_kind, classes, counts, n_features, x_var, parts)


def _looks_continuous(dataset: Dataset) -> bool:
    return "float" in dataset.schema[dataset.target] or "double" in dataset.schema[dataset.target]


def _report_progress(client: Client, futures: list[Future], report: Any) -> None:
    from distributed import as_completed

    for n, _ in enumerate(as_completed(futures, loop=client.loop), start=1):
        report(n / len(futures))


def _check_stats(dataset: Dataset, stats: PartStats, regression: bool) -> None:
    """Refuse what the statistics pass found unusable, naming columns and counts."""
    where = dataset.url
    target = dataset.target
    if stats.nulls:
        listed = ", ".join(f"'{c}' ({n} rows)" for c, n in sorted(stats.nulls.items()))
        raise DataError(f"{where}: null values in {listed}; expected no missing values")
    if stats.nonfinite:
        listed = ", ".join(f"'{c}' ({n} rows)" for c, n in sorted(stats.nonfinite.items()))
        raise DataError(f"{where}: infinite values in {listed}; expected finite numbers")
    if stats.train_rows == 0:
        raise DataError(f"{where}: no training rows ({stats.rows} rows in all, holdout {dataset.holdout})")
    if regression:
        if stats.first_bad_label is not None:
            raise DataError(f"{where}: target '{target}' holds {stats.first_bad_label}; "
                            "expected numbers for a regression")
        return
    if len(stats.classes) > MAX_CLASSES:
        raise DataError(f"{where}: target '{target}' has more than {MAX_CLASSES} distinct values; "
                        "expected class labels (use model kind 'linear' for a numeric target)")
    if len(stats.classes) < 2:
        only = next(iter(stats.classes), None)
        raise DataError(f"{where}: target '{target}' has a single class ({only!r}) in the training rows; "
                        "expected at least 2 classes")


def _build_transformer(dataset: Dataset, stats: PartStats) -> tuple[ColumnTransformer, int, float]:
    """A ColumnTransformer whose scaler holds the pass's means and variances."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import StandardScaler

    features = dataset.features
    transformer = ColumnTransformer([("scale", StandardScaler(), features)], remainder="drop")
    prototype = pd.DataFrame({c: [0.0, 1.0] for c in features})
    transformer.fit(prototype)
    scaler: StandardScaler = transformer.named_transformers_["scale"]
    var = stats.moments.var
    scaler.mean_ = stats.moments.mean.copy()
    scaler.var_ = var.copy()
    scaler.scale_ = np.where(var > 0, np.sqrt(var), 1.0)
    scaler.n_samples_seen_ = stats.moments.n.astype(np.int64)
    n_features = len(features)
    x_var = float(np.mean(np.where(var > 0, 1.0, 0.0)))  # standardized columns: mean 0, var 1 (or 0 if constant)
    return transformer, n_features, x_var


def persist(parts: Partitions, client: Client, job_id: str) -> Partitions:
    """Load every training block into cluster memory once, for multi-pass trainers."""
    from distml.tasks import task_key

    futures = [client.submit(_load_part, s, key=task_key("load", job_id, i)) for i, s in enumerate(parts.train)]
    return replace(parts, train=futures, persisted=True)
