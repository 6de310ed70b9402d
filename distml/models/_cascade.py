"""Cascade SVM (Graf et al., NIPS 2004): one kernel SVC from SVCs fitted on chunks, on the workers.

Pass 1. Every training row belongs to chunk ``floor(u * n_chunks)``, where ``u``
is the row's uniform draw, so chunks are stratified by construction and do not
depend on how the files are partitioned. Each partition's block is cut into
its chunk pieces on its worker (``_cut_part``); a first-layer task gathers one
chunk's pieces (at most ``chunk_rows`` rows), fits an ``SVC`` and keeps only
the support vectors. Support-vector sets are merged three at a time (Graf's
tree with a fan-in of 3 rather than 2: fewer sequential layers) and refitted
until two remain, the last layer merging up to five. The top layer is not
fitted on their union alone: every partition is screened against the average
margin of those two sets, and the top SVC is fitted on the rows inside it.
Those are the rows the feedback pass would otherwise bring back one pass later
(and refit the whole top problem for), so screening first saves that refit
and leaves fewer violators.

Feedback passes. The final SVs go back to every partition, which keeps only
its rows that violate the final model's KKT conditions (margin
``y f(x) < 1`` and not already a support vector). A row that satisfies them
gets a zero weight in any problem that holds the final SVs, so Graf's
per-chunk refits of ``chunk ∪ SVs`` would only re-solve the SVs over and over;
instead the SVs are refitted once with all the violators. The cascade stops
when fewer rows than ``feedback_tol`` of the SVs violate the conditions (none:
the global optimum of the full problem), when fewer than that fraction of the
SVs changed in a refit, or after ``max_passes``.

Checkpoints. After every layer of pass 1 (the first layer, each merge layer,
the top) and every feedback refit, the layer's sets are written as the job's
checkpoint (``distml.models._svsets`` says what one holds and how big it gets);
a resumed job puts the last one's sets back on the workers and goes on from the
next layer, so it fits the same sets in the same order: the same model.

Every fit goes through ``distml.kernels.fit_svc``: on a kernel matrix computed
with BLAS when its ``8 n^2`` bytes fit ``gram_bytes`` (``svm.GRAM_MAX_BYTES``, or a
quarter of a worker thread's memory share if less: the probe and the first
layer's chunks), else on libsvm's own kernel. Besides that matrix, a task
holds at most ``chunk_rows`` rows plus the support vectors it was handed.

Only chunk pieces, screened rows and support vectors move between workers; the
client sees row counts and the final SVC. Rows keep their draw ``u`` as an id,
so unions are deduplicated and ordered the same way on every run: same seed,
same model.
"""
from __future__ import annotations

import itertools
import math
import operator
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.errors import JobFailed
from distml.kernels import fit_svc, margins
from distml.models._svsets import LayerCheckpoints, SVSet, concat
from distml.tasks import pick

if TYPE_CHECKING:
    from sklearn.svm import SVC

    from distml.blocks import Partitions
    from distml.models.base import TrainEnv

# --- runs on workers ---------------------------------------------------------


def _cut_part(source: Any, n_chunks: int, lo: int, hi: int) -> list[SVSet]:
    """One partition's training rows cut into the pieces of chunks ``lo..hi-1``."""
    block = source.load()
    chunk = np.minimum((block.u * n_chunks).astype(np.int64), n_chunks - 1)
    pieces = []
    for c in range(lo, hi):
        rows = np.flatnonzero(chunk == c)
        pieces.append(SVSet(block.X[rows], block.y[rows], block.u[rows]))
    return pieces


def _fit(rows: SVSet, svc_params: dict[str, Any], limit: int | None, gram_bytes: int) -> SVSet:
    """Fit an SVC on ``rows`` and keep its support vectors; refuse a union of SVs beyond ``limit``."""
    if limit is not None and len(rows) > limit:
        raise JobFailed(
            f"the cascade SVM found {len(rows):,} support vectors, more than model.params.max_support_vectors="
            f"{limit:,}; use kernel: linear, or a kernel approximation (approximation: nystroem) for data this large")
    if len(np.unique(rows.y)) < 2:  # a chunk with a single class: pass its rows on to meet the others
        return rows
    model = fit_svc(rows.X, rows.y, svc_params, gram_bytes)
    keep = model.support_
    return SVSet(rows.X[keep], rows.y[keep], rows.ids[keep], model, rows.dropped, fitted=rows.ids)


