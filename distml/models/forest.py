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
out-of-bag pass in ``_oob``; this module holds the parameters, the layout of
groups and waves, the tree fits and the assembly.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from distml.errors import DataError
from distml.models._bootstrap import Sample, SamplePlan, sample_wave
from distml.models._forest_stop import Patience, grow_until_stale
from distml.models._oob import OOB_SHARE, oob_score
from distml.models._weights import class_weights
from distml.models.base import Encoding, FamilyParams, Task, TrainContext

if TYPE_CHECKING:
    from distributed import Future
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    from distml.blocks import Partitions

CLASSIFICATION_CRITERIA = ("gini", "entropy", "log_loss")
REGRESSION_CRITERIA = ("squared_error", "absolute_error", "friedman_mse", "poisson")
TASK_BUDGET = 0.1  # share of a worker thread's memory one group's sample may take (merged copy + pieces)
WAVE_BUDGET = 0.15  # share of the cluster's memory the samples of one wave may take
FITS_PER_GROUP = 4  # tree tasks per group: finer progress, and idle threads can help
EARLY_STOP_GROUPS = 20  # with early stopping, groups of at most n_estimators / 20 trees: a score every 5%
ENCODING: Encoding = "ordinal"  # trees split category codes as well as one-hot columns, at a fraction of the width


_NUMBERS = {"max_features": (1, True), "min_samples_split": (2, True), "min_samples_leaf": (1, False),
            "max_samples": (1, True)}  # least count, and whether the fraction 1.0 is allowed


# Tree parameters that mean the same on a worker's drawn rows as in scikit-learn's forest: a tree there is
# fitted on all rows with bootstrap counts as weights, and these use only the weighted impurity and counts.
PASSED_TO_TREES = ("max_leaf_nodes", "min_impurity_decrease", "ccp_alpha")


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


def _check_task(params: Params, task: str) -> None:
    """Criterion and class_weight must suit the task (a ValueError names the field)."""
    if "criterion" in params.model_fields_set:
        allowed = CLASSIFICATION_CRITERIA if task == "classification" else REGRESSION_CRITERIA
        if params.criterion not in allowed:
            raise ValueError(f"criterion {params.criterion!r} is not for {task}; expected one of "
                             f"{', '.join(allowed)}")
    if task == "regression" and params.class_weight is not None:
        raise ValueError("class_weight is for classification; the task is regression")


def task(params: Params) -> Task | None:
    return params.task


# --- runs on workers ---------------------------------------------------------


@dataclass(frozen=True)
class TreeSpec:
    """One tree task's trees: the class to build, its parameters, and each tree's seed."""

    regression: bool
    params: dict[str, Any]
    seeds: tuple[int, ...]
    columns: tuple[int, ...]  # which columns of the group's counts these trees use
    n_classes: int
    class_weights: np.ndarray | None  # per class code, applied as weights (bootstrap: false)
    subsample_balanced: bool


def _tree_weights(sample: Sample, spec: TreeSpec, column: int) -> np.ndarray:
    """Per-row weights of one tree: its Poisson counts, times class weights where asked."""
    codes = sample.y.astype(np.int64)
    if sample.counts is None:
        weights = np.ones(len(sample.y))
        if spec.n_classes:
            weights[-spec.n_classes:] = 0.0  # the class rows only name the classes
    else:
        weights = sample.counts[:, column].astype(np.float64)
    if spec.class_weights is not None:
        weights *= spec.class_weights[codes]
    if spec.subsample_balanced:  # scikit-learn's balanced_subsample: from this tree's own draw
        per_class = np.bincount(codes, weights=weights, minlength=spec.n_classes)
        present = per_class > 0
        scale = np.where(present, weights.sum() / (present.sum() * np.maximum(per_class, 1e-300)), 0.0)
        weights *= scale[codes]
    if not weights.any():  # an empty draw (tiny data): let the tree see its group's rows once
        real = len(weights) - spec.n_classes
        weights[: real if real else len(weights)] = 1.0
    return weights


