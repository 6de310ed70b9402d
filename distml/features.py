"""The feature plan: one distributed statistics pass, expressed as a fitted ColumnTransformer.

The pass reads the data once for everything the plan needs: row counts of
each split, nulls, infinities, means and variances, categories (with their
cardinality), quantile sketches for median imputation, the classes, and the
measured size of the rows. It refuses data that cannot be trained on, naming
columns and counts. Its result, ``Partitions``, tells trainers how to get each
partition's ``(X, y)`` block on a worker.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.encoding import Moments, QuantileSketch, build_transformer, merge_counts, output_variance, plan_columns, \
    summarize_categories
from distml.errors import DataError
from distml.tasks import tree_reduce

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client, Future
    from sklearn.compose import ColumnTransformer

    from distml.data import Dataset, Piece, PieceGroup, Reader
    from distml.encoding import ColumnPlan

MAX_CLASSES = 1000

# --- runs on workers ---------------------------------------------------------


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


def _used_rows(frame: pd.DataFrame, target: str, features: list[str], drop_nulls: bool) -> np.ndarray:
    """Rows a job uses: a null target is always dropped; with missing: drop, a null feature too."""
    keep = frame[target].notna().to_numpy()
    if drop_nulls:
        keep = keep & frame[features].notna().all(axis=1).to_numpy()  # not &=: pandas may hand out read-only arrays
    return keep


def _stats_part(piece: Piece | PieceGroup, reader: Reader, plan: StatsPlan) -> PartStats:
    """Statistics of one partition, all from one read."""
    frame, draws = reader.read(piece)
    features, target = list(reader.columns[:-1]), reader.columns[-1]
    memory = int(frame.memory_usage(deep=True, index=False).sum())
    nulls = {c: int(n) for c, n in frame[features].isna().sum().items() if n}
    keep = _used_rows(frame, target, features, plan.drop_nulls)
    dropped_target = int(frame[target].isna().sum())
    if not keep.all():
        frame, draws = frame[keep], draws[keep]
    train = draws >= plan.holdout
    values = frame[list(plan.numeric)].to_numpy(dtype=np.float64, na_value=np.nan)
    nonfinite = {c: int(n) for c, n in zip(plan.numeric, np.isinf(values).sum(axis=0)) if n}
    stats = PartStats(len(frame), int(train.sum()), nulls, nonfinite, Moments.of(values[train]), None,
                      dropped_target=dropped_target, dropped_nulls=len(keep) - len(frame) - dropped_target,
                      memory_bytes=memory, cap=plan.cap)
    train_frame = frame[train]
    for column in plan.categorical:
        stats.categories[column], stats.distinct[column] = summarize_categories(train_frame[column], plan.cap)
    if plan.sketch:
        stats.sketches = [QuantileSketch.of(values[train][:, j]) for j in range(len(plan.numeric))]
    _target_stats(stats, frame[target], train, plan.regression)
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
    )


@dataclass(frozen=True)
class Block:
    """A partition's training rows as numpy: features, target and each row's uniform draw."""

    X: np.ndarray
    y: np.ndarray
    u: np.ndarray  # in [0, 1), independent of partitioning; families carve validation slices from it

    def load(self) -> Block:
        """A block held in cluster memory is its own source."""
        return self


@dataclass(frozen=True)
class PartSource:
    """How a worker builds one partition's block: read the piece, split, transform."""

    piece: Piece
    reader: Reader
    transformer: ColumnTransformer
    holdout: float
    split: str  # "train" or "holdout"
    drop_nulls: bool = False  # missing: drop (rows with a null target are always dropped)

    def load(self) -> Block:
        """This source's split of the partition."""
        frame, draws = self._read()
        return self._block(frame, draws, self.split)

    def load_both(self) -> tuple[Block, Block]:
        """The partition's training and holdout blocks from one read."""
        frame, draws = self._read()
        return self._block(frame, draws, "train"), self._block(frame, draws, "holdout")

    def _read(self) -> tuple[pd.DataFrame, np.ndarray]:
        frame, draws = self.reader.read(self.piece)
        keep = _used_rows(frame, self.reader.columns[-1], list(self.reader.columns[:-1]), self.drop_nulls)
        if not keep.all():
            frame, draws = frame[keep], draws[keep]
        return frame, draws

    def _block(self, frame: pd.DataFrame, draws: np.ndarray, split: str) -> Block:
        if split == "train":
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


