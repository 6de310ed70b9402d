"""Model quality against scikit-learn trained in memory on the same training rows (≥ 1M rows)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import accuracy_score, r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from distml import load_model
from distml.jobfile import parse_job
from distml.runner import run_job
from reference import split_frames, xy

ROWS = 1_000_000


def _run(client, tmp_path, folder, model, seed=0, holdout=0.2):
    spec = parse_job({"name": "quality", "seed": seed,
                      "data": {"path": str(folder), "target": "target", "holdout": holdout},
                      "model": model, "output": {"store": str(tmp_path / "models")}}, "test")
    result = run_job(spec, client)
    return result, load_model(result.uri)


@pytest.fixture(scope="module")
def regression(make_data):
    return make_data("regression", rows=ROWS, features=10, files=8)


@pytest.fixture(scope="module")
def regression_reference(regression):
    """scikit-learn's LinearRegression on the regression job's training rows (read once for the module's two
    tests): the reference, the holdout rows and targets, and the training rows' count."""
    train, test = split_frames(regression[0], 0, 0.2)
    return LinearRegression().fit(*xy(train)), *xy(test), len(train)


def test_exact_linear_predictions_equal_linear_regression(client, tmp_path, regression, regression_reference):
    folder, _ = regression
    result, model = _run(client, tmp_path, folder, {"kind": "linear", "params": {"solver": "exact"}})
    reference, X_test, y_test, train_rows = regression_reference
    expected = reference.predict(X_test)
    np.testing.assert_allclose(model.predict(X_test), expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())
    assert result.metrics["r2"] == pytest.approx(r2_score(y_test, expected), abs=1e-6)
    assert result.rows == {"total": ROWS, "train": train_rows, "holdout": len(y_test)}


def test_sgd_linear_r2_within_half_a_point(client, tmp_path, regression, regression_reference):
    folder, _ = regression
    result, model = _run(client, tmp_path, folder, {"kind": "linear", "params": {"solver": "sgd", "epochs": 3}})
    reference, X_test, y_test, _ = regression_reference
    assert abs(r2_score(y_test, model.predict(X_test)) - r2_score(y_test, reference.predict(X_test))) < 0.005
    assert type(model[-1]).__name__ == "SGDRegressor"


# Files sorted by label are the hard case for SGD; the shuffled ones run with `pytest -m slow`.
@pytest.mark.parametrize("classes,sort_by_target", [
    pytest.param(2, False, marks=pytest.mark.slow), pytest.param(5, False, marks=pytest.mark.slow), (2, True), (5, True),
], ids=["binary", "5-class", "binary-sorted-files", "5-class-sorted-files"])
def test_logistic_accuracy_within_half_a_point_of_lbfgs(client, tmp_path, make_data, classes, sort_by_target):
    folder, _ = make_data("classification", rows=ROWS, features=10, files=8, classes=classes,
                          sort_by_target=sort_by_target)
    result, model = _run(client, tmp_path, folder, {"kind": "logistic", "params": {"epochs": 5}})
    train, test = split_frames(folder, 0, 0.2)
    reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(*xy(train))
    X_test, y_test = xy(test)
    ours = accuracy_score(y_test, model.predict(X_test))
    theirs = accuracy_score(y_test, reference.predict(X_test))
    assert ours > theirs - 0.005, (ours, theirs)
    assert result.metrics["accuracy"] == pytest.approx(ours, abs=1e-9)
