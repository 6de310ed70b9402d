"""Larger than memory is the normal case: data three times the cluster's memory trains with no worker restarted."""
from __future__ import annotations

import os

import pytest

from distml.jobfile import parse_job
from distml.runner import run_job

WORKERS = 1  # one worker keeps the test short; the benchmark runs two
WORKER_MEMORY = 400 * 2**20
FEATURES = 20


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_data_three_times_cluster_memory_trains_without_worker_restarts(tmp_path, make_data):
    from distributed import Client, LocalCluster

    rows = int(3 * WORKERS * WORKER_MEMORY / (8 * (FEATURES + 1))) + 1
    folder, _ = make_data("regression", rows=rows, features=FEATURES, files=8)
    # linear exact: the fewest passes (statistics, one Gram pass, evaluation), each re-reading Parquet
    spec = parse_job({"name": "big", "data": {"path": str(folder), "target": "target", "holdout": 0.1},
                      "model": {"kind": "linear"},
                      "output": {"store": str(tmp_path / "models")}}, "test")
    with LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", memory_limit=WORKER_MEMORY, silence_logs=40) as cluster, \
            Client(cluster, set_as_default=False) as client:
        pids = client.run(os.getpid)
        result = run_job(spec, client)
        assert client.run(os.getpid) == pids, "a worker was restarted"
    assert result.rows["total"] == rows
    assert not result.persisted, "the data cannot fit; it must be re-read from Parquet"
    assert result.metrics["r2"] > 0.9
