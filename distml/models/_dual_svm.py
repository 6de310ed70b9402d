"""Exact linear SVMs on held kernel features (binary, or one per pair of classes): dual coordinate descent
in each lane, the lanes' updates added (CoCoA+).

The Nyström route's features stand in for the kernel, but averaged SGD on them stops short of the
SVM they define, and the map leaves out each row's residual kernel variance ``r = k(x, x) - |z|^2``.
For an rbf kernel in many dimensions that residual kernel is close to diagonal, and in the SVC's
dual a diagonal adds ``r_i α_i^2 / 2``: the same dual SVC solves, but for the residual's
off-diagonal part. This module solves that dual (box ``0 <= α_i <= C_i``, a bias feature of 1, so
the intercept is regularised as liblinear's is) to a small duality gap.

Each round, every lane (a chain of tasks over its partitions) runs one pass of coordinate descent
over its rows against ``w`` plus its own scaled updates, and the lanes' updates are added:
CoCoA+ (Ma et al., ICML 2015) with ``σ' = lanes``, which keeps every round an ascent of the dual.
Each row's ``α`` stays on the workers beside its features; the client sees ``w`` and a few sums.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numba
import numpy as np

if TYPE_CHECKING:
    from distml.blocks import Partitions
    from distml.models.base import TrainContext

DUAL_TOL = 5e-3  # relative duality gap at which the rounds stop
MAX_ROUNDS = 25
CHUNK_ROWS = 2048  # rows visited together (a float16 block converted to float32 a chunk at a time)
CHECKPOINT_SECONDS = 10.0  # rounds are short: a checkpoint (every row's α) at most this often, and at the end

# --- runs on workers ---------------------------------------------------------


@numba.njit(cache=True, fastmath=True)
def _descend(Z: np.ndarray, order: np.ndarray, ys: np.ndarray, q: np.ndarray, r: np.ndarray, c: np.ndarray,
             alpha: np.ndarray, w: np.ndarray, dw: np.ndarray, sigma: np.float32) -> None:  # pragma: no cover
    """One coordinate step per row of ``Z`` in ``order``: ``α`` and the lane's update ``dw`` in place.

    The lane sees ``w + σ' dw``; ``q`` is each row's curvature ``σ' (|z|^2 + 1) + r``. float32 throughout
    the products, as the features are: the loops vectorise.
    """
    m = Z.shape[1]
    for i in order:
        g = w[m] + sigma * dw[m]
        for j in range(m):
            g += (w[j] + sigma * dw[j]) * Z[i, j]
        g = ys[i] * g - 1.0 + r[i] * alpha[i]
        a = min(max(alpha[i] - g / q[i], 0.0), c[i])
        d = np.float32((a - alpha[i]) * ys[i])
        if d != 0.0:
            alpha[i] = a
            for j in range(m):
                dw[j] += d * Z[i, j]
            dw[m] += d


@dataclass
class LaneSums:
    """A lane's update of each problem's ``w`` this round, and its rows' terms of each problem's primal and
    dual at the round's ``w`` (one row of ``dw``, one entry of each sum, per binary problem)."""

    dw: np.ndarray  # [problem, feature then intercept], float32 on the workers
    loss: np.ndarray  # sum of the rows' smoothed hinge at the round's w
    alpha: np.ndarray  # sum of α
    ridge: np.ndarray  # sum of r α^2


