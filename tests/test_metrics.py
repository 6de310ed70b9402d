"""Every metric distml reports equals ``sklearn.metrics`` on the same rows: exact ones to 1e-9, the ROC AUC
within the binning error the manifest states, curve points exactly at their thresholds, residual quantiles
within the sketch's relative error. The unit tests run the worker functions here on numpy blocks cut into
partitions; the job tests compare a saved manifest with scikit-learn on the holdout rows distml used."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from reference import split_frames, xy
from sklearn import metrics as skm

from distml.blocks import Block
from distml.evaluate import (
    _add_metrics_part,
    _metrics_part,
    classification_details,
    classification_metrics,
    regression_details,
    regression_metrics,
)
from distml.jobfile import parse_job
from distml.runner import run_job
from distml.stats import SKETCH_ACCURACY


def _reduced(model, X, y, classes):
    """The evaluation's merged sums over uneven partitions of (X, y), one of them empty."""
    bounds = [0, 400, 1500, 1500, 1510, len(y)]
    sums = [_metrics_part(Block(X[a:b], y[a:b], np.zeros(b - a)), model, classes)
            for a, b in itertools.pairwise(bounds)]
    out = sums[0]
    for s in sums[1:]:
        out = _add_metrics_part(out, s)
    return out


@pytest.fixture(scope="module")
def data():
    from sklearn.linear_model import LinearRegression, LogisticRegression

    rng = np.random.default_rng(7)
    X = rng.normal(size=(3001, 4))
    binary_y = np.where(X[:, 0] + 0.8 * rng.normal(size=3001) > 0.3, "yes", "no")
    multi_y = np.digitize(X[:, 1] + 0.5 * rng.normal(size=3001), [-0.6, 0.2, 0.9])
    reg_y = X @ [2.0, -1.0, 0.5, 0.0] + rng.standard_t(3, size=3001)
    fit = slice(0, 1500)  # fitted on one half, scored on all rows
    return X, {"binary": (LogisticRegression().fit(X[fit], binary_y[fit]), binary_y),
               "multiclass": (LogisticRegression().fit(X[fit], multi_y[fit]), multi_y),
               "regression": (LinearRegression().fit(X[fit], reg_y[fit]), reg_y)}


