"""Batch scoring: `distml predict` writes exactly what the saved Pipeline predicts, atomically, at scale."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from distributed import Client, LocalCluster, WorkerPlugin

from distml import load_model
from distml.cli import main
from distml.errors import DataError, JobFailed, SpecError
from distml.predict import Output, predict_dataset
from distml.runner import run_job
from distml.jobfile import parse_job
from distml.synth import make_table

FEATURES = ["x0", "x1", "x2", "x3", "color", "city", "flag"]


@pytest.fixture(scope="module")
def scored_table(tmp_path_factory, cluster):
    """A table with strings, booleans and nulls, and a logistic model trained on it."""
    root = tmp_path_factory.mktemp("predict")
    table = make_table(root / "table", rows=40_000, files=4, null_targets=20)
    spec = parse_job({"name": "scoring", "seed": 0,
                      "data": {"path": str(table), "target": "label", "missing": "impute",
                               "rare_categories": "other"},
                      "model": {"kind": "logistic", "params": {"epochs": 2}},
                      "output": {"store": str(root / "models")}}, "test")
    with Client(cluster, set_as_default=False) as client:
        result = run_job(spec, client)
    return table, result.uri


def _expected(pipeline, path: Path) -> pd.DataFrame:
    raw = pd.read_parquet(path)
    return raw, pipeline.predict(raw[FEATURES]), pipeline.predict_proba(raw[FEATURES])


def test_predictions_equal_the_pipelines_file_by_file_in_order(client, tmp_path, scored_table):
    table, model = scored_table
    out = tmp_path / "scores"
    summary = predict_dataset(model, str(table), Output(str(out), {}, ("x0", "city"), proba=True), client)
    pipeline = load_model(model)
    inputs = sorted(p.name for p in table.glob("*.parquet"))
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", *inputs]
    for name in inputs:
        raw, predicted, proba = _expected(pipeline, table / name)
        scored = pd.read_parquet(out / name)
        classes = list(pipeline.classes_)
        assert list(scored.columns) == ["x0", "city", "prediction", *(f"proba_{c}" for c in classes)]
        np.testing.assert_array_equal(scored["prediction"].to_numpy(), predicted)
        np.testing.assert_array_equal(scored[[f"proba_{c}" for c in classes]].to_numpy(), proba)
        pd.testing.assert_series_equal(scored["x0"], raw["x0"])  # row order kept
        pd.testing.assert_series_equal(scored["city"], raw["city"])
    written = json.loads((out / "_SUCCESS").read_text())
    assert written["rows"] == summary["rows"] == sum(len(pd.read_parquet(table / n)) for n in inputs)
    assert written["model"] == model and [f["path"] for f in written["files"]] == inputs


def test_an_existing_output_is_refused_unless_overwrite(tmp_path, scored_table):
    table, model = scored_table
    out = tmp_path / "scores"
    out.mkdir()
    (out / "old.parquet").write_bytes(b"old")
    refused = CliRunner().invoke(main, ["predict", model, str(table), str(out), "--workers", "1"])
    assert refused.exit_code == 2
    assert refused.stderr == (f"Error: {out}: the output exists; choose another folder or pass --overwrite "
                              "to replace it\n")
    assert [p.name for p in out.iterdir()] == ["old.parquet"]
    replaced = CliRunner().invoke(main, ["predict", model, str(table), str(out), "--workers", "1", "--overwrite",
                                         "--json"])
    assert replaced.exit_code == 0, replaced.output
    assert json.loads(replaced.stdout)["rows"] == 40_000
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", *sorted(p.name for p in table.glob("*.parquet"))]


def test_bad_input_gets_one_line_and_nothing_is_written(client, tmp_path, scored_table):
    table, model = scored_table
    out = tmp_path / "scores"
    missing = tmp_path / "missing"
    missing.mkdir()
    pd.read_parquet(table / "part-00000.parquet").drop(columns=["city"]).to_parquet(missing / "a.parquet")
    with pytest.raises(DataError) as error:
        predict_dataset(model, str(missing), Output(str(out), {}), client)
    assert str(error.value).startswith(f"{missing}/a.parquet: feature column 'city' not found; columns are x0,")
    typed = tmp_path / "typed"
    typed.mkdir()
    frame = pd.read_parquet(table / "part-00000.parquet")
    frame["x1"] = frame["x1"].astype(str)
    frame.to_parquet(typed / "a.parquet")
    with pytest.raises(DataError) as error:
        predict_dataset(model, str(typed), Output(str(out), {}), client)
    written = pq.read_schema(typed / "a.parquet").field("x1").type  # string or large_string, by pandas version
    assert str(error.value) == (f"{typed}/a.parquet: column 'x1' is {written} (categorical), "
                                "expected numeric as in training (double)")
    with pytest.raises(DataError, match=r"passthrough column 'id' not found"):
        predict_dataset(model, str(table), Output(str(out), {}, ("id",)), client)
    nowhere = CliRunner().invoke(main, ["predict", str(tmp_path / "models" / "nothing"), str(table), str(out)])
    assert nowhere.exit_code == 2
    assert nowhere.stderr == f"Error: {tmp_path / 'models' / 'nothing'}: no saved versions of model 'nothing'\n"
    assert not out.exists()


def test_a_model_that_fails_its_checksum_is_not_used(client, tmp_path, scored_table):
    table, model = scored_table
    copy = tmp_path / "models" / "scoring"
    copy.mkdir(parents=True)
    version = copy / Path(model).name
    subprocess.run(["cp", "-r", model, str(version)], check=True)
    (version / "model.skops").write_bytes((version / "model.skops").read_bytes() + b"\0")
    result = CliRunner().invoke(main, ["predict", str(version), str(table), str(tmp_path / "scores")])
    assert result.exit_code == 2
    assert result.stderr == f"Error: {version}/model.skops: sha256 does not match the manifest; " \
                            "the file was changed or corrupted\n"
    assert not (tmp_path / "scores").exists()


def test_a_failed_run_commits_nothing(client, tmp_path, scored_table):
    table, model = scored_table
    data = tmp_path / "data"
    data.mkdir()
    for path in sorted(table.glob("*.parquet")):
        (data / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "scores"

    def lose_the_last_file(done: int, total: int) -> None:  # before its task has been submitted
        (data / "part-00003.parquet").unlink(missing_ok=True)

    with pytest.raises(JobFailed) as failed:
        predict_dataset(model, str(data), Output(str(out), {}), client, progress=lose_the_last_file)
    assert "FileNotFoundError" in str(failed.value) and str(failed.value).endswith(f"nothing was written to {out}")
    assert not out.exists() or list(out.iterdir()) == []


class HoldNthTask(WorkerPlugin):
    """Holds its worker's Nth `distml-predict` task until a release file appears (says when it holds)."""

    name = "hold-nth-predict"

    def __init__(self, nth: int, held: str, release: str) -> None:
        self.nth, self.held, self.release, self.seen = nth, held, release, 0

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "executing" and str(key).startswith("distml-predict-"):
            self.seen += 1
            if self.seen == self.nth:
                Path(self.held).touch()
                deadline = time.monotonic() + 60
                while not os.path.exists(self.release) and time.monotonic() < deadline:
                    time.sleep(0.05)


