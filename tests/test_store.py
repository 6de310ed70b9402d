"""The artifact: a plain sklearn Pipeline plus a manifest, in a local folder or an S3 bucket."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import distml.store
from distml import load_model
from distml.cli import main
from distml.errors import StoreError
from distml.jobfile import parse_job
from distml.runner import run_job

SECRET = "testing-secret-value"


def _spec(data_path, store, model=None, data_options=None, store_options=None, holdout=0.2, name="store-test"):
    return parse_job({"name": name, "seed": 3,
                      "data": {"path": data_path, "target": "target", "holdout": holdout,
                               "storage_options": data_options or {}},
                      "model": model or {"kind": "logistic", "params": {"epochs": 2}},
                      "output": {"store": store, "storage_options": store_options or {}, "report": True, "evaluation_report": True}}, "test")


@pytest.fixture(scope="module")
def small(make_data):
    return make_data("classification", rows=20_000, features=6, files=3)


def test_saved_model_is_a_plain_pipeline_that_predicts_raw_rows(client, tmp_path, small):
    folder, test_file = small
    result = run_job(_spec(str(folder), str(tmp_path / "models")), client)
    version_dir = Path(result.uri)
    manifest = json.loads((version_dir / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        payload = (version_dir / name).read_bytes()
        assert hashlib.sha256(payload).hexdigest() == entry["sha256"]
    assert {"model.skops", "report.html"} <= set(manifest["files"])
    assert manifest["rows"] == result.rows and manifest["metrics"] == result.metrics
    assert [f["path"] for f in manifest["data"]["files"]] == ["part-00000.parquet", "part-00001.parquet",
                                                              "part-00002.parquet"]
    assert manifest["versions"]["scikit-learn"]
    pipeline = load_model(result.uri)
    assert type(pipeline).__name__ == "Pipeline"
    raw = pd.read_parquet(test_file)
    predictions = pipeline.predict(raw.drop(columns=["target"]))
    assert (predictions == raw["target"]).mean() > 0.8


def test_load_model_refuses_a_file_whose_sha256_changed(client, tmp_path, small):
    result = run_job(_spec(str(small[0]), str(tmp_path / "models")), client)
    model_file = Path(result.uri) / "model.skops"
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    with pytest.raises(StoreError, match="sha256 does not match the manifest"):
        load_model(result.uri)


def test_newest_version_is_loaded_by_name_and_versions_sort_by_time(client, tmp_path, small):
    store = str(tmp_path / "models")
    first = run_job(_spec(str(small[0]), store), client)
    # one more epoch: a second model that differs from the first, so which one loads can be seen
    second = run_job(_spec(str(small[0]), store, model={"kind": "logistic", "params": {"epochs": 3}}), client)
    versions = distml.store.Store(store, {}).versions("store-test")
    assert versions == [Path(first.uri).name, Path(second.uri).name]  # oldest first, in the order they were made
    manifests = [json.loads((Path(r.uri) / "manifest.json").read_text()) for r in (first, second)]
    assert [m["job_id"] for m in manifests] == [first.job_id, second.job_id]
    assert manifests[0]["created"] < manifests[1]["created"]
    newest, older, by_uri = (load_model(u)[-1] for u in (f"{store}/store-test", first.uri, second.uri))
    assert not np.array_equal(older.coef_, by_uri.coef_)
    np.testing.assert_array_equal(newest.coef_, by_uri.coef_)
    np.testing.assert_array_equal(newest.intercept_, by_uri.intercept_)
    listing = CliRunner().invoke(main, ["models", "list", store])
    assert listing.exit_code == 0 and Path(second.uri).name in listing.stdout


def test_an_existing_version_is_never_overwritten(client, tmp_path, small, monkeypatch):
    store = str(tmp_path / "models")
    first = run_job(_spec(str(small[0]), store), client)
    before = {p.name: p.read_bytes() for p in Path(first.uri).iterdir()}
    assert {"claim.json", "model.skops", "report.html", "evaluation.html", "manifest.json"} == set(before)
    monkeypatch.setattr(distml.store, "new_version", lambda: Path(first.uri).name)
    with pytest.raises(StoreError, match="already exists; refusing to overwrite"):
        run_job(_spec(str(small[0]), store, model={"kind": "logistic", "params": {"epochs": 1}}), client)
    assert {p.name: p.read_bytes() for p in Path(first.uri).iterdir()} == before  # the claim came first
    assert type(load_model(first.uri)).__name__ == "Pipeline"


def test_holdout_zero_trains_on_every_row_and_skips_evaluation(client, tmp_path, small):
    result = run_job(_spec(str(small[0]), str(tmp_path / "models"), holdout=0.0), client)
    assert result.rows == {"total": 20_000, "train": 20_000, "holdout": 0}
    assert result.metrics == {}
    assert "eval" not in result.timings


def test_same_job_and_seed_give_the_same_coefficients(client, tmp_path, small):
    models = [load_model(run_job(_spec(str(small[0]), str(tmp_path / "m")), client).uri) for _ in range(2)]
    np.testing.assert_array_equal(models[0][-1].coef_, models[1][-1].coef_)
    np.testing.assert_array_equal(models[0][-1].intercept_, models[1][-1].intercept_)


def test_s3_data_and_store_round_trip_and_no_secret_leaks(client, tmp_path, small, s3):
    opts = s3["storage_options"]
    fs = fsspec.filesystem("s3", **opts)
    fs.put(str(small[0]) + "/", f"{s3['bucket']}/data/", recursive=True)
    spec = _spec(f"s3://{s3['bucket']}/data", f"s3://{s3['bucket']}/models", data_options=opts, store_options=opts)
    job = tmp_path / "job.yaml"
    job.write_text(spec.model_dump_json(exclude_unset=True))
    cli = CliRunner().invoke(main, ["submit", str(job), "--scheduler", client.scheduler.address])
    assert cli.exit_code == 0, cli.stderr
    assert SECRET not in cli.stdout + cli.stderr
    uri = next(line.split()[-1] for line in cli.stdout.splitlines() if line.strip().startswith("model"))
    keys = [o["Key"] for o in s3["boto"].list_objects_v2(Bucket=s3["bucket"], Prefix="models/")["Contents"]]
    manifest_key = next(k for k in keys if k.endswith("manifest.json"))
    manifest_text = s3["boto"].get_object(Bucket=s3["bucket"], Key=manifest_key)["Body"].read().decode()
    assert SECRET not in manifest_text and "***" in manifest_text
    pipeline = load_model(uri, storage_options=opts)
    raw = pd.read_parquet(small[1])
    assert (pipeline.predict(raw.drop(columns=["target"])) == raw["target"]).mean() > 0.8
    # the read-side commands reach the same store with -o options, no AWS environment needed
    o = ["-o", f"key={opts['key']}", "-o", f"secret={opts['secret']}", "-o",
         f"client_kwargs.endpoint_url={s3['endpoint']}", "-o", "client_kwargs.region_name=us-east-1"]
    listed = CliRunner().invoke(main, ["models", "list", f"s3://{s3['bucket']}/models", *o])
    assert listed.exit_code == 0 and listed.stdout.startswith(f"{spec.name}  {uri.rsplit('/', 1)[-1]}  "), listed.output
    shown = CliRunner().invoke(main, ["models", "show", uri, *o])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["job"]["output"]["storage_options"]["secret"] == "***"
    jobs = CliRunner().invoke(main, ["jobs", "list", "--store", f"s3://{s3['bucket']}/models", "--json", *o])
    assert jobs.exit_code == 0 and [r["state"] for r in json.loads(jobs.stdout)] == ["succeeded"], jobs.output
    assert SECRET not in listed.output + shown.output + jobs.output
    bad = CliRunner().invoke(main, ["models", "list", f"s3://{s3['bucket']}/models", "-o", opts["secret"]])
    assert bad.exit_code == 2 and "expected KEY=VALUE" in bad.stderr and opts["secret"] not in bad.stderr


def test_wrong_store_credentials_fail_before_training_without_echoing_them(tmp_path, small, s3):
    opts = {**s3["storage_options"], "secret": "wrong-secret-do-not-print"}
    spec = _spec(str(small[0]), f"s3://{s3['bucket']}-missing/models", store_options=opts)
    job = tmp_path / "job.yaml"
    job.write_text(spec.model_dump_json(exclude_unset=True))
    cli = CliRunner().invoke(main, ["submit", str(job), "--quiet"])
    assert cli.exit_code == 2
    assert cli.stderr.startswith("Error: s3://") and "cannot be written" in cli.stderr
    assert "wrong-secret-do-not-print" not in cli.stderr


def test_model_names_that_would_escape_the_store_are_refused(tmp_path):
    store = distml.store.Store(str(tmp_path), {})
    for name in ("../up", "a/b", "UPPER", ""):
        with pytest.raises(StoreError, match="is not valid"):
            store.versions(name)


def test_a_missing_bucket_is_refused_not_created(s3):
    opts = s3["storage_options"]
    store = distml.store.Store(f"s3://{s3['bucket']}-typo/models", opts)
    with pytest.raises(StoreError) as refused:
        store.check_writable()
    assert str(refused.value) == (f"s3://{s3['bucket']}-typo/models: the store cannot be written "
                                  f"(bucket '{s3['bucket']}-typo' does not exist; distml does not create buckets)")
    assert f"{s3['bucket']}-typo" not in [b["Name"] for b in s3["boto"].list_buckets()["Buckets"]]


def test_a_save_on_a_full_disk_says_so_and_leaves_nothing(full_disk):
    from sklearn.dummy import DummyClassifier
    from sklearn.pipeline import Pipeline

    from distml.errors import JobFailed

    store = distml.store.Store(str(full_disk / "models"), {})
    pipeline = Pipeline([("model", DummyClassifier().fit([[0], [1]], [0, 1]))])
    with pytest.raises(JobFailed) as failed:
        store.save("full", pipeline, {"job_id": "x"}, {"report.html": b"x" * 2**21})
    message = str(failed.value)
    assert message.startswith(f"{full_disk}/models/full/") and message.endswith(
        ": cannot write the model (the disk is full); nothing was saved")
    assert store.versions("full") == [] and list((full_disk / "models" / "full").iterdir()) == []


@pytest.fixture
def silent_endpoint():
    """A TCP listener on 127.0.0.1 that never answers: a store that stopped responding."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_a_store_that_never_answers_fails_in_bounded_time_with_its_error(silent_endpoint):
    import time

    opts = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": silent_endpoint, "region_name": "us-east-1"},
            "config_kwargs": {"read_timeout": 1}}  # the user's timeout wins; retries stay bounded by distml
    started = time.monotonic()
    with pytest.raises(StoreError) as refused:
        distml.store.Store("s3://bucket/models", opts).check_writable()
    assert time.monotonic() - started < 30
    assert str(refused.value) == ('s3://bucket/models: the store cannot be written (ReadTimeoutError: Read timeout '
                                  f'on endpoint URL: "{silent_endpoint}/bucket")')


def test_output_report_false_saves_the_model_without_a_performance_report(client, tmp_path, small):
    from distml.jobs import JobRecords

    store = str(tmp_path / "models")
    spec = _spec(str(small[0]), store)
    spec = spec.model_copy(update={"output": spec.output.model_copy(update={"report": False})})
    result = run_job(spec, client)
    assert result.report is None
    assert {p.name for p in Path(result.uri).iterdir()} == {"claim.json", "model.skops", "evaluation.html",
                                                            "manifest.json"}
    assert "report.html" not in json.loads((Path(result.uri) / "manifest.json").read_text())["files"]
    record = JobRecords(store).read(result.job_id)
    assert record["state"] == "succeeded" and record["model"] == result.uri and record["report"] is None
    assert load_model(result.uri).predict(pd.read_parquet(small[1]).drop(columns=["target"])).shape == (
        len(pd.read_parquet(small[1])),)
