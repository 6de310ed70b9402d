"""Several forests from shared samples: candidates that draw the same rows grow tree i on one gathered sample.

Which rows a forest's tree i learns from depends only on the job's seed, the draw settings (``bootstrap``,
``max_samples``, ``class_weight``) and ``n_estimators`` (which sets the groups and waves, ``_forest_trees._layout``),
never on the per-tree settings (``max_depth``, ``min_samples_leaf``, ``max_features``, ``criterion``, ...).
Candidates that agree on the former therefore share every sampling pass and merged sample: each group's
sample gets one tree task per candidate and chunk, with that candidate's tree parameters, exactly the task its
own ``train`` would submit, so each candidate's forest is the one its own ``train`` grows.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.errors import DataError
from distml.models._bootstrap import SamplePlan, sample_wave
from distml.models._forest_trees import TreeSpec, _assemble, _draw_rates, _fit_trees_part, _layout, _tree_params
from distml.models._oob import oob_score

if TYPE_CHECKING:
    from distributed import Future

    from distml.blocks import Partitions
    from distml.models.base import FamilyParams, TrainContext


def train_many(parts: Partitions, params_list: list[FamilyParams], ctx: TrainContext) -> list[Any] | None:
    """Every candidate's forest, candidates with the same draws sharing their samples; None with early stopping
    (its waves are grown and scored one at a time). A candidate whose parameters do not suit the data gets its
    ``DataError`` in place of its forest."""
    if any(p.early_stopping for p in params_list):
        return None
    shares: dict[str, list[int]] = {}
    for i, p in enumerate(params_list):
        draws = repr((p.n_estimators, p.bootstrap, p.max_samples, p.class_weight))  # 1 (a row) is not 1.0 (all)
        shares.setdefault(draws, []).append(i)
    forests: list[Any] = [None] * len(params_list)
    for s, members in enumerate(shares.values()):
        share_ctx = replace(ctx, env=replace(ctx.env, job_id=f"{ctx.env.job_id}-s{s}"))
        for i, fitted in zip(members, _grow_together(parts, [params_list[i] for i in members], share_ctx)):
            forests[i] = fitted
    return forests


def _grow_together(parts: Partitions, params_list: list[FamilyParams], ctx: TrainContext) -> list[Any]:
    """``forest.train`` (without early stopping) for candidates with the same draws, one sample per group."""
    regression = ctx.data.target_kind == "regression"
    first = params_list[0]
    rates, per_class, subsample = _draw_rates(first, ctx, regression)
    trees_of: list[dict[int, list[Any]] | DataError] = []
    tree_params: list[dict[str, Any] | None] = []
    for p in params_list:
        try:
            tree_params.append(_tree_params(p, ctx, regression))
            trees_of.append({})
        except DataError as exc:
            tree_params.append(None)
            trees_of.append(exc)
    try:
        layout = _layout(first, ctx, rates)
    except DataError as exc:  # the same draws: every candidate's own train would refuse them alike
        return [exc] * len(params_list)
    n_classes = 0 if regression else len(ctx.data.classes)
    classes = None if regression else np.asarray(ctx.data.classes)
    tree_seeds = ctx.env.child_seeds(first.n_estimators, salt=1)
    draw_seeds = ctx.env.child_seeds(first.n_estimators, salt=2)
    growing = [c for c, trees in enumerate(trees_of) if isinstance(trees, dict)]

    def build(w: int, wave: list[int]) -> list[tuple[int, int, Future]]:
        groups = [layout.groups[g] for g in wave]
        plan = SamplePlan(tuple(tuple(draw_seeds[t] for t in group) for group in groups), rates, classes)
        fits = []
        for g, group, sample in zip(wave, groups, sample_wave(parts, plan, ctx, w, wave, n_classes)):
            for c in growing:
                for at in range(0, len(group), layout.per_fit):
                    chunk = group[at:at + layout.per_fit]
                    spec = TreeSpec(regression, tree_params[c], tuple(tree_seeds[t] for t in chunk),
                                    tuple(range(at, at + len(chunk))), n_classes, per_class, subsample)
                    fits.append((c, chunk[0], ctx.env.client.submit(_fit_trees_part, sample, spec,
                                                                    key=ctx.env.key("tree", g, c, at))))
        return fits

    def collect(fits: list[tuple[int, int, Future]]) -> None:
        for c, tree, future in fits:
            trees_of[c][tree] = future.result()
            future.release()
        grown = sum(len(trees) for c in growing for trees in trees_of[c].values())
        ctx.env.report("train", grown / (len(growing) * first.n_estimators))

    if growing:
        pending: list[list[tuple[int, int, Future]]] = []
        for w, wave in enumerate(layout.waves):
            if w >= 2:  # at most two waves' samples are in cluster memory at once, as in forest.train
                collect(pending[w - 2])
            pending.append(build(w, wave))
        for fits in pending[max(0, len(pending) - 2):]:
            collect(fits)
    out: list[Any] = []
    for c, (p, trees) in enumerate(zip(params_list, trees_of)):
        if isinstance(trees, DataError):
            out.append(trees)
            continue
        fitted = _assemble([tree for t in sorted(trees) for tree in trees[t]], p, tree_params[c], ctx)
        if p.oob_score:
            oob_ctx = replace(ctx, env=replace(ctx.env, job_id=f"{ctx.env.job_id}-c{c}"))
            fitted.oob_score_ = oob_score(parts, fitted.estimators_, SamplePlan((tuple(draw_seeds),), rates, classes),
                                          oob_ctx)
        out.append(fitted)
    return out
