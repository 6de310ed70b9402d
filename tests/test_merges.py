"""Every mergeable summary, merged in any order and grouping, equals the one-shot summary of all the rows.

The statistics pass and the evaluation reduce per-partition values in a tree whose shape depends on the
number of partitions and on scheduling; these properties say the answer does not. No cluster: the
worker-side functions run here on numpy and pandas data.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

# The summaries and their merges (one block, easy to repoint).
from distml.blocks import Block
from distml.evaluate import (
    ClassificationSums,
    RegressionSums,
    _add_metrics_part,
    _metrics_part,
    classification_metrics,
    regression_metrics,
)
from distml.stats import (
    SKETCH_ACCURACY,
    SKETCH_BUCKETS,
    Moments,
    QuantileSketch,
    hll_count,
    hll_of,
    merge_counts,
    PartStats,
    StatsPlan,
    _merge_stats_part,
    _stats_part,
    summarize_categories,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- how partitions are cut and merged -----------------------------------------------------------


def cut(data, n: int) -> list[slice]:
    """Split ``n`` rows into contiguous partitions at drawn points (empty partitions allowed)."""
    points = sorted(data.draw(st.lists(st.integers(0, n), max_size=6), label="cuts"))
    bounds = [0, *points, n]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def merge_any_way(data, items: list, merge):
    """Merge ``items`` in a drawn order and tree shape: shuffle, then join drawn neighbours until one is left."""
    order = data.draw(st.permutations(range(len(items))), label="order")
    items = [items[i] for i in order]
    while len(items) > 1:
        i = data.draw(st.integers(0, len(items) - 2), label="pair")
        items[i:i + 2] = [merge(items[i], items[i + 1])]
    return items[0]


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
with_nans = st.one_of(finite, st.just(np.nan))


# --- moments -------------------------------------------------------------------------------------


def assert_moments_equal(merged: Moments, whole: Moments, scale: float) -> None:
    np.testing.assert_array_equal(merged.n, whole.n)  # counts are exact
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-9, atol=1e-9 * scale)
    np.testing.assert_allclose(merged.m2, whole.m2, rtol=1e-7, atol=1e-7 * scale**2 * max(1.0, whole.n.max()))


@FAST
@given(values=arrays(np.float64, st.tuples(st.integers(0, 60), st.integers(1, 3)), elements=with_nans),
       data=st.data())
def test_moments_merge_to_the_moments_of_all_rows(values, data):
    parts = [Moments.of(values[s]) for s in cut(data, len(values))]
    merged = merge_any_way(data, parts, Moments.merge)
    whole = Moments.of(values)
    scale = float(np.nanmax(np.abs(values), initial=1.0))
    assert_moments_equal(merged, whole, scale)
    present = ~np.isnan(values)
    for j in range(values.shape[1]):  # and they are the plain numpy mean and population variance
        column = values[present[:, j], j]
        if len(column):
            np.testing.assert_allclose(merged.mean[j], column.mean(), rtol=1e-9, atol=1e-9 * scale)
            np.testing.assert_allclose(merged.var[j], column.var(), rtol=1e-7, atol=1e-7 * scale**2)
        else:
            assert merged.n[j] == 0 and merged.var[j] == 0.0


# --- the quantile sketch -------------------------------------------------------------------------

magnitudes = st.one_of(st.floats(1e-6, 1e6), st.just(0.0))
signed = st.builds(lambda m, s: m * s, magnitudes, st.sampled_from([-1.0, 1.0]))


@FAST
@given(values=st.lists(signed, min_size=1, max_size=200).map(np.array), data=st.data(),
       q=st.floats(0.0, 1.0))
def test_quantile_sketch_merges_to_the_sketch_of_all_rows_within_its_stated_error(values, data, q):
    parts = [QuantileSketch.of(values[s]) for s in cut(data, len(values))]
    merged = merge_any_way(data, parts, QuantileSketch.merge)
    whole = QuantileSketch.of(values)
    assert (merged.pos, merged.neg, merged.zeros) == (whole.pos, whole.neg, whole.zeros)  # the same buckets
    exact = np.sort(values)[int(np.floor(q * (len(values) - 1)))]  # the rank ``quantile`` reads
    assert abs(merged.quantile(q) - exact) <= SKETCH_ACCURACY * abs(exact) * (1 + 1e-9), (merged.quantile(q), exact)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_parts=st.integers(2, 8), data=st.data())
def test_a_sketch_over_its_bucket_budget_stays_bounded_and_keeps_the_large_quantiles(seed, n_parts, data):
    rng = np.random.default_rng(seed)
    values = np.exp(rng.uniform(-25, 25, size=6_000))  # about 2,500 log buckets: more than SKETCH_BUCKETS
    whole = QuantileSketch.of(values)
    assert len(whole.pos) > SKETCH_BUCKETS
    bounds = np.linspace(0, len(values), n_parts + 1).astype(int)
    parts = [QuantileSketch.of(values[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    merged = merge_any_way(data, parts, QuantileSketch.merge)
    assert len(merged.pos) <= SKETCH_BUCKETS and sum(merged.pos.values()) == len(values)
    ordered = np.sort(values)
    for q in (0.5, 0.75, 0.9, 0.99, 1.0):  # only the smallest magnitudes are folded together
        exact = ordered[int(np.floor(q * (len(values) - 1)))]
        assert abs(merged.quantile(q) - exact) <= SKETCH_ACCURACY * exact * (1 + 1e-9), (q, merged.quantile(q), exact)


# --- category counts and distinct-count sketches -------------------------------------------------

labels = st.one_of(st.sampled_from([f"c{i}" for i in range(12)]), st.none())


@FAST
@given(values=st.lists(labels, max_size=120), cap=st.integers(1, 15), data=st.data())
def test_category_counts_merge_to_the_counts_of_all_rows(values, cap, data):
    column = pd.Series(values, dtype=object)
    parts = [summarize_categories(column.iloc[s], cap) for s in cut(data, len(column))]
    counts = merge_any_way(data, [c for c, _ in parts], lambda a, b: merge_counts(a, b, cap))
    registers = merge_any_way(data, [r for _, r in parts], np.maximum)
    whole_counts, whole_registers = summarize_categories(column, cap)
    true = {k: int(v) for k, v in column.value_counts(dropna=True).items()}
    np.testing.assert_array_equal(registers, whole_registers)  # HyperLogLog registers merge exactly
    np.testing.assert_array_equal(registers, hll_of(np.array(list(true), dtype=object)))
    assert abs(hll_count(registers) - len(true)) <= max(1, 0.02 * len(true))  # linear counting, small range
    # as many entries as there are categories, up to the cap: "more than max_categories" is never missed
    assert len(counts) == min(cap, len(true)) == len(whole_counts)
    assert all(0 < counts[k] <= true[k] for k in counts)  # kept counts never overcount
    if len(true) <= cap:
        assert counts == true == whole_counts  # nothing was dropped: the exact counts


@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 3_000), seed=st.integers(0, 2**32 - 1), n_parts=st.integers(1, 6), data=st.data())
def test_distinct_count_sketch_merges_exactly_and_counts_within_its_error(n, seed, n_parts, data):
    values = np.random.default_rng(seed).choice(10**9, size=n, replace=False).astype(object)
    bounds = np.linspace(0, n, n_parts + 1).astype(int)
    registers = merge_any_way(data, [hll_of(values[a:b]) for a, b in zip(bounds[:-1], bounds[1:])], np.maximum)
    np.testing.assert_array_equal(registers, hll_of(values))
    assert abs(hll_count(registers) - n) <= max(2, 0.05 * n), (hll_count(registers), n)  # ~3x its 1.6% error


# --- the statistics pass's per-partition values --------------------------------------------------


class FrameReader:
    """Hands ``_stats_part`` a partition of an in-memory frame with its rows' draws, as ``data.Reader`` does."""

    def __init__(self, frame: pd.DataFrame, draws: np.ndarray) -> None:
        self.frame, self.draws = frame, draws
        self.columns = tuple(frame.columns)

    def read(self, piece: slice) -> tuple[pd.DataFrame, np.ndarray]:
        return self.frame.iloc[piece].reset_index(drop=True), self.draws[piece]


