"""Logistic regression, binary and multiclass, streamed over partitions with averaged SGD.

``solver: softmax`` (default) optimises the multinomial log loss and returns a
``LogisticRegression``; ``solver: sgd`` runs ``SGDClassifier(loss="log_loss")``
(one-vs-rest for multiclass, about a point less accurate there) and returns it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from distml.models._sgd import SGDSchedule, train_sgd
from distml.models._softmax import SoftmaxSGD, to_estimator
from distml.models._weights import class_weights
from distml.models.base import Encoding, FamilyParams, Task, TrainContext

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression, SGDClassifier

    from distml.blocks import Partitions


ENCODING: Encoding = "onehot"  # a linear model needs one column per category


class Params(FamilyParams):
    solver: Literal["softmax", "sgd"] = "softmax"
    alpha: float = Field(1e-5, ge=0.0, description="L2 regularisation strength")
    eta0: float = Field(0.2, gt=0.0, description="step size (softmax)")
    batch_size: int = Field(256, ge=1, le=1_000_000, description="rows per SGD step (softmax)")
    epochs: int = Field(5, ge=1, le=1000, description="passes over the data")
    class_weight: Literal["balanced"] | dict[str | int, float] | None = None
    early_stopping: bool = False
    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    tol: float = Field(1e-3, ge=0.0)
    n_iter_no_change: int = Field(2, ge=1)


def task(params: Params) -> Task:
    return "classification"


# --- runs on workers ---------------------------------------------------------


def _log_loss(model: SGDClassifier | SoftmaxSGD, X: np.ndarray, y: np.ndarray) -> float:
    """Summed log loss of ``model`` on (X, y)."""
    proba = np.clip(model.predict_proba(X), 1e-15, 1.0)
    index = np.searchsorted(model.classes_, y)  # classes_ are sorted, as the plan found them
    return float(-np.log(proba[np.arange(len(y)), index]).sum())


# --- runs on the client ------------------------------------------------------


def train(parts: Partitions, params: Params, ctx: TrainContext) -> LogisticRegression | SGDClassifier:
    """Streamed, parameter-averaged SGD on the log loss; returns a fitted sklearn classifier."""
    from sklearn.linear_model import SGDClassifier

    weights = class_weights(params.class_weight, ctx.data.classes, ctx.data.class_counts)
    schedule = SGDSchedule(params.epochs, params.early_stopping, params.validation_fraction,
                           params.tol, params.n_iter_no_change)
    if params.solver == "sgd":
        template = SGDClassifier(loss="log_loss", alpha=params.alpha, class_weight=weights,
                                 random_state=ctx.env.seed)
        return train_sgd(parts, template, ctx, schedule, loss=_log_loss, fit_kwargs={"classes": ctx.data.classes})
    learner = SoftmaxSGD(alpha=params.alpha, eta0=params.eta0, batch_size=params.batch_size, class_weight=weights)
    fitted = train_sgd(parts, learner, ctx, schedule, loss=_log_loss, fit_kwargs={"classes": ctx.data.classes})
    return to_estimator(fitted, ctx.data.n_features, ctx.data.train_rows, params.epochs)
