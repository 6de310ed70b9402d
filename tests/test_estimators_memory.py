"""Larger than memory from a Dask collection: an estimator fits a ``dd.read_parquet`` DataFrame three times
a worker's memory limit with no worker restarted (the CLI's version is tests/test_memory.py).

The worker gets 600 MiB, not the CLI test's 400 MiB: a worker computing partitions of a ``dd.read_parquet``
graph imports dask.dataframe (dask-expr) and pyarrow's dataset layer, and then holds about 300 MiB before
any rows, which is over the 80% (320 MiB) at which a 400 MiB worker pauses. The rows are one file's, linked
under many names: three times the memory in rows with nothing more to write, and least squares on
repeated rows is least squares on the file, which scikit-learn then solves in memory.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

import distml

WORKER_MEMORY = 600 * 2**20
FEATURES = 20
FILES = 24
ROW_GROUP = 65_536  # a partition per row group (split_row_groups): about 11 MiB of rows each


@pytest.fixture
def repeated_file(tmp_path):
    """``FILES`` names for one Parquet file; their rows as float64 take three times a worker's memory."""
    from distml.synth import make_rows

    rows = -(-3 * WORKER_MEMORY // (8 * (FEATURES + 1) * FILES))
    X, y = make_rows("regression", rows, FEATURES, 2, 0, stream=0)
    frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(FEATURES)]).assign(target=y)
    folder = tmp_path / "table"
    folder.mkdir()
    frame.to_parquet(folder / "part-00.parquet", index=False, row_group_size=ROW_GROUP)
    for i in range(1, FILES):
        os.link(folder / "part-00.parquet", folder / f"part-{i:02d}.parquet")
    return folder, frame


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_an_estimator_fits_a_read_parquet_frame_three_times_a_workers_memory_without_restarts(repeated_file):
    import dask.dataframe as dd
    from distributed import Client, LocalCluster
    from sklearn.linear_model import LinearRegression

    folder, frame = repeated_file
    names = [f"x{j}" for j in range(FEATURES)]
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", memory_limit=WORKER_MEMORY, silence_logs=40) as cluster, \
            Client(cluster, set_as_default=False) as client:
        pids = client.run(os.getpid)
        ddf = dd.read_parquet(str(folder), split_row_groups=True)
        ddf["x0"] = ddf["x0"] * 2.0  # a computed column, made on the worker as each partition is computed
        model = distml.LinearRegression(client=client).fit(ddf[names], ddf["target"])
        assert client.run(os.getpid) == pids, "a worker was restarted"
    assert model.manifest_["rows"]["train"] == FILES * len(frame)
    assert FILES * len(frame) * 8 * (FEATURES + 1) >= 3 * WORKER_MEMORY
    assert not model.manifest_["data"]["persisted"], "the rows cannot fit; each pass recomputes the partitions"
    frame = frame.assign(x0=frame["x0"] * 2.0)
    reference = LinearRegression().fit(frame[names], frame["target"])
    np.testing.assert_allclose(model.predict(frame[names]), reference.predict(frame[names]), rtol=1e-6, atol=1e-6)
