"""Exact logistic regression by full-batch passes: Newton (default) or L-BFGS, over tree-reduced sums.

Each pass sends the current coefficients to one task per partition; the task
computes its block's weighted log loss, gradient and (for Newton) Hessian with
numpy/BLAS, the sums are combined pairwise on the workers and only the small
vectors reach the client. Both solvers minimise scikit-learn's objective for
``LogisticRegression(C)`` exactly (binomial for two classes, multinomial
otherwise), so the result is the same whatever the order of the files.

Why Newton by default: its steps converge quadratically, in 5-10 passes on
the data distml trains, where L-BFGS (``solver: lbfgs``, scipy's, as
scikit-learn runs it) needs tens of passes for the same accuracy. Its per-pass
state is a Hessian of ``((features + 1) * classes)²`` floats, hence the width
bound in ``logistic.py``. On many rows the Hessian is taken from a fixed
uniform subsample (every row's draw ``u``), which changes the path but not
the optimum: the gradient is always the full one. A search's candidates share
these passes (``_fullbatch_many``): one task evaluates a stack of coefficients.

Both checkpoint after every step or iteration (``solve_newton``, ``_Replay``), so a
resumed job ends with the coefficients of the uninterrupted run, bit for bit.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from distributed import Client, Future
    from sklearn.linear_model import LogisticRegression

    from distml.blocks import Partitions
    from distml.models.base import TrainContext

HESSIAN_ROWS = 250_000  # rows the Hessian is estimated from: enough for a 1e-2 relative Hessian error

# --- runs on workers ---------------------------------------------------------


@dataclass(frozen=True)
class PassSums:
    """One partition's (or a sum of partitions') contribution to the objective."""

    loss: float  # sum of weighted log losses
    grad: np.ndarray  # (outputs, features + 1), last column: intercepts
    hess: np.ndarray | None  # (P, P) with P = outputs * (features + 1), row-major over grad
    rows: int
    weight: float  # sum of the rows' class weights


def sums_bytes(size: int, hessian: bool) -> int:
    """The bytes of one ``PassSums`` for ``size`` coefficients: the gradient, and the Hessian if asked."""
    return 8 * (size + (size * size if hessian else 0))


def _add_sums_part(a: PassSums, b: PassSums) -> PassSums:
    hess = None if a.hess is None else a.hess + b.hess
    return PassSums(a.loss + b.loss, a.grad + b.grad, hess, a.rows + b.rows, a.weight + b.weight)


def _logistic_pass_part(source: Any, theta: np.ndarray, classes: np.ndarray, class_weight: np.ndarray,
                        hessian_fraction: float | None) -> PassSums:
    """Log loss, gradient and optionally Hessian of one block at ``theta`` ((outputs, features + 1))."""
    return _block_sums(source.load(), theta, classes, class_weight, hessian_fraction)


def _logistic_stack_part(source: Any, asks: list[tuple[np.ndarray, np.ndarray, float | None]],
                         classes: np.ndarray) -> list[PassSums]:
    """``_logistic_pass_part`` for a stack of (theta, class weights, Hessian fraction), reading the block once."""
    block = source.load()
    return [_block_sums(block, theta, classes, class_weight, fraction) for theta, class_weight, fraction in asks]


def _add_stack_part(a: list[PassSums], b: list[PassSums]) -> list[PassSums]:
    return [_add_sums_part(x, y) for x, y in zip(a, b)]


def _block_sums(block: Any, theta: np.ndarray, classes: np.ndarray, class_weight: np.ndarray,
                hessian_fraction: float | None) -> PassSums:
    X, n = block.X, len(block.y)
    index = np.searchsorted(classes, block.y)
    s = class_weight[index]
    Z = X @ theta[:, :-1].T + theta[:, -1]
    if theta.shape[0] == 1:  # binomial: one logit, target 1 for classes[1]
        z, target = Z[:, 0], (index == 1).astype(np.float64)
        loss = float(s @ (np.logaddexp(0.0, z) - target * z))
        p = 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, without overflow
        R = (s * (p - target))[:, None]
        P = p[:, None]
    else:  # multinomial
        Z -= Z.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(Z).sum(axis=1))
        loss = float(s @ (log_norm - Z[np.arange(n), index]))
        P = np.exp(Z - log_norm[:, None])
        R = P.copy()
        R[np.arange(n), index] -= 1.0
        R *= s[:, None]
    grad = np.column_stack([R.T @ X, R.sum(axis=0)])
    hess = None
    if hessian_fraction is not None:
        hess = _hessian(X, P, s, block.u < hessian_fraction, hessian_fraction, binomial=theta.shape[0] == 1)
    return PassSums(loss, grad, hess, n, float(s.sum()))


def _hessian(X: np.ndarray, P: np.ndarray, s: np.ndarray, rows: np.ndarray, fraction: float,
             binomial: bool) -> np.ndarray:
    """Hessian of the weighted log loss over ``rows`` (scaled by ``1/fraction``), blocks per class pair."""
    Xa = np.column_stack([X[rows], np.ones(int(rows.sum()))])
    Ps, ss = P[rows], s[rows] / fraction
    m, width = P.shape[1], Xa.shape[1]
    hess = np.empty((m * width, m * width))
    for a in range(m):
        for b in range(a, m):
            if binomial:
                w = ss * Ps[:, 0] * (1.0 - Ps[:, 0])
            else:
                w = ss * Ps[:, a] * ((a == b) - Ps[:, b])
            block = (Xa * w[:, None]).T @ Xa
            hess[a * width:(a + 1) * width, b * width:(b + 1) * width] = block
            hess[b * width:(b + 1) * width, a * width:(a + 1) * width] = block.T
    return hess


# --- runs on the client ------------------------------------------------------


def reduce_bounded(client: Client, items: list[Any], submit: Callable[[int, Any], Future],
                   combine: Callable[[Any, Any], Any], *, key: Callable[[int, int], str],
                   max_in_flight: int, value_bytes: int) -> Future:
    """``submit`` every item (at most ``max_in_flight`` unfinished) and sum the results on the workers.

    Results of about ``value_bytes`` are merged a group at a time as soon as a group exists
    (``distml.tasks.TreeSum``: by position, so the sum is the same float whatever the scheduling),
    so a pass holds ``max_in_flight`` plus a few partial results per level, not one per partition.
    """
    from distml.tasks import TreeSum, fan_in, submit_bounded

    reduction = TreeSum(client, combine, key=key, fan_in=fan_in(value_bytes))

    def submit_and_push(i: int, item: Any) -> Future:
        future = submit(i, item)
        reduction.push(future)
        return future

    submit_bounded(client, items, submit_and_push, max_in_flight=max_in_flight)
    return reduction.total()


@dataclass
class Objective:
    """scikit-learn's scaled objective over the cluster: ``(Σ sᵢ lossᵢ + ½ λ ‖coef‖²) / Σ sᵢ``, ``λ = alpha·n``.

    ``alpha·½‖coef‖² + mean(sᵢ lossᵢ)`` times ``n / Σ sᵢ``: the SGD solvers' objective
    (``alpha`` per row, as ``SGDClassifier``) and ``LogisticRegression``'s with
    ``C = 1 / (alpha · n)``, scaled as scikit-learn scales it, so ``tol`` means the same.
    """

    parts: Partitions
    ctx: TrainContext
    classes: np.ndarray
    class_weight: np.ndarray  # per class, aligned with classes
    alpha: float
    outputs: int  # 1 (binomial) or the number of classes
    hessian_fraction: float
    passes: int = 0

    def evaluate(self, theta: np.ndarray, hessian: bool) -> tuple[float, np.ndarray, np.ndarray | None, int]:
        """(objective, gradient, Hessian or None, rows) at ``theta`` from one pass over the data."""
        env = self.ctx.env
        index = self.passes
        self.passes += 1
        fraction = self.hessian_fraction if hessian else None
        total = reduce_bounded(
            env.client, self.parts.train,
            lambda i, source: env.client.submit(_logistic_pass_part, source, theta, self.classes,
                                                self.class_weight, fraction, key=env.key("train", index, i)),
            _add_sums_part, key=lambda level, j: env.key("merge", index, level, j),
            max_in_flight=env.max_in_flight, value_bytes=sums_bytes(theta.size, hessian),
        ).result()
        return objective_at(total, theta, self.alpha)


def objective_at(total: PassSums, theta: np.ndarray, alpha: float) -> tuple[float, np.ndarray, np.ndarray | None, int]:
    """The scaled objective, gradient and Hessian at ``theta`` from a pass's summed ``total`` (see ``Objective``)."""
    lam = alpha * total.rows
    coef = theta[:, :-1]
    value = (total.loss + 0.5 * lam * float(np.sum(coef * coef))) / total.weight
    grad = total.grad.copy()
    grad[:, :-1] += lam * coef
    hess = None
    if total.hess is not None:
        hess = total.hess.copy()
        width = theta.shape[1]
        diagonal = np.arange(hess.shape[0])
        penalised = diagonal[diagonal % width != width - 1]
        hess[penalised, penalised] += lam
        hess /= total.weight
    return value, grad / total.weight, hess, total.rows


