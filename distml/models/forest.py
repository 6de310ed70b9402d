"""Random forests: trees built in parallel on the workers, merged into one scikit-learn forest.

Each tree learns from a sample drawn from *all* partitions. Bootstrap with
replacement is approximated, as Spark MLlib does, by giving every row a
Poisson(λ) count per tree, used as ``sample_weight`` (scikit-learn's forest
also turns its bootstrap indices into per-row counts passed as weights). The
Poisson form lets every partition draw its rows' counts on its own, with no
global shuffle: a row's count comes from the tree's seed and the row's own
uniform draw ``u``, so it does not depend on how the files are cut or sorted.

The passes: (1) ``sample``: each partition (bounded in flight) draws the counts
of every tree of every group and returns, per group, the rows that any of its
trees picked, with their counts; (2) ``merge``: one task per group concatenates
its pieces on a worker; (3) ``tree``: tasks fit a few trees each from that
sample. Only the fitted trees come back to the client. Groups are sized from
worker memory, and processed in waves when all groups' samples would not fit
in the cluster at once. With ``oob_score``, (4) ``oob``: the trees go to every
worker and each partition scores its rows with the trees whose redrawn count
for that row is zero; only tallies come back. With ``early_stopping`` the
waves are grown one at a time in smaller groups and each is scored out of bag
against per-row tallies kept on the workers, until the score stalls
(``_forest_stop``). The draws live in ``_bootstrap`` (passes 1 and 2), the
out-of-bag pass in ``_oob``, the layout of groups and waves, the tree fits and
the assembly in ``_forest_trees``; this module holds the parameters and the
training loop (its checkpoints included).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from distml.models._bootstrap import SamplePlan, sample_wave
from distml.models._forest_stop import Patience, grow_until_stale
from distml.models._forest_trees import (
    Layout,
    TreeSpec,
    _assemble,
    _check_task,
    _draw_rates,
    _fit_trees_part,
    _layout,
    _tree_params,
)
from distml.models._oob import OOB_SHARE, oob_score
from distml.models.base import Encoding, FamilyParams, Task, TrainContext

if TYPE_CHECKING:
    from distributed import Future
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    from distml.blocks import Partitions

ENCODING: Encoding = "ordinal"  # trees split category codes as well as one-hot columns, at a fraction of the width


_NUMBERS = {"max_features": (1, True), "min_samples_split": (2, True), "min_samples_leaf": (1, False),
            "max_samples": (1, True)}  # least count, and whether the fraction 1.0 is allowed


class Params(FamilyParams):
    task: Literal["classification", "regression"] | None = Field(
        None, description="what the target is; absent: inferred from the target column")
    n_estimators: int = Field(100, ge=1, le=100_000)
    criterion: Literal["gini", "entropy", "log_loss", "squared_error", "absolute_error", "friedman_mse",
                       "poisson"] = Field("gini", description="default gini; squared_error for regression")
    max_depth: int | None = Field(None, ge=1)
    max_features: Union[Literal["sqrt", "log2"], int, float, None] = Field(  # noqa: UP007
        "sqrt", description="default sqrt; 1.0 (all features) for regression, as scikit-learn")
    min_samples_split: Union[int, float] = 2  # noqa: UP007
    min_samples_leaf: Union[int, float] = 1  # noqa: UP007
    max_samples: Union[int, float, None] = Field(  # noqa: UP007
        None, description="rows per tree (int) or fraction of the training rows (float); absent: all")
    max_leaf_nodes: int | None = Field(None, ge=2, description="grow each tree best-first to at most this many leaves")
    min_impurity_decrease: float = Field(0.0, ge=0.0, description="split only if impurity falls at least this much")
    ccp_alpha: float = Field(0.0, ge=0.0, description="minimal cost-complexity pruning of each tree; 0: none")
    bootstrap: bool = True
    oob_score: bool = Field(False, description="score each training row with the trees that did not draw it "
                                                "(accuracy or R²), in one more pass over the data")
    class_weight: Literal["balanced", "balanced_subsample"] | dict[str | int, float] | None = None
    early_stopping: bool = Field(False, description="grow the trees group by group and stop when the out-of-bag "
                                                    "score has not improved by tol for n_iter_no_change groups")
    # accepted without early_stopping, as scikit-learn's estimators accept them (its checks set them)
    n_iter_no_change: int = Field(3, ge=1, description="tree groups without improvement before stopping")
    tol: float = Field(1e-3, ge=0.0, description="least gain of the out-of-bag score (accuracy or R²) that counts")

    @field_validator("early_stopping")
    @classmethod
    def _can_stop(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("bootstrap") is False:
            raise ValueError("early stopping scores the trees out of bag, which needs bootstrap: true "
                             "(bootstrap is false)")
        return value

    @model_validator(mode="after")
    def _check(self) -> Params:
        for name, (least, closed) in _NUMBERS.items():  # an int counts, a float is a fraction
            value = getattr(self, name)
            if isinstance(value, int) and value < least:
                raise ValueError(f"{name} as a count must be at least {least}")
            if isinstance(value, float) and not (0 < value < 1 or (closed and value == 1)):
                raise ValueError(f"{name} as a fraction must be in (0, 1{']' if closed else ')'}")
        if not self.bootstrap and self.max_samples is not None:
            raise ValueError("max_samples cannot be set with bootstrap: false (every tree then sees every row)")
        if not self.bootstrap and self.oob_score:
            raise ValueError("oob_score needs bootstrap: true (without it no row is left out of any tree)")
        if self.task:
            _check_task(self, self.task)
        return self


def task(params: Params) -> Task | None:
    return params.task


# --- runs on workers ---------------------------------------------------------


# --- runs on the client ------------------------------------------------------


def train(parts: Partitions, params: Params, ctx: TrainContext) -> RandomForestClassifier | RandomForestRegressor:
    """Grow ``n_estimators`` trees on the workers from samples of all partitions; one sklearn forest.

    With ``early_stopping`` the waves are grown one at a time and scored out of bag (``_forest_stop``).
    """
    regression = ctx.data.target_kind == "regression"
    tree_params = _tree_params(params, ctx, regression)
    rates, per_class, subsample = _draw_rates(params, ctx, regression)
    layout = _layout(params, ctx, rates)
    n_classes = 0 if regression else len(ctx.data.classes)
    classes = None if regression else np.asarray(ctx.data.classes)
    tree_seeds = ctx.env.child_seeds(params.n_estimators, salt=1)
    draw_seeds = ctx.env.child_seeds(params.n_estimators, salt=2)
    ctx.env.log(f"forest: {params.n_estimators} trees in {len(layout.groups)} group(s) and {len(layout.waves)} "
            f"wave(s), about {layout.group_bytes / 2**20:.0f} MiB of sample per group")
    trees, checkpoint, restored = _checkpointed(layout, ctx)

    def build(w: int, wave: list[int]) -> list[tuple[int, Future]]:
        """Submit one wave's sampling pass and tree fits (a resumed job skips the groups it has)."""
        wave = [g for g in wave if layout.groups[g][0] not in trees]
        groups = [layout.groups[g] for g in wave]
        plan = SamplePlan(tuple(tuple(draw_seeds[t] for t in group) for group in groups), rates, classes)
        merged = sample_wave(parts, plan, ctx, w, wave, n_classes) if wave else []
        fits = []
        for g, group, sample in zip(wave, groups, merged):
            for c in range(0, len(group), layout.per_fit):
                chunk = group[c:c + layout.per_fit]
                spec = TreeSpec(regression, tree_params, tuple(tree_seeds[t] for t in chunk),
                                tuple(range(c, c + len(chunk))), n_classes, per_class, subsample)
                fit = ctx.env.client.submit(_fit_trees_part, sample, spec, key=ctx.env.key("tree", g, c))
                fits.append((chunk[0], fit))
        return fits

    if params.early_stopping:
        grown = grow_until_stale(layout.groups, layout.waves, trees, build,
                                 lambda fits: _collect(fits, trees, params, ctx), checkpoint, restored,
                                 SamplePlan((), rates, classes), draw_seeds, parts,
                                 Patience(params.n_estimators, params.n_iter_no_change, params.tol), ctx)
        forest = _assemble([tree for first in sorted(trees) if first < grown.kept for tree in trees[first]],
                           params, tree_params, ctx)
        forest.n_estimators = grown.kept
        if params.oob_score:
            forest.oob_score_ = grown.score  # the kept forest's: the curve's best point
        return forest
    pending: list[list[tuple[int, Future]]] = []
    for w, wave in enumerate(layout.waves):
        if w >= 2:  # at most two waves' samples are in cluster memory at once
            _collect(pending[w - 2], trees, params, ctx, checkpoint)
        pending.append(build(w, wave))
    for fits in pending[max(0, len(pending) - 2):]:
        _collect(fits, trees, params, ctx, checkpoint)
    forest = _assemble([tree for first in sorted(trees) for tree in trees[first]], params, tree_params, ctx)
    if params.oob_score:
        forest.oob_score_ = oob_score(parts, forest.estimators_, SamplePlan((tuple(draw_seeds),), rates, classes), ctx)
    return forest


