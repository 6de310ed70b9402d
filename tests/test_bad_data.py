"""Bad Parquet data gets one `Error:` line naming the file and column, exit 2, and no model saved.

Each case runs `distml submit` end to end (click's runner) against the session's
LocalCluster (`--scheduler`), so the checks on footers (client) and in the
statistics pass (workers) are exercised as a user meets them.
"""
from __future__ import annotations

import json
import re
import struct

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from distml.cli import main
from distml.data import open_dataset
from distml.errors import DataError
from distml.jobfile import parse_job
from distml.runner import run_job

ROWS = 3000


@pytest.fixture
def submit(cluster):
    """`distml submit JOB --quiet` on the session cluster: (exit code, stderr, stdout)."""
    def run(job_path):
        result = CliRunner().invoke(main, ["submit", str(job_path), "--quiet", "--scheduler",
                                           cluster.scheduler_address])
        return result.exit_code, result.stderr, result.stdout

    return run


def frame(rows=ROWS, seed=0, **overrides):
    """Two informative features and a binary target."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=rows), rng.normal(size=rows)
    data = {"a": a, "b": b, "target": (a + 0.5 * b + 0.3 * rng.normal(size=rows) > 0).astype(np.int64)}
    data.update(overrides)
    return pd.DataFrame(data)


def job_doc(tmp_path, path, name="bad-data", **data):
    return {"name": name, "seed": 0, "data": {"path": str(path), "target": "target", **data},
            "model": {"kind": "logistic"}, "output": {"store": str(tmp_path / "models")}}


def job(tmp_path, path, name="bad-data", **data):
    job_path = tmp_path / f"{name}.yaml"
    job_path.write_text(yaml.safe_dump(job_doc(tmp_path, path, name, **data)))
    return job_path


def manifests(tmp_path, name="bad-data"):
    return list((tmp_path / "models").glob(f"{name}/*/manifest.json"))


def assert_refused(tmp_path, code, stderr, message):
    """stderr is exactly ``Error: <message>`` on one line (a pattern must match the whole line), exit 2,
    no traceback, and no model version written."""
    assert code == 2, stderr
    assert "Traceback" not in stderr
    if isinstance(message, re.Pattern):
        assert re.fullmatch(f"Error: {message.pattern}\n", stderr), stderr
    else:
        assert stderr == f"Error: {message}\n"
    assert not manifests(tmp_path), "a failed job wrote a model"
    assert not list((tmp_path / "models").glob("bad-data/*/model.skops"))


# --- 1. pandas' index column ---------------------------------------------------------------------

def test_pandas_index_columns_are_ignored_and_the_model_trains_as_without_them(tmp_path, submit):
    full = frame(2 * ROWS)
    kept = full[full.b > -0.8]  # a filtered frame: pandas stores its index as __index_level_0__
    with_index, plain = tmp_path / "indexed" / "part-0.parquet", tmp_path / "plain" / "part-0.parquet"
    with_index.parent.mkdir()
    plain.parent.mkdir()
    kept.to_parquet(with_index)
    kept.to_parquet(plain, index=False)
    assert "__index_level_0__" in pq.read_schema(with_index).names

    results = {}
    for name, path in (("indexed", with_index), ("plain", plain)):
        code, err, out = submit(job(tmp_path, path.parent, name=name))
        assert code == 0, err
        assert "Traceback" not in err + out
        [manifest] = manifests(tmp_path, name)
        results[name] = json.loads(manifest.read_text())
    indexed, reference = results["indexed"], results["plain"]
    assert indexed["data"]["features"] == ["a", "b"]
    assert "__index_level_0__" not in indexed["data"]["schema"]
    assert indexed["rows"] == reference["rows"]
    assert indexed["metrics"]["accuracy"] > 0.85
    assert abs(indexed["metrics"]["accuracy"] - reference["metrics"]["accuracy"]) < 1e-9


# --- 2. duplicate column names -------------------------------------------------------------------

def test_duplicate_column_names_are_refused_by_name(tmp_path, submit):
    data = frame()
    path = tmp_path / "d" / "part-0.parquet"
    path.parent.mkdir()
    table = pa.Table.from_arrays([pa.array(data.a), pa.array(data.b), pa.array(data.target)],
                                 names=["a", "a", "target"])
    pq.write_table(table, path)
    code, err, _ = submit(job(tmp_path, path.parent))
    assert_refused(tmp_path, code, err, f"{path}: column 'a' appears 2 times; column names must be unique")


# --- 3. values that overflow float64 statistics --------------------------------------------------

def test_a_feature_whose_variance_overflows_is_refused_with_its_largest_value(tmp_path, submit):
    data = frame()
    data["x3"] = data.b * 1e300
    path = tmp_path / "d" / "part-0.parquet"
    path.parent.mkdir()
    data.to_parquet(path, index=False)
    code, err, _ = submit(job(tmp_path, path.parent, holdout=0.0))  # every row trains: the peak is the column's
    peak = np.abs(data.x3).max()
    assert_refused(tmp_path, code, err, f"{path.parent}: column 'x3': values up to {peak:.2g} overflow float64 "
                                        "statistics (the variance is inf); rescale the column")


def test_a_regression_target_whose_variance_overflows_is_refused(tmp_path, submit):
    data = frame()
    data["target"] = (data.a + data.b) * 1e200
    path = tmp_path / "d" / "part-0.parquet"
    path.parent.mkdir()
    data.to_parquet(path, index=False)
    doc = job_doc(tmp_path, path.parent, holdout=0.0)
    doc["model"] = {"kind": "linear"}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    code, err, _ = submit(tmp_path / "job.yaml")
    peak = np.abs(data.target).max()
    assert_refused(tmp_path, code, err, f"{path.parent}: target 'target': values up to {peak:.2g} overflow "
                                        "float64 statistics (the variance is inf); rescale the target")


# --- 4. a corrupted data page under an intact footer ---------------------------------------------

def write_two_row_groups(path, data, **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(data, preserve_index=False), path, row_group_size=ROWS // 2,
                   compression="none", use_dictionary=False, **options)
    return pq.ParquetFile(path).metadata


def test_a_corrupt_data_page_is_found_against_the_footer_statistics(tmp_path, submit):
    data = frame()
    path = tmp_path / "d" / "part-0.parquet"
    meta = write_two_row_groups(path, data)
    chunk = meta.row_group(1).column(0)  # column 'a', second row group
    raw = bytearray(path.read_bytes())
    footer = raw[-(8 + struct.unpack("<i", raw[-8:-4])[0]):]
    # Overwrite ten stored values of that page in place (found by their bytes), leaving the footer as it was.
    first = ROWS // 2 + 100
    at = raw.find(struct.pack("<d", data.a[first]), chunk.data_page_offset)
    assert chunk.data_page_offset < at < chunk.data_page_offset + chunk.total_compressed_size
    raw[at:at + 80] = struct.pack("<d", 1e103) * 10
    assert raw[-len(footer):] == footer
    path.write_bytes(raw)
    low = min(data.a[ROWS // 2:].drop(range(first, first + 10)).min(), 1e103)
    stats = meta.row_group(1).column(0).statistics
    code, err, _ = submit(job(tmp_path, path.parent))
    assert_refused(tmp_path, code, err,
                   f"{path}: row group 1, column 'a' holds values from {low:.6g} to {1e103:.6g}, outside the "
                   f"footer's {stats.min:.6g} to {stats.max:.6g}; a data page is corrupt (expected values "
                   "within the footer's statistics)")


def test_a_page_checksum_mismatch_names_the_file(tmp_path, submit):
    data = frame()
    path = tmp_path / "d" / "part-0.parquet"
    meta = write_two_row_groups(path, data, write_page_checksum=True)
    chunk = meta.row_group(0).column(1)  # column 'b', first row group
    raw = bytearray(path.read_bytes())
    at = raw.find(struct.pack("<d", data.b[7]), chunk.data_page_offset)
    raw[at:at + 8] = struct.pack("<d", data.b[7] / 2)  # a plausible value: only the checksum can tell
    path.write_bytes(raw)
    code, err, _ = submit(job(tmp_path, path.parent))
    assert_refused(tmp_path, code, err, re.compile(
        re.escape(f"{path}: cannot read row groups 0, 1 (OSError: ") + r"[^\n]*CRC checksum verification failed"
        r"[^\n]*" + re.escape("); expected the Parquet file its footer described when the job started")))


def test_a_damaged_page_header_names_the_file(tmp_path, submit):
    data = frame()
    path = tmp_path / "d" / "part-0.parquet"
    meta = write_two_row_groups(path, data)
    chunk = meta.row_group(0).column(0)
    raw = bytearray(path.read_bytes())
    raw[chunk.data_page_offset:chunk.data_page_offset + 16] = b"\xff" * 16
    path.write_bytes(raw)
    code, err, _ = submit(job(tmp_path, path.parent))
    assert_refused(tmp_path, code, err, re.compile(
        re.escape(f"{path}: cannot read row groups 0, 1 (OSError: ") + r"[^\n]+"
        + re.escape("); expected the Parquet file its footer described when the job started")))


# --- 5. files that change under a running job ----------------------------------------------------

def _opened(tmp_path, folder):
    spec = parse_job(job_doc(tmp_path, folder), "test")
    return spec, open_dataset(spec.data, spec.seed)


def test_a_file_deleted_after_its_footer_was_read_is_named(tmp_path, client):
    folder = tmp_path / "d"
    folder.mkdir()
    for i in range(2):
        frame(seed=i).to_parquet(folder / f"part-{i}.parquet", index=False)
    spec, dataset = _opened(tmp_path, folder)
    (folder / "part-1.parquet").unlink()
    with pytest.raises(DataError) as caught:
        run_job(spec, client, dataset=dataset)
    assert caught.value.exit_code == 2
    assert re.fullmatch(re.escape(f"{folder / 'part-1.parquet'}: cannot read row group 0 (FileNotFoundError: ")
                        + r"[^\n]+" + re.escape("); expected the Parquet file its footer described when the "
                                                "job started"), str(caught.value)), str(caught.value)
    assert not manifests(tmp_path)


def test_a_file_rewritten_shorter_after_its_footer_was_read_is_named(tmp_path, client):
    folder = tmp_path / "d"
    folder.mkdir()
    frame().to_parquet(folder / "part-0.parquet", index=False)
    spec, dataset = _opened(tmp_path, folder)
    frame(ROWS - 500).to_parquet(folder / "part-0.parquet", index=False)
    with pytest.raises(DataError) as caught:
        run_job(spec, client, dataset=dataset)
    assert str(caught.value) == (f"{folder / 'part-0.parquet'}: row group 0 holds {ROWS - 500:,} rows, expected "
                                 f"{ROWS:,} as the footer said when the job started; the file changed during "
                                 "the job")
    assert not manifests(tmp_path)


def test_the_footer_check_passes_valid_files_of_every_numeric_kind(tmp_path):
    """Nulls, NaN, unsigned, narrow and float32 columns, several row groups: no false alarm."""
    from distml.integrity import check_footer_bounds

    rng = np.random.default_rng(1)
    n = 4000
    with_nulls = rng.normal(size=n)
    table = pa.table({
        "f64": rng.normal(size=n), "f32": pa.array(rng.normal(size=n), pa.float32()),
        "nulls": pa.array(with_nulls, mask=rng.random(n) < 0.1),
        "nan": np.where(rng.random(n) < 0.1, np.nan, with_nulls),
        "u64": pa.array(rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2), pa.uint64()),
        "i8": pa.array(rng.integers(-128, 128, n), pa.int8()), "empty": pa.array([None] * n, pa.float64()),
    })
    path = tmp_path / "valid.parquet"
    pq.write_table(table, path, row_group_size=1000)
    parquet = pq.ParquetFile(path)
    groups = tuple(range(parquet.metadata.num_row_groups))
    check_footer_bounds(str(path), parquet.metadata, groups, parquet.read_row_groups(list(groups)))
