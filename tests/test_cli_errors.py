"""Bad input gets one clear line on stderr, the right exit status, no traceback and no artifact."""
from __future__ import annotations

import re
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


def assert_refused(tmp_path, code, stderr, message, exit_code=2):
    """stderr is exactly ``Error: <message>`` on one line; a pattern must match that whole line.

    Patterns are only for the part another library words (pyarrow's or the OS's reason in parentheses).
    """
    assert code == exit_code, stderr
    if isinstance(message, re.Pattern):
        assert re.fullmatch(f"Error: {message.pattern}\n", stderr), stderr
    else:
        assert stderr == f"Error: {message}\n"
    assert not list((tmp_path / "models").glob("*/*/manifest.json")), "a failed job wrote an artifact"


def not_parquet(path):
    return re.compile(re.escape(f"{path}: not a readable Parquet file (") + r"[^\n]+\)")


def test_missing_path_names_the_path_and_exits_2(tmp_path):
    code, err, _ = submit(job(tmp_path, tmp_path / "nowhere"))
    assert_refused(tmp_path, code, err, f"{tmp_path / 'nowhere'}: no such file or folder")


def test_a_file_that_is_not_parquet_is_named(tmp_path):
    write_parquet(tmp_path / "d" / "part-0.parquet", frame())
    (tmp_path / "d" / "notes.parquet").write_text("this is not parquet\n")
    code, err, _ = submit(job(tmp_path, tmp_path / "d"))
    assert_refused(tmp_path, code, err, not_parquet(tmp_path / "d" / "notes.parquet"))


def test_a_truncated_parquet_file_is_named(tmp_path):
    good = write_parquet(tmp_path / "d" / "part-0.parquet", frame())
    (tmp_path / "d" / "part-1.parquet").write_bytes(good.read_bytes()[:-100])
    code, err, _ = submit(job(tmp_path, tmp_path / "d"))
    assert_refused(tmp_path, code, err, not_parquet(tmp_path / "d" / "part-1.parquet"))


def test_schema_drift_names_the_file_and_the_column(tmp_path):
    write_parquet(tmp_path / "d" / "part-0.parquet", frame())
    write_parquet(tmp_path / "d" / "part-1.parquet", frame().drop(columns=["b"]))
    code, err, _ = submit(job(tmp_path, tmp_path / "d"))
    assert_refused(tmp_path, code, err, f"{tmp_path / 'd' / 'part-1.parquet'}: column 'b' is missing "
                                        f"(present in {tmp_path / 'd' / 'part-0.parquet'})")


