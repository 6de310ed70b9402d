"""The forest's Poisson bootstrap: every row draws a count per tree from its own uniform and the tree's seed.

Apart from ``forest`` because the sampling pass and the out-of-bag pass (``_oob``) both redraw the same counts.
A row's count does not depend on how the files are cut or sorted, so no global shuffle is needed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.draws import GOLDEN, mix_uniform

if TYPE_CHECKING:
    from distributed import Future

    from distml.blocks import Partitions
    from distml.models.base import TrainContext


# --- runs on workers ---------------------------------------------------------


@dataclass(frozen=True)
class SamplePlan:
    """What a partition task needs to draw every group's rows: seeds, Poisson rates, label coding."""

    groups: tuple[tuple[int, ...], ...]  # per group, the sampling seed of each of its trees
    rates: np.ndarray | None  # Poisson rate per class code (classification) or [rate]; None: no bootstrap
    classes: np.ndarray | None  # global classes, to code labels 0..K-1


@dataclass(frozen=True)
class Sample:
    """Rows some tree of a group picked: features (float32, as trees use), target, count per tree."""

    X: np.ndarray
    y: np.ndarray
    counts: np.ndarray | None  # (rows, trees) uint16; None: every row once (no bootstrap)


def _tree_uniforms(bits: np.ndarray, seed: int) -> np.ndarray:
    """A uniform draw per (row, tree) from the row's own draw and the tree's seed (splitmix64)."""
    with np.errstate(over="ignore"):
        return mix_uniform(bits + np.uint64(seed) * GOLDEN)


def _poisson(v: np.ndarray, rate: float) -> np.ndarray:
    """Poisson(rate) counts by inverting the CDF at the uniforms ``v``."""
    from scipy.special import gammaln

    out = np.zeros(len(v), dtype=np.uint16)
    k = np.arange(int(rate + 12 * math.sqrt(rate) + 20))
    cdf = np.cumsum(np.exp(k * math.log(rate) - rate - gammaln(k + 1)))
    hit = v >= cdf[0]  # most rows draw zero when the rate is small: skip the search for them
    out[hit] = np.minimum(np.searchsorted(cdf, v[hit], side="right"), 65535)
    return out


def _sample_part(source: Any, plan: SamplePlan) -> list[Sample]:
    """Draw, for every group, the rows of this partition its trees pick, and their counts."""
    block = source.load()
    X, y = tree_rows(block, plan)
    if plan.rates is None:
        return [Sample(X, y, None)]
    bits, rate = draw_inputs(block.u, y, plan)
    out = []
    for seeds in plan.groups:
        counts = np.zeros((len(y), len(seeds)), dtype=np.uint16)
        for j, seed in enumerate(seeds):
            counts[:, j] = tree_counts(bits, rate, seed)
        keep = counts.any(axis=1)
        out.append(Sample(X[keep], y[keep], counts[keep]))
    return out


def tree_rows(block: Any, plan: SamplePlan) -> tuple[np.ndarray, np.ndarray]:
    """A block's features as trees use them (float32) and its target (class codes 0..K-1, as floats)."""
    X = np.asarray(block.X, dtype=np.float32)
    if plan.classes is not None:
        return X, np.searchsorted(plan.classes, block.y).astype(np.float64)
    return X, np.asarray(block.y, dtype=np.float64)


def draw_inputs(u: np.ndarray, y: np.ndarray, plan: SamplePlan) -> tuple[np.ndarray, np.ndarray]:
    """The rows' draws as bits, and each row's Poisson rate (by class code, or the one rate)."""
    rate = plan.rates[y.astype(np.int64)] if plan.classes is not None else np.full(len(y), plan.rates[0])
    return (u * 2.0**53).astype(np.uint64), rate


def tree_counts(bits: np.ndarray, rate: np.ndarray, seed: int) -> np.ndarray:
    """How many times the tree drawing with ``seed`` picked each row."""
    v = _tree_uniforms(bits, seed)
    counts = np.zeros(len(v), dtype=np.uint16)
    for r in np.unique(rate):
        rows = rate == r
        counts[rows] = _poisson(v[rows], float(r))
    return counts


def _merge_part(pieces: list[Sample], n_classes: int) -> Sample:
    """One group's sample on one worker, plus a zero-weight row per class so every tree knows all K.

    Written into preallocated arrays: the peak is the pieces plus one copy, not several.
    """
    rows = sum(len(p.y) for p in pieces) + n_classes
    X = np.zeros((rows, pieces[0].X.shape[1]), dtype=np.float32)
    y = np.empty(rows, dtype=np.float64)
    counts = None if pieces[0].counts is None else np.zeros((rows, pieces[0].counts.shape[1]), dtype=np.uint16)
    at = 0
    for piece in pieces:
        X[at:at + len(piece.y)], y[at:at + len(piece.y)] = piece.X, piece.y
        if counts is not None:
            counts[at:at + len(piece.y)] = piece.counts
        at += len(piece.y)
    y[at:] = np.arange(n_classes)  # the class rows: features 0, count 0
    return Sample(X, y, counts)


# --- runs on the client ------------------------------------------------------


def sample_wave(parts: Partitions, plan: SamplePlan, ctx: TrainContext, wave: int, group_ids: list[int],
                 n_classes: int) -> list[Future]:
    """One pass over the partitions (bounded in flight) drawing the samples of a wave's groups.

    Returns, per group, a future of its merged sample; the pieces move worker to worker, never to the client.
    """
    from distml.tasks import pick, submit_bounded

    client = ctx.env.client
    pieces: list[list[Future]] = [[] for _ in group_ids]

    def draw(i: int, source: Any) -> Future:
        drawn = client.submit(_sample_part, source, plan, key=ctx.env.key("sample", wave, i))
        for j in range(len(group_ids)):
            pieces[j].append(pick(client, drawn, j, key=ctx.env.key("sample", wave, i, j)))
        return drawn

    submit_bounded(client, parts.train, draw, max_in_flight=ctx.env.max_in_flight)
    return [client.submit(_merge_part, group_pieces, n_classes, key=ctx.env.key("merge", "tree", g))
            for g, group_pieces in zip(group_ids, pieces)]
