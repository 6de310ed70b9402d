"""Larger than memory is the normal case: data three times the cluster's memory trains with no worker restarted."""
from __future__ import annotations

import os

import numpy as np
import pytest

from distml.jobfile import parse_job
from distml.runner import run_job

WORKERS = 1  # one worker keeps the test short; the benchmark runs two
WORKER_MEMORY = 400 * 2**20
FEATURES = 20


def _write_float32_dataset(folder, rows: int, files: int) -> None:
    """Regression rows as float32 columns (as much real data is stored): half the bytes to write and read,
    while the training blocks the workers build are float64, so they are what outgrows the memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distml.synth import make_rows

    folder.mkdir()
    for i, n in enumerate(np.diff(np.linspace(0, rows, files + 1).astype(np.int64))):
        X, y = make_rows("regression", int(n), FEATURES, 2, 0, stream=i)
        columns = {f"x{j}": X[:, j].astype(np.float32) for j in range(FEATURES)}
        pq.write_table(pa.table({**columns, "target": y.astype(np.float32)}), folder / f"part-{i:05d}.parquet",
                       row_group_size=256_000)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_data_three_times_cluster_memory_trains_without_worker_restarts(tmp_path):
    from distributed import Client, LocalCluster

    # float64 training blocks (features and target) three times the cluster's memory limit
    rows = int(3 * WORKERS * WORKER_MEMORY / (8 * (FEATURES + 1))) + 1
    folder = tmp_path / "big"
    _write_float32_dataset(folder, rows, files=8)
    # linear exact: the fewest passes (statistics with the Gram matrix, evaluation), each re-reading Parquet
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