def check_classification(metrics, details, y, pred, proba, classes):
    """The manifest's classification numbers against sklearn.metrics on the same rows."""
    labels = list(classes)
    binary = len(labels) == 2
    assert metrics["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    average = {"average": "binary", "pos_label": labels[1]} if binary else {"average": "macro"}
    for name, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
        assert metrics[name] == pytest.approx(fn(y, pred, labels=labels, zero_division=0, **average), abs=1e-9)
    assert details["average"] == ("binary" if binary else "macro")
    assert details["positive_class"] == (labels[1] if binary else None)
    matrix = details["confusion_matrix"]
    assert matrix["labels"] == labels
    np.testing.assert_array_equal(matrix["matrix"], skm.confusion_matrix(y, pred, labels=labels))
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    got = details["per_class"]
    assert [c["class"] for c in got] == labels
    np.testing.assert_allclose([[c["precision"], c["recall"], c["f1"]] for c in got], np.c_[p, r, f], atol=1e-9)
    assert [c["support"] for c in got] == s.tolist()
    clipped = np.clip(proba, 1e-15, 1.0)  # distml clips at 1e-15
    assert metrics["log_loss"] == pytest.approx(skm.log_loss(y, clipped / clipped.sum(1, keepdims=True),
                                                             labels=labels), rel=1e-9)
    if binary:
        check_curves(metrics, details["curves"], y == labels[1], proba[:, 1])


def check_curves(metrics, curves, positive, score):
    """ROC AUC within the stated error of sklearn's; every curve point equal to sklearn's at its threshold."""
    exact = skm.roc_auc_score(positive, score)
    bound = curves["roc_auc_max_error"]
    assert 0 <= bound < 0.01
    assert abs(metrics["roc_auc"] - exact) <= bound + 1e-12
    fpr, tpr, thresholds = skm.roc_curve(positive, score, drop_intermediate=False)
    for f, t, th in zip(curves["roc"]["fpr"][1:], curves["roc"]["tpr"][1:], curves["roc"]["thresholds"][1:]):
        i = np.flatnonzero(thresholds >= th)[-1]  # sklearn's point for the smallest score >= th
        assert (f, t) == pytest.approx((fpr[i], tpr[i]), abs=1e-12)
    precision, recall, pr_thresholds = skm.precision_recall_curve(positive, score, drop_intermediate=False)
    for p, r, th in zip(curves["pr"]["precision"], curves["pr"]["recall"], curves["pr"]["thresholds"]):
        i = np.flatnonzero(pr_thresholds >= th)[0]  # ascending thresholds
        assert (p, r) == pytest.approx((precision[i], recall[i]), abs=1e-12)
    assert curves["roc"]["fpr"][0] == 0.0 and curves["roc"]["fpr"][-1] == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_classification_metrics_equal_sklearn_on_the_same_rows(data, kind):
    X, fitted = data
    model, y = fitted[kind]
    sums = _reduced(model, X, y, model.classes_)
    check_classification(classification_metrics(sums), classification_details(sums, model.classes_), y,
                         model.predict(X), model.predict_proba(X), model.classes_)


def test_auc_error_bound_is_reached_when_every_positive_outscores_the_negatives_of_its_bin():
    """Positives sit high and negatives low inside the same bins: the binned AUC counts those pairs as half,
    the exact AUC as whole, so the error equals the stated bound; the curve points stay exact."""
    from distml.evaluate import AUC_BINS, ClassificationSums, binned_auc

    rng = np.random.default_rng(3)
    bins = rng.integers(0, AUC_BINS, size=3000)
    positive = rng.random(3000) < 0.4
    score = (bins + np.where(positive, 0.9, 0.1)) / AUC_BINS
    histograms = np.zeros((2, AUC_BINS), dtype=np.int64)
    np.add.at(histograms, (positive.astype(int), bins), 1)
    sums = ClassificationSums(np.array([[1, 0], [0, 1]]), 0.0, histograms)
    curves = classification_details(sums, np.array([0, 1]))["curves"]
    error = abs(binned_auc(histograms) - skm.roc_auc_score(positive, score))
    assert error == pytest.approx(curves["roc_auc_max_error"], rel=1e-9) and error > 0
    check_curves({"roc_auc": binned_auc(histograms)}, curves, positive, score)


def test_regression_metrics_and_residual_quantiles_equal_sklearn_and_numpy(data):
    X, fitted = data
    model, y = fitted["regression"]
    sums = _reduced(model, X, y, None)
    metrics, details = regression_metrics(sums), regression_details(sums)
    pred = model.predict(X)
    assert metrics["r2"] == pytest.approx(skm.r2_score(y, pred), abs=1e-9)
    assert metrics["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, pred)), rel=1e-9)
    assert metrics["mae"] == pytest.approx(skm.mean_absolute_error(y, pred), rel=1e-9)
    residuals = y - pred
    assert details["quantile_relative_error"] == SKETCH_ACCURACY
    for q, value in details["residual_quantiles"].items():
        exact = np.quantile(residuals, float(q), method="lower")
        assert abs(value - exact) <= SKETCH_ACCURACY * abs(exact) + 1e-12, (q, value, exact)
    median = details["abs_residual_quantiles"]["0.5"]  # 3001 rows: the median is one row's, as "lower" ranks
    exact = skm.median_absolute_error(y, pred)
    assert abs(median - exact) <= SKETCH_ACCURACY * exact


# --- whole jobs: the manifest against sklearn on the holdout rows ------------------------------


@pytest.fixture(scope="module")
def binary_job(cluster, make_data, tmp_path_factory):
    from distributed import Client

    folder, _ = make_data(rows=6000, features=6, files=3)
    store = tmp_path_factory.mktemp("metrics-store")
    spec = parse_job({"name": "metrics", "seed": 0, "data": {"path": str(folder), "target": "target"},
                      "model": {"kind": "logistic", "params": {"solver": "softmax"}},
                      "evaluation": {"permutation_importance": {"repeats": 4}},
                      "output": {"store": str(store), "evaluation_report": False}}, "test")
    with Client(cluster, set_as_default=False) as client:
        result = run_job(spec, client)
    return folder, result


def test_a_jobs_manifest_holds_the_metrics_sklearn_computes_on_its_holdout(binary_job):
    from distml import load_model

    folder, result = binary_job
    manifest = json.loads((Path(result.uri) / "manifest.json").read_text())
    pipeline = load_model(result.uri)
    _, holdout = split_frames(folder, 0, 0.2)
    X, y = xy(holdout)
    assert manifest["metrics"]["rows"] == len(y)
    check_classification(manifest["metrics"], manifest["evaluation"], y, pipeline.predict(X),
                         pipeline.predict_proba(X), pipeline.classes_)


def test_permutation_importance_agrees_with_sklearn_on_the_holdout(binary_job):
    from sklearn.inspection import permutation_importance

    from distml import load_model

    folder, result = binary_job
    manifest = json.loads((Path(result.uri) / "manifest.json").read_text())
    ours = manifest["evaluation"]["permutation_importance"]
    assert ours["score"] == "accuracy" and ours["repeats"] == 4
    assert ours["permuted"] == "within each holdout partition"
    _, holdout = split_frames(folder, 0, 0.2)
    X, y = xy(holdout)
    theirs = permutation_importance(load_model(result.uri), X, y, n_repeats=4, random_state=0)
    reference = dict(zip(X.columns, theirs.importances_mean))
    assert set(ours["importances"]) == set(reference)
    spreads = dict(zip(X.columns, theirs.importances_std))
    for column, value in ours["importances"].items():  # two estimates of one expectation: 4 repeats each
        spread = 3 * (value["std"] + spreads[column])
        assert abs(value["mean"] - reference[column]) <= spread + 0.01, (column, value, reference[column])
    top = max(reference, key=reference.get)
    assert next(iter(ours["importances"])) == top  # the same most important column
    assert result.summary["permutation_importance"]["importances"][top] == ours["importances"][top]["mean"]


def test_distml_evaluate_reports_the_same_set_as_the_job(binary_job, cluster, make_data):
    """``distml evaluate MODEL DATA`` on new rows: the same metrics and details, equal to sklearn's on them."""
    import pandas as pd
    from distributed import Client

    from distml import load_model
    from distml.assessment import evaluate_dataset

    _, result = binary_job
    _, test_file = make_data(rows=6000, features=6, files=3)
    with Client(cluster, set_as_default=False) as client:
        summary = evaluate_dataset(result.uri, str(test_file), client)
    manifest = json.loads((Path(result.uri) / "manifest.json").read_text())
    assert set(summary["metrics"]) == set(manifest["metrics"]) - {"rows"}
    assert set(summary["evaluation"]) == set(manifest["evaluation"]) - {"coefficients", "permutation_importance"}
    X, y = xy(pd.read_parquet(test_file))
    pipeline = load_model(result.uri)
    check_classification(summary["metrics"], summary["evaluation"], y, pipeline.predict(X), pipeline.predict_proba(X),
                         pipeline.classes_)
