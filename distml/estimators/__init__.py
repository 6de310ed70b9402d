"""scikit-learn-compatible estimators over Dask collections, trained by the same engine as ``distml submit``.

``fit`` takes a Dask DataFrame/Array (or pandas/numpy, or a Parquet URL with ``target=``); ``predict``
and friends return lazy Dask collections for Dask input. See README "From Python".
"""
from __future__ import annotations

from distml.estimators._classes import (
    SVC,
    LinearRegression,
    LinearSVC,
    LogisticRegression,
    RandomForestClassifier,
    RandomForestRegressor,
)

__all__ = ["SVC", "LinearRegression", "LinearSVC", "LogisticRegression", "RandomForestClassifier",
           "RandomForestRegressor"]
