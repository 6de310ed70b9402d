"""The forest's out-of-bag score: each partition scores its rows with the trees that did not draw them.

Apart from ``forest`` because it is its own pass over the data; it redraws the counts ``_bootstrap`` drew.
``oob_score`` scores a finished forest in one pass; ``OobCurve`` scores a growing one (early stopping),
adding each wave's trees to per-row votes that stay on the workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.errors import DataError
from distml.models._bootstrap import SamplePlan, draw_inputs, tree_counts, tree_rows

if TYPE_CHECKING:
    from distml.blocks import Partitions
    from distml.models.base import TrainContext

OOB_SHARE = 0.1  # of the train phase's progress bar, for the out-of-bag pass when asked


# --- runs on workers ---------------------------------------------------------


@dataclass(frozen=True)
class OobStats:
    """One partition's out-of-bag tallies: rows scored, and correct labels or the sums R² needs."""

    scored: int
    unscored: int  # rows every tree drew
    correct: int = 0
    sse: float = 0.0  # regression: sum of squared errors, and of y and y^2 over the scored rows
    sum_y: float = 0.0
    sum_y2: float = 0.0


@dataclass(frozen=True)
class OobTally:
    """One partition's running out-of-bag votes (rows x outputs) and voter counts; it stays on its worker."""

    votes: np.ndarray
    voters: np.ndarray


def _add_votes(X: np.ndarray, bits: np.ndarray, rate: np.ndarray, trees: list[Any], seeds: tuple[int, ...],
               tally: OobTally, classification: bool) -> None:
    """Add the votes of ``trees`` for the rows each did not draw (in place on a task's own arrays)."""
    for tree, seed in zip(trees, seeds, strict=True):
        out = tree_counts(bits, rate, seed) == 0
        if out.any():
            tally.votes[out] += tree.predict_proba(X[out]) if classification else tree.predict(X[out])[:, None]
            tally.voters[out] += 1


def _stats(tally: OobTally, y: np.ndarray, classification: bool) -> OobStats:
    """The tallies' sums: rows scored, and correct labels or the sums R² needs."""
    scored = tally.voters > 0
    if classification:
        correct = int((tally.votes[scored].argmax(axis=1) == y[scored]).sum())
        return OobStats(int(scored.sum()), int((~scored).sum()), correct=correct)
    truth, predicted = y[scored], tally.votes[scored, 0] / tally.voters[scored]
    return OobStats(int(scored.sum()), int((~scored).sum()), sse=float(((truth - predicted) ** 2).sum()),
                    sum_y=float(truth.sum()), sum_y2=float((truth**2).sum()))


def _empty_tally(rows: int, plan: SamplePlan) -> OobTally:
    outputs = len(plan.classes) if plan.classes is not None else 1
    return OobTally(np.zeros((rows, outputs)), np.zeros(rows, dtype=np.int64))


def _oob_part(source: Any, trees: list[Any], plan: SamplePlan) -> OobStats:
    """Score this partition's rows with the trees that did not draw them (only the tallies travel back)."""
    block = source.load()
    X, y = tree_rows(block, plan)
    bits, rate = draw_inputs(block.u, y, plan)
    (seeds,) = plan.groups  # one group: every tree of the forest
    tally = _empty_tally(len(y), plan)
    _add_votes(X, bits, rate, trees, seeds, tally, plan.classes is not None)
    return _stats(tally, y, plan.classes is not None)


def _oob_step_part(source: Any, tally: OobTally | None, groups: list[list[Any]],
                   plan: SamplePlan) -> tuple[OobTally, list[OobStats]]:
    """Add each group's trees to this partition's running tallies, in order; the sums after each group.

    The new tallies stay on the worker for the next step; only the sums travel back.
    """
    block = source.load()
    X, y = tree_rows(block, plan)
    bits, rate = draw_inputs(block.u, y, plan)
    classification = plan.classes is not None
    # never mutate a task's input: it may be another task's result, recomputed after a worker loss
    tally = _empty_tally(len(y), plan) if tally is None else OobTally(tally.votes.copy(), tally.voters.copy())
    stats = []
    for trees, seeds in zip(groups, plan.groups, strict=True):
        _add_votes(X, bits, rate, trees, seeds, tally, classification)
        stats.append(_stats(tally, y, classification))
    return tally, stats