@dataclass(frozen=True)
class Solution:
    theta: np.ndarray  # (outputs, features + 1)
    n_iter: int
    passes: int
    converged: bool
    rows: int


@dataclass
class _NewtonPoint:
    """The iterate and its pass results, what the next Newton step starts from: a step's checkpoint."""

    theta: np.ndarray
    value: float
    grad: np.ndarray
    hess: np.ndarray
    rows: int
    first_gmax: float  # max |gradient| at zero, the progress scale

    def state(self, passes: int) -> dict[str, Any]:
        return {"newton": {"theta": self.theta, "value": np.float64(self.value), "grad": self.grad,
                           "hess": self.hess, "rows": self.rows, "first_gmax": np.float64(self.first_gmax),
                           "passes": passes}}


def _newton_restored(objective: Objective, width: int, log: Callable[[str], None]) -> tuple[int, _NewtonPoint]:
    """(steps done, point): the job's last checkpoint when resuming, else step 0 from one pass at zero.

    The Hessian's subsample is each row's fixed draw ``u`` (read with the data), so nothing random is saved.
    """
    restored = objective.ctx.env.restore()
    state = restored[1].get("newton") if restored else None
    shape = (objective.outputs, width)
    if state is None or np.shape(state["theta"]) != shape:
        theta = np.zeros(shape)
        value, grad, hess, rows = objective.evaluate(theta, hessian=True)
        return 0, _NewtonPoint(theta, value, grad, hess, rows, float(np.abs(grad).max()))
    objective.passes = int(state["passes"])
    log(f"newton: continuing after step {restored[0]} from its checkpoint ({objective.passes} passes made before)")
    return restored[0], _NewtonPoint(state["theta"], float(state["value"]), state["grad"], state["hess"],
                                     int(state["rows"]), float(state["first_gmax"]))