@st.composite
def tables(draw, regression: bool):
    n = draw(st.integers(0, 80))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.normal(size=(n, 2)) * 100
    x[rng.random(size=x.shape) < 0.1] = np.nan
    color = pd.Series(rng.choice(["red", "green", "blue", "cyan"], size=n), dtype=object)
    color[rng.random(size=n) < 0.1] = None
    if regression:
        target = pd.Series(rng.normal(size=n))
    else:
        target = pd.Series(rng.integers(0, 3, size=n), dtype="Int64")
    target[rng.random(size=n) < 0.05] = None
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "color": color, "target": target})
    return frame, rng.random(size=n)


def assert_stats_equal(merged: PartStats, whole: PartStats) -> None:
    exact = ("rows", "train_rows", "nulls", "nonfinite", "classes", "holdout_classes", "categories",
             "dropped_target", "dropped_nulls", "memory_bytes", "target_bytes", "first_bad_label")
    for name in exact:
        assert getattr(merged, name) == getattr(whole, name), name
    assert_moments_equal(merged.moments, whole.moments, 1e3)
    if whole.target_moments is None:
        assert merged.target_moments is None
    else:
        assert_moments_equal(merged.target_moments, whole.target_moments, 10.0)
    assert merged.distinct.keys() == whole.distinct.keys()
    for column in whole.distinct:
        np.testing.assert_array_equal(merged.distinct[column], whole.distinct[column])
    assert [(s.pos, s.neg, s.zeros) for s in merged.sketches] == [(s.pos, s.neg, s.zeros) for s in whole.sketches]


