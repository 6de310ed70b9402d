"""Logistic regression, binary and multiclass: exact full-batch solvers, or streamed averaged SGD.

``solver: auto`` (default) takes ``newton`` whenever its per-pass state, a
Hessian of ``((features + 1) * outputs)²`` floats, is small (``NEWTON_MAX_WIDTH``)
and no SGD parameter (``epochs``, ``eta0``, ``early_stopping``, ...) is set, else ``softmax``. ``newton`` and ``lbfgs`` minimise
``LogisticRegression``'s objective exactly over full passes (``_fullbatch.py``)
and return one; ``softmax`` optimises the multinomial log loss by averaged SGD
and returns a ``LogisticRegression``; ``sgd`` runs ``SGDClassifier(loss="log_loss")``
(one-vs-rest for multiclass, about a point less accurate there) and returns it.

``alpha`` means the same for every solver: the objective is
``alpha · ½‖coef‖² + mean(class weight · log loss)`` over the n training rows,
which is ``LogisticRegression(C=1 / (alpha · n), class_weight=...)``'s.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from distml.models._by_kind import train_by_kind
from distml.models._fullbatch import ExactFit, fit_exact
from distml.models._fullbatch_many import fit_exact_many
from distml.models._sgd import SGDFit, SGDSchedule, train_sgd, train_sgd_many
from distml.models._softmax import SoftmaxSGD, to_estimator
from distml.models._weights import class_weights
from distml.models.base import Encoding, FamilyParams, Task, TrainContext

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression, SGDClassifier

    from distml.blocks import Partitions


ENCODING: Encoding = "onehot"  # a linear model needs one column per category
NEWTON_MAX_WIDTH = 1024  # (features + 1) * outputs: an 8 MiB Hessian per partial sum, fast to solve
EXACT = ("newton", "lbfgs")
_SGD_ONLY = frozenset({"eta0", "batch_size", "epochs", "early_stopping", "validation_fraction", "n_iter_no_change"})
_EXACT_ONLY = frozenset({"max_iter"})
# Newton's own default is tighter than scikit-learn's 1e-4: a step or two more (it converges quadratically)
# puts its coefficients within 1e-6 of the optimum, where lbfgs at 1e-4 stops about 1e-3 away, as scikit-learn's.
DEFAULT_TOL = {"newton": 1e-6, "lbfgs": 1e-4, "sgd": 1e-3}


class Params(FamilyParams):
    solver: Literal["auto", "newton", "lbfgs", "softmax", "sgd"] = "auto"
    alpha: float = Field(1e-5, ge=0.0, description="L2 regularisation strength per row: C = 1 / (alpha * rows)")
    max_iter: int = Field(100, ge=1, le=10_000, description="iterations (newton, lbfgs)")
    tol: float | None = Field(None, ge=0.0, description="newton/lbfgs: max |gradient| (1e-6/1e-4); SGD: loss gain (1e-3)")
    eta0: float = Field(0.2, gt=0.0, description="step size (softmax)")
    batch_size: int = Field(256, ge=1, le=1_000_000, description="rows per SGD step (softmax)")
    epochs: int = Field(5, ge=1, le=1000, description="passes over the data (softmax, sgd)")
    class_weight: Literal["balanced"] | dict[str | int, float] | None = None
    early_stopping: bool = False
    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    n_iter_no_change: int = Field(2, ge=1)

    @field_validator("early_stopping")
    @classmethod
    def _can_stop(cls, value: bool, info: ValidationInfo) -> bool:
        solver = info.data.get("solver")
        if value and solver in EXACT:
            raise ValueError(f"solver {solver} is exact (it stops at tol or max_iter) and cannot stop early; "
                             "use solver: sgd, softmax or auto")
        return value

    @model_validator(mode="after")
    def _applies(self) -> Params:
        """Refuse a parameter the chosen solver would ignore; ``auto`` keeps the SGD ones for its fallback."""
        ignored = {"newton": _SGD_ONLY, "lbfgs": _SGD_ONLY, "softmax": _EXACT_ONLY, "sgd": _EXACT_ONLY,
                   "auto": frozenset()}[self.solver]
        given = sorted(ignored & self.model_fields_set)
        if given:
            kind = "exact, it stops at tol or max_iter" if self.solver in EXACT else "SGD"
            raise ValueError(f"{given[0]} does not apply to solver {self.solver} ({kind})")
        return self

    def pick_solver(self, n_features: int, n_classes: int) -> str:
        """The solver ``auto`` stands for on data this wide (see the module docstring)."""
        if self.solver != "auto":
            return self.solver
        outputs = 1 if n_classes <= 2 else n_classes
        asked_for_sgd = bool(_SGD_ONLY & self.model_fields_set)  # epochs, eta0, early_stopping, ...
        return "newton" if (n_features + 1) * outputs <= NEWTON_MAX_WIDTH and not asked_for_sgd else "softmax"


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
    """Fit on the cluster by the chosen solver; returns a fitted sklearn classifier."""
    weights = class_weights(params.class_weight, ctx.data.classes, ctx.data.class_counts)
    solver = params.pick_solver(ctx.data.n_features, len(ctx.data.classes))
    if params.solver == "auto":
        ctx.env.log(f"solver auto: {solver} ({ctx.data.n_features} features, {len(ctx.data.classes)} classes)")
    if solver in EXACT:
        tol = DEFAULT_TOL[solver] if params.tol is None else params.tol
        return fit_exact(parts, ctx, method=solver, alpha=params.alpha, weights=weights,
                         max_iter=params.max_iter, tol=tol)
    return _finished(train_sgd(parts, _sgd_fit(params, solver, weights, ctx), ctx), ctx)


def _sgd_fit(params: Params, solver: str, weights: dict[object, float] | None, ctx: TrainContext) -> SGDFit:
    """What the SGD engine trains for ``params``: ``SGDClassifier(log_loss)`` (sgd) or ``SoftmaxSGD``."""
    from sklearn.linear_model import SGDClassifier

    tol = DEFAULT_TOL["sgd"] if params.tol is None else params.tol
    schedule = SGDSchedule(params.epochs, params.early_stopping, params.validation_fraction,
                           tol, params.n_iter_no_change)
    if solver == "sgd":
        template = SGDClassifier(loss="log_loss", alpha=params.alpha, class_weight=weights, average=True,
                                 random_state=ctx.env.seed)
    else:
        template = SoftmaxSGD(alpha=params.alpha, eta0=params.eta0, batch_size=params.batch_size,
                              class_weight=weights)
    return SGDFit(template, schedule, _log_loss, {"classes": ctx.data.classes}, metric="validation log loss")


def _finished(fitted: SGDClassifier | SoftmaxSGD, ctx: TrainContext) -> LogisticRegression | SGDClassifier:
    """The saved estimator: SGDClassifier as trained, SoftmaxSGD as a plain ``LogisticRegression`` (a failed
    candidate's exception as it is)."""
    if not isinstance(fitted, SoftmaxSGD):
        return fitted
    return to_estimator(fitted, ctx.data.n_features, ctx.data.train_rows, fitted.n_iter_)


def train_many(parts: Partitions, params_list: list[Params],
               ctx: TrainContext) -> list[LogisticRegression | SGDClassifier | Exception]:
    """Every candidate of a search from passes shared by the candidates of each kind of solver.

    Exact ones (newton or lbfgs, any alpha, tol, max_iter and class_weight): each pass evaluates every
    still-running candidate in one task per partition (``_fullbatch_many``); a candidate whose solver failed
    gets its exception in its place. SGD ones (softmax or sgd, any alpha, eta0, batch_size, epochs, early
    stopping): each epoch's tasks advance every running candidate (``_sgd.train_sgd_many``). A search mixing
    the two trains both groups side by side (``_by_kind``). Each model is the one its own ``train`` gives.
    """
    n_features, n_classes = ctx.data.n_features, len(ctx.data.classes)
    chosen = [(p, p.pick_solver(n_features, n_classes),
               class_weights(p.class_weight, ctx.data.classes, ctx.data.class_counts)) for p in params_list]

    def exact(group: list[tuple[Params, str, dict | None]], own: TrainContext) -> list:
        return fit_exact_many(parts, own, [ExactFit(solver, p.alpha, w, p.max_iter,
                                                    DEFAULT_TOL[solver] if p.tol is None else p.tol)
                                           for p, solver, w in group])

    def sgd(group: list[tuple[Params, str, dict | None]], own: TrainContext) -> list:
        fitted = train_sgd_many(parts, [_sgd_fit(p, solver, w, own) for p, solver, w in group], own)
        return [_finished(model, own) for model in fitted]

    kinds = ["exact" if solver in EXACT else "sgd" for _, solver, _ in chosen]
    return train_by_kind(chosen, kinds, {"exact": exact, "sgd": sgd}, ctx)