def test_missing_target_column_is_named(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", frame().rename(columns={"target": "label"}))
    code, err, _ = submit(job(tmp_path, path))
    assert_refused(tmp_path, code, err, f"{path}: target column 'target' not found; columns are a, b, label")


def test_missing_feature_column_is_named(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", frame())
    doc = job(tmp_path, path)
    spec = yaml.safe_load(doc.read_text())
    spec["data"]["features"] = ["a", "zzz"]
    doc.write_text(yaml.safe_dump(spec))
    code, err, _ = submit(doc)
    assert_refused(tmp_path, code, err, f"{path}: feature column 'zzz' not found; columns are a, b, target")


def test_empty_dataset_is_refused(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", frame().iloc[:0])
    code, err, _ = submit(job(tmp_path, path))
    assert_refused(tmp_path, code, err, f"{path}: the dataset has no rows")


def test_unknown_job_key_names_the_key_and_exits_2(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", frame())
    code, err, _ = submit(job(tmp_path, path, model={"kind": "logistic", "params": {"alhpa": 1}}))
    assert_refused(tmp_path, code, err, f"{tmp_path / 'job.yaml'}: unknown key 'model.params.alhpa'")
    code, err, _ = submit(job(tmp_path, path, extra_section={"x": 1}))
    assert_refused(tmp_path, code, err, f"{tmp_path / 'job.yaml'}: unknown key 'extra_section'")


@pytest.mark.parametrize("params,message", [
    ({"alpha": -1}, "model.params.alpha: must be greater than or equal to 0; got -1"),
    ({"epochs": 0}, "model.params.epochs: must be greater than or equal to 1; got 0"),
    ({"solver": "liblinear"},
     "model.params.solver: must be 'auto', 'newton', 'lbfgs', 'softmax' or 'sgd'; got 'liblinear'"),
])
def test_bad_parameter_values_name_the_path(tmp_path, params, message):
    path = write_parquet(tmp_path / "d.parquet", frame())
    code, err, _ = submit(job(tmp_path, path, model={"kind": "logistic", "params": params}))
    assert_refused(tmp_path, code, err, f"{tmp_path / 'job.yaml'}: {message}")


def test_unknown_model_kind_lists_the_kinds(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", frame())
    code, err, _ = submit(job(tmp_path, path, model={"kind": "xgboost"}))
    assert_refused(tmp_path, code, err, f"{tmp_path / 'job.yaml'}: model.kind must be one of "
                                        "linear, logistic, forest, svm; got 'xgboost'")


def test_invalid_yaml_names_the_line(tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_text("name: x\ndata: [unclosed\n")
    code, err, _ = submit(bad)
    assert_refused(tmp_path, code, err, f"{bad}: invalid YAML at line 3, column 1: "
                                        "expected ',' or ']', but got '<stream end>'")


def test_bad_model_name_is_refused_before_anything_runs(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", frame())
    code, err, _ = submit(job(tmp_path, path, name="../escape"))
    assert_refused(tmp_path, code, err, f"{tmp_path / 'job.yaml'}: name: must match pattern "
                                        "'^[a-z0-9]+(-[a-z0-9]+)*$'; got '../escape'")


def test_unreachable_scheduler_fails_within_15_seconds(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", frame())
    started = time.monotonic()
    code, err, _ = submit(job(tmp_path, path), "--scheduler", "tcp://127.0.0.1:9")
    assert time.monotonic() - started < 15
    assert_refused(tmp_path, code, err, re.compile(re.escape("cannot reach the Dask scheduler at tcp://127.0.0.1:9 "
                                                             "within 10s (") + r"(OSError|TimeoutError)\)"))


def test_a_store_that_cannot_be_written_is_refused_before_training(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", frame())
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("x")
    code, err, _ = submit(job(tmp_path, path), "--store", str(blocker / "models"))
    assert_refused(tmp_path, code, err, re.compile(re.escape(f"{blocker / 'models'}: the store cannot be written (")
                                                   + r"NotADirectoryError: [^\n]+\)"))


# --- found by the statistics pass, on a running cluster ----------------------


@pytest.mark.parametrize("overrides,message", [
    ({"target": np.ones(200, dtype=np.int64)},
     "target 'target' has a single class (1) in the training rows; expected at least 2 classes"),
    ({"a": np.r_[np.inf, np.zeros(199)]}, "infinite values in 'a' (1 rows); expected finite numbers"),
])
def test_unusable_values_are_named_with_counts(tmp_path, cluster, overrides, message):
    path = write_parquet(tmp_path / "d.parquet", frame(**overrides))
    code, err, _ = submit(job(tmp_path, path), "--scheduler", cluster.scheduler_address)
    assert_refused(tmp_path, code, err, f"{path}: {message}")


def test_nulls_are_named_with_counts(tmp_path, cluster):
    values = np.r_[np.full(3, np.nan), np.zeros(197)]
    path = write_parquet(tmp_path / "d.parquet", frame(b=values))
    code, err, _ = submit(job(tmp_path, path), "--scheduler", cluster.scheduler_address)
    assert_refused(tmp_path, code, err, f"{path}: null values in 'b' (3 rows); expected no missing values "
                                        "(or set data.missing: drop or impute)")