def solve_newton(objective: Objective, width: int, max_iter: int, tol: float,
                 log: Callable[[str], None]) -> Solution:
    """Damped Newton with Armijo backtracking; every trial point is one pass (loss, gradient, Hessian).

    After each step the iterate and its pass results are checkpointed (``ctx.env.checkpoint``), so a
    resumed job continues after the last completed step, redoing at most that step's passes, along the
    same path to the same coefficients, bit for bit.
    """
    env = objective.ctx.env
    steps, point = _newton_restored(objective, width, log)
    theta, value, grad, hess, rows = point.theta, point.value, point.grad, point.hess, point.rows
    converged = False
    while True:
        gmax = float(np.abs(grad).max())
        if gmax <= tol:
            converged = True
            break
        if steps >= max_iter:
            break
        # lstsq: the multinomial intercepts are free up to a common shift (a null direction of the Hessian).
        direction = -np.linalg.lstsq(hess, grad.ravel(), rcond=None)[0].reshape(theta.shape)
        slope = float(grad.ravel() @ direction.ravel())
        t = 1.0
        while True:
            trial = theta + t * direction
            t_value, t_grad, t_hess, _ = objective.evaluate(trial, hessian=True)
            if t_value <= value + 1e-4 * t * slope or t < 1e-8:
                break
            t *= 0.5
        if t_value > value:  # no decrease even at a tiny step: the optimum is reached to float precision
            converged = gmax <= 10 * tol
            break
        theta, value, grad, hess = trial, t_value, t_grad, t_hess
        steps += 1
        log(f"newton step {steps}: objective {value:.8g}, max |gradient| {float(np.abs(grad).max()):.3g}"
            f"{'' if t == 1.0 else f', step {t:g}'}")
        point = _NewtonPoint(theta, value, grad, hess, rows, point.first_gmax)
        env.report("train", _gradient_progress(point.first_gmax, float(np.abs(grad).max()), tol))
        env.checkpoint(steps, point.state(objective.passes))
    if converged and steps:
        # One last Newton step from the verified point (its gradient is already under tol): within the
        # quadratic region this squares the remaining error, at no extra pass.
        theta = theta - np.linalg.lstsq(hess, grad.ravel(), rcond=None)[0].reshape(theta.shape)
    return Solution(theta, steps, objective.passes, converged, rows)