def smoothed_hinge(margins: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Each row's primal loss, conjugate to its dual term ``α - r α^2 / 2`` on ``[0, c]``: the hinge
    ``c (1 - m)`` made quadratic, ``(1 - m)^2 / 2r``, within ``c r`` of the margin."""
    t = np.maximum(1.0 - margins, 0.0)
    quadratic = t < c * r
    return np.where(quadratic, t * t / (2.0 * np.where(quadratic, r, 1.0)), c * t - 0.5 * r * c * c)


def _dual_step_part(previous: Any, block: Any, alpha: Any, W: np.ndarray, sigma: float, seed: int,
                    pairs: list[tuple[Any, Any]], costs: np.ndarray, residual: bool) -> tuple[LaneSums, np.ndarray]:
    """One partition's pass in a lane: (the lane's sums so far, this partition's α after the pass).

    One binary problem per pair ``(negative, positive)`` of classes, on that pair's rows (``costs[p]``: the
    bound of α for each of the two classes; ``W[p]``: its w). ``previous`` is the lane's last task's output
    (None for its first), ``alpha`` this partition's output of the last round (None in the first round, or
    α restored from a checkpoint). The rows are visited chunk by chunk in a random order of chunks and a
    random order within each (a float16 block is converted to float32 a chunk at a time).
    """
    n, (P, width) = len(block.y), W.shape
    lane = previous[0] if previous is not None else \
        LaneSums(np.zeros((P, width), np.float32), np.zeros(P), np.zeros(P), np.zeros(P))
    alpha = np.zeros((P, n)) if alpha is None else np.array(alpha[1] if isinstance(alpha, tuple) else alpha)
    y, W32, m, rng = np.asarray(block.y), W.astype(np.float32), width - 1, np.random.default_rng(seed)
    members = [(y == negative) | (y == positive) for negative, positive in pairs]
    signs = [np.where(y == positive, 1.0, -1.0) for _, positive in pairs]
    bounds = [np.where(y == positive, c[1], c[0]) for (_, positive), c in zip(pairs, costs)]
    for lo in rng.permutation(np.arange(0, n, CHUNK_ROWS)):
        hi = min(lo + CHUNK_ROWS, n)
        Z = np.asarray(block.X[lo:hi], dtype=np.float32)
        zz = np.einsum("ij,ij->i", Z, Z, dtype=np.float64)
        r = np.maximum(1.0 - zz, 0.0) if residual else np.zeros(hi - lo)
        q, margins = sigma * (zz + 1.0) + r, Z @ W32[:, :m].T + W[:, m]
        for p in range(P):
            inside, a = np.flatnonzero(members[p][lo:hi]), alpha[p, lo:hi]  # a: a view, updated in place
            ys, c = signs[p][lo:hi], bounds[p][lo:hi]
            lane.loss[p] += float(smoothed_hinge(ys[inside] * margins[inside, p], r[inside], c[inside]).sum())
            lane.alpha[p] += float(a[inside].sum())
            lane.ridge[p] += float((r[inside] * a[inside] ** 2).sum())
            _descend(Z, rng.permutation(inside), ys, q, r, c, a, W32[p], lane.dw[p], np.float32(sigma))
    return lane, alpha


def lane_of(part: int, lanes: int) -> int:
    """The lane of a partition: fixed by its index, so the model never depends on where tasks ran."""
    return part % lanes


def lane_homes(client: Any, lanes: int) -> list[list[str]]:
    """The worker each lane's tasks prefer (lanes dealt to the workers in address order): held blocks mapped
    there (``_approx_sgd._map_part`` placed by ``lane_of``) stay there, and each lane keeps to one worker."""
    from distml.cluster import _workers

    addresses = sorted(_workers(client))
    return [[addresses[lane % len(addresses)]] for lane in range(lanes)]


def _alphas_part(output: tuple[LaneSums, np.ndarray]) -> np.ndarray:
    """A partition's α, for a checkpoint."""
    return output[1]


# --- runs on the client ------------------------------------------------------


def train_dual(parts: Partitions, ctx: TrainContext, n_features: int, C: float, weights: dict[Any, float] | None,
               residual: bool, pairs: list[tuple[Any, Any]] | None = None, *, tol: float = DUAL_TOL,
               max_rounds: int = MAX_ROUNDS) -> tuple[np.ndarray, dict[str, Any]]:
    """Each binary SVM's ``w`` (``n_features``, then the intercept; one row per pair ``(negative, positive)``
    of ``pairs``, by default the two classes) on ``parts``' held features, and the solve's record (rounds,
    the largest gap). ``residual``: add each row's ``1 - |z|^2`` (an rbf map's) to its dual diagonal."""
    client, env = ctx.env.client, ctx.env
    pairs = pairs or [tuple(np.asarray(ctx.data.classes).tolist()[:2])]
    costs = np.array([[C * (weights or {}).get(k, 1.0) for k in pair] for pair in pairs], dtype=np.float64)
    n_parts = len(parts.train)
    lanes = max(1, min(env.max_in_flight, n_parts))
    homes = lane_homes(client, lanes)
    done, W, alphas, gap = 0, np.zeros((len(pairs), n_features + 1)), [None] * n_parts, np.inf
    best, best_primal = W.copy(), np.full(len(pairs), np.inf)  # each problem's measured w of its lowest primal
    restored = env.restore()
    if restored is not None:
        done, state = restored
        W, alphas, gap = np.asarray(state["w"], dtype=np.float64), list(state["alphas"]), float(state["gap"])
        best, best_primal = np.asarray(state["best"], dtype=np.float64), np.asarray(state["best_primal"])
    saved = time.monotonic()
    while done < max_rounds and gap > tol:
        sums = _round(client, env, parts, alphas, W, lanes, homes, done, pairs, costs, residual)
        alphas = sums[lanes:]  # the last round's futures are released, not cancelled (that takes dependents)
        sums = sums[:lanes]
        half = 0.5 * (W * W).sum(axis=1)
        primal = half + sum(s.loss for s in sums)  # at this round's W; the dual at its α, which only rises
        dual = sum(s.alpha for s in sums) - half - 0.5 * sum(s.ridge for s in sums)
        lower = primal < best_primal
        best[lower], best_primal[lower] = W[lower], primal[lower]
        gap = float(((best_primal - dual) / np.maximum(np.abs(best_primal), 1e-12)).max())
        W, done = W + sum(s.dw for s in sums), done + 1
        env.log(f"dual round {done}: primal {primal.sum():.6g}, relative duality gap {gap:.2e}"
                f"{f' (the largest of {len(pairs)} pairs)' if len(pairs) > 1 else ''}")
        env.report("train", min(0.99, done / max_rounds))
        if env.checkpointing and (time.monotonic() - saved >= CHECKPOINT_SECONDS or gap <= tol or done == max_rounds):
            saved = time.monotonic()
            held = client.gather([client.submit(_alphas_part, a, key=env.key("train", "dual-alpha", done, p))
                                  for p, a in enumerate(alphas)])
            env.checkpoint(done, {"w": W, "alphas": held, "best": best, "best_primal": best_primal, "gap": gap})
    client.cancel([a for a in alphas if a is not None and not isinstance(a, np.ndarray)])
    return best, {"solver": "dual coordinate descent (CoCoA+)", "rounds": done, "lanes": lanes, "problems": len(pairs),
                  "duality_gap": round(gap, 6), "residual_diagonal": residual}