# --- runs on the client ------------------------------------------------------


def _score(tallies: list[OobStats], classification: bool, asked: str) -> tuple[float, str, int, int]:
    """(score, its name, rows scored, rows every tree drew) from the partitions' sums."""
    scored, unscored = sum(t.scored for t in tallies), sum(t.unscored for t in tallies)
    if not scored:
        raise DataError(f"model.params.{asked}: every training row was drawn by every tree, so none has an "
                        "out-of-bag score; use fewer trees or a smaller max_samples")
    if classification:
        return sum(t.correct for t in tallies) / scored, "accuracy", scored, unscored
    sse, sum_y, sum_y2 = (sum(getattr(t, f) for t in tallies) for f in ("sse", "sum_y", "sum_y2"))
    total = sum_y2 - sum_y**2 / scored
    return (1.0 - sse / total if total > 0 else 0.0), "R²", scored, unscored


def oob_score(parts: Partitions, trees: list[Any], plan: SamplePlan, ctx: TrainContext) -> float:
    """Out-of-bag accuracy (or R²) of the forest over all training rows, from per-partition tallies.

    The trees go to every worker once; each partition redraws its rows' counts
    from the trees' seeds, so no row leaves its worker. scikit-learn's per-row
    ``oob_decision_function_`` is not kept: it would bring every row's scores to
    the client.
    """
    from distml.tasks import map_bounded

    [shared] = ctx.env.client.scatter([trees], broadcast=True)
    n = len(parts.train)
    tallies = map_bounded(ctx.env.client, _oob_part, parts.train, key=lambda i: ctx.env.key("oob", i),
                          max_in_flight=ctx.env.max_in_flight, trees=shared, plan=plan,
                          on_done=lambda done: ctx.env.report("train", 1.0 - OOB_SHARE * (1.0 - done / n)))
    score, what, scored, unscored = _score(tallies, plan.classes is not None, "oob_score")
    ctx.env.log(f"forest: out-of-bag {what} {score:.4f} on {scored:,} training rows"
            + (f" ({unscored:,} drawn by every tree, not scored)" if unscored else ""))
    return score


class OobCurve:
    """The out-of-bag score of a forest growing group by group (early stopping by trees).

    Every partition keeps its rows' running votes on its worker (``OobTally``, 8 bytes per row and
    output); each ``add`` is one pass that adds the new groups' trees and brings back only sums.
    """

    def __init__(self, parts: Partitions, plan: SamplePlan, ctx: TrainContext) -> None:
        self.parts, self.plan, self.ctx = parts, plan, ctx
        self.tallies: list[Any] = [None] * len(parts.train)
        self.steps = 0
        self.metric = "accuracy" if plan.classes is not None else "R²"

    def add(self, groups: list[tuple[list[Any], tuple[int, ...]]]) -> list[float]:
        """Add these groups' trees (each with its trees' draw seeds), in order; the forest's score after each."""
        from dataclasses import replace

        from distml.tasks import pick, submit_bounded

        client, env = self.ctx.env.client, self.ctx.env
        plan = replace(self.plan, groups=tuple(seeds for _, seeds in groups))
        [shared] = client.scatter([[trees for trees, _ in groups]], broadcast=True)
        step, self.steps = self.steps, self.steps + 1

        def submit(i: int, source: Any) -> Any:
            return client.submit(_oob_step_part, source, self.tallies[i], shared, plan, key=env.key("oob", step, i))

        steps = submit_bounded(client, self.parts.train, submit, max_in_flight=env.max_in_flight)
        tallies = [pick(client, f, 0, key=env.key("oob", step, i, "tally")) for i, f in enumerate(steps)]
        sums = client.gather([pick(client, f, 1, key=env.key("oob", step, i, "sums")) for i, f in enumerate(steps)])
        self.tallies = tallies  # the previous step's tallies are released with their last reference
        for f in steps:
            f.release()
        classification = self.plan.classes is not None
        return [_score([s[g] for s in sums], classification, "early_stopping")[0] for g in range(len(groups))]

    def close(self) -> None:
        """Free the tallies on the workers."""
        for t in self.tallies:
            if t is not None:
                t.release()
        self.tallies = [None] * len(self.parts.train)