def train_many(parts: Partitions, params_list: list[Params], ctx: TrainContext) -> list[Any] | None:
    """A search's forests, candidates with the same draws (seed, n_estimators, bootstrap, max_samples,
    class_weight) sharing every sampling pass and sample (``_forest_many``); None with early stopping."""
    from distml.models._forest_many import train_many as grow_many

    return grow_many(parts, params_list, ctx)


def _checkpointed(layout: Layout, ctx: TrainContext) -> tuple[dict[int, list[Any]], Callable[..., None],
                                                              dict[str, Any]]:
    """The trees of a resumed job's last checkpoint (by first tree index), what to call as trees arrive (it
    checkpoints the trees of every complete group each time one more group is complete, with any extra state
    it is given), and the checkpoint's extra state (early stopping's curve)."""
    restored = ctx.env.restore()
    trees: dict[int, list[Any]] = dict(zip(restored[1]["firsts"], restored[1]["trees"])) if restored else {}
    extra = {k: v for k, v in restored[1].items() if k not in ("firsts", "trees")} if restored else {}
    chunks = [group[::layout.per_fit] for group in layout.groups]
    saved = {g for g, firsts in enumerate(chunks) if all(c in trees for c in firsts)}
    if sorted(trees) != sorted(c for g in saved for c in chunks[g]):  # groups laid out otherwise on this cluster
        ctx.env.log("forest: the checkpoint's tree groups do not match this cluster's; building every tree again")
        trees, saved, extra = {}, set(), {}

    def checkpoint(state: dict[str, Any] | None = None) -> None:
        complete = {g for g, firsts in enumerate(chunks) if g not in saved and all(c in trees for c in firsts)}
        if complete:
            saved.update(complete)
            firsts = sorted(c for g in saved for c in chunks[g])  # whole groups only: a resume skips them
            ctx.env.checkpoint(len(saved), {"firsts": firsts, "trees": [trees[f] for f in firsts], **(state or {})})
    return trees, checkpoint, extra


def _collect(fits: list[tuple[int, Future]], trees: dict[int, list[Any]], params: Params, ctx: TrainContext,
             checkpoint: Callable[[], None] = lambda: None) -> None:
    """Bring fitted trees back as their tasks finish; report trees built / total (up to OOB_SHARE before it)."""
    from distributed import as_completed

    first = {id(f): i for i, f in fits}
    share = 1.0 - OOB_SHARE if params.oob_score else 1.0
    for future in as_completed([f for _, f in fits], loop=ctx.env.client.loop):
        trees[first[id(future)]] = future.result()
        future.release()
        ctx.env.report("train", share * sum(map(len, trees.values())) / params.n_estimators)
        checkpoint()