@pytest.mark.parametrize("regression", [False, True], ids=["classification", "regression"])
@pytest.mark.parametrize("drop_nulls", [False, True], ids=["impute", "drop"])
def test_statistics_pass_merges_to_the_statistics_of_all_rows(regression, drop_nulls):
    plan = StatsPlan(holdout=0.2, regression=regression, numeric=("a", "b"), categorical=("color",),
                     drop_nulls=drop_nulls, cap=10, sketch=True)

    @FAST
    @given(table=tables(regression), data=st.data())
    def check(table, data):
        reader = FrameReader(*table)
        parts = [_stats_part(s, reader, plan) for s in cut(data, len(table[0]))]
        assert_stats_equal(merge_any_way(data, parts, _merge_stats_part), _stats_part(slice(None), reader, plan))

    check()


# --- the evaluation's metric sums ----------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted():
    """Small fitted sklearn models (binary and 3-class classifiers, a regressor) and rows to score."""
    from sklearn.linear_model import LinearRegression, LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    binary = LogisticRegression().fit(X, (X[:, 0] + rng.normal(size=300) > 0).astype(np.int64))
    multi = LogisticRegression().fit(X, np.digitize(X[:, 1], [-0.5, 0.5]))
    linear = LinearRegression().fit(X, X @ [1.0, -2.0, 0.5])
    return {"binary": binary, "multi": multi, "regression": linear}


@pytest.mark.parametrize("kind", ["binary", "multi", "regression"])
def test_metric_sums_merge_to_the_sums_of_all_holdout_rows(fitted, kind):
    from sklearn.metrics import accuracy_score, log_loss, mean_squared_error

    model = fitted[kind]
    classes = None if kind == "regression" else model.classes_

    @FAST
    @given(n=st.integers(1, 120), seed=st.integers(0, 2**32 - 1), data=st.data())
    def check(n, seed, data):
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(n, 3))
        y = X @ [1.0, -2.0, 0.5] + rng.normal(size=n) if classes is None else rng.choice(classes, size=n)
        blocks = [Block(X[s], y[s], rng.random(size=len(X[s]))) for s in cut(data, n)]
        merged = merge_any_way(data, [_metrics_part(b, model, classes) for b in blocks], _add_metrics_part)
        whole = _metrics_part(Block(X, y, rng.random(size=n)), model, classes)
        if classes is None:
            assert isinstance(merged, RegressionSums) and merged.n == whole.n == n
            np.testing.assert_allclose([merged.sum_y, merged.sum_y2, merged.sse, merged.sae],
                                       [whole.sum_y, whole.sum_y2, whole.sse, whole.sae], rtol=1e-9, atol=1e-9)
            rmse = regression_metrics(merged)["rmse"]
            np.testing.assert_allclose(rmse, np.sqrt(mean_squared_error(y, model.predict(X))), rtol=1e-9)
        else:
            assert isinstance(merged, ClassificationSums)
            np.testing.assert_array_equal(merged.confusion, whole.confusion)
            if whole.histograms is None:
                assert merged.histograms is None
            else:
                np.testing.assert_array_equal(merged.histograms, whole.histograms)
            np.testing.assert_allclose(merged.log_loss, whole.log_loss, rtol=1e-9)
            metrics = classification_metrics(merged)
            assert metrics["accuracy"] == accuracy_score(y, model.predict(X))
            proba = np.clip(model.predict_proba(X), 1e-15, 1.0)  # distml clips at 1e-15, sklearn at float eps
            np.testing.assert_allclose(metrics["log_loss"], log_loss(y, proba, labels=classes), rtol=1e-6)

    check()