def _gradient_progress(start: float, gmax: float, tol: float) -> float:
    """Training progress: the share of the way, in orders of magnitude, from the first max |gradient| to ``tol``."""
    if start <= tol or gmax <= tol:
        return 0.99
    return float(min(0.99, max(0.0, np.log(start / gmax) / np.log(start / tol))))


LBFGS_CHECKPOINT_BYTES = 64 * 2**20  # the largest replay log an lbfgs checkpoint holds


class _Replay:
    """The lbfgs passes made so far, by the exact bytes of their point, to replay a killed run without its passes.

    scipy's L-BFGS-B keeps its curvature pairs and line-search state inside ``minimize``: they cannot be
    saved and handed back. It is deterministic in the values it is given, though, so a resumed job runs it
    again from zero and answers each point the killed run evaluated from this log (no pass), bit for bit:
    the path, and so the model, are the uninterrupted run's, and the passes redone are those after the
    last checkpoint. The log is ``(points, values, gradients)``, 16 bytes a coefficient a pass.
    """

    def __init__(self, state: dict[str, Any] | None) -> None:
        self.points: list[np.ndarray] = [] if state is None else list(state["points"])
        self.values: list[float] = [] if state is None else [float(v) for v in state["values"]]
        self.grads: list[np.ndarray] = [] if state is None else list(state["grads"])
        self.index = {p.tobytes(): i for i, p in enumerate(self.points)}
        self.replayed = len(self.points)

    def state(self, rows: int) -> dict[str, Any]:
        return {"lbfgs": {"points": np.array(self.points), "values": np.array(self.values),
                          "grads": np.array(self.grads), "rows": rows}}

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes + g.nbytes + 8 for p, g in zip(self.points, self.grads))


def solve_lbfgs(objective: Objective, width: int, max_iter: int, tol: float,
                log: Callable[[str], None]) -> Solution:
    """scipy's L-BFGS-B with scikit-learn's settings; every evaluation is one pass (loss and gradient).

    After each iteration the passes made so far are checkpointed (see ``_Replay``), while they fit in
    ``LBFGS_CHECKPOINT_BYTES``; a resumed job replays them to the same coefficients.
    """
    from scipy.optimize import minimize

    env = objective.ctx.env
    shape = (objective.outputs, width)
    restored = env.restore()
    state = restored[1].get("lbfgs") if restored else None
    if state is not None and np.shape(state["points"])[1:] != (shape[0] * shape[1],):
        state = None
    replay, rows = _Replay(state), [0 if state is None else int(state["rows"])]
    after = restored[0] if state is not None else 0
    if after:
        log(f"lbfgs: replaying iterations 1-{after} from the checkpoint ({replay.replayed} passes made before)")
        objective.passes = replay.replayed
    iterations, full = [0], [False]  # full: the log outgrew LBFGS_CHECKPOINT_BYTES, checkpoints stopped
    gmax: list[float] = []  # max |gradient| at zero, then at the last point evaluated

    def seen(grad: np.ndarray) -> None:
        gmax[:] = [gmax[0] if gmax else float(np.abs(grad).max()), float(np.abs(grad).max())]

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        i = replay.index.get(x.tobytes())
        if i is not None:
            seen(replay.grads[i])
            return replay.values[i], replay.grads[i].copy()
        value, grad, _, rows[0] = objective.evaluate(x.reshape(shape), hessian=False)
        seen(grad)
        if env.checkpointing and not full[0]:
            replay.index[x.tobytes()] = len(replay.points)
            replay.points.append(x.copy())
            replay.values.append(value)
            replay.grads.append(grad.ravel().copy())
        return value, grad.ravel()

    def iterated(intermediate_result: Any) -> None:
        iterations[0] += 1
        step = iterations[0]
        env.report("train", _gradient_progress(gmax[0], gmax[-1], tol))
        if step <= after or not env.checkpointing or full[0]:
            return
        if replay.nbytes > LBFGS_CHECKPOINT_BYTES:
            full[0] = True
            log(f"lbfgs: no checkpoints from iteration {step} on: the log of its passes would exceed "
                f"{LBFGS_CHECKPOINT_BYTES // 2**20} MiB")
            return
        env.checkpoint(step, replay.state(rows[0]))

    result = minimize(fun, np.zeros(shape).ravel(), method="L-BFGS-B", jac=True, callback=iterated,
                      options={"maxiter": max_iter, "maxls": 50, "gtol": tol, "ftol": 64 * np.finfo(float).eps})
    log(f"lbfgs: {result.message}")
    return Solution(result.x.reshape(shape), int(result.nit), objective.passes, bool(result.success), rows[0])


