"""Cross-validation folds and row subsets carved from each training row's stable draw ``u``.

A training row's draw (``Block.u``, uniform in [0, 1), from its file and row
number) decides its fold, so folds never depend on partitioning, scheduling or
the number of workers. Classification folds are stratified: each class's fold
boundaries are its own quantiles of ``u`` (from a histogram pass), so every
fold holds its class's share to within a histogram bin. A subset keeps the
remaining rows' draws uniform (``u`` is remapped), so a family's validation
slice (``u < validation_fraction``) works inside a fold as it does in a job.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.blocks import Block
from distml.tasks import MERGE_FAN_IN, task_key, tree_reduce

if TYPE_CHECKING:
    from distributed import Client, Future

    from distml.blocks import BlockSource, Partitions

DRAW_BINS = 4096  # histogram bins of u per class: a fold's share is exact to within one bin's rows

# --- runs on workers ---------------------------------------------------------


@dataclass(frozen=True)
class RowFilter:
    """Rows whose draw lies inside (or outside) ``[lo, hi)``, per class when ``classes`` is given.

    ``lo``/``hi`` hold one bound per class (aligned with the sorted ``classes``) or a single one.
    Kept rows get their draw stretched back onto [0, 1).
    """

    lo: np.ndarray
    hi: np.ndarray
    inside: bool
    classes: np.ndarray | None = None

    def apply(self, block: Block) -> Block:
        if self.classes is None:
            lo, hi = self.lo[0], self.hi[0]
        else:
            index = np.searchsorted(self.classes, block.y)
            lo, hi = self.lo[index], self.hi[index]
        width = hi - lo
        if self.inside:
            keep = (block.u >= lo) & (block.u < hi)
            u = (block.u - lo) / np.where(width > 0, width, 1.0)
        else:
            keep = (block.u < lo) | (block.u >= hi)
            rest = np.where(1.0 - width > 0, 1.0 - width, 1.0)
            u = np.where(block.u < lo, block.u, block.u - width) / rest
        return Block(block.X[keep], block.y[keep], np.clip(u[keep], 0.0, np.nextafter(1.0, 0.0)))


@dataclass(frozen=True)
class SubsetSource:
    """A partition's rows that pass every filter, read through the partition's own source."""

    inner: Any  # a BlockSource that re-reads (never a future: Dask resolves futures only in plain containers)
    filters: tuple[RowFilter, ...]

    def load(self) -> Block:
        return subset(self.inner.load(), self.filters)


def subset(block: Block, filters: tuple[RowFilter, ...]) -> Block:
    """``block`` with every filter applied in turn."""
    for row_filter in filters:
        block = row_filter.apply(block)
    return block


def _subset_part(block: Block, filters: tuple[RowFilter, ...]) -> Block:
    return subset(block, filters)


def _draw_histogram_part(source: BlockSource, classes: np.ndarray | None) -> np.ndarray:
    """Counts of training rows per (class, draw bin); one row for regression."""
    block = source.load()
    index = np.zeros(len(block.y), dtype=np.int64) if classes is None else np.searchsorted(classes, block.y)
    bins = np.minimum((block.u * DRAW_BINS).astype(np.int64), DRAW_BINS - 1)
    counts = np.zeros((1 if classes is None else len(classes), DRAW_BINS), dtype=np.int64)
    np.add.at(counts, (index, bins), 1)
    return counts


def _add_part(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a + b


# --- runs on the client ------------------------------------------------------


@dataclass(frozen=True)
class Folds:
    """K folds: ``bounds[c, k]`` .. ``bounds[c, k + 1]`` is fold k's range of draws for class c."""

    bounds: np.ndarray  # (classes or 1, K + 1), each row from 0 to 1
    classes: np.ndarray | None
    counts: np.ndarray  # training rows per (class, fold)

    @property
    def k(self) -> int:
        return self.bounds.shape[1] - 1

    def test_filter(self, fold: int) -> RowFilter:
        return RowFilter(self.bounds[:, fold].copy(), self.bounds[:, fold + 1].copy(), True, self.classes)

    def train_filter(self, fold: int) -> RowFilter:
        return RowFilter(self.bounds[:, fold].copy(), self.bounds[:, fold + 1].copy(), False, self.classes)

    def train_counts(self, fold: int) -> np.ndarray:
        """Training rows per class when ``fold`` is held out."""
        return self.counts.sum(axis=1) - self.counts[:, fold]


def draw_histogram(parts: Partitions, classes: np.ndarray | None, client: Client, job_id: str,
                   max_in_flight: int) -> np.ndarray:
    """Training rows per (class, draw bin), from one pass over the training blocks."""
    from distml.tasks import submit_bounded

    futures = submit_bounded(
        client, parts.train,
        lambda i, s: client.submit(_draw_histogram_part, s, classes, key=task_key("cv", job_id, "draws", i)),
        max_in_flight=max_in_flight)
    return tree_reduce(client, futures, _add_part,
                       key=lambda level, j: task_key("merge", job_id, "cv", level, j), fan_in=MERGE_FAN_IN).result()


def folds_from_histogram(hist: np.ndarray, shares: np.ndarray, classes: np.ndarray | None) -> Folds:
    """Folds holding ``shares`` (summing to 1) of every class: each class's quantiles of its draws,
    interpolated inside the bin where each falls."""
    edges = np.linspace(0.0, 1.0, DRAW_BINS + 1)
    cuts = np.concatenate([[0.0], np.cumsum(shares)])
    cuts[-1] = 1.0
    bounds = np.zeros((hist.shape[0], len(shares) + 1))
    counts = np.zeros((hist.shape[0], len(shares)), dtype=np.int64)
    for c, row in enumerate(hist):
        cumulative = np.concatenate([[0], np.cumsum(row)]).astype(np.float64)
        targets = cumulative[-1] * cuts
        bounds[c] = np.interp(targets, cumulative, edges) if cumulative[-1] else cuts
        bounds[c, 0], bounds[c, -1] = 0.0, 1.0
        counts[c] = np.diff(np.round(targets).astype(np.int64))
    return Folds(bounds, classes, counts)


def fraction_filter(fraction: float) -> RowFilter:
    """The rows whose draw is below ``fraction``: successive halving's growing share of the data."""
    return RowFilter(np.array([0.0]), np.array([fraction]), True)


def subset_sources(sources: list[BlockSource | Future], filters: tuple[RowFilter, ...], client: Client,
                   job_id: str, name: str) -> list[BlockSource | Future]:
    """Sources of the filtered rows: a wrapper around re-read sources, a filtered copy of blocks in memory."""
    from distributed import Future

    out: list[BlockSource | Future] = []
    for i, source in enumerate(sources):
        if isinstance(source, Future):  # a block in cluster memory: filter it there, once
            out.append(client.submit(_subset_part, source, filters, key=task_key("cv", job_id, name, i)))
        elif isinstance(source, SubsetSource):
            out.append(replace(source, filters=source.filters + filters))
        else:
            out.append(SubsetSource(source, filters))
    return out
