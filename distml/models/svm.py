"""Support vector machines: a linear SVM streamed over partitions, or a kernel SVM from a cascade.

``kernel: linear`` trains ``SGDClassifier(loss="hinge")`` with the shared
averaged-SGD engine (``alpha = 1 / (C * n)`` is the SVM's ``C``).
``kernel: rbf | poly | sigmoid`` trains a Cascade SVM (see ``_cascade``) and
returns a plain ``SVC``. ``approximation: nystroem | rbf_sampler`` maps rows
to approximate kernel features and trains the linear SVM on them; the result
is ``Pipeline([approx, SGDClassifier])``, the route for data whose support
vectors would not fit a worker. Without an explicit ``approximation`` the
kernel routes measure first (``_svm_route``): when most rows of a probe SVC are
support vectors, Nyström features sized by a learning curve replace the cascade;
with more than two classes that route trains one binary SVM per pair of classes, as
SVC does (``_pairs``: ``Pipeline([Nystroem, OneVsOneClassifier])``).
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from distml.errors import DataError
from distml.models._cascade import Cascade, CascadePlan, plan_chunks
from distml.models._sgd import SGDFit, SGDSchedule, train_sgd, train_sgd_many
from distml.models._weights import class_weights
from distml.models.base import Encoding, FamilyParams, Task, TrainContext
from distml.tasks import submit_bounded

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator

    from distml.blocks import Partitions
MIN_CLASS_ROWS_PER_CHUNK = 10  # expected rows of the rarest class in a chunk; P(a chunk misses it) < 1e-4
PROBA_MIN_CLASS_ROWS = 10  # libsvm's Platt scaling runs a 5-fold cross-validation
SAMPLE_ROWS_PER_COMPONENT = 4  # rows sampled to fit a kernel approximation, per component
NYSTROEM_FIT_COPIES = 4  # n×n float64 arrays while Nystroem fits (on a worker): kernel matrix, SVD U and V, normalisation
NYSTROEM_ARRIVED_COPIES = 2  # the fitted normalisation where it arrives (client, workers), and its copy while unpickled
WORKER_SHARE = 0.6  # of a worker's memory limit; Dask pauses a worker past it
MAPPED_SHARE = 0.25  # of the cluster's memory: kernel features held for the epochs of an approximation
# Largest precomputed kernel matrix one fit builds, whatever the workers' memory. Its 8 n^2 bytes are fresh memory
# each time, and where touching fresh memory is slow (virtual machines that hand freed memory back to their host) a
# larger matrix costs more than libsvm's own kernel with shrinking: README, "The cascade on the same noisy data".
GRAM_MAX_BYTES = 256 * 2**20
_CASCADE_ONLY = {"probability", "chunk_rows", "max_passes", "max_support_vectors", "feedback_tol",
                 "switch_sv_fraction"}
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
    switch_sv_fraction: float = Field(0.6, ge=0.0, le=1.0, description="support-vector share of a probe SVC above "
                                      "which Nystroem features replace the cascade; 1 keeps the cascade")
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


def _fit_approx_part(samples: list[tuple[np.ndarray, np.ndarray]], approx: Any) -> tuple[Any, int]:
    """Fit the kernel approximation on the sampled rows in draw order; (fitted, rows used)."""
    from sklearn.kernel_approximation import Nystroem

    from distml.models._approx_sgd import fit_nystroem

    X = np.concatenate([x for x, _ in samples])[np.argsort(np.concatenate([u for _, u in samples]), kind="stable")]
    if isinstance(approx, Nystroem):  # one component per sampled row at most
        approx = approx.set_params(n_components=min(approx.n_components, len(X)))
    return fit_nystroem(approx, X), len(X)


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

    Fitting on a worker holds the sample's kernel matrix, its SVD factors and the normalisation
    (``NYSTROEM_FIT_COPIES`` n×n float64 arrays); the fitted map's n×n normalisation then travels
    to the client and every worker, each holding a copy while unpickling (``NYSTROEM_ARRIVED_COPIES``).
    """
    import psutil

    n = min(params.n_components, ctx.data.train_rows)  # Nystroem takes at most one component per sampled row
    limits = [("each worker", NYSTROEM_FIT_COPIES, int(WORKER_SHARE * ctx.env.worker_memory))] \
        if ctx.env.worker_memory else []
    limits.append(("the submitting process", NYSTROEM_ARRIVED_COPIES, psutil.virtual_memory().available))
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
    """Largest precomputed kernel matrix one fit may build: ``GRAM_MAX_BYTES``, or less where a quarter of a worker
    thread's memory share is less."""
    if not ctx.env.worker_memory:
        return GRAM_MAX_BYTES
    threads_per_worker = max(1, ctx.env.max_in_flight // max(1, ctx.env.n_workers))
    return min(GRAM_MAX_BYTES, ctx.env.worker_memory // 4 // threads_per_worker)


def _chunks_per_read(n_chunks: int, params: Params, ctx: TrainContext) -> int:
    """Chunks cut in one read pass: their pieces may take a quarter of the cluster's memory."""
    if not ctx.env.worker_memory:
        return n_chunks
    budget = ctx.env.worker_memory * ctx.env.n_workers // 4 // (8 * (ctx.data.n_features + 2))
    return max(1, min(n_chunks, max(ctx.env.max_in_flight, budget // params.chunk_rows)))


def _svc_params(params: Params, ctx: TrainContext, weights: Any) -> dict[str, Any]:
    """The SVC every cascade fit (and the route's probe) uses: one kernel for every chunk."""
    return {"kernel": params.kernel, "C": params.C, "gamma": _gamma(params, ctx), "degree": params.degree,
            "coef0": params.coef0, "tol": params.tol, "class_weight": weights}


def _train_cascade(parts: Partitions, params: Params, ctx: TrainContext, svc: dict[str, Any]) -> BaseEstimator:
    n_chunks = plan_chunks(ctx.data.train_rows, params.chunk_rows)
    group = _chunks_per_read(n_chunks, params, ctx)
    plan = CascadePlan(n_chunks, params.chunk_rows, group, _max_support_vectors(params, ctx), _gram_bytes(ctx),
                       params.max_passes, params.feedback_tol)
    ctx.env.log(f"cascade SVM: {n_chunks} chunks of at most {params.chunk_rows:,} rows ({group} per read pass), "
            f"gamma {svc['gamma']:.4g}, at most {plan.limit:,} support vectors")
    return Cascade(parts, ctx.env, plan, svc, params.probability, ctx.env.child_seeds(1, salt=3)[0]).run()


def _sgd_fit(params: Params, ctx: TrainContext, weights: Any, cls: type | None = None,
             loss: str | None = None) -> SGDFit:
    """What the SGD engine trains for a linear route: ``SGDClassifier`` (or the training-time ``cls``) on the rows."""
    from sklearn.linear_model import SGDClassifier

    alpha = params.alpha if params.alpha is not None else 1.0 / (params.C * ctx.data.train_rows)
    # average=True (averaged SGD): with alpha = 1/(C n) plain SGD ends ~1-4 points short of LinearSVC.
    template = (cls or SGDClassifier)(loss=loss or params.loss, alpha=alpha, class_weight=weights, average=True,
                                      random_state=ctx.env.seed)
    schedule = SGDSchedule(params.epochs, params.early_stopping, params.validation_fraction, params.tol,
                           params.n_iter_no_change)
    return SGDFit(template, schedule, _hinge_loss, {"classes": ctx.data.classes}, metric="validation hinge loss")


def _fit_approximation(parts: Partitions, params: Params, ctx: TrainContext) -> Any:
    """Fit Nystroem / RBFSampler on a worker, on a bounded sample drawn on the workers by the rows' draws.

    On a worker rather than the client: workers run BLAS on one thread, and a many-threaded SVD on a
    busy machine's client process can take many times longer.
    """
    from sklearn.kernel_approximation import Nystroem, RBFSampler

    fraction = min(1.0, SAMPLE_ROWS_PER_COMPONENT * params.n_components / max(1, ctx.data.train_rows))
    client = ctx.env.client
    samples = submit_bounded(client, parts.train, lambda i, source: client.submit(
        _sample_part, source, fraction, key=ctx.env.key("sample", i)), max_in_flight=ctx.env.max_in_flight)
    seed = ctx.env.child_seeds(1, salt=4)[0]
    gamma = _gamma(params, ctx)
    if params.approximation == "rbf_sampler":
        approx = RBFSampler(gamma=gamma, n_components=params.n_components, random_state=seed)
    else:
        approx = Nystroem(kernel=params.kernel, gamma=gamma, degree=params.degree, coef0=params.coef0,
                          n_components=params.n_components, random_state=seed)
    fitted, rows = client.submit(_fit_approx_part, samples, approx, key=ctx.env.key("sample", "fit")).result()
    client.cancel(samples)
    ctx.env.log(f"{params.approximation}: {fitted.n_components} components fitted on a sample of {rows:,} rows")
    return fitted


def train(parts: Partitions, params: Params, ctx: TrainContext) -> BaseEstimator:
    """Fit an SVM on the cluster: SGDClassifier (linear), SVC (cascade) or Pipeline(approx, SGDClassifier)."""
    _check_data(params, ctx)
    weights = class_weights(params.class_weight, ctx.data.classes, ctx.data.class_counts)
    if params.route == "linear":
        return train_sgd(parts, _sgd_fit(params, ctx, weights), ctx)
    if params.route == "approximation":
        return _train_approximation(parts, params, ctx, weights)
    from distml.models._pairs import multiclass
    from distml.models._svm_route import EPOCHS, choose

    svc = _svc_params(params, ctx, weights)
    sgd = {"loss": _route_loss(params), "alpha": 1.0 / params.C, "class_weight": weights, "average": True,
           "max_iter": EPOCHS, "tol": None, "random_state": ctx.env.seed}
    route = choose(parts, ctx, params.switch_sv_fraction, svc, _gram_bytes(ctx), sgd, multiclass(len(ctx.data.classes), params.probability))
    ctx.env.log(f"svm route: {route.name}: {route.reason} ({route.seconds:.2f}s)")
    started = time.perf_counter()
    if route.name == "cascade":
        model = _train_cascade(parts, params, ctx, svc)
    else:
        switched = params.model_copy(update={"approximation": "nystroem", "n_components": route.n_components,
                                             "epochs": route.epochs})
        _check_nystroem_memory(switched, ctx)
        model = _train_approximation(parts, switched, ctx, weights, loss=_route_loss(params), approx=route.approx,
                                     pairs=route.multiclass == "one-vs-one", exact=True)
    ctx.env.record_training(route.record(time.perf_counter() - started))
    return model


def _route_loss(params: Params) -> str:
    """The Nystroem route's loss in place of the cascade: logistic when probabilities are asked (hinge has none)."""
    return "log_loss" if params.probability else params.loss


def _train_approximation(parts: Partitions, params: Params, ctx: TrainContext, weights: Any,
                         loss: str | None = None, approx: Any = None, pairs: bool = False,
                         exact: bool = False) -> BaseEstimator:
    """Kernel approximation features and the linear SVM on them: ``Pipeline([approx, SGDClassifier])``, or
    with ``pairs`` ``Pipeline([approx, OneVsOneClassifier])`` (``approx``: a map already fitted, else one
    fitted on a sample). ``exact`` (the route's): a hinge SVM on held features, binary or one per pair, is solved by
    its dual (``_dual_svm``), not by SGD, which stops short of it."""
    from distml.models._approx_sgd import _ApproxSGD, _MappedSGD, plain_sgd
    from distml.models._pairs import train_pairs

    approx = approx if approx is not None else _fit_approximation(parts, params, ctx)
    mapped = _mapped(parts, approx, ctx)
    if mapped is None:  # mapped rows at every epoch: nothing held beyond one batch's features
        data, fit = parts, replace(_sgd_fit(params, ctx, weights, _ApproxSGD, loss), transform=approx)
    else:
        data, fit = mapped, _sgd_fit(params, ctx, weights, _MappedSGD, loss)
    if exact and mapped is not None and fit.template.loss == "hinge" and (pairs or len(ctx.data.classes) == 2):
        from distml.models._dual_svm import fit_dual
        from distml.models._pairs import pair_fits

        counts = dict(zip(ctx.data.classes.tolist(), ctx.data.class_counts.tolist()))
        templates = [f.template for f in pair_fits(fit, ctx.data.classes, params.C, counts, params.alpha)] \
            if pairs else [fit.template]
        model = fit_dual(mapped, ctx, [plain_sgd(t) for t in templates], params.C, weights,
                         getattr(approx, "kernel", None) == "rbf", int(approx.n_components))
    elif pairs:
        model = train_pairs(data, fit, ctx, params.C, params.alpha)
    else:
        model = plain_sgd(train_sgd(data, fit, ctx))
    if mapped is not None:
        ctx.env.client.cancel(mapped.train)
    return _pipeline(approx, model)


def _pipeline(approx: Any, model: Any) -> BaseEstimator:
    """The artifact of an approximation route: ``Pipeline([approx, SGDClassifier or OneVsOneClassifier])``."""
    from sklearn.pipeline import Pipeline

    return Pipeline([("approx", approx), ("svm", model)])


def _mapped(parts: Partitions, approx: Any, ctx: TrainContext) -> Partitions | None:
    """The training blocks mapped once to kernel features and held on the workers, when those take at most
    ``MAPPED_SHARE`` of the cluster's memory as float32, or else as float16 (``held_dtypes``; measured limits,
    unknown limits: never): every epoch then reads features instead of recomputing the map's
    ``n_components^2`` product per row."""
    from distml.models._approx_sgd import _map_part, held_dtypes

    cells = ctx.data.train_rows * int(approx.n_components)
    budget = MAPPED_SHARE * ctx.env.worker_memory * ctx.env.n_workers
    dtype = next((d for d in held_dtypes(approx) if np.dtype(d).itemsize * cells <= budget), None)
    if dtype is None:
        need = np.dtype(held_dtypes(approx)[-1]).itemsize * cells
        ctx.env.log(f"kernel features: {need / 2**20:,.0f} MiB, more than {MAPPED_SHARE:.0%} of the cluster's memory: "
                    "mapping the rows again at every epoch")
        return None
    from distml.models._dual_svm import lane_homes, lane_of

    client = ctx.env.client
    shared = client.scatter(approx, broadcast=True)  # one copy per worker, not one per task
    lanes = max(1, min(ctx.env.max_in_flight, len(parts.train)))
    homes = lane_homes(client, lanes)  # where the exact solver's lanes will read them (the SGD engine: anywhere)
    train = [client.submit(_map_part, source, shared, dtype, key=ctx.env.key("map", i),
                           workers=homes[lane_of(i, lanes)], allow_other_workers=True)
             for i, source in enumerate(parts.train)]
    ctx.env.log(f"kernel features: {np.dtype(dtype).itemsize * cells / 2**20:,.0f} MiB of {np.dtype(dtype).name} "
                "held on the workers for the epochs")
    return replace(parts, train=train, holdout=[], persisted=True)


def train_many(parts: Partitions, params_list: list[Params], ctx: TrainContext) -> list[Any] | None:
    """Every candidate of a search from shared epochs (``_sgd.train_sgd_many``) when all take the linear route,
    or all one kernel approximation's map.

    Linear candidates (any C or alpha, loss, class_weight, epochs, early stopping) share each epoch's tasks;
    approximation candidates with the same map (``approximation``, ``n_components``, kernel and its
    parameters) also share the map's fit and the features it gives (held or streamed as one fit's would be).
    Each model is the one its own ``train`` gives; a candidate whose parameters do not suit the data gets its
    ``DataError`` in place of its model. None (each candidate trains alone) otherwise: a kernel route without
    an explicit approximation is chosen per fit from what it measures.
    """
    from distml.models._approx_sgd import _ApproxSGD, _MappedSGD, plain_sgd

    routes, maps = {p.route for p in params_list}, {_map_key(p) for p in params_list}
    if routes != {"linear"} and (routes != {"approximation"} or len(maps) != 1):
        return None
    out: list[Any] = [None] * len(params_list)
    members = []
    for i, params in enumerate(params_list):
        try:
            _check_data(params, ctx)
            members.append(i)
        except DataError as exc:
            out[i] = exc
    if not members:
        return out
    first = params_list[members[0]]
    approx = mapped = None
    if first.route == "approximation":
        approx = _fit_approximation(parts, first, ctx)  # each candidate's own fit draws this sample and seed
        mapped = _mapped(parts, approx, ctx)
    fits = []
    for i in members:
        params = params_list[i]
        weights = class_weights(params.class_weight, ctx.data.classes, ctx.data.class_counts)
        fit = _sgd_fit(params, ctx, weights, None if approx is None else _MappedSGD if mapped else _ApproxSGD)
        fits.append(fit if approx is None or mapped else replace(fit, transform=approx))
    for i, model in zip(members, train_sgd_many(mapped or parts, fits, ctx)):
        out[i] = model if approx is None or isinstance(model, Exception) else _pipeline(approx, plain_sgd(model))
    if mapped is not None:
        ctx.env.client.cancel(mapped.train)
    return out


def _map_key(params: Params) -> tuple[Any, ...] | None:
    """What fixes an approximation candidate's map (None: not an approximation): candidates with one key share it."""
    if params.route != "approximation":
        return None
    return (params.approximation, params.n_components, params.kernel, params.gamma, params.degree, params.coef0)
