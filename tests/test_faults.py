"""Faults injected deterministically: a worker dies on the Nth `distml-train` task, and the model is unchanged."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster, WorkerPlugin

from distml import load_model
from distml.jobfile import parse_job
from distml.runner import run_job


class KillOnNthTask(WorkerPlugin):
    """Kills its worker process when it starts its Nth task of a phase — once (a marker file says so)."""

    name = "kill-on-nth-task"

    def __init__(self, phase: str, nth: int, marker: str) -> None:
        self.prefix, self.nth, self.marker, self.seen = f"distml-{phase}-", nth, marker, 0

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "executing" and str(key).startswith(self.prefix):
            self.seen += 1
            if self.seen == self.nth and not os.path.exists(self.marker):
                Path(self.marker).touch()
                os._exit(1)


def _spec(folder, store, kind):
    return parse_job({"name": "faults", "seed": 7, "data": {"path": str(folder), "target": "target"},
                      "model": kind, "output": {"store": str(store)}}, "test")


@pytest.mark.parametrize("model,phase", [
    ({"kind": "logistic", "params": {"epochs": 3}}, "train"),
    ({"kind": "forest", "params": {"n_estimators": 12, "max_depth": 6}}, "tree"),
], ids=["logistic", "forest"])
def test_killing_a_worker_mid_training_gives_the_same_model(tmp_path, make_data, client, model, phase):
    folder, test_file = make_data("classification", rows=40_000, features=6, files=4, classes=3)
    undisturbed = load_model(run_job(_spec(folder, tmp_path / "a", model), client).uri)

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests
    marker = tmp_path / "killed"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", memory_limit="1GiB", silence_logs=50) as cluster, \
            Client(cluster, set_as_default=False) as faulty:
        faulty.register_plugin(KillOnNthTask(phase, nth=2, marker=str(marker)))
        result = run_job(_spec(folder, tmp_path / "b", model), faulty)
    assert marker.exists(), "the fault was never injected"
    disturbed = load_model(result.uri)
    raw = pd.read_parquet(test_file).drop(columns=["target"])
    np.testing.assert_array_equal(disturbed.predict_proba(raw), undisturbed.predict_proba(raw))
