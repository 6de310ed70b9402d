"""Bad input gets one clear line on stderr, the right exit status, no traceback and no artifact."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from distml.cli import main


def submit(job_path, *args):
    result = CliRunner().invoke(main, ["submit", str(job_path), "--quiet", *args])
    return result.exit_code, result.stderr, result.stdout


def write_parquet(path, frame):
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path)
    return path


def frame(rows=200, seed=0, **overrides):
    rng = np.random.default_rng(seed)
    data = {"a": rng.normal(size=rows), "b": rng.normal(size=rows), "target": rng.integers(0, 2, rows)}
    data.update(overrides)
    return pd.DataFrame(data)


def job(tmp_path, path, model=None, **sections):
    doc = {"name": "bad-input", "data": {"path": str(path), "target": "target"},
           "model": model or {"kind": "logistic"}, "output": {"store": str(tmp_path / "models")}}
    for key, value in sections.items():
        doc[key] = value
    job_path = tmp_path / "job.yaml"
    job_path.write_text(yaml.safe_dump(doc))
    return job_path


def assert_refused(tmp_path, code, stderr, *fragments, exit_code=2):
    assert code == exit_code, stderr
    assert stderr.startswith("Error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in stderr, stderr
    assert not list((tmp_path / "models").glob("*/*/manifest.json")), "a failed job wrote an artifact"


def test_missing_path_names_the_path_and_exits_2(tmp_path):
    code, err, _ = submit(job(tmp_path, tmp_path / "nowhere"))
    assert_refused(tmp_path, code, err, "nowhere", "no such file or folder")


def test_a_file_that_is_not_parquet_is_named(tmp_path):
    write_parquet(tmp_path / "d" / "part-0.parquet", frame())
    (tmp_path / "d" / "notes.parquet").write_text("this is not parquet\n")
    code, err, _ = submit(job(tmp_path, tmp_path / "d"))
    assert_refused(tmp_path, code, err, "notes.parquet", "not a readable Parquet file")


def test_a_truncated_parquet_file_is_named(tmp_path):
    good = write_parquet(tmp_path / "d" / "part-0.parquet", frame())
    (tmp_path / "d" / "part-1.parquet").write_bytes(good.read_bytes()[:-100])
    code, err, _ = submit(job(tmp_path, tmp_path / "d"))
    assert_refused(tmp_path, code, err, "part-1.parquet", "not a readable Parquet file")


def test_schema_drift_names_the_file_and_the_column(tmp_path):
    write_parquet(tmp_path / "d" / "part-0.parquet", frame())
    write_parquet(tmp_path / "d" / "part-1.parquet", frame().drop(columns=["b"]))
    code, err, _ = submit(job(tmp_path, tmp_path / "d"))
    assert_refused(tmp_path, code, err, "part-1.parquet", "'b'")


def test_missing_target_column_is_named(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", frame().rename(columns={"target": "label"}))
    code, err, _ = submit(job(tmp_path, path))
    assert_refused(tmp_path, code, err, "target column 'target' not found")


def test_missing_feature_column_is_named(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", frame())
    doc = job(tmp_path, path)
    spec = yaml.safe_load(doc.read_text())
    spec["data"]["features"] = ["a", "zzz"]
    doc.write_text(yaml.safe_dump(spec))
    code, err, _ = submit(doc)
    assert_refused(tmp_path, code, err, "feature column 'zzz' not found")


def test_empty_dataset_is_refused(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", frame().iloc[:0])
    code, err, _ = submit(job(tmp_path, path))
    assert_refused(tmp_path, code, err, "no rows")


def test_unknown_job_key_names_the_key_and_exits_2(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", frame())
    code, err, _ = submit(job(tmp_path, path, model={"kind": "logistic", "params": {"alhpa": 1}}))
    assert_refused(tmp_path, code, err, "unknown key 'model.params.alhpa'")
    code, err, _ = submit(job(tmp_path, path, extra_section={"x": 1}))
    assert_refused(tmp_path, code, err, "unknown key 'extra_section'")


@pytest.mark.parametrize("params,fragment", [
    ({"alpha": -1}, "model.params.alpha: must be greater than or equal to 0; got -1"),
    ({"epochs": 0}, "model.params.epochs"),
    ({"solver": "newton"}, "model.params.solver"),
])
def test_bad_parameter_values_name_the_path(tmp_path, params, fragment):
    path = write_parquet(tmp_path / "d.parquet", frame())
    code, err, _ = submit(job(tmp_path, path, model={"kind": "logistic", "params": params}))
    assert_refused(tmp_path, code, err, fragment)


def test_unknown_model_kind_lists_the_kinds(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", frame())
    code, err, _ = submit(job(tmp_path, path, model={"kind": "xgboost"}))
    assert_refused(tmp_path, code, err, "model.kind must be one of", "'xgboost'")


def test_invalid_yaml_names_the_line(tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_text("name: x\ndata: [unclosed\n")
    code, err, _ = submit(bad)
    assert_refused(tmp_path, code, err, "job.yaml: invalid YAML at line")


def test_bad_model_name_is_refused_before_anything_runs(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", frame())
    code, err, _ = submit(job(tmp_path, path, name="../escape"))
    assert_refused(tmp_path, code, err, "name:")


def test_unreachable_scheduler_fails_within_15_seconds(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", frame())
    started = time.monotonic()
    code, err, _ = submit(job(tmp_path, path), "--scheduler", "tcp://127.0.0.1:9")
    assert time.monotonic() - started < 15
    assert_refused(tmp_path, code, err, "cannot reach the Dask scheduler at tcp://127.0.0.1:9")


def test_a_store_that_cannot_be_written_is_refused_before_training(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", frame())
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("x")
    code, err, _ = submit(job(tmp_path, path), "--store", str(blocker / "models"))
    assert_refused(tmp_path, code, err, "the store cannot be written")


# --- found by the statistics pass, on a running cluster ----------------------


@pytest.mark.parametrize("overrides,fragments", [
    ({"target": np.ones(200, dtype=np.int64)}, ["single class"]),
    ({"a": np.r_[np.inf, np.zeros(199)]}, ["infinite values", "'a' (1 rows)"]),
])
def test_unusable_values_are_named_with_counts(tmp_path, cluster, overrides, fragments):
    path = write_parquet(tmp_path / "d.parquet", frame(**overrides))
    code, err, _ = submit(job(tmp_path, path), "--scheduler", cluster.scheduler_address)
    assert_refused(tmp_path, code, err, *fragments)


def test_nulls_are_named_with_counts(tmp_path, cluster):
    values = np.r_[np.full(3, np.nan), np.zeros(197)]
    path = write_parquet(tmp_path / "d.parquet", frame(b=values))
    code, err, _ = submit(job(tmp_path, path), "--scheduler", cluster.scheduler_address)
    assert_refused(tmp_path, code, err, "'b'", "3")