@dataclass(frozen=True)
class ExactFit:
    """One exact fit's settings: what ``fit_exact`` takes besides the data, and what ``fit_exact_many`` stacks."""

    method: str  # newton or lbfgs
    alpha: float
    weights: dict[object, float] | None
    max_iter: int
    tol: float


SOLVERS = {"newton": solve_newton, "lbfgs": solve_lbfgs}


def fit_exact(parts: Partitions, ctx: TrainContext, *, method: str, alpha: float,
              weights: dict[object, float] | None, max_iter: int, tol: float) -> LogisticRegression:
    """Fit by ``method`` (``newton`` or ``lbfgs``); returns a plain fitted ``LogisticRegression``."""
    fit = ExactFit(method, alpha, weights, max_iter, tol)
    classes = np.asarray(ctx.data.classes)
    objective = Objective(parts, ctx, classes, class_weight_vector(classes, weights), alpha, n_outputs(classes),
                          hessian_fraction(ctx))
    solution = SOLVERS[method](objective, ctx.data.n_features + 1, max_iter, tol, ctx.env.log)
    ctx.env.report("train", 1.0)
    ctx.env.log(f"{method}: {'converged' if solution.converged else 'NOT converged'} after "
                f"{solution.n_iter} iterations, {solution.passes} passes over the data")
    if not solution.converged:
        ctx.env.log(f"warning: {method} did not converge within max_iter={max_iter} (tol {tol:g}); "
                    f"the model is the last iterate: raise model.params.max_iter")
    return to_estimator(solution, fit, classes, ctx.data.n_features)


def hessian_fraction(ctx: TrainContext) -> float:
    """Share of the rows (by their draw) the Hessian is taken from: the same for every fit on these rows."""
    return min(1.0, HESSIAN_ROWS / max(1, ctx.data.train_rows))


def class_weight_vector(classes: np.ndarray, weights: dict[object, float] | None) -> np.ndarray:
    """Each class's weight, aligned with ``classes`` (1 where ``weights`` is silent)."""
    return np.array([(weights or {}).get(c, 1.0) for c in classes.tolist()], dtype=np.float64)


def n_outputs(classes: np.ndarray) -> int:
    """Rows of the coefficients: one logit for two classes (binomial), else one per class."""
    return 1 if len(classes) == 2 else len(classes)


def to_estimator(solution: Solution, fit: ExactFit, classes: np.ndarray, n_features: int) -> LogisticRegression:
    """The plain ``LogisticRegression`` whose coefficients are ``solution``'s."""
    from sklearn.linear_model import LogisticRegression

    theta = solution.theta
    if len(classes) > 2:
        theta[:, -1] -= theta[:, -1].mean()  # the intercepts' free common shift, as scikit-learn leaves it
    C = 1.0 / (fit.alpha * solution.rows) if fit.alpha > 0 else np.inf
    est = LogisticRegression(C=C, max_iter=fit.max_iter, tol=fit.tol, class_weight=fit.weights)
    est.coef_, est.intercept_ = theta[:, :-1].copy(), theta[:, -1].copy()
    est.classes_ = classes
    est.n_features_in_ = n_features
    est.n_iter_ = np.array([solution.n_iter], dtype=np.int32)
    return est