def _load_both_part(source: PartSource) -> tuple[Block, Block]:
    return source.load_both()


def _pick_part(blocks: tuple[Block, Block], index: int) -> Block:
    return blocks[index]


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
    train_bytes: int = 0  # measured: the training blocks (X, y, u) as numpy would hold them
    notes: list[str] = field(default_factory=list)  # warnings for the job log


def plan_features(dataset: Dataset, client: Client, job_id: str, task: str | None,
                  report: Any = None, *, encoding: str = "onehot", log: Any = None) -> FeaturePlan:
    """Run the one statistics pass on the cluster and build the feature transformer.

    ``encoding`` is the family's choice for categorical columns (``onehot`` or
    ``ordinal``); ``log`` receives warnings (dropped rows, constant features).
    """
    kinds = dataset.kinds
    regression = task == "regression" or (task is None and kinds[dataset.target] == "numeric"
                                          and _looks_continuous(dataset))
    plan = StatsPlan(dataset.holdout, regression,
                     tuple(c for c in dataset.features if kinds[c] == "numeric"),
                     tuple(c for c in dataset.features if kinds[c] != "numeric"),
                     dataset.missing == "drop", dataset.max_categories + 1,
                     dataset.missing == "impute" and dataset.impute_strategy == "median")
    stats = _run_stats(dataset, client, job_id, plan, report)
    _check_stats(dataset, stats, regression)
    columns = plan_columns(dataset, stats, plan, encoding)
    transformer = build_transformer(columns, dataset.features)
    n_features, x_var = output_variance(columns, stats.categories)
    notes = _notes(dataset, stats, columns)
    for note in notes:
        if log is not None:
            log(note)
    if dataset.target_bytes and dataset.row_bytes(n_features) > 1.5 * dataset.row_bytes():
        # One-hot columns widen each row: re-cut so a block still fits the partition size.
        dataset.partition(dataset.target_bytes, n_features)
    classes = counts = None
    if regression:
        target_kind = "regression"
    else:
        labels = sorted(stats.classes)
        classes = np.array(labels)
        counts = np.array([stats.classes[c] for c in labels], dtype=np.int64)
        target_kind = "binary" if len(labels) == 2 else "multiclass"
    holdout_rows = stats.rows - stats.train_rows
    sources = [[PartSource(p, dataset.reader, transformer, dataset.holdout, split, plan.drop_nulls)
                for p in dataset.pieces] for split in ("train", "holdout")]
    parts = Partitions(sources[0], sources[1] if holdout_rows else [], stats.train_rows, holdout_rows)
    train_bytes = stats.train_rows * (n_features + 1) * 8 + stats.target_bytes
    return FeaturePlan(transformer, stats, target_kind, classes, counts, n_features, x_var, parts,
                       train_bytes, notes)


def _run_stats(dataset: Dataset, client: Client, job_id: str, plan: StatsPlan, report: Any) -> PartStats:
    from distml.tasks import task_key

    # One task per partition; each worker runs as many at once as it has threads, and each
    # returns only small statistics, so the pass's memory is bounded whatever the data's size.
    futures = [client.submit(_stats_part, piece, dataset.reader, plan, key=task_key("stats", job_id, i))
               for i, piece in enumerate(dataset.pieces)]
    if report is not None:
        _report_progress(client, futures, lambda f: report("stats", f))
    total = tree_reduce(client, futures, _merge_stats_part,
                        key=lambda level, j: task_key("merge", job_id, "stats", level, j))
    return total.result()


