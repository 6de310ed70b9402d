"""The feature plan: one distributed statistics pass, expressed as a fitted ColumnTransformer.

The pass reads the data once for everything the plan needs: row counts of
each split, nulls, infinities, means and variances, categories (with their
cardinality), quantile sketches for median imputation, the classes, and the
measured size of the rows. It refuses data that cannot be trained on, naming
columns and counts. Its result, ``Partitions`` (``distml.blocks``), tells
trainers how to get each partition's ``(X, y)`` block on a worker.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.blocks import Partitions, PartSource
from distml.encoding import build_transformer, output_variance, plan_columns
from distml.errors import DataError
from distml.stats import MAX_CLASSES, PartStats, StatsPlan, run_stats
from distml.warmup import ready, wait_for, warm_workers

if TYPE_CHECKING:
    from distributed import Client
    from sklearn.compose import ColumnTransformer

    from distml.data import Dataset
    from distml.encoding import ColumnPlan


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
                  report: Any = None, *, encoding: str = "onehot", log: Any = None,
                  cross_products: bool = False) -> FeaturePlan:
    """Run the one statistics pass on the cluster and build the feature transformer.

    ``encoding`` is the family's choice for categorical columns (``onehot`` or
    ``ordinal``); ``log`` receives warnings (dropped rows, constant features);
    ``cross_products`` also measures the least-squares Gram matrix (``distml.gram``) where it can.
    """
    kinds = dataset.kinds
    regression = task == "regression" or (task is None and kinds[dataset.target] == "numeric"
                                          and _looks_continuous(dataset))
    plan = StatsPlan(dataset.holdout, regression,
                     tuple(c for c in dataset.features if kinds[c] == "numeric"),
                     tuple(c for c in dataset.features if kinds[c] != "numeric"),
                     dataset.missing == "drop", dataset.max_categories + 1,
                     dataset.missing == "impute" and dataset.impute_strategy == "median",
                     cross_products and all(kinds[c] == "numeric" for c in dataset.features))
    stats = run_stats(dataset, client, job_id, plan, report)
    warming = warm_workers(client, job_id)  # fresh workers import what the next passes need meanwhile
    waited = ready("features")  # the client's scikit-learn imports, begun when the cluster was up
    if waited > 0.05 and log is not None:
        log(f"waited {waited:.2f}s for the client's scikit-learn imports after the statistics pass")
    _check_stats(dataset, stats, regression)
    _check_overflow(dataset, stats, plan)
    columns = plan_columns(dataset, stats, plan, encoding)
    transformer = build_transformer(columns, dataset.features)
    n_features, x_var = output_variance(columns, stats.categories)
    notes = _notes(dataset, stats, columns)
    for note in notes:
        if log is not None:
            log(note)
    pieces = dataset.pieces
    if dataset.target_bytes and dataset.row_bytes(n_features) > 1.5 * dataset.row_bytes():
        # One-hot columns widen each row: the blocks get smaller pieces, so one still fits the partition size.
        pieces = dataset.cut(dataset.target_bytes, n_features)
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
                for p in pieces] for split in ("train", "holdout")]
    parts = Partitions(sources[0], sources[1] if holdout_rows else [], stats.train_rows, holdout_rows)
    train_bytes = stats.train_rows * (n_features + 1) * 8 + stats.target_bytes
    wait_for(warming)  # the next pass queues behind them anyway; this way no warm-up outlives its job
    return FeaturePlan(transformer, stats, target_kind, classes, counts, n_features, x_var, parts,
                       train_bytes, notes)


def _looks_continuous(dataset: Dataset) -> bool:
    return "float" in dataset.schema[dataset.target] or "double" in dataset.schema[dataset.target]


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


def _check_overflow(dataset: Dataset, stats: PartStats, plan: StatsPlan) -> None:
    """Refuse a numeric feature (or a regression target) whose mean or variance overflowed float64.

    Values from ~1e154 on square to inf, in a piece or in Chan's merge of two
    pieces, so the check is on the merged result; left alone, the scaler would
    silently turn such a column into zeros. Named with its largest magnitude.
    """
    checks = [(stats.moments, list(plan.numeric), "column")]
    if stats.target_moments is not None:
        checks.append((stats.target_moments, [dataset.target], "target"))
    for moments, names, what in checks:
        for j, statistic, value in moments.overflowed():
            peak = float(moments.peak[j]) if moments.peak is not None else float("nan")
            raise DataError(f"{dataset.url}: {what} '{names[j]}': values up to {peak:.2g} overflow float64 "
                            f"statistics (the {statistic} is {value:g}); rescale the {what}")


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
