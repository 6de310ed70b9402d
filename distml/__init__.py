"""distml: distributed batch training from Parquet to a plain scikit-learn Pipeline."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
ESTIMATORS = ("LogisticRegression", "LinearRegression", "LinearSVC", "SVC", "RandomForestClassifier",
              "RandomForestRegressor")
__all__ = ["SVC", "LinearRegression", "LinearSVC", "LogisticRegression", "RandomForestClassifier",
           "RandomForestRegressor", "__version__", "load_model", "run_job"]

if TYPE_CHECKING:
    from distml.estimators import (
        SVC,
        LinearRegression,
        LinearSVC,
        LogisticRegression,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from distml.runner import run_job
    from distml.store import load_model


def __getattr__(name: str) -> Any:
    """Import lazily so ``import distml`` (and the CLI's --help) stays fast."""
    if name == "load_model":
        from distml.store import load_model

        return load_model
    if name == "run_job":
        from distml.runner import run_job

        return run_job
    if name in ESTIMATORS:
        import distml.estimators

        return getattr(distml.estimators, name)
    raise AttributeError(name)
