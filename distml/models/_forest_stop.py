"""The forest's early stopping by trees: grow wave by wave, score the forest out of bag after every group.

Apart from ``forest`` because it is its own loop over the waves. Each wave's groups are built as without
early stopping (one sampling pass, the tree fits), then one out-of-bag pass adds their trees to the
per-row tallies the partitions keep on their workers (``_oob.OobCurve``) and brings back the score of
the forest so far after each group. Growing stops once ``n_iter_no_change`` groups in a row have
not beaten the best score by ``tol``; the forest then keeps the trees up to its best-scoring group
(a forest that never stalls keeps all ``n_estimators``). The next
wave grows while one is scored, so a stop wastes at most one wave. The curve is
checkpointed with the trees, so a resumed job continues it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distml.models._oob import OobCurve
from distml.models._stopping import best_and_stale

if TYPE_CHECKING:
    from distml.blocks import Partitions
    from distml.models._bootstrap import SamplePlan
    from distml.models.base import TrainContext


# --- runs on the client ------------------------------------------------------


@dataclass(frozen=True)
class Patience:
    """When to stop: the forest's size, and ``n_iter_no_change`` groups without a gain of ``tol``."""

    n_estimators: int
    n_iter_no_change: int
    tol: float


@dataclass(frozen=True)
class Grown:
    """Where growing stopped: the trees kept (a prefix of the forest) and the kept forest's score."""

    kept: int
    score: float


def _best(points: list[dict[str, Any]], tol: float) -> tuple[int | None, int]:
    return best_and_stale([p["oob_score"] for p in points], tol)


def grow_until_stale(groups: list[list[int]], waves: list[list[int]], trees: dict[int, list[Any]],
                     build: Callable[[int, list[int]], list[Any]], collect: Callable[[list[Any]], None],
                     checkpoint: Callable[[dict[str, Any]], None], restored: dict[str, Any], plan: SamplePlan,
                     draw_seeds: list[int], parts: Partitions, rule: Patience, ctx: TrainContext) -> Grown:
    """Build waves until the out-of-bag score stalls; ``trees`` then holds at least the kept ones.

    ``build(w, wave)`` submits a wave's missing groups and ``collect`` brings their trees into ``trees``;
    ``restored`` is a resumed job's checkpointed curve.
    """
    curve = OobCurve(parts, plan, ctx)
    points: list[dict[str, Any]] = list(restored.get("curve") or [])
    best, stale = _best(points, rule.tol)

    def group_trees(g: int) -> tuple[list[Any], tuple[int, ...]]:
        members = set(groups[g])
        return ([t for first in sorted(trees) if first in members for t in trees[first]],
                tuple(draw_seeds[t] for t in groups[g]))

    try:
        scored = len(points)  # groups already on the curve (a prefix): their votes go in as one group
        if scored:
            ctx.env.log(f"forest: resuming early stopping after {points[-1]['trees']} trees")
            merged = [group_trees(g) for g in range(scored)]
            curve.add([([t for ts, _ in merged for t in ts], tuple(s for _, ss in merged for s in ss))])
        remaining = [(w, wave) for w, wave in enumerate(waves) if any(g >= scored for g in wave)]
        ahead = build(*remaining[0]) if remaining and stale < rule.n_iter_no_change else []
        for i, (_, wave) in enumerate(remaining):
            if stale >= rule.n_iter_no_change:
                break
            collect(ahead)
            # the next wave grows while this one is scored: two waves' samples at most, as without early stopping
            ahead = build(*remaining[i + 1]) if i + 1 < len(remaining) else []
            todo = [g for g in wave if g >= scored]
            for g, score in zip(todo, curve.add([group_trees(g) for g in todo])):
                points.append({"trees": groups[g][-1] + 1, "oob_score": score})
                ctx.env.log(f"forest: {groups[g][-1] + 1} trees, out-of-bag {curve.metric} {score:.5f}")
                best, stale = _best(points, rule.tol)
                scored = g + 1
                if stale >= rule.n_iter_no_change:
                    ctx.env.log(f"forest: early stop at {points[-1]['trees']} trees: no gain of {rule.tol} for "
                                f"{stale} groups; keeping the best-scoring first {points[best]['trees']} trees")
                    break
            checkpoint({"curve": points})
        ctx.env.client.cancel([future for _, future in ahead])  # a wave grown ahead of a stop is not needed
    finally:
        curve.close()
    ctx.env.report("train", 1.0)
    stopped = stale >= rule.n_iter_no_change
    kept = best if stopped else len(points) - 1  # ran to n_estimators: every tree
    ctx.env.record_training(_section(points, kept, rule, curve.metric, stopped))
    return Grown(points[kept]["trees"], points[kept]["oob_score"])


def _section(points: list[dict[str, Any]], kept: int, rule: Patience, metric: str, stopped: bool) -> dict[str, Any]:
    """The manifest's ``training`` section: JSON-plain numbers only."""
    grown = points[-1]["trees"]
    best = best_and_stale([p["oob_score"] for p in points], rule.tol)[0]
    return {"early_stopping": True, "metric": f"out-of-bag {metric}", "tol": rule.tol,
            "n_iter_no_change": rule.n_iter_no_change, "max_trees": rule.n_estimators, "trees_grown": grown,
            "stopped_at": grown if stopped else None, "trees_kept": points[kept]["trees"],
            "best": {"trees": points[best]["trees"], "oob_score": points[best]["oob_score"]},
            "curve": [{"trees": int(p["trees"]), "oob_score": float(p["oob_score"])} for p in points]}