def _fit_trees_part(sample: Sample, spec: TreeSpec) -> list[Any]:
    """Fit this task's trees on the group's sample; only the trees travel back."""
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    cls = DecisionTreeRegressor if spec.regression else DecisionTreeClassifier
    trees = []
    for seed, column in zip(spec.seeds, spec.columns):
        weights = _tree_weights(sample, spec, column)
        # Fit on this tree's own rows (and the class rows, so every tree knows all K classes): the
        # tree is the same as on the whole sample with zero weights, and faster, since its rows
        # then sit together in memory.
        rows = weights > 0
        if spec.n_classes:
            rows[-spec.n_classes:] = True
        tree = cls(**spec.params, random_state=seed)
        tree.fit(sample.X[rows], sample.y[rows], sample_weight=weights[rows])
        trees.append(tree)
    return trees


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


def _tree_params(params: Params, ctx: TrainContext, regression: bool) -> dict[str, Any]:
    """The trees' parameters, checked against the data; fractions become row counts of the training set."""
    try:
        _check_task(params, "regression" if regression else "classification")
    except ValueError as exc:
        raise DataError(f"model.params.{exc}") from None
    n = ctx.data.train_rows
    if isinstance(params.max_samples, int) and params.max_samples > n:
        raise DataError(f"model.params.max_samples: {params.max_samples} rows per tree is more than the "
                        f"{n} training rows; expected at most {n} or a fraction")
    max_features = params.max_features
    if regression and "max_features" not in params.model_fields_set:
        max_features = 1.0  # scikit-learn's RandomForestRegressor default
    if isinstance(max_features, int) and max_features > ctx.data.n_features:
        raise DataError(f"model.params.max_features: {max_features} is more than the {ctx.data.n_features} "
                        "feature columns")
    criterion = params.criterion
    if regression and "criterion" not in params.model_fields_set:
        criterion = "squared_error"
    split, leaf = params.min_samples_split, params.min_samples_leaf
    # scikit-learn's forest fits every tree on all n rows (bootstrap as weights): fractions are of n
    return {"criterion": criterion, "max_depth": params.max_depth, "max_features": max_features,
            "min_samples_split": split if isinstance(split, int) else max(2, math.ceil(split * n)),
            "min_samples_leaf": leaf if isinstance(leaf, int) else math.ceil(leaf * n),
            **{name: getattr(params, name) for name in PASSED_TO_TREES}}


def _draw_rates(params: Params, ctx: TrainContext,
                regression: bool) -> tuple[np.ndarray | None, np.ndarray | None, bool]:
    """Poisson rate per class (or one rate), class weights for the trees, and balanced_subsample.

    As in scikit-learn, class weights make the bootstrap draw rows in proportion
    to their weight, and ``max_samples`` as a fraction is of the summed weights.
    """
    n = ctx.data.train_rows
    option = params.class_weight
    weights = None
    if option is not None and not (option == "balanced_subsample" and params.bootstrap):
        resolved = class_weights("balanced" if option == "balanced_subsample" else option, ctx.data.classes,
                                 ctx.data.class_counts)
        weights = np.array([resolved.get(c, 1.0) for c in ctx.data.classes.tolist()])
    subsample = option == "balanced_subsample" and params.bootstrap
    if not params.bootstrap:
        return None, weights, False
    counts = np.array([n], dtype=np.float64) if regression else ctx.data.class_counts.astype(np.float64)
    per_row = np.ones(len(counts)) if weights is None else weights
    total = float((counts * per_row).sum())
    m = params.max_samples
    drawn = n if m is None else m if isinstance(m, int) else max(int(m * total), 1)
    return drawn * per_row / total, None, subsample


@dataclass(frozen=True)
class Layout:
    groups: list[list[int]]  # tree indices drawn from one sample
    waves: list[list[int]]  # group indices sampled in one pass over the data
    per_fit: int  # trees per tree task
    group_bytes: float