def _first_part(pieces: list[SVSet], cap: int, svc_params: dict[str, Any], gram_bytes: int) -> SVSet:
    """First layer: one chunk (at most ``cap`` rows, lowest ids kept) -> its support vectors."""
    rows = concat(pieces)
    if len(rows) > cap:
        rows = SVSet(rows.X[:cap], rows.y[:cap], rows.ids[:cap], dropped=len(rows) - cap)
    return _fit(rows, svc_params, None, gram_bytes)  # chunk rows, not support vectors: bounded by chunk_rows


def _merge_part(sets: list[SVSet], svc_params: dict[str, Any], limit: int, gram_bytes: int) -> SVSet:
    """A merge layer: refit on the union of a few support-vector sets."""
    return _fit(concat(sets), svc_params, limit, gram_bytes)


def _margins_under(block: Any, rows: SVSet) -> np.ndarray | None:
    """A block's margins under the SVC fitted on ``rows`` (None when that set was left unfitted)."""
    return None if rows.model is None else margins(rows.model, block.X, block.y)


def _candidates(block: Any, set_margins: list[np.ndarray | None]) -> SVSet:
    """Top-layer candidates of a block: its rows inside the margin of the sets below, averaged.

    The sets below were each fitted on a share of the data; a row their average
    puts outside the margin (``y f(x) >= 1``) is very unlikely to be a support
    vector of the whole problem, and the feedback check catches any that is.
    """
    fitted = [m for m in set_margins if m is not None]
    if not fitted:
        return SVSet(block.X[:0], block.y[:0], block.u[:0])
    keep = np.mean(fitted, axis=0) < 1.0
    return SVSet(block.X[keep], block.y[keep], block.u[keep])


def _screen_part(source: Any, below: list[SVSet]) -> SVSet:
    """One partition's top-layer candidates, from one read of it."""
    block = source.load()
    return _candidates(block, [_margins_under(block, rows) for rows in below])


def _margin_part(source: Any, rows: SVSet) -> np.ndarray | None:
    """One partition's margins under one set's SVC: for blocks held in memory, one task per set."""
    return _margins_under(source.load(), rows)


def _select_part(source: Any, set_margins: list[np.ndarray | None]) -> SVSet:
    """One partition's top-layer candidates, from its margins under each set (see ``_margin_part``)."""
    return _candidates(source.load(), set_margins)


def _top_part(candidates: list[SVSet], below: list[SVSet], svc_params: dict[str, Any], limit: int,
              gram_bytes: int) -> SVSet:
    """Top layer: one SVC on the screened candidates (plus the rows of any set below left unfitted)."""
    unfitted = [SVSet(s.X, s.y, s.ids) for s in below if s.model is None]  # single-class sets: not screened
    return _fit(concat(candidates + unfitted), svc_params, limit, gram_bytes)


def _kkt_part(source: Any, final: SVSet, slack: float) -> SVSet:
    """Feedback check of one partition: its rows that violate the final model's KKT conditions.

    Rows the final SVC was fitted on already meet them (libsvm's stopping rule), so
    only the others are checked: about a third fewer kernel rows after screening.
    """
    block = source.load()
    rows = np.flatnonzero(~np.isin(block.u, final.fitted))
    bad = rows[margins(final.model, block.X[rows], block.y[rows]) < 1.0 - slack]
    return SVSet(block.X[bad], block.y[bad], block.u[bad])


def _refit_part(final: SVSet, violators: list[SVSet], svc_params: dict[str, Any], limit: int,
                gram_bytes: int) -> SVSet:
    """Feedback refit: the final support vectors together with every violator, in one SVC."""
    rows = concat([SVSet(final.X, final.y, final.ids), *violators])
    if len(rows) > limit:
        raise JobFailed(f"the cascade SVM found {len(rows):,} support vectors and rows violating their margins, "
                        f"more than model.params.max_support_vectors={limit:,}; use kernel: linear, or a kernel "
                        "approximation (approximation: nystroem) for data this large")
    return _fit(rows, svc_params, None, gram_bytes)


def _count_part(rows: SVSet) -> tuple[int, int]:
    return len(rows), rows.dropped