def _round(client: Any, env: Any, parts: Partitions, alphas: list[Any], W: np.ndarray, lanes: int,
           homes: list[list[str]], rounds: int, pairs: list[tuple[Any, Any]], costs: np.ndarray,
           residual: bool) -> list[Any]:
    """One round: every lane's pass over its partitions (one chain of tasks each, on its worker). Returns the
    lanes' gathered sums, then every partition's output future (its α for the next round)."""
    n_parts = len(parts.train)
    seeds = env.child_seeds(n_parts, salt=3_000_000 + rounds)
    ends, outputs = [], [None] * n_parts
    for lane in range(lanes):
        previous, home = None, {"workers": homes[lane], "allow_other_workers": True}
        mine = [p for p in range(n_parts) if lane_of(p, lanes) == lane]  # held where they were mapped
        for step, p in enumerate(np.random.default_rng(seeds[lane]).permutation(mine)):
            previous = outputs[p] = client.submit(
                _dual_step_part, previous, parts.train[p], alphas[p], W, float(lanes), seeds[p], pairs, costs,
                residual, key=env.key("train", "dual", rounds, lane, step), **home)
        ends.append(client.submit(_lane_part, previous, key=env.key("train", "dual-end", rounds, lane),
                                  **home))
    return [*client.gather(ends), *outputs]


def _lane_part(output: tuple[LaneSums, np.ndarray]) -> LaneSums:
    """The lane's update of ``w`` and its sums: what goes back to the client, not the lane's α."""
    lane = output[0]
    return LaneSums(lane.dw.astype(np.float64), lane.loss, lane.alpha, lane.ridge)


def fit_dual(parts: Partitions, ctx: TrainContext, templates: list[Any], C: float, weights: dict[Any, float] | None,
             residual: bool, n_features: int) -> Any:
    """The route's linear SVM from the dual: one ``SGDClassifier`` (one template: two classes), or with a
    template per pair of classes the ``OneVsOneClassifier`` of their binary models (``_pairs``)."""
    from distml.models._pairs import log_pairs, one_vs_one, pairs_of

    classes = np.asarray(ctx.data.classes)
    pairs = pairs_of(classes) if len(templates) > 1 else None
    if pairs:
        log_pairs(ctx, len(classes))
    W, solve = train_dual(parts, ctx, n_features, C, weights, residual, pairs)
    ctx.env.log(f"linear SVM: {solve['solver']}, {solve['rounds']} rounds, relative duality gap "
                f"{solve['duality_gap']:.1e}")
    ctx.env.record_training({"solver": solve})
    if pairs is None:
        return as_sgd(templates[0], W[0], classes, solve["rounds"])
    return one_vs_one([as_sgd(t, w, np.array(pair), solve["rounds"]) for t, w, pair in zip(templates, W, pairs)],
                      classes)


def as_sgd(template: Any, w: np.ndarray, classes: np.ndarray, rounds: int) -> Any:
    """A fitted ``SGDClassifier`` (``template``'s parameters) holding the dual's ``w``: the route's artifact, as
    its SGD gives it."""
    n = len(w) - 1
    model = template.__class__(**template.get_params())
    model.partial_fit(np.zeros((2, n)), np.asarray(classes), classes=np.asarray(classes))  # every fitted attribute
    model.coef_, model.intercept_ = w[None, :n].copy(), w[n:].copy()
    if getattr(model, "_average_coef", None) is not None:  # averaged SGD keeps its raw iterate beside the average
        model._standard_coef, model._standard_intercept = model.coef_, model.intercept_
        model._average_coef, model._average_intercept = model.coef_.ravel(), model.intercept_
    model.n_iter_ = rounds
    return model