def _looks_continuous(dataset: Dataset) -> bool:
    return "float" in dataset.schema[dataset.target] or "double" in dataset.schema[dataset.target]


def _report_progress(client: Client, futures: list[Future], report: Any) -> None:
    from distributed import as_completed

    for n, _ in enumerate(as_completed(futures, loop=client.loop), start=1):
        report(n / len(futures))


def _listed(counts: dict[str, int]) -> str:
    return ", ".join(f"'{c}' ({n:,} rows)" for c, n in sorted(counts.items()))


def _check_stats(dataset: Dataset, stats: PartStats, regression: bool) -> None:
    """Refuse what the statistics pass found unusable, naming columns and counts."""
    where = dataset.url
    target = dataset.target
    if stats.nulls and dataset.missing == "error":
        raise DataError(f"{where}: null values in {_listed(stats.nulls)}; expected no missing values "
                        "(or set data.missing: drop or impute)")
    if stats.nonfinite:
        raise DataError(f"{where}: infinite values in {_listed(stats.nonfinite)}; expected finite numbers")
    if stats.train_rows == 0:
        raise DataError(f"{where}: no training rows ({stats.rows} rows used, holdout {dataset.holdout}, "
                        f"{stats.dropped_target} dropped for a null target, {stats.dropped_nulls} for nulls)")
    if regression:
        if stats.first_bad_label is not None:
            raise DataError(f"{where}: target '{target}' holds {stats.first_bad_label}; "
                            "expected numbers for a regression")
        if stats.target_moments is not None and stats.target_moments.var[0] == 0:
            raise DataError(f"{where}: target '{target}' is constant ({stats.target_moments.mean[0]:g} in every "
                            "training row); expected a target that varies")
        return
    if len(stats.classes) > MAX_CLASSES:
        raise DataError(f"{where}: target '{target}' has more than {MAX_CLASSES} distinct values; "
                        "expected class labels (use model kind 'linear' for a numeric target)")
    if len(stats.classes) < 2:
        only = next(iter(stats.classes), None)
        raise DataError(f"{where}: target '{target}' has a single class ({only!r}) in the training rows; "
                        "expected at least 2 classes")


def _notes(dataset: Dataset, stats: PartStats, columns: ColumnPlan) -> list[str]:
    """Warnings for the job log: dropped rows and features that cannot help the model."""
    notes = []
    if stats.dropped_target:
        notes.append(f"dropped {stats.dropped_target:,} rows with a null target '{dataset.target}'")
    if stats.dropped_nulls:
        notes.append(f"dropped {stats.dropped_nulls:,} rows with null values (data.missing: drop)")
    if stats.nulls and dataset.missing == "impute":
        notes.append(f"imputing null values in {_listed(stats.nulls)} ({columns.strategy} for numbers, "
                     "most frequent for categories)")
    constant = [c for c, v in zip(columns.numeric, stats.moments.var) if v == 0]
    constant += [c for c in columns.categorical if len(columns.categories[c]) == 1]
    for column in constant:
        notes.append(f"warning: feature '{column}' is constant in the training rows; it cannot help the model")
    return notes


def persist(parts: Partitions, client: Client, job_id: str) -> Partitions:
    """Hold every partition's training and holdout blocks in cluster memory, each partition read once.

    Multi-pass trainers then read memory, not Parquet, and evaluation needs no
    further read either.
    """
    from distml.tasks import task_key

    both = [client.submit(_load_both_part, s, key=task_key("load", job_id, i)) for i, s in enumerate(parts.train)]
    # The picks share the loaded blocks (no copy); once they ran, the pairs are released.
    train = [client.submit(_pick_part, b, 0, key=task_key("load", job_id, "train", i)) for i, b in enumerate(both)]
    holdout = [client.submit(_pick_part, b, 1, key=task_key("load", job_id, "holdout", i))
               for i, b in enumerate(both)] if parts.holdout else []
    return replace(parts, train=train, holdout=holdout, persisted=True)