def test_a_killed_predict_leaves_no_committed_output(tmp_path, scored_table):
    table, model = scored_table
    out = tmp_path / "scores"
    held, release = tmp_path / "held", tmp_path / "release"
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=50) as cluster, \
            Client(cluster, set_as_default=False) as client:
        client.register_plugin(HoldNthTask(2, str(held), str(release)))
        command = [sys.executable, "-m", "distml.cli", "predict", model, str(table), str(out),
                   "--scheduler", cluster.scheduler_address]
        submitter = subprocess.Popen([sys.executable, "-c", "from distml.cli import main; main()", *command[3:]],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not held.exists() and time.monotonic() < deadline and submitter.poll() is None:
            time.sleep(0.05)
        assert held.exists(), submitter.communicate()
        os.kill(submitter.pid, signal.SIGKILL)
        submitter.wait(10)
        release.touch()
    committed = [p.name for p in out.iterdir() if not p.name.startswith("_")] if out.exists() else []
    assert committed == [] and not (out / "_SUCCESS").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_predict_on_data_three_times_a_workers_memory_writes_what_the_pipeline_predicts(tmp_path, make_data,
                                                                                       client):
    worker_memory, features = 400 * 2**20, 20
    rows = int(3 * worker_memory / (8 * (features + 1))) + 1  # as tests/test_memory.py: the same cached data
    big, _ = make_data("classification", rows=rows, features=features, files=8)
    small, _ = make_data("classification", rows=20_000, features=features, files=2)
    spec = parse_job({"name": "small", "data": {"path": str(small), "target": "target"},
                      "model": {"kind": "logistic", "params": {"epochs": 1}},
                      "output": {"store": str(tmp_path / "models")}}, "test")
    model = run_job(spec, client).uri
    out = tmp_path / "scores"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", memory_limit=worker_memory, silence_logs=40) as cluster, \
            Client(cluster, set_as_default=False) as small_client:
        pids = small_client.run(os.getpid)
        summary = predict_dataset(model, str(big), Output(str(out), {}), small_client)
        assert small_client.run(os.getpid) == pids, "a worker was restarted"
    assert summary["rows"] == rows
    pipeline = load_model(model)
    for path in sorted(big.glob("*.parquet")):
        raw = pd.read_parquet(path).drop(columns=["target"])
        np.testing.assert_array_equal(pd.read_parquet(out / path.name)["prediction"].to_numpy(),
                                      pipeline.predict(raw))


def test_proba_needs_a_model_with_probabilities(client, tmp_path, make_data):
    folder, _ = make_data("regression", rows=4_000, features=3, files=2)
    spec = parse_job({"name": "reg", "data": {"path": str(folder), "target": "target"}, "model": {"kind": "linear"},
                      "output": {"store": str(tmp_path / "models")}}, "test")
    model = run_job(spec, client).uri
    with pytest.raises(SpecError, match=r"--proba needs a model with predict_proba; LinearRegression has none"):
        predict_dataset(model, str(folder), Output(str(tmp_path / "scores"), {}, proba=True), client)


def test_predict_reads_and_writes_s3_and_commits_only_when_done(client, s3, scored_table):
    import fsspec

    table, model = scored_table
    opts = s3["storage_options"]
    fs = fsspec.filesystem("s3", **opts)
    fs.put(str(table) + "/", f"{s3['bucket']}/table/", recursive=True)
    out = f"s3://{s3['bucket']}/scores"
    summary = predict_dataset(model, f"s3://{s3['bucket']}/table", Output(out, opts, ("x0",)), client,
                              data_options=opts)
    keys = sorted(o["Key"] for o in s3["boto"].list_objects_v2(Bucket=s3["bucket"], Prefix="scores/")["Contents"])
    inputs = sorted(p.name for p in table.glob("*.parquet"))
    assert keys == ["scores/_SUCCESS", *(f"scores/{name}" for name in inputs)]  # no temporary prefix left
    pipeline = load_model(model)
    for name in inputs:
        with fs.open(f"{s3['bucket']}/scores/{name}", "rb") as f:
            scored = pd.read_parquet(f)
        np.testing.assert_array_equal(scored["prediction"].to_numpy(),
                                      pipeline.predict(pd.read_parquet(table / name)[FEATURES]))
    assert summary["rows"] == 40_000 and opts["secret"] not in json.dumps(summary)
