"""The forest's trees: their layout in groups and waves, the tree tasks, and the assembled scikit-learn forest.

Shared by one forest's training (``forest``) and a search's forests that share their samples
(``_forest_many``); it knows the family's parameters by their names only (``FamilyParams``).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.errors import DataError
from distml.models._weights import class_weights
from distml.models.base import FamilyParams, TrainContext

if TYPE_CHECKING:
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    from distml.models._bootstrap import Sample

CLASSIFICATION_CRITERIA = ("gini", "entropy", "log_loss")


REGRESSION_CRITERIA = ("squared_error", "absolute_error", "friedman_mse", "poisson")


TASK_BUDGET = 0.1  # share of a worker thread's memory one group's sample may take (merged copy + pieces)


WAVE_BUDGET = 0.15  # share of the cluster's memory the samples of one wave may take


FITS_PER_GROUP = 4  # tree tasks per group: finer progress, and idle threads can help


EARLY_STOP_GROUPS = 20  # with early stopping, groups of at most n_estimators / 20 trees: a score every 5%


# Tree parameters that mean the same on a worker's drawn rows as in scikit-learn's forest: a tree there is
# fitted on all rows with bootstrap counts as weights, and these use only the weighted impurity and counts.
PASSED_TO_TREES = ("max_leaf_nodes", "min_impurity_decrease", "ccp_alpha")


def _check_task(params: FamilyParams, task: str) -> None:
    """Criterion and class_weight must suit the task (a ValueError names the field)."""
    if "criterion" in params.model_fields_set:
        allowed = CLASSIFICATION_CRITERIA if task == "classification" else REGRESSION_CRITERIA
        if params.criterion not in allowed:
            raise ValueError(f"criterion {params.criterion!r} is not for {task}; expected one of "
                             f"{', '.join(allowed)}")
    if task == "regression" and params.class_weight is not None:
        raise ValueError("class_weight is for classification; the task is regression")


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


def _tree_params(params: FamilyParams, ctx: TrainContext, regression: bool) -> dict[str, Any]:
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


def _draw_rates(params: FamilyParams, ctx: TrainContext,
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


def _layout(params: FamilyParams, ctx: TrainContext, rates: np.ndarray | None) -> Layout:
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


def _assemble(trees: list[Any], params: FamilyParams, tree_params: dict[str, Any],
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
