"""Every fault ends in a final record and a true message (#16): a full disk during the save, SIGINT and
SIGTERM to ``distml submit``, a task that fails on the embedded cluster, a diverged model, damaged
records and manifests, a store that refuses the credentials.

Jobs run through the real CLI in a subprocess (its stderr is what a user sees, worker processes
included) or through ``run_job`` on the session's LocalCluster; faults are a 1 MiB tmpfs, a disk
filled at the start of the save phase, a signal sent once the record says ``running`` in phase
``train``, a Parquet page overwritten with garbage, and an S3 server with authentication switched on.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from distml.cli import main
from distml.errors import JobFailed
from distml.jobfile import parse_job
from distml.jobs import JobRecords, JobTracker, new_record
from distml.runner import new_job_id, run_job
from distml.store import Store
from distml.tracking import record_for
from waiting import poll

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
DISTML = [sys.executable, "-m", "distml"]


def submit(job: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*DISTML, "submit", str(job), "--quiet", "--workers", "2"], capture_output=True,
                          text=True, timeout=timeout, env=ENV)


def only_record(store: Path) -> dict:
    records = JobRecords(str(store)).list()
    assert len(records) == 1
    return records[0]


@pytest.fixture(scope="module")
def small(make_data):
    return make_data("classification", rows=20_000, features=6, files=2)


def fill(folder: Path) -> None:
    """Write a file until the disk has not one byte left."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError as exc:
        assert exc.errno == 28  # ENOSPC
    finally:
        os.close(fd)


def _spec(data: Path, store: Path, model: dict, holdout: float = 0.2, name: str = "faults"):
    return parse_job({"name": name, "seed": 0, "data": {"path": str(data), "target": "target", "holdout": holdout},
                      "model": model, "output": {"store": str(store)}}, "test")


# --- 1. a save that fails --------------------------------------------------------------------------

FOREST = {"kind": "forest", "params": {"n_estimators": 20}}  # a model file of several MiB


def test_a_full_disk_during_the_save_fails_the_job_with_its_cause_and_the_record_says_failed(
        small, job_file, full_disk):
    store = full_disk / "models"
    job = job_file(name="full", data={"path": str(small[0]), "target": "target"}, model=FOREST,
                   output={"store": str(store)})
    out = submit(job)
    assert out.returncode == 1, out.stderr
    line = out.stderr.strip()
    assert "\n" not in line and line.startswith(f"Error: {store}/full/") and line.endswith(
        ": cannot write the model (the disk is full); nothing was saved")
    record = only_record(store)
    assert record["state"] == "failed" and record["error"] == line.removeprefix("Error: ")
    assert Store(str(store), {}).versions("full") == [] and list((store / "full").iterdir()) == []


def test_a_failed_save_is_recorded_where_the_records_live_even_when_the_store_is_full(
        client, small, tmp_path, full_disk):
    spec = _spec(small[0], full_disk / "models", FOREST)
    records = JobRecords(str(tmp_path / "records"))  # records elsewhere: a writable place
    job_id = new_job_id()
    tracker = JobTracker(records, record_for(spec, client, job_id, {"kind": "client", "id": client.id}))
    with pytest.raises(JobFailed) as failed:
        run_job(spec, client, job_id=job_id, tracker=tracker)
    assert str(failed.value).endswith(": cannot write the model (the disk is full); nothing was saved")
    record = records.read(job_id)
    assert record["state"] == "failed" and record["error"] == str(failed.value)
    assert Store(spec.output.store, {}).versions("faults") == []


def test_when_the_record_cannot_be_written_either_the_one_line_says_both(client, small, full_disk):
    store = full_disk / "models"
    # linear's exact solver (one pass) writes no checkpoints, whose removal would free the room the record needs
    spec = _spec(small[0], store, {"kind": "linear", "params": {"solver": "exact"}})
    job_id = new_job_id()

    def fill_at_save(name, state, seconds):  # the disk fills up just before the save
        if (name, state) == ("save", "started"):
            fill(full_disk)

    with pytest.raises(JobFailed) as failed:
        run_job(spec, client, job_id=job_id, phase=fill_at_save)
    message = str(failed.value)
    assert message.startswith(f"{store}/faults/") and ": cannot write the model (the disk is full)" in message
    assert message.endswith(f"; the job record {store}/_jobs/{job_id}.json could not be updated either "
                            "(the disk is full): it still says running")
    assert JobRecords(str(store)).read(job_id)["state"] == "running"  # true: the store could not be told
    assert Store(str(store), {}).versions("faults") == []


