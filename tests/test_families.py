"""Every family in the registry keeps the family contract, checked without a test written for it.

For each ``FAMILIES`` entry: its parameters (defaults valid, unknown keys refused), a real job on the
cluster giving a plain fitted scikit-learn estimator, the same model from the same seed, and task keys
that group under declared phase words on the dashboard.
"""
from __future__ import annotations

import typing

import numpy as np
import pandas as pd
import pytest
from dask.utils import key_split
from pydantic import ValidationError
from sklearn.utils.validation import check_is_fitted

from distml import load_model
from distml.models import FAMILIES
from distml.models.base import Encoding, Family, FamilyParams
from distml.runner import run_job
from distml.jobfile import parse_job
from distml.tasks import PHASES

KINDS = sorted(FAMILIES)
FITTED = ("coef_", "intercept_", "support_vectors_", "dual_coef_")  # compared exactly where the model has them


@pytest.mark.parametrize("kind", KINDS)
def test_family_declares_the_contract(kind):
    family = FAMILIES[kind]
    assert isinstance(family, Family)
    assert issubclass(family.Params, FamilyParams)
    assert family.ENCODING in typing.get_args(Encoding)
    assert family.task(family.Params()) in ("regression", "classification", None)


@pytest.mark.parametrize("kind", KINDS)
def test_default_params_are_valid_and_an_unknown_key_is_refused(kind):
    params = FAMILIES[kind].Params()
    assert params == FAMILIES[kind].Params.model_validate({})
    with pytest.raises(ValidationError, match="no_such_param") as info:
        FAMILIES[kind].Params(no_such_param=1)
    assert [e["loc"] for e in info.value.errors()] == [("no_such_param",)]


def _job(kind, folder, store):
    return parse_job({"name": f"conformance-{kind}", "seed": 7,
                      "data": {"path": str(folder), "target": "target", "holdout": 0.2},
                      "model": {"kind": kind, "params": {}},
                      "output": {"store": str(store)}}, f"{kind}.yaml")


def _stream_index(dask_scheduler):
    return dask_scheduler.plugins["task-stream"].index


def _keys_since(index, dask_scheduler):
    return [record["key"] for record in dask_scheduler.plugins["task-stream"].collect(start_index=index)]


def _run(client, kind, folder, store):
    """Run one job on the cluster; returns the loaded Pipeline and the keys of every task that ran.

    The tasks are those the scheduler recorded after the job began, by position: a window by time
    bisects records that are not sorted by time, and can take in the last tasks of the job before.
    """
    client.get_task_stream(start=0, stop=0)  # makes sure the scheduler records a task stream
    began = client.run_on_scheduler(_stream_index)
    result = run_job(_job(kind, folder, store), client)
    return load_model(result.uri), result.job_id, client.run_on_scheduler(_keys_since, began)


@pytest.fixture
def trained(client, make_data, tmp_path):
    """Train each family twice with the same seed on a small dataset; yields both runs and held-out rows."""

    def train(kind):
        family = FAMILIES[kind]
        task = family.task(family.Params())
        folder, test = make_data("regression" if task == "regression" else "classification", rows=3000,
                                 features=5, files=3)
        first = _run(client, kind, folder, tmp_path / "first")
        second = _run(client, kind, folder, tmp_path / "second")
        return first, second, pd.read_parquet(test).drop(columns=["target"])

    return train


@pytest.mark.parametrize("kind", KINDS)
def test_family_trains_deterministically_to_plain_sklearn_with_declared_phase_keys(trained, kind):
    (pipeline, job_id, keys), (again, _, _), X = trained(kind)

    estimator = pipeline.named_steps["model"]
    check_is_fitted(estimator)
    assert type(estimator).__module__.startswith("sklearn."), type(estimator)

    np.testing.assert_array_equal(pipeline.predict(X), again.predict(X))
    other = again.named_steps["model"]
    compared = [name for name in FITTED if hasattr(estimator, name)]
    for name in compared:
        np.testing.assert_array_equal(getattr(estimator, name), getattr(other, name), err_msg=name)

    ours = [key for key in keys if job_id in str(key)]
    assert ours, "the job's tasks did not show in the scheduler's task stream"
    assert len(ours) == len(keys), sorted({key_split(k) for k in keys if job_id not in str(k)})
    groups = {key_split(key) for key in ours}
    assert groups <= {f"distml-{word}" for word in PHASES}, sorted(groups - {f"distml-{w}" for w in PHASES})