def _layout(params: Params, ctx: TrainContext, rates: np.ndarray | None) -> Layout:
    """Group trees so one group's sample fits a worker thread's share of memory, and waves fit the cluster."""
    n_trees, slots = params.n_estimators, max(1, ctx.env.max_in_flight)
    memory = ctx.env.worker_memory or 4 * 2**30
    per_thread = memory / max(1, slots // max(1, ctx.env.n_workers))
    counts = np.array([ctx.data.train_rows]) if rates is None or len(rates) == 1 else ctx.data.class_counts

    def sample_bytes(g: int) -> float:
        rows = ctx.data.train_rows if rates is None else float((counts * -np.expm1(-g * rates)).sum())
        return rows * (4 * ctx.data.n_features + 8 + (0 if rates is None else 2 * g)) + 1024

    if rates is None:  # no bootstrap: every tree sees every row, so one shared sample
        groups, size = [list(range(n_trees))], sample_bytes(1)
        per_fit = math.ceil(n_trees / (slots * FITS_PER_GROUP))
    else:
        lo, hi = 1, math.ceil(n_trees / slots)  # the largest group whose sample fits (bytes grow with g)
        if params.early_stopping:  # the out-of-bag score is checked after every group
            hi = min(hi, math.ceil(n_trees / EARLY_STOP_GROUPS))
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if sample_bytes(mid) <= TASK_BUDGET * per_thread else (lo, mid - 1)
        g = lo
        size = sample_bytes(g)
        n_groups = math.ceil(n_trees / g)
        bounds = np.linspace(0, n_trees, n_groups + 1).round().astype(int)
        groups = [list(range(a, b)) for a, b in itertools.pairwise(bounds)]
        per_fit = max(1, math.ceil(len(groups[0]) / FITS_PER_GROUP))
    if size > TASK_BUDGET * per_thread:
        what = "all training rows (bootstrap: false)" if rates is None else "one tree's sample"
        raise DataError(f"model.params.max_samples: {what} takes about {size / 2**20:.0f} MiB, more than a "
                        f"worker thread can hold ({TASK_BUDGET * per_thread / 2**20:.0f} MiB); "
                        "set max_samples lower or give workers more memory")
    per_wave = max(1, int(WAVE_BUDGET * memory * max(1, ctx.env.n_workers) / size))
    if params.early_stopping:  # a wave is grown before its groups are scored: one group per thread
        per_wave = min(per_wave, slots)
    waves = [list(range(a, min(a + per_wave, len(groups)))) for a in range(0, len(groups), per_wave)]
    return Layout(groups, waves, per_fit, size)


def _assemble(trees: list[Any], params: Params, tree_params: dict[str, Any],
              ctx: TrainContext) -> RandomForestClassifier | RandomForestRegressor:
    """An ordinary fitted scikit-learn forest from the gathered trees."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    regression = ctx.data.target_kind == "regression"
    cls, tree_cls = ((RandomForestRegressor, DecisionTreeRegressor) if regression
                     else (RandomForestClassifier, DecisionTreeClassifier))
    settings = {"n_estimators": params.n_estimators, "criterion": tree_params["criterion"],
                "max_depth": params.max_depth, "max_features": tree_params["max_features"],
                "min_samples_split": params.min_samples_split, "min_samples_leaf": params.min_samples_leaf,
                "max_samples": params.max_samples, "bootstrap": params.bootstrap, "oob_score": params.oob_score,
                "random_state": ctx.env.seed,
                **{name: getattr(params, name) for name in PASSED_TO_TREES}}
    if not regression:
        settings["class_weight"] = params.class_weight
    forest = cls(**settings)
    forest.estimator_ = tree_cls()
    forest.estimators_ = trees
    forest.n_features_in_ = ctx.data.n_features
    forest.n_outputs_ = 1
    if not regression:
        forest.classes_ = np.asarray(ctx.data.classes)
        forest.n_classes_ = len(ctx.data.classes)
    return forest