def _final_fit_part(final: SVSet, svc_params: dict[str, Any], gram_bytes: int) -> SVC:
    """The saved SVC: fitted on the final support vectors alone (with Platt scaling if asked)."""
    return fit_svc(final.X, final.y, svc_params, gram_bytes)


# --- runs on the client ------------------------------------------------------

# Sets merged per fit below the last merge layer: pairs add a sequential layer, more than 3 or 4 make
# each fit large.
FAN_IN = 3
# The last merge layer leaves two sets to screen the top layer with (each fitted on about half the rows),
# merging up to this many sets per fit to get there in one layer. Two sets screen in few more candidates
# than one and leave far fewer violators (no refit); three keep more candidates for no fewer violators.
TOP_SETS, TOP_FAN_IN = 2, 5


@dataclass(frozen=True)
class CascadePlan:
    """Sizes the cascade works with, decided on the client from the statistics pass."""

    n_chunks: int
    chunk_rows: int
    group: int  # chunks whose pieces are cut in one read pass (bounds rows held in the cluster)
    limit: int  # max_support_vectors
    gram_bytes: int  # largest precomputed kernel matrix one fit may hold (see ``fit_svc``)
    max_passes: int
    feedback_tol: float


def plan_chunks(train_rows: int, chunk_rows: int) -> int:
    """Chunks so that a chunk's binomial size stays under ``chunk_rows`` (4 standard deviations)."""
    target = max(1.0, chunk_rows - 4.0 * math.sqrt(chunk_rows))
    return max(1, math.ceil(train_rows / target))


def _merge_bounds(n_sets: int) -> list[np.ndarray]:
    """Each merge layer above ``n_sets`` sets, as the bounds of the runs of sets one fit merges."""
    layers = []
    while n_sets > TOP_SETS:
        groups = TOP_SETS if n_sets <= TOP_SETS * TOP_FAN_IN else math.ceil(n_sets / FAN_IN)
        layers.append(np.linspace(0, n_sets, groups + 1).round().astype(int))
        n_sets = groups
    return layers


def pass_one_steps(n_chunks: int) -> int:
    """Layers of the first pass over ``n_chunks`` chunks: the first layer, the merge layers and the top."""
    merges = _merge_bounds(n_chunks)
    return 1 + len(merges) + ((len(merges[-1]) - 1 if merges else n_chunks) > 1)


