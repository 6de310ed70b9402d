"""The fitted feature transformer, built on the client from the statistics pass's merged summaries.

``plan_columns`` decides categories, fill values and scaler moments from the
merged statistics (``distml.stats``); ``build_transformer`` turns them into a
plain scikit-learn ``ColumnTransformer`` (imputers, scaler, one-hot or
ordinal encoder) whose fitted state is exactly what the pass measured.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.errors import DataError
from distml.stats import Moments, cap_counts, hll_count

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.compose import ColumnTransformer

    from distml.data import Dataset
    from distml.stats import PartStats, StatsPlan


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


def scaled_numeric(transformer: ColumnTransformer, frame: pd.DataFrame) -> np.ndarray | None:
    """``transformer.transform(frame)`` with numpy alone, to the same bits, when it only imputes and scales numbers.

    That is the transformer ``build_transformer`` makes for numeric features, and every pass over
    the data applies it on a worker: scikit-learn's validation copies each block several times on
    the way, where this makes one C-ordered float64 copy and works on it in place. None where scikit-learn's
    own transform must run: another transformer, categorical columns, an imputer without a value
    for a column, or columns that are not float64 or integers (scikit-learn keeps float32 in float32).
    """
    fitted = getattr(transformer, "transformers_", None)  # a ColumnTransformer's fitted steps
    steps = [step for step in fitted or () if not (isinstance(step[1], str) and step[1] == "drop")]
    if len(steps) != 1 or steps[0][0] != "num" or list(steps[0][2]) != list(frame.columns):
        return None
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import StandardScaler

    imputer, scaler = ([step for _, step in getattr(steps[0][1], "steps", ())] + [None, None])[:2]
    if not (type(imputer) is SimpleImputer and type(scaler) is StandardScaler and len(steps[0][1].steps) == 2):
        return None
    fill = imputer.statistics_
    if not (imputer.missing_values != imputer.missing_values  # NaN: the numeric imputer's missing value
            and np.isfinite(fill).all() and scaler.with_mean and scaler.with_std and scaler.scale_ is not None):
        return None
    if not all(kind in "fiu" and (kind != "f" or size == 8) for kind, size in
               ((dtype.kind, dtype.itemsize) for dtype in frame.dtypes)):
        return None
    values = np.array(frame.to_numpy(dtype=np.float64, na_value=np.nan), order="C")  # a copy, never the frame's memory
    missing = np.isnan(values)
    if missing.any():
        values[missing] = np.broadcast_to(fill, values.shape)[missing]
    values -= scaler.mean_
    values /= scaler.scale_
    return values
