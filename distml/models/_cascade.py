"""Cascade SVM (Graf et al., NIPS 2004): one kernel SVC from SVCs fitted on chunks, on the workers.

Pass 1. Every training row belongs to chunk ``floor(u * n_chunks)``, where ``u``
is the row's uniform draw, so chunks are stratified by construction and do not
depend on how the files are partitioned. Each partition's block is cut into
its chunk pieces on its worker (``_cut_part``); a first-layer task gathers one
chunk's pieces (at most ``chunk_rows`` rows), fits an ``SVC`` and keeps only
the support vectors. Support-vector sets are merged three at a time (Graf's
tree with a fan-in of 3 rather than 2: fewer sequential layers) and refitted
until one SVC remains.

Feedback passes. The final SVs go back to every first-layer task, which keeps
only the rows of its chunk that violate the final model's KKT conditions
(margin ``y f(x) < 1`` and not already a support vector). A row that satisfies
them gets a zero weight in any problem that holds the final SVs, so Graf's
per-chunk refits of ``chunk ∪ SVs`` would only re-solve the SVs over and over;
instead the violators are merged up the tree and the SVs are refitted once with
all of them. The cascade stops when no row violates the conditions (the
global optimum of the full problem), when fewer than ``feedback_tol`` of the
SVs changed, or after ``max_passes``.

Only chunk pieces and support vectors move between workers; the client sees
row counts and the final SVC. Rows keep their draw ``u`` as an id, so unions
are deduplicated and ordered the same way on every run: same seed, same model.
"""
from __future__ import annotations

import math
import operator
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.errors import JobFailed

if TYPE_CHECKING:
    from sklearn.svm import SVC

    from distml.features import Partitions
    from distml.models.base import TrainContext

KERNEL_BLOCK = 2**20  # kernel entries computed at once in the KKT check (8 MiB)

# --- runs on workers ---------------------------------------------------------


@dataclass(frozen=True)
class SVSet:
    """Rows (usually support vectors) with their ids; ``model`` is the SVC fitted on them, if any."""

    X: np.ndarray
    y: np.ndarray
    ids: np.ndarray  # each row's draw u: unique, and independent of partitioning
    model: Any = None
    dropped: int = 0  # rows a first-layer task left out to stay within chunk_rows

    def __len__(self) -> int:
        return len(self.ids)


def _concat(sets: list[SVSet], dropped: int = 0) -> SVSet:
    """Union of row sets, deduplicated and ordered by id (so row order never depends on scheduling)."""
    ids = np.concatenate([s.ids for s in sets])
    ids, first = np.unique(ids, return_index=True)
    X = np.concatenate([s.X for s in sets])[first]
    y = np.concatenate([s.y for s in sets])[first]
    return SVSet(X, y, ids, dropped=dropped + sum(s.dropped for s in sets))


def _cut_part(source: Any, n_chunks: int, lo: int, hi: int) -> list[SVSet]:
    """One partition's training rows cut into the pieces of chunks ``lo..hi-1``."""
    block = source.load()
    chunk = np.minimum((block.u * n_chunks).astype(np.int64), n_chunks - 1)
    pieces = []
    for c in range(lo, hi):
        rows = np.flatnonzero(chunk == c)
        pieces.append(SVSet(block.X[rows], block.y[rows], block.u[rows]))
    return pieces


def _fit(rows: SVSet, svc_params: dict[str, Any], limit: int | None) -> SVSet:
    """Fit an SVC on ``rows`` and keep its support vectors; refuse a union of SVs beyond ``limit``."""
    from sklearn.svm import SVC

    if limit is not None and len(rows) > limit:
        raise JobFailed(
            f"the cascade SVM found {len(rows):,} support vectors, more than model.params.max_support_vectors="
            f"{limit:,}; use kernel: linear, or a kernel approximation (approximation: nystroem) for data this large")
    if len(np.unique(rows.y)) < 2:  # a chunk with a single class: pass its rows on to meet the others
        return rows
    model = SVC(**svc_params).fit(rows.X, rows.y)
    keep = model.support_
    return SVSet(rows.X[keep], rows.y[keep], rows.ids[keep], model, rows.dropped)


def _first_part(pieces: list[SVSet], cap: int, svc_params: dict[str, Any]) -> SVSet:
    """First layer: one chunk (at most ``cap`` rows, lowest ids kept) -> its support vectors."""
    rows = _concat(pieces)
    if len(rows) > cap:
        rows = SVSet(rows.X[:cap], rows.y[:cap], rows.ids[:cap], dropped=len(rows) - cap)
    return _fit(rows, svc_params, None)  # chunk rows, not support vectors: bounded by chunk_rows


def _merge_part(sets: list[SVSet], svc_params: dict[str, Any], limit: int) -> SVSet:
    """A merge layer: refit on the union of a few support-vector sets."""
    return _fit(_concat(sets), svc_params, limit)