# --- 2. signals ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("signame, to_group", [("SIGTERM", False), pytest.param("SIGINT", False, marks=pytest.mark.slow),
                                                ("SIGINT", True)],
                         ids=["sigterm", "sigint", "ctrl-c-to-the-process-group"])
def test_a_signal_to_submit_records_cancelled_closes_the_cluster_and_prints_one_line(
        small, job_file, tmp_path, signame, to_group):
    import psutil

    store = tmp_path / "models"
    job = job_file(name="slow", data={"path": str(small[0]), "target": "target"},
                   model={"kind": "logistic", "params": {"epochs": 1000}}, output={"store": str(store)})
    proc = subprocess.Popen([*DISTML, "submit", str(job), "--quiet", "--workers", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    try:
        def training():
            records = JobRecords(str(store)).list()
            return records and records[0]["state"] == "running" and records[0]["phase"] == "train" and records[0]
        record = poll(training, 60)
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert workers  # the embedded cluster's worker processes
        sig = getattr(signal, signame)
        os.killpg(proc.pid, sig) if to_group else proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, err
    assert err == f"Error: job {record['job_id']} was cancelled: interrupted by {signame}\n"
    final = JobRecords(str(store)).read(record["job_id"])
    assert final["state"] == "cancelled" and final["error"] == f"interrupted by {signame}" and final["finished"]
    assert Store(str(store), {}).models() == []
    poll(lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers), 15)


def test_a_signal_that_lands_in_a_finalizer_still_interrupts_the_command():
    """Python drops an exception raised in ``__del__`` (a dask Future being released, say): the
    handler must deliver the signal again once the finalizer is left, or the job runs on and exits 0."""
    import time

    from distml.console import _signals_raise

    class SignalsWhileReleased:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs here, inside __del__

    caught: list[int] = []
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), _signals_raise(caught):
        SignalsWhileReleased()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.01)
    assert caught == [signal.SIGTERM]


# --- 3. a task that fails on the embedded cluster ------------------------------------------------------

def test_a_task_that_fails_on_the_embedded_cluster_prints_only_its_error_line(tmp_path, job_file):
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "corrupt"
    folder.mkdir()
    path = folder / "part-0.parquet"
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=2000), "b": rng.normal(size=2000),
                          "target": rng.integers(0, 2, 2000)})
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, compression="snappy")
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(0)
    raw = bytearray(path.read_bytes())  # the footer stays intact: the job starts, the read task fails
    start = chunk.data_page_offset + 20
    raw[start:start + chunk.total_compressed_size - 40] = b"\xff" * (chunk.total_compressed_size - 40)
    path.write_bytes(bytes(raw))
    store = tmp_path / "models"
    job = job_file(name="corrupt", data={"path": str(folder), "target": "target"}, output={"store": str(store)})
    out = submit(job)
    assert out.returncode == 2, out.stderr  # the worker's reading error names the file: bad data, exit 2
    record = only_record(store)
    assert out.stderr == (f"Error: {path}: cannot read row group 0 (OSError: Couldn't deserialize thrift: "
                          "Variable-length int over 10 bytes.); expected the Parquet file its footer described "
                          "when the job started\n")
    assert record["state"] == "failed" and Store(str(store), {}).models() == []


# --- 4. a diverged model ---------------------------------------------------------------------------------

@pytest.mark.parametrize("holdout", [0, 0.2])
def test_a_model_with_non_finite_parameters_fails_the_job_and_saves_nothing(small, job_file, tmp_path, holdout):
    store = tmp_path / "models"
    job = job_file(name="diverged", data={"path": str(small[0]), "target": "target", "holdout": holdout},
                   model={"kind": "logistic", "params": {"eta0": 1e300, "epochs": 2}}, output={"store": str(store)})
    out = submit(job)
    assert out.returncode == 1, out.stderr
    record = only_record(store)
    expected = (f"Error: job {record['job_id']}: the fitted model's coef_ is not finite (NaN/inf): training "
                "diverged; lower model.params.eta0 or raise model.params.alpha; nothing was saved")
    assert out.stderr == expected + "\n"  # no numpy overflow warnings before it either
    assert "Traceback" not in out.stderr
    assert record["state"] == "failed" and record["error"] == expected.removeprefix("Error: ")
    assert Store(str(store), {}).models() == [] and not (store / "diverged").exists()


