"""Several exact logistic fits over shared data passes: one task per partition evaluates every running fit.

Each fit runs its own unchanged solver (``solve_newton``/``solve_lbfgs``) in a
client thread whose objective, instead of making a pass, hands its coefficients
to the driver and waits. The driver waits until every fit still running has
asked (or finished), then makes one pass in which each partition's task loads
its block once and computes the loss, gradient and (where asked) Hessian at
each of the stacked coefficients; the per-fit sums are combined in the same
tree as a single fit's, so each fit sees exactly the floats its own ``train``
would and ends at the same coefficients. A fit that has converged leaves the
stack.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.models.base import TrainContext, TrainEnv
from distml.models._fullbatch import (
    SOLVERS,
    ExactFit,
    Solution,
    _add_stack_part,
    class_weight_vector,
    _logistic_stack_part,
    n_outputs,
    hessian_fraction,
    objective_at,
    reduce_bounded,
    sums_bytes,
    to_estimator,
)

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

    from distml.blocks import Partitions

STACK_HESSIAN_BYTES = 64 << 20  # bound on the stacked Hessians one partial sum holds; more fits make more passes


@dataclass
class _Asking:
    """What a fit's solver sees as its objective: each ``evaluate`` is answered by the driver's next pass."""

    outputs: int
    hessian_fraction: float
    ctx: TrainContext  # the solver's own: no progress, log, checkpoint or restore (one fit of many)
    passes: int = 0
    asks: queue.Queue = field(default_factory=queue.Queue)  # to the driver: ("eval", theta, hessian) | ("done", x)
    answers: queue.Queue = field(default_factory=queue.Queue)  # from the driver: an evaluation or an exception

    def evaluate(self, theta: np.ndarray, hessian: bool) -> tuple[float, np.ndarray, np.ndarray | None, int]:
        self.passes += 1
        self.asks.put(("eval", theta, hessian))
        answer = self.answers.get()
        if isinstance(answer, BaseException):
            raise answer
        return answer


def _no_log(message: str) -> None:
    return None


def fit_exact_many(parts: Partitions, ctx: TrainContext, fits: list[ExactFit]) -> list[LogisticRegression | Exception]:
    """Every fit of ``fits`` from shared passes; a fit whose solver raised gets its exception in its place.

    A failure of the passes themselves (the cluster's), or ``JobCancelled`` from ``ctx.env.report`` (called
    after every pass), is raised once every solver thread has ended.
    """
    classes = np.asarray(ctx.data.classes)
    width, outputs, fraction = ctx.data.n_features + 1, n_outputs(classes), hessian_fraction(ctx)
    weights = [class_weight_vector(classes, fit.weights) for fit in fits]
    quiet = TrainEnv(client=ctx.env.client, job_id=ctx.env.job_id, seed=ctx.env.seed,
                     max_in_flight=ctx.env.max_in_flight, n_workers=ctx.env.n_workers,
                     worker_memory=ctx.env.worker_memory)
    seats = [_Asking(outputs, fraction, TrainContext(quiet, ctx.data)) for _ in fits]

    def solve(i: int) -> None:
        fit, seat = fits[i], seats[i]
        try:
            seat.asks.put(("done", SOLVERS[fit.method](seat, width, fit.max_iter, fit.tol, _no_log)))
        except BaseException as exc:  # noqa: BLE001 - one fit's failure is its own result (or the driver's)
            seat.asks.put(("done", exc))

    threads = [threading.Thread(target=solve, args=(i,), name=f"distml-fit-{i}", daemon=True)
               for i in range(len(fits))]
    for thread in threads:
        thread.start()
    results: list[Solution | BaseException | None] = [None] * len(fits)
    limit = max(1, STACK_HESSIAN_BYTES // (8 * (outputs * width) ** 2))
    live, passes = list(range(len(fits))), 0
    try:
        while live:
            asking = []
            for i in live:  # every running fit asks once per round, in order: the stack does not depend on timing
                kind, *payload = seats[i].asks.get()
                if kind == "done":
                    results[i] = payload[0]
                else:
                    asking.append((i, *payload))
            live = [i for i, _, _ in asking]
            for start in range(0, len(asking), limit):
                chunk = asking[start:start + limit]
                stack = [(theta, weights[i], fraction if hessian else None) for i, theta, hessian in chunk]
                totals = _stack_pass(parts, ctx, stack, classes, passes)
                passes += 1
                for (i, theta, _), total in zip(chunk, totals):
                    seats[i].answers.put(objective_at(total, theta, fits[i].alpha))
            ctx.env.report("train", 1.0 - len(live) / len(fits))  # where a cancelled job stops
    except BaseException as exc:
        for i in live:  # unblock every solver still waiting for an answer; each then ends with it
            seats[i].answers.put(exc)
        raise
    finally:
        for thread in threads:
            thread.join()
    ctx.env.log(f"{len(fits)} exact logistic fits from {passes} shared passes over the data "
                f"(alone: {sum(seat.passes for seat in seats)})")
    return [r if isinstance(r, BaseException) else to_estimator(r, fit, classes, ctx.data.n_features)
            for r, fit in zip(results, fits)]


def _stack_pass(parts: Partitions, ctx: TrainContext, stack: list[tuple[Any, ...]], classes: np.ndarray,
                index: int) -> list[Any]:
    """One pass evaluating every entry of ``stack``: a task per partition, the sums reduced in a tree."""
    env = ctx.env
    return reduce_bounded(
        env.client, parts.train,
        lambda i, source: env.client.submit(_logistic_stack_part, source, stack, classes,
                                            key=env.key("train", index, i)),
        _add_stack_part, key=lambda level, j: env.key("merge", index, level, j),
        max_in_flight=env.max_in_flight,
        value_bytes=sum(sums_bytes(np.size(theta), fraction is not None) for theta, _, fraction in stack),
    ).result()