class Cascade:
    """One cascade run: submits the layers, reports progress, keeps the final SVs on the cluster."""

    def __init__(self, parts: Partitions, env: TrainEnv, plan: CascadePlan, svc_params: dict[str, Any],
                 probability: bool, seed: int) -> None:
        self.parts, self.env, self.plan, self.svc = parts, env, plan, svc_params
        self.client = env.client
        self.probability, self.seed = probability, seed
        # the kernel matrix budget decides how a fit is solved: a cluster with other worker memory fits otherwise
        self.checkpoints = LayerCheckpoints(env, {"n_chunks": plan.n_chunks, "gram_bytes": plan.gram_bytes},
                                            plan.limit)

    def _pieces(self) -> Any:
        """Yield each chunk's list of piece futures, one read pass per group of chunks."""
        plan, client, key = self.plan, self.client, self.env.key
        for lo in range(0, plan.n_chunks, plan.group):
            hi = min(plan.n_chunks, lo + plan.group)
            cuts = [client.submit(_cut_part, s, plan.n_chunks, lo, hi, key=key("cut", lo, i))
                    for i, s in enumerate(self.parts.train)]
            for c in range(lo, hi):
                yield c, [pick(client, cut, c - lo, key=key("pick", c, i)) for i, cut in enumerate(cuts)]

    def _wait(self, futures: list[Any]) -> None:
        """Block until ``futures`` finish, without moving their results to the client."""
        from distributed import as_completed

        for _ in as_completed(futures, loop=self.client.loop):
            pass

    def _first_layer(self) -> list[Any]:
        """One SVC per chunk, waiting between read groups so one group of chunks is held at a time."""
        leaves: list[Any] = []
        for c, pieces in self._pieces():
            leaves.append(self.client.submit(_first_part, pieces, self.plan.chunk_rows, self.svc,
                                             self.plan.gram_bytes, key=self.env.key("svm", 1, c)))
            if len(leaves) % self.plan.group == 0 and len(leaves) < self.plan.n_chunks:
                self._wait(leaves[-self.plan.group:])
        return leaves

    def _tree(self, leaves: list[Any], depth: int = 1) -> list[list[Any]]:
        """Merge sets layer by layer in chunk order until ``TOP_SETS`` remain; ``leaves`` is layer ``depth``.

        ``FAN_IN`` sets per fit while there are many, then one last layer into
        ``TOP_SETS`` groups. Merging a few sets at once instead of pairs makes the
        tree shallower: its upper layers are sequential fits on ever larger
        support-vector sets, and there are fewer of them.
        """
        layers = [leaves]
        for bounds in _merge_bounds(len(leaves)):
            below = layers[-1]
            layers.append([self.client.submit(_merge_part, below[lo:hi], self.svc, self.plan.limit,
                                              self.plan.gram_bytes,
                                              key=self.env.key("layer", 1, depth + len(layers) - 1, g))
                           if hi - lo > 1 else below[lo]
                           for g, (lo, hi) in enumerate(itertools.pairwise(bounds))])
        return layers

    def _per_partition(self, phase: str, pas: int, fn: Any, *args: Any) -> list[Any]:
        """``fn(source, *args)`` on every training partition, at most ``max_in_flight`` unfinished at once.

        The results (candidates, violators) stay on the workers; bounding the reads
        is what keeps a pass over data larger than the cluster's memory affordable.
        """
        from distml.tasks import submit_bounded

        def one(i: int, source: Any) -> Any:
            return self.client.submit(fn, source, *args, key=self.env.key(phase, pas, i))

        return submit_bounded(self.client, self.parts.train, one, max_in_flight=self.env.max_in_flight)

    def _screen(self, below: list[Any]) -> list[Any]:
        """Each partition's top-layer candidates (futures).

        Blocks held in cluster memory are screened one set at a time, so a worker
        starts on the first set's margins while the last merge still runs (the two
        merges differ in size). Blocks read from storage are screened in one read.
        """
        if not self.parts.persisted:
            return self._per_partition("screen", 1, _screen_part, below)
        submit, key, train = self.client.submit, self.env.key, self.parts.train
        per_set = [[submit(_margin_part, source, rows, key=key("screen", "margins", k, i))
                    for i, source in enumerate(train)] for k, rows in enumerate(below)]
        return [submit(_select_part, source, [m[i] for m in per_set], key=key("screen", 1, i))
                for i, source in enumerate(train)]

    def _sizes(self, phase: str, sets: list[Any]) -> tuple[int, int]:
        """Rows and left-out rows of a list of SVSet futures (only the counts travel to the client)."""
        counts = self.client.gather([self.client.submit(_count_part, f, key=self.env.key("size", phase, j))
                                     for j, f in enumerate(sets)])
        return sum(n for n, _ in counts), sum(d for _, d in counts)

    def _ids(self, svs: Any, pas: int) -> np.ndarray:
        return self.client.submit(operator.attrgetter("ids"), svs, key=self.env.key("size", pas, "ids")).result()

    def _progress(self, pas: int, step: int, steps: int, message: str, started: float) -> None:
        self.env.log(f"cascade pass {pas} {message}, {time.perf_counter() - started:.2f}s")
        self.env.report("train", min(0.99, (pas - 1 + step / steps) / self.plan.max_passes))

    def _pass_one(self, resumed: tuple[int, list[Any]] | None = None) -> tuple[Any, int]:
        """First layer, merge layers, then the top layer fitted on the rows the layer below screens in.

        ``resumed`` is a checkpointed layer, ``(depth, its sets)``: the layers up to it are not fitted again.
        """
        started = time.perf_counter()
        start, restored = resumed or (1, [])
        layers = self._tree(restored or self._first_layer(), start)
        below = layers[-1]
        steps = pass_one_steps(self.plan.n_chunks)
        # blocks in memory: the screen is submitted at once, to start on each set as soon as it is fitted
        top = self._top(below) if self.parts.persisted and len(below) > 1 else None
        for depth, layer in enumerate(layers, start=start):
            total, dropped = self._sizes(f"l{depth}", layer)  # dropped rows are carried up the tree
            fitted = depth > start or not resumed
            self._progress(1, depth, steps, f"layer {depth}/{steps}: {len(layer)} sets, {total:,} support vectors"
                           + (f" ({dropped} rows over chunk_rows left out of the first layer)" if dropped else "")
                           + ("" if fitted else ", from the checkpoint"), started)
            if fitted:
                self.checkpoints.write(depth, {"stage": "tree", "depth": depth}, layer, total)
        if len(below) == 1:
            return below[0], total
        candidates, top = top or self._top(below)
        n_candidates, _ = self._sizes("screen", candidates)
        n_sv, _ = self._sizes("top", [top])
        self._progress(1, steps, steps, f"layer {steps}/{steps}: 1 set, {n_sv:,} support vectors from "
                       f"{n_candidates:,} rows inside the margins of the {len(below)} sets below", started)
        self.checkpoints.write(steps, {"stage": "final", "pass": 1, "n_sv": n_sv, "done": False}, [top], n_sv)
        return top, n_sv

    def _top(self, below: list[Any]) -> tuple[list[Any], Any]:
        """Submit the screen and the top layer's fit: (candidate futures, top future)."""
        candidates = self._screen(below)
        return candidates, self.client.submit(_top_part, candidates, below, self.svc, self.plan.limit,
                                              self.plan.gram_bytes, key=self.env.key("top", 1))

    def run(self) -> SVC:
        """Pass 1, then feedback passes until converged (from the job's last checkpoint, if resumed)."""
        plan, env, client = self.plan, self.env, self.client
        restored = self.checkpoints.restore()
        if restored is None:
            (final, n_sv), first = self._pass_one(), 2
        elif restored[0]["stage"] == "tree":
            (final, n_sv), first = self._pass_one((restored[0]["depth"], restored[1])), 2
        else:
            state, (final,) = restored
            n_sv, first = state["n_sv"], plan.max_passes + 1 if state["done"] else state["pass"] + 1
            env.log(f"cascade pass {state['pass']}: {n_sv:,} support vectors from the checkpoint"
                    + (", converged" if state["done"] else ""))
        for pas in range(first, plan.max_passes + 1):
            started = time.perf_counter()
            client.replicate([final])  # on every worker: each partition is checked where it is, not all at one
            violators = self._per_partition("kkt", pas, _kkt_part, final, 2.0 * self.svc["tol"])
            n_bad, _ = self._sizes(f"kkt{pas}", violators)
            self._progress(pas, 1, 2, f"layer 1/2: {n_bad:,} KKT violators against {n_sv:,} SVs", started)
            if n_bad <= plan.feedback_tol * n_sv:  # each violator would join the SVs: the set is settled
                env.log(f"cascade converged after pass {pas}: {n_bad:,} rows violate the margins of {n_sv:,} SVs")
                break
            ids = self._ids(final, pas - 1)  # the SVs' draws: ids only, never rows, reach the client
            final = client.submit(_refit_part, final, violators, self.svc, plan.limit, plan.gram_bytes,
                                  key=env.key("refit", pas))
            new_ids = self._ids(final, pas)
            changed, n_sv = len(np.setxor1d(ids, new_ids)), len(new_ids)
            self._progress(pas, 2, 2, f"layer 2/2: refitted with {n_bad:,} violators: {n_sv:,} SVs, "
                           f"{changed:,} changed", started)
            converged = changed <= plan.feedback_tol * n_sv
            self.checkpoints.write(pass_one_steps(plan.n_chunks) + pas - 1,
                                   {"stage": "final", "pass": pas, "n_sv": n_sv, "done": converged}, [final], n_sv)
            if converged:
                env.log(f"cascade converged after pass {pas}: {changed:,} of {n_sv:,} SVs changed")
                break
        env.report("train", 1.0)
        return self._finish(final)

    def _finish(self, final: Any) -> SVC:
        """The fitted SVC: the top layer's own, or a refit on the SVs when Platt scaling is asked."""
        if self.probability:
            params = {**self.svc, "probability": True, "random_state": self.seed}
            return self.client.submit(_final_fit_part, final, params, self.plan.gram_bytes,
                                      key=self.env.key("refit", "final")).result()
        return self.client.submit(operator.attrgetter("model"), final, key=self.env.key("size", "model")).result()