# --- 5. the read commands survive damaged records, manifests and refused credentials -----------------

def test_jobs_list_skips_a_damaged_record_with_one_warning_line_each(tmp_path):
    store = tmp_path / "models"
    records = JobRecords(str(store))
    good = new_record({"name": "good"}, "20260101-000000-aaaaaa", str(store), {}, {}, state="succeeded")
    records.write(good)
    jobs = store / "_jobs"
    (jobs / "20260101-000001-bbbbbb.json").write_text("{not json")
    (jobs / "20260101-000002-cccccc.json").write_text("[1, 2]")
    listing = CliRunner().invoke(main, ["jobs", "list", "--store", str(store)])
    assert listing.exit_code == 0, listing.output
    assert listing.stdout.splitlines()[0].startswith("20260101-000000-aaaaaa  good ") and \
        len(listing.stdout.splitlines()) == 1
    assert listing.stderr.splitlines() == [
        f"warning: skipped {jobs}/20260101-000001-bbbbbb.json: not a valid job record (not JSON)",
        f"warning: skipped {jobs}/20260101-000002-cccccc.json: not a valid job record (a JSON list, not an object)"]
    as_json = CliRunner().invoke(main, ["jobs", "list", "--store", str(store), "--json"])
    assert as_json.exit_code == 0 and [r["job_id"] for r in json.loads(as_json.stdout)] == [good["job_id"]]
    status = CliRunner().invoke(main, ["jobs", "status", "20260101-000002-cccccc", "--store", str(store)])
    assert status.exit_code == 2 and status.stderr == (f"Error: {jobs}/20260101-000002-cccccc.json: not a valid "
                                                       "job record (a JSON list, not an object)\n")


def _two_versions(store: Store) -> list[str]:
    from sklearn.dummy import DummyClassifier
    from sklearn.pipeline import Pipeline

    pipeline = Pipeline([("model", DummyClassifier().fit([[0], [1]], [0, 1]))])
    return [store.save("tiny", pipeline, {"job_id": "x", "metrics": {"accuracy": 0.5}}).rsplit("/", 1)[1]
            for _ in range(2)]


def test_models_list_skips_a_version_whose_manifest_is_not_an_object(tmp_path):
    store = Store(str(tmp_path / "models"), {})
    damaged, intact = _two_versions(store)
    manifest = tmp_path / "models" / "tiny" / damaged / "manifest.json"
    manifest.write_text("[]")
    listing = CliRunner().invoke(main, ["models", "list", store.url])
    assert listing.exit_code == 0, listing.output
    assert listing.stdout == f"tiny  {intact}  accuracy 0.5000\n"
    assert listing.stderr == (f"warning: skipped {manifest}: expected a JSON object with a 'files' mapping; "
                              "got list\n")
    show = CliRunner().invoke(main, ["models", "show", f"{store.url}/tiny/{damaged}"])
    assert show.exit_code == 2 and show.stderr.count("\n") == 1 and "got list" in show.stderr


def test_read_commands_with_a_wrong_s3_secret_give_one_line_and_exit_2(s3):
    import boto3

    endpoint, bucket = s3["endpoint"], s3["bucket"]
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"2").raise_for_status()  # 2 calls, then auth on
    try:
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="x", aws_secret_access_key="x")
        iam.create_user(UserName="reader")
        key = iam.create_access_key(UserName="reader")["AccessKey"]["AccessKeyId"]
        secret = "wrong-secret-do-not-print"
        options = ["-o", f"key={key}", "-o", f"secret={secret}", "-o", f"client_kwargs.endpoint_url={endpoint}",
                   "-o", "client_kwargs.region_name=us-east-1"]
        url = f"s3://{bucket}/models"
        for argv in (["models", "list", url], ["models", "show", f"{url}/tiny"], ["jobs", "list", "--store", url]):
            out = CliRunner().invoke(main, [*argv, *options])
            assert out.exit_code == 2, (argv, out.output)
            assert out.stderr.startswith(f"Error: {url}: cannot read the store (PermissionError: ") and \
                out.stderr.count("\n") == 1, (argv, out.stderr)
            assert secret not in out.output and "Traceback" not in out.output
    finally:
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf").raise_for_status()
