"""scikit-learn's own conformance suite (``check_estimator``) for every distml estimator, each fit run by
the engine on the session's LocalCluster (in-memory inputs: one partition)."""
from __future__ import annotations

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

import distml

# Small but real settings so the suite's many fits stay quick: fewer epochs and trees than the defaults.
ESTIMATORS = [
    distml.LogisticRegression(epochs=2),
    distml.LinearRegression(),
    distml.LinearSVC(epochs=2),
    distml.SVC(),
    distml.RandomForestClassifier(n_estimators=8),
    distml.RandomForestRegressor(n_estimators=8),
]


def expected_failures(estimator):
    """Checks an estimator cannot pass, each with its reason (none at present)."""
    return {}


@pytest.fixture(scope="module")
def current_client(cluster):
    """The notebook user's ``Client(...)``: the current client the estimators find when ``client`` is None."""
    from distributed import Client

    with Client(cluster) as client:
        yield client


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failures)
def test_check_estimator(estimator, check, current_client):
    check(estimator)
