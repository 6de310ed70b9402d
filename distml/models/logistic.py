"""Logistic regression, binary and multiclass: ``SGDClassifier(loss="log_loss")`` streamed over partitions."""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from distml.models._sgd import SGDSchedule, train_sgd
from distml.models.base import FamilyParams, Task, TrainContext

if TYPE_CHECKING:
    from sklearn.linear_model import SGDClassifier

    from distml.features import Partitions


class Params(FamilyParams):
    alpha: float = Field(1e-4, ge=0.0, description="L2 regularisation strength")
    penalty: Literal["l2", "l1", "elasticnet"] = "l2"
    l1_ratio: float = Field(0.15, ge=0.0, le=1.0)
    epochs: int = Field(5, ge=1, le=1000, description="passes over the data")
    class_weight: Literal["balanced"] | dict[str | int, float] | None = None
    early_stopping: bool = False
    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    tol: float = Field(1e-3, ge=0.0)
    n_iter_no_change: int = Field(2, ge=1)


def task(params: Params) -> Task:
    return "classification"


# --- runs on workers ---------------------------------------------------------


def _log_loss(model: SGDClassifier, X: np.ndarray, y: np.ndarray) -> float:
    """Summed log loss of ``model`` on (X, y)."""
    proba = np.clip(model.predict_proba(X), 1e-15, 1.0)
    index = np.searchsorted(model.classes_, y)
    return float(-np.log(proba[np.arange(len(y)), index]).sum())


# --- runs on the client ------------------------------------------------------


def class_weights(option: str | dict[str | int, float] | None, classes: np.ndarray,
                  counts: np.ndarray) -> dict[object, float] | None:
    """Resolve ``class_weight`` to a dict: ``balanced`` from the global class counts.

    ``partial_fit`` refuses ``"balanced"`` because one batch cannot know the
    class frequencies; the statistics pass does.
    """
    if option is None:
        return None
    if option == "balanced":
        weights = counts.sum() / (len(classes) * counts)
        return {c: float(w) for c, w in zip(classes.tolist(), weights)}
    by_name = {str(c): c for c in classes.tolist()}
    unknown = sorted(set(map(str, option)) - set(by_name))
    if unknown:
        from distml.errors import SpecError

        raise SpecError(f"model.params.class_weight names unknown class {unknown[0]!r}; "
                        f"classes are {', '.join(by_name)}")
    return {by_name[str(name)]: weight for name, weight in option.items()}


def train(parts: Partitions, params: Params, ctx: TrainContext) -> SGDClassifier:
    """Streamed, parameter-averaged SGD with log loss; returns a fitted ``SGDClassifier``."""
    from sklearn.linear_model import SGDClassifier

    weights = class_weights(params.class_weight, ctx.classes, ctx.class_counts)
    template = SGDClassifier(loss="log_loss", alpha=params.alpha, penalty=params.penalty,
                             l1_ratio=params.l1_ratio, class_weight=weights, random_state=ctx.seed)
    schedule = SGDSchedule(params.epochs, params.early_stopping, params.validation_fraction,
                           params.tol, params.n_iter_no_change)
    return train_sgd(parts, template, ctx, schedule, loss=_log_loss, fit_kwargs={"classes": ctx.classes})
