"""Linear regression: an exact solve from distributed XᵀX, or streamed SGD.

``solver: exact`` makes one pass in which every partition computes its
augmented Gram matrix; the matrices are summed in a tree on the workers and
the (optionally ridge-penalised) normal equations are solved on the client.
``solver: sgd`` streams ``SGDRegressor.partial_fit`` over the partitions with
the shared averaged-SGD engine.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from distml.models._by_kind import train_by_kind
from distml.models._sgd import SGDFit, SGDSchedule, train_sgd, train_sgd_many
from distml.models.base import Encoding, FamilyParams, Task, TrainContext
from distml.tasks import fan_in, tree_reduce

if TYPE_CHECKING:
    from sklearn.base import RegressorMixin

    from distml.blocks import Partitions


ENCODING: Encoding = "onehot"  # a linear model needs one column per category
_EARLY_STOPPING = frozenset({"validation_fraction", "n_iter_no_change", "tol"})


class Params(FamilyParams):
    solver: Literal["exact", "sgd"] = "exact"
    alpha: float = Field(0.0, ge=0.0, description="L2 penalty (ridge for exact, SGD's alpha for sgd)")
    epochs: int = Field(5, ge=1, le=1000, description="passes over the data (sgd)")
    eta0: float = Field(0.01, gt=0.0, description="initial learning rate (sgd)")
    early_stopping: bool = Field(False, description="sgd: stop when the validation slice's loss stops improving")
    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="rows set aside by their draw (sgd)")
    n_iter_no_change: int = Field(5, ge=1, description="epochs without improvement before stopping (sgd)")
    tol: float | None = Field(1e-3, ge=0.0, description="least improvement of the validation loss (sgd)")

    @field_validator("early_stopping")
    @classmethod
    def _can_stop(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("solver", "exact") == "exact":
            raise ValueError("solver exact solves the normal equations in one pass and cannot stop early; "
                             "use solver: sgd")
        return value

    @model_validator(mode="after")
    def _applies(self) -> Params:
        given = sorted(_EARLY_STOPPING & self.model_fields_set) if self.solver == "exact" else []
        if given:
            raise ValueError(f"{given[0]} does not apply to solver exact (it applies to solver sgd)")
        return self


def task(params: Params) -> Task:
    return "regression"


def wants_cross_products(params: Params) -> bool:
    """The exact solver takes its Gram matrix from the statistics pass where it can (``distml.gram``)."""
    return params.solver == "exact"


# --- runs on workers ---------------------------------------------------------


def _gram_part(source: object) -> np.ndarray:
    """[X 1 y]ᵀ[X 1 y] for one partition: every sufficient statistic of least squares."""
    block = source.load()  # type: ignore[attr-defined]
    Z = np.column_stack([block.X, np.ones(len(block.y)), block.y.astype(np.float64)])
    return Z.T @ Z


def _add_part(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a + b


def _squared_loss(model: object, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((model.predict(X) - y) ** 2))  # type: ignore[attr-defined]


# --- runs on the client ------------------------------------------------------


def solve_normal_equations(gram: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Solve for (coef, intercept) from the augmented Gram matrix; the intercept is not penalised."""
    d = gram.shape[0] - 2
    A = gram[: d + 1, : d + 1].copy()
    b = gram[: d + 1, d + 1]
    A[np.arange(d), np.arange(d)] += alpha
    solution, *_ = np.linalg.lstsq(A, b, rcond=None)
    return solution[:d], float(solution[d])


def train(parts: Partitions, params: Params, ctx: TrainContext) -> RegressorMixin:
    """Fit a linear regressor on the cluster; returns LinearRegression, Ridge or SGDRegressor."""
    if params.solver == "sgd":
        return train_sgd(parts, _sgd_fit(params, ctx), ctx)
    return _train_exact(parts, params, ctx)


def train_many(parts: Partitions, params_list: list[Params], ctx: TrainContext) -> list[RegressorMixin]:
    """Every candidate of a search from data passes shared by the candidates of each solver.

    Exact ones: one pass, ridge ``alpha``s share XᵀX. SGD ones (any alpha, eta0, epochs, early stopping):
    each epoch's tasks advance every running candidate (``_sgd.train_sgd_many``). A search mixing the two
    trains both groups side by side (``_by_kind``). Each model is the one its own ``train`` gives.
    """
    def exact(group: list[Params], own: TrainContext) -> list[RegressorMixin]:
        total = _gram(parts, own)
        return [_exact_model(total, p, own) for p in group]

    def sgd(group: list[Params], own: TrainContext) -> list[RegressorMixin]:
        return train_sgd_many(parts, [_sgd_fit(p, own) for p in group], own)

    return train_by_kind(params_list, [p.solver for p in params_list], {"exact": exact, "sgd": sgd}, ctx)


def _sgd_fit(params: Params, ctx: TrainContext) -> SGDFit:
    """What the SGD engine trains for ``params``: an ``SGDRegressor`` on the standardised target."""
    from sklearn.linear_model import SGDRegressor

    template = SGDRegressor(alpha=params.alpha, eta0=params.eta0, random_state=ctx.env.seed)
    schedule = SGDSchedule(params.epochs, params.early_stopping, params.validation_fraction, params.tol,
                           params.n_iter_no_change)
    return SGDFit(template, schedule, _squared_loss, {}, scale_target=True,
                  metric="validation mean squared error (target in standard deviations)")


def _train_exact(parts: Partitions, params: Params, ctx: TrainContext) -> RegressorMixin:
    return _exact_model(_gram(parts, ctx), params, ctx)


def _gram(parts: Partitions, ctx: TrainContext) -> np.ndarray:
    """The training rows' augmented Gram matrix: the statistics pass's, or summed in a tree on the workers."""
    if ctx.data.gram is not None and ctx.data.gram_sources is parts.train:
        ctx.env.log("exact: the Gram matrix came with the statistics pass; no training pass")
        ctx.env.report("train", 1.0)
        return ctx.data.gram
    client = ctx.env.client
    grams = [client.submit(_gram_part, s, key=ctx.env.key("train", i)) for i, s in enumerate(parts.train)]
    width = ctx.data.n_features + 2  # the augmented Gram matrix: features, intercept and target
    total = tree_reduce(client, grams, _add_part, key=lambda level, j: ctx.env.key("merge", level, j),
                        fan_in=fan_in(8 * width * width)).result()
    ctx.env.report("train", 1.0)
    return total


def _exact_model(total: np.ndarray, params: Params, ctx: TrainContext) -> RegressorMixin:
    from sklearn.linear_model import LinearRegression, Ridge

    coef, intercept = solve_normal_equations(total, params.alpha)
    model = Ridge(alpha=params.alpha) if params.alpha > 0 else LinearRegression()
    model.coef_ = coef
    model.intercept_ = intercept
    model.n_features_in_ = ctx.data.n_features
    if isinstance(model, LinearRegression):
        d = len(coef)
        model.rank_ = int(np.linalg.matrix_rank(total[:d, :d]))
        model.singular_ = np.sqrt(np.abs(np.linalg.eigvalsh(total[:d, :d])))[::-1]
    else:
        model.n_iter_ = None
        model.solver_ = "cholesky"
    return model
