"""Support vector machines: a linear SVM streamed over partitions, or a kernel SVM from a cascade.

``kernel: linear`` trains ``SGDClassifier(loss="hinge")`` with the shared
averaged-SGD engine (``alpha = 1 / (C * n)`` is the SVM's ``C``).
``kernel: rbf | poly | sigmoid`` trains a Cascade SVM (see ``_cascade``) and
returns a plain ``SVC``. ``approximation: nystroem | rbf_sampler`` maps rows
to approximate kernel features and trains the linear SVM on them; the result
is ``Pipeline([approx, SGDClassifier])``, the route for data whose support
vectors would not fit a worker.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from distml.errors import DataError
from distml.models._cascade import Cascade, CascadePlan, plan_chunks
from distml.models._sgd import SGDFit, SGDSchedule, train_sgd, train_sgd_many
from distml.models._weights import class_weights
from distml.models.base import Encoding, FamilyParams, Task, TrainContext
from distml.tasks import map_bounded

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator
    from distml.blocks import Partitions

MIN_CLASS_ROWS_PER_CHUNK = 10  # expected rows of the rarest class in a chunk; P(a chunk misses it) < 1e-4
PROBA_MIN_CLASS_ROWS = 10  # libsvm's Platt scaling runs a 5-fold cross-validation
SAMPLE_ROWS_PER_COMPONENT = 4  # rows sampled to fit a kernel approximation, per component
NYSTROEM_FIT_COPIES = 4  # n×n float64 arrays while Nystroem fits: kernel matrix, SVD U and V, normalisation
NYSTROEM_WORKER_COPIES = 2  # the fitted normalisation on a worker, and its copy while it is unpickled
WORKER_SHARE = 0.6  # of a worker's memory limit; Dask pauses a worker past it
DEFAULT_GRAM_BYTES = 2**30  # precomputed kernel matrix budget per fit when workers have no memory limit
_CASCADE_ONLY = {"probability", "chunk_rows", "max_passes", "max_support_vectors", "feedback_tol"}
_SGD_ONLY = {"alpha", "loss", "epochs", "early_stopping", "validation_fraction", "n_iter_no_change"}
_KERNEL_ONLY = {"gamma", "degree", "coef0"}

ENCODING: Encoding = "onehot"  # kernels and margins need one column per category


class Params(FamilyParams):
    kernel: Literal["linear", "rbf", "poly", "sigmoid"] = "rbf"
    C: float = Field(1.0, gt=0.0, description="inverse regularisation, as in sklearn's SVC")
    gamma: Literal["scale"] | float = Field("scale", description="kernel coefficient; scale = 1/(n_features * var)")
    degree: int = Field(3, ge=1, le=10, description="poly kernel degree")
    coef0: float = 0.0
    class_weight: Literal["balanced"] | dict[str | int, float] | None = None
    tol: float = Field(1e-3, gt=0.0, description="libsvm's stopping tolerance (cascade); least improvement of the "
                       "validation loss (linear routes with early_stopping)")
    probability: bool = False
    chunk_rows: int = Field(5000, ge=2, le=10_000_000, description="rows per first-layer SVC (cascade)")
    max_passes: int = Field(2, ge=1, le=50, description="cascade passes: the first and its feedback passes")
    feedback_tol: float = Field(0.01, ge=0.0, le=1.0, description="stop once fewer rows than this fraction of "
                                "the SVs violate their margins, or change in a refit")
    max_support_vectors: int | None = Field(None, ge=1, description="default: sized from worker memory")
    approximation: Literal["nystroem", "rbf_sampler"] | None = None
    n_components: int = Field(300, ge=1, le=20_000, description="kernel approximation features")
    alpha: float | None = Field(None, gt=0.0, description="SGD's alpha (linear routes); default 1/(C * rows)")
    loss: Literal["hinge", "squared_hinge"] = "hinge"
    epochs: int = Field(5, ge=1, le=1000, description="passes over the data (linear routes)")
    early_stopping: bool = Field(False, description="linear routes: stop when the validation hinge loss stalls")
    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="rows set aside by their draw")
    n_iter_no_change: int = Field(5, ge=1, description="epochs without improvement before stopping")

    @field_validator("early_stopping")
    @classmethod
    def _can_stop(cls, value: bool, info: ValidationInfo) -> bool:
        kernel = info.data.get("kernel", "rbf")
        if value and kernel != "linear" and not info.data.get("approximation"):
            raise ValueError(f"kernel {kernel} without an approximation trains a cascade SVM, which cannot stop "
                             "early; use kernel: linear or approximation: nystroem or rbf_sampler")
        return value

    @model_validator(mode="after")
    def _applies(self) -> Params:
        """Refuse a parameter the chosen route would ignore (and combinations that cannot work)."""
        if isinstance(self.gamma, float) and self.gamma <= 0:
            raise ValueError("gamma must be 'scale' or a number > 0")
        route = self.route
        if self.approximation and self.kernel == "linear":
            raise ValueError("approximation applies to kernel rbf, poly or sigmoid, not linear")
        if self.approximation == "rbf_sampler" and self.kernel != "rbf":
            raise ValueError(f"approximation rbf_sampler approximates the rbf kernel only; got kernel {self.kernel}")
        ignored = {"linear": _CASCADE_ONLY | _KERNEL_ONLY | {"n_components"},
                   "cascade": _SGD_ONLY | {"n_components"}, "approximation": _CASCADE_ONLY}[route]
        given = sorted(ignored & self.model_fields_set)
        if given:
            raise ValueError(f"{given[0]} does not apply to {self.describe()}")
        if "alpha" in self.model_fields_set and "C" in self.model_fields_set:
            raise ValueError("set C or alpha, not both")
        return self

    @property
    def route(self) -> Literal["linear", "cascade", "approximation"]:
        if self.kernel == "linear":
            return "linear"
        return "approximation" if self.approximation else "cascade"

    def describe(self) -> str:
        return {"linear": "kernel linear", "cascade": f"the cascade (kernel {self.kernel})",
                "approximation": f"approximation {self.approximation}"}[self.route]


def task(params: Params) -> Task:
    return "classification"


# --- runs on workers ---------------------------------------------------------


def _hinge_loss(model: Any, X: np.ndarray, y: np.ndarray) -> float:
    """Summed multiclass hinge loss of ``model`` on (X, y) (the engine's early-stopping score)."""
    decision = model.decision_function(X)
    if decision.ndim == 1:
        sign = np.where(y == model.classes_[1], 1.0, -1.0)
        return float(np.maximum(0.0, 1.0 - sign * decision).sum())
    sign = np.where(y[:, None] == model.classes_[None, :], 1.0, -1.0)
    return float(np.maximum(0.0, 1.0 - sign * decision).sum())


def _sample_part(source: Any, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The rows of one partition whose draw falls below ``fraction``, with their draws."""
    block = source.load()
    keep = block.u < fraction
    return block.X[keep], block.u[keep]


# --- runs on the client ------------------------------------------------------


def _check_data(params: Params, ctx: TrainContext) -> None:
    """Data-dependent refusals, before any heavy work: one line naming the parameter."""
    counts = ctx.data.class_counts
    rarest = int(np.argmin(counts))
    name, n = ctx.data.classes.tolist()[rarest], int(counts[rarest])
    if params.probability and n < PROBA_MIN_CLASS_ROWS:
        raise DataError(f"model.params.probability needs at least {PROBA_MIN_CLASS_ROWS} training rows of each "
                        f"class for its 5-fold Platt scaling; class {name!r} has {n}")
    if params.approximation == "nystroem":
        _check_nystroem_memory(params, ctx)
    if params.route != "cascade":
        return
    n_chunks = plan_chunks(ctx.data.train_rows, params.chunk_rows)
    if n_chunks > 1 and n / n_chunks < MIN_CLASS_ROWS_PER_CHUNK:
        need_chunks = max(1, n // MIN_CLASS_ROWS_PER_CHUNK)
        lo, hi = params.chunk_rows, 4 * ctx.data.train_rows + 100
        while lo < hi:  # the smallest chunk_rows that cuts few enough chunks
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if plan_chunks(ctx.data.train_rows, mid) > need_chunks else (lo, mid)
        raise DataError(f"model.params.chunk_rows={params.chunk_rows} is too small for class {name!r} "
                        f"({n:,} of {ctx.data.train_rows:,} training rows): a chunk would hold about "
                        f"{n / n_chunks:.1f} of them; use chunk_rows >= {lo} so every chunk holds every class")


def _check_nystroem_memory(params: Params, ctx: TrainContext) -> None:
    """Refuse a Nystroem map whose n×n matrices cannot fit, before any sampling: one line with the sizes.

    Fitting on the client holds the sample's kernel matrix, its SVD factors and the normalisation
    (``NYSTROEM_FIT_COPIES`` n×n float64 arrays); the fitted map's n×n normalisation then travels
    to every worker, which also holds a copy while unpickling (``NYSTROEM_WORKER_COPIES``).
    """
    import psutil

    n = min(params.n_components, ctx.data.train_rows)  # Nystroem takes at most one component per sampled row
    limits = [("each worker", NYSTROEM_WORKER_COPIES, int(WORKER_SHARE * ctx.env.worker_memory))] \
        if ctx.env.worker_memory else []
    limits.append(("the submitting process", NYSTROEM_FIT_COPIES, psutil.virtual_memory().available))
    for where, copies, available in limits:
        need = copies * 8 * n * n
        if need > available:
            fits = max(1, int((available / (copies * 8)) ** 0.5))
            raise DataError(f"model.params.n_components={params.n_components} with approximation: nystroem needs "
                            f"about {need / 2**30:.1f} GiB in {where} ({copies} {n}x{n} matrices); "
                            f"{available / 2**30:.1f} GiB is available there; use n_components <= {fits} "
                            "or approximation: rbf_sampler")


def _gamma(params: Params, ctx: TrainContext) -> float:
    """One kernel for every chunk: ``scale`` from the global variance of the standardized features."""
    if params.gamma != "scale":
        return float(params.gamma)
    return 1.0 / (ctx.data.n_features * ctx.data.x_var) if ctx.data.x_var > 0 else 1.0


def _max_support_vectors(params: Params, ctx: TrainContext) -> int:
    """Default guard: a merge task holds its union about four times (inputs, union, libsvm's copy)."""
    if params.max_support_vectors is not None:
        return params.max_support_vectors
    if not ctx.env.worker_memory:
        return 200_000
    row_bytes = 8 * (ctx.data.n_features + 2) * 4
    return max(1000, (ctx.env.worker_memory // 4 - 200 * 2**20) // row_bytes)


def _gram_bytes(ctx: TrainContext) -> int:
    """Largest precomputed kernel matrix one fit may build: a quarter of a worker thread's memory share."""
    if not ctx.env.worker_memory:
        return DEFAULT_GRAM_BYTES
    threads_per_worker = max(1, ctx.env.max_in_flight // max(1, ctx.env.n_workers))
    return ctx.env.worker_memory // 4 // threads_per_worker


def _chunks_per_read(n_chunks: int, params: Params, ctx: TrainContext) -> int:
    """Chunks cut in one read pass: their pieces may take a quarter of the cluster's memory."""
    if not ctx.env.worker_memory:
        return n_chunks
    budget = ctx.env.worker_memory * ctx.env.n_workers // 4 // (8 * (ctx.data.n_features + 2))
    return max(1, min(n_chunks, max(ctx.env.max_in_flight, budget // params.chunk_rows)))


def _train_cascade(parts: Partitions, params: Params, ctx: TrainContext, weights: Any) -> BaseEstimator:
    n_chunks = plan_chunks(ctx.data.train_rows, params.chunk_rows)
    group = _chunks_per_read(n_chunks, params, ctx)
    plan = CascadePlan(n_chunks, params.chunk_rows, group, _max_support_vectors(params, ctx), _gram_bytes(ctx),
                       params.max_passes, params.feedback_tol)
    svc = {"kernel": params.kernel, "C": params.C, "gamma": _gamma(params, ctx), "degree": params.degree,
           "coef0": params.coef0, "tol": params.tol, "class_weight": weights}
    ctx.env.log(f"cascade SVM: {n_chunks} chunks of at most {params.chunk_rows:,} rows ({group} per read pass), "
            f"gamma {svc['gamma']:.4g}, at most {plan.limit:,} support vectors")
    return Cascade(parts, ctx.env, plan, svc, params.probability, ctx.env.child_seeds(1, salt=3)[0]).run()


def _sgd_fit(params: Params, ctx: TrainContext, weights: Any, transform: int | None = None) -> SGDFit:
    """What the SGD engine trains for a linear route: ``SGDClassifier`` on the rows (mapped by ``transform``)."""
    from sklearn.linear_model import SGDClassifier

    alpha = params.alpha if params.alpha is not None else 1.0 / (params.C * ctx.data.train_rows)
    # average=True (averaged SGD): with alpha = 1/(C n) plain SGD ends ~1-4 points short of LinearSVC.
    template = SGDClassifier(loss=params.loss, alpha=alpha, class_weight=weights, average=True,
                             random_state=ctx.env.seed)
    schedule = SGDSchedule(params.epochs, params.early_stopping, params.validation_fraction, params.tol,
                           params.n_iter_no_change)
    return SGDFit(template, schedule, _hinge_loss, {"classes": ctx.data.classes}, metric="validation hinge loss",
                  transform=transform)


def _fit_approximation(parts: Partitions, params: Params, ctx: TrainContext) -> Any:
    """Fit Nystroem / RBFSampler on a bounded sample drawn on the workers by the rows' draws."""
    from sklearn.kernel_approximation import Nystroem, RBFSampler

    fraction = min(1.0, SAMPLE_ROWS_PER_COMPONENT * params.n_components / max(1, ctx.data.train_rows))
    samples = map_bounded(ctx.env.client, _sample_part, parts.train, key=lambda i: ctx.env.key("sample", i),
                          max_in_flight=ctx.env.max_in_flight, fraction=fraction)
    X = np.concatenate([x for x, _ in samples])[np.argsort(np.concatenate([u for _, u in samples]), kind="stable")]
    seed = ctx.env.child_seeds(1, salt=4)[0]
    gamma = _gamma(params, ctx)
    if params.approximation == "rbf_sampler":
        approx = RBFSampler(gamma=gamma, n_components=params.n_components, random_state=seed)
    else:
        approx = Nystroem(kernel=params.kernel, gamma=gamma, degree=params.degree, coef0=params.coef0,
                          n_components=min(params.n_components, len(X)), random_state=seed)
    ctx.env.log(f"{params.approximation}: {params.n_components} components fitted on a sample of {len(X):,} rows")
    return approx.fit(X)


def _map_settings(params: Params, ctx: TrainContext) -> tuple[Any, ...]:
    """What fixes the fitted kernel approximation (with the job's seed and rows): equal settings, equal maps."""
    return params.approximation, params.kernel, _gamma(params, ctx), params.degree, params.coef0, params.n_components


def train(parts: Partitions, params: Params, ctx: TrainContext) -> BaseEstimator:
    """Fit an SVM on the cluster: SGDClassifier (linear), SVC (cascade) or Pipeline(approx, SGDClassifier)."""
    from sklearn.pipeline import Pipeline

    _check_data(params, ctx)
    weights = class_weights(params.class_weight, ctx.data.classes, ctx.data.class_counts)
    if params.route == "cascade":
        return _train_cascade(parts, params, ctx, weights)
    if params.route == "linear":
        return train_sgd(parts, _sgd_fit(params, ctx, weights), ctx)
    approx = _fit_approximation(parts, params, ctx)  # the engine maps each task's rows through it once
    return Pipeline([("approx", approx), ("svm", train_sgd(parts, _sgd_fit(params, ctx, weights, 0), ctx, [approx]))])


def train_many(parts: Partitions, params_list: list[Params], ctx: TrainContext) -> list[Any] | None:
    """Every candidate of a search from shared epochs when none trains a cascade (``_sgd.train_sgd_many``).

    Linear and approximation candidates (any C or alpha, loss, class_weight, epochs, early stopping) share
    each epoch's tasks; candidates with the same approximation settings share one fitted map, and each task
    maps its rows once per map. Each model is the one its own ``train`` gives; a candidate whose parameters do
    not suit the data gets its ``DataError`` in place of its model. None when any candidate is a cascade.
    """
    import copy

    from sklearn.pipeline import Pipeline

    if any(p.route == "cascade" for p in params_list):
        return None
    out: list[Any] = [None] * len(params_list)
    fits, members, maps, index = [], [], [], {}
    for i, params in enumerate(params_list):
        try:
            _check_data(params, ctx)
        except DataError as exc:
            out[i] = exc
            continue
        transform = None
        if params.route == "approximation":
            settings = _map_settings(params, ctx)
            if settings not in index:
                index[settings] = len(maps)
                map_ctx = replace(ctx, env=replace(ctx.env, job_id=f"{ctx.env.job_id}-m{len(maps)}"))
                maps.append(_fit_approximation(parts, params, map_ctx))
            transform = index[settings]
        weights = class_weights(params.class_weight, ctx.data.classes, ctx.data.class_counts)
        fits.append(_sgd_fit(params, ctx, weights, transform))
        members.append(i)
    for i, fit, model in zip(members, fits, train_sgd_many(parts, fits, ctx, maps)):
        failed = isinstance(model, Exception)
        out[i] = model if fit.transform is None or failed else \
            Pipeline([("approx", copy.deepcopy(maps[fit.transform])), ("svm", model)])
    return out