def kernel_matrix(X: np.ndarray, S: np.ndarray, model: SVC) -> np.ndarray:
    """K(X, S) for the model's kernel with BLAS and in-place steps (libsvm's predict is slower)."""
    K = X @ S.T
    if model.kernel == "rbf":
        K *= -2.0
        K += (X**2).sum(axis=1)[:, None]
        K += (S**2).sum(axis=1)[None, :]
        np.maximum(K, 0.0, out=K)
        K *= -model.gamma
        return np.exp(K, out=K)
    if model.kernel == "linear":
        return K
    K *= model.gamma
    K += model.coef0
    return np.tanh(K, out=K) if model.kernel == "sigmoid" else np.power(K, model.degree, out=K)


def margins(model: SVC, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each row's functional margin ``y f(x)``, the smallest over the one-vs-one pairs of its class."""
    classes = model.classes_
    out = np.full(len(y), np.inf)
    starts = np.concatenate([[0], np.cumsum(model.n_support_)])
    step = max(1, KERNEL_BLOCK // max(1, len(model.support_vectors_)))
    for lo in range(0, len(y), step):
        K = kernel_matrix(X[lo:lo + step], model.support_vectors_, model)
        yb = y[lo:lo + step]
        if len(classes) == 2:  # sklearn's binary sign: positive means classes_[1]
            f = K @ model.dual_coef_[0] + model.intercept_[0]
            out[lo:lo + step] = np.where(yb == classes[1], f, -f)
            continue
        pair = 0
        for i in range(len(classes)):
            for j in range(i + 1, len(classes)):
                si, sj = slice(starts[i], starts[i + 1]), slice(starts[j], starts[j + 1])
                f = (K[:, si] @ model.dual_coef_[j - 1, si] + K[:, sj] @ model.dual_coef_[i, sj]
                     + model.intercept_[pair])  # positive votes for class i
                block = out[lo:lo + step]
                block[yb == classes[i]] = np.minimum(block[yb == classes[i]], f[yb == classes[i]])
                block[yb == classes[j]] = np.minimum(block[yb == classes[j]], -f[yb == classes[j]])
                pair += 1
    return out


def _kkt_part(pieces: list[SVSet], cap: int, final: SVSet, slack: float) -> SVSet:
    """Feedback first layer: the rows of one chunk that violate the final model's KKT conditions."""
    rows = _concat(pieces)
    rows = SVSet(rows.X[:cap], rows.y[:cap], rows.ids[:cap])
    bad = (margins(final.model, rows.X, rows.y) < 1.0 - slack) & ~np.isin(rows.ids, final.ids)
    return SVSet(rows.X[bad], rows.y[bad], rows.ids[bad])


def _union_part(sets: list[SVSet], limit: int) -> SVSet:
    """Feedback merge layer: violators travel up the tree unfitted (bounded by ``limit``)."""
    out = _concat(sets)
    if len(out) > limit:
        raise JobFailed(f"the cascade SVM found {len(out):,} rows violating its margins, more than "
                        f"model.params.max_support_vectors={limit:,}; use kernel: linear, or a kernel "
                        "approximation (approximation: nystroem) for data this large")
    return out


def _refit_part(final: SVSet, violators: SVSet, svc_params: dict[str, Any], limit: int) -> SVSet:
    """Feedback top layer: refit the final support vectors together with every violator."""
    if not len(violators):
        return final
    return _fit(_concat([SVSet(final.X, final.y, final.ids), violators]), svc_params, limit)


def _count_part(rows: SVSet) -> tuple[int, int]:
    return len(rows), rows.dropped


def _final_fit_part(final: SVSet, svc_params: dict[str, Any]) -> SVC:
    """The saved SVC: fitted on the final support vectors alone (with Platt scaling if asked)."""
    from sklearn.svm import SVC

    return SVC(**svc_params).fit(final.X, final.y)


# --- runs on the client ------------------------------------------------------

FAN_IN = 3  # sets merged per fit: at 40k rows, 12.0 s of training against 14.4 s for pairs (2) and 12.4 s for all (9)


@dataclass(frozen=True)
class CascadePlan:
    """Sizes the cascade works with, decided on the client from the statistics pass."""

    n_chunks: int
    chunk_rows: int
    group: int  # chunks whose pieces are cut in one read pass (bounds rows held in the cluster)
    limit: int  # max_support_vectors
    max_passes: int
    feedback_tol: float


def plan_chunks(train_rows: int, chunk_rows: int) -> int:
    """Chunks so that a chunk's binomial size stays under ``chunk_rows`` (4 standard deviations)."""
    target = max(1.0, chunk_rows - 4.0 * math.sqrt(chunk_rows))
    return max(1, math.ceil(train_rows / target))


class Cascade:
    """One cascade run: submits the layers, reports progress, keeps the final SVs on the cluster."""

    def __init__(self, parts: Partitions, ctx: TrainContext, plan: CascadePlan, svc_params: dict[str, Any],
                 probability: bool, seed: int) -> None:
        self.parts, self.ctx, self.plan, self.svc = parts, ctx, plan, svc_params
        self.client = ctx.client
        self.probability, self.seed = probability, seed

    def _pieces(self, pas: int) -> Any:
        """Yield each chunk's list of piece futures, one read pass per group of chunks."""
        plan, client, key = self.plan, self.client, self.ctx.key
        for lo in range(0, plan.n_chunks, plan.group):
            hi = min(plan.n_chunks, lo + plan.group)
            cuts = [client.submit(_cut_part, s, plan.n_chunks, lo, hi, key=key("cut", pas, lo, i))
                    for i, s in enumerate(self.parts.train)]
            for c in range(lo, hi):
                yield c, [client.submit(operator.getitem, cut, c - lo, key=key("pick", pas, c, i))
                          for i, cut in enumerate(cuts)]

    def _first_layer(self, pas: int, fn: Any, *args: Any) -> list[Any]:
        """Submit ``fn(pieces, chunk_rows, *args)`` per chunk, waiting between read groups."""
        from distributed import wait

        leaves: list[Any] = []
        for c, pieces in self._pieces(pas):
            leaves.append(self.client.submit(fn, pieces, self.plan.chunk_rows, *args,
                                             key=self.ctx.key("svm" if pas == 1 else "kkt", pas, c)))
            if len(leaves) % self.plan.group == 0 and len(leaves) < self.plan.n_chunks:
                wait(leaves[-self.plan.group:])  # bound the rows held: one group of chunks at a time
        return leaves

    def _tree(self, pas: int, leaves: list[Any], fn: Any, *args: Any) -> list[list[Any]]:
        """Merge ``FAN_IN`` sets at a time, layer by layer, in chunk order; returns every layer's futures.

        Merging a few sets at once instead of pairs makes the tree shallower: its upper layers
        are sequential fits on ever larger support-vector sets, and there are fewer of them.
        """
        layers = [leaves]
        while len(layers[-1]) > 1:
            below = layers[-1]
            above = [self.client.submit(fn, below[j:j + FAN_IN], *args,
                                        key=self.ctx.key("merge", pas, len(layers), j // FAN_IN))
                     if len(below[j:j + FAN_IN]) > 1 else below[j]
                     for j in range(0, len(below), FAN_IN)]
            layers.append(above)
        return layers

    def _watch(self, pas: int, layers: list[list[Any]], started: float, what: str) -> int:
        """Wait layer by layer, logging sizes, so a person watching sees the cascade move."""
        total = 0
        for depth, layer in enumerate(layers, start=1):
            counts = self.client.gather([self.client.submit(_count_part, f, key=self.ctx.key("size", pas, depth, j))
                                         for j, f in enumerate(layer)])
            total = sum(n for n, _ in counts)
            dropped = sum(d for _, d in counts)  # carried up the tree, so every layer sums to the total
            self.ctx.log(f"cascade pass {pas} layer {depth}/{len(layers)}: {len(layer)} sets, {total:,} {what}, "
                         f"{time.perf_counter() - started:.2f}s" + (f" ({dropped} rows over chunk_rows left out)"
                                                                     if dropped else ""))
            self.ctx.report("train", min(0.99, (pas - 1 + depth / len(layers)) / self.plan.max_passes))
        return total

    def run(self) -> SVC:
        """Pass 1, then feedback passes until converged; returns the fitted ``SVC``."""
        plan, ctx, limit = self.plan, self.ctx, self.plan.limit
        started = time.perf_counter()
        leaves = self._first_layer(1, _first_part, self.svc)
        layers = self._tree(1, leaves, _merge_part, self.svc, limit)
        n_sv = self._watch(1, layers, started, "support vectors")
        final = layers[-1][0]
        ids = self.client.submit(operator.attrgetter("ids"), final, key=ctx.key("size", 1, "ids")).result()
        for pas in range(2, plan.max_passes + 1):
            started = time.perf_counter()
            leaves = self._first_layer(pas, _kkt_part, final, 2.0 * self.svc["tol"])
            layers = self._tree(pas, leaves, _union_part, limit)
            n_bad = self._watch(pas, layers, started, "KKT violators")
            if n_bad == 0:
                ctx.log(f"cascade converged after pass {pas}: no row violates the margins of {n_sv:,} SVs")
                break
            final = self.client.submit(_refit_part, final, layers[-1][0], self.svc, limit, key=ctx.key("refit", pas))
            new_ids = self.client.submit(operator.attrgetter("ids"), final, key=ctx.key("size", pas, "ids")).result()
            changed = len(np.setxor1d(ids, new_ids))
            ids, n_sv = new_ids, len(new_ids)
            ctx.log(f"cascade pass {pas}: refitted with {n_bad:,} violators: {n_sv:,} SVs, {changed:,} changed, "
                    f"{time.perf_counter() - started:.2f}s")
            if changed <= plan.feedback_tol * n_sv:
                ctx.log(f"cascade converged after pass {pas}: {changed:,} of {n_sv:,} SVs changed")
                break
        ctx.report("train", 1.0)
        return self._finish(final)

    def _finish(self, final: Any) -> SVC:
        """The fitted SVC: the top layer's own, or a refit on the SVs when Platt scaling is asked."""
        if self.probability:
            params = {**self.svc, "probability": True, "random_state": self.seed}
            return self.client.submit(_final_fit_part, final, params, key=self.ctx.key("refit", "final")).result()
        return self.client.submit(operator.attrgetter("model"), final, key=self.ctx.key("size", "model")).result()
