"""The forest's out-of-bag score: each partition scores its rows with the trees that did not draw them.

Apart from ``forest`` because it is its own pass over the data; it redraws the counts ``_bootstrap`` drew.
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


def _oob_part(source: Any, trees: list[Any], plan: SamplePlan) -> OobStats:
    """Score this partition's rows with the trees that did not draw them (only the tallies travel back)."""
    block = source.load()
    X, y = tree_rows(block, plan)
    bits, rate = draw_inputs(block.u, y, plan)
    (seeds,) = plan.groups  # one group: every tree of the forest
    votes = np.zeros((len(y), len(plan.classes) if plan.classes is not None else 1))
    voters = np.zeros(len(y), dtype=np.int64)
    for tree, seed in zip(trees, seeds, strict=True):
        out = tree_counts(bits, rate, seed) == 0
        if out.any():
            votes[out] += tree.predict_proba(X[out]) if plan.classes is not None else tree.predict(X[out])[:, None]
            voters += out
    scored = voters > 0
    if plan.classes is not None:
        correct = int((votes[scored].argmax(axis=1) == y[scored]).sum())
        return OobStats(int(scored.sum()), int((~scored).sum()), correct=correct)
    truth, predicted = y[scored], votes[scored, 0] / voters[scored]
    return OobStats(int(scored.sum()), int((~scored).sum()), sse=float(((truth - predicted) ** 2).sum()),
                    sum_y=float(truth.sum()), sum_y2=float((truth**2).sum()))


# --- runs on the client ------------------------------------------------------


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
    scored, unscored = sum(t.scored for t in tallies), sum(t.unscored for t in tallies)
    if not scored:
        raise DataError("model.params.oob_score: every training row was drawn by every tree, so none has an "
                        "out-of-bag score; use fewer trees or a smaller max_samples")
    if plan.classes is not None:
        score, what = sum(t.correct for t in tallies) / scored, "accuracy"
    else:
        sse, sum_y, sum_y2 = (sum(getattr(t, f) for t in tallies) for f in ("sse", "sum_y", "sum_y2"))
        total = sum_y2 - sum_y**2 / scored
        score, what = (1.0 - sse / total if total > 0 else 0.0), "R²"
    ctx.env.log(f"forest: out-of-bag {what} {score:.4f} on {scored:,} training rows"
            + (f" ({unscored:,} drawn by every tree, not scored)" if unscored else ""))
    return score
