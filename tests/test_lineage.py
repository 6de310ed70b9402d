"""Lineage: the manifest records each input file's size, time and footer digest; `models show` re-checks them."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from distml.cli import main
from distml.jobfile import parse_job
from distml.runner import run_job
from distml.synth import make_dataset


def _show(uri):
    shown = CliRunner().invoke(main, ["models", "show", uri])
    assert shown.exit_code == 0, shown.output
    signature, report, *lines = shown.stderr.splitlines()
    assert report == f"evaluation report: {uri}/evaluation.html"
    return json.loads(shown.stdout), lines  # the data lines, after the signature and report lines


def test_models_show_tells_whether_the_training_files_changed(client, tmp_path):
    folder, _ = make_dataset(tmp_path / "data", "classification", 3_000, 4, 3, 2, 0, False)
    spec = parse_job({"name": "lineage", "data": {"path": str(folder), "target": "target"},
                      "model": {"kind": "logistic", "params": {"epochs": 1}},
                      "output": {"store": str(tmp_path / "models"), "evaluation_report": True}}, "test")
    uri = run_job(spec, client).uri
    manifest, lines = _show(uri)
    files = sorted(folder.glob("*.parquet"))
    recorded = {f["path"]: f for f in manifest["data"]["files"]}
    assert sorted(recorded) == [p.name for p in files]
    for path in files:
        entry, footer = recorded[path.name], pq.ParquetFile(path).metadata
        sink = pa.BufferOutputStream()
        footer.write_metadata_file(sink)
        assert entry["uri"] == str(path) and entry["bytes"] == path.stat().st_size
        assert entry["footer_sha256"] == hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()
        assert entry["modified"] == datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat()
    assert lines == ["data: unchanged since training (3 files: same size, time and footer)"]

    first, second, third = files
    os.utime(first, (first.stat().st_atime, first.stat().st_mtime + 60))  # touched: same bytes, new time
    table = pq.read_table(second)
    pq.write_table(table.slice(0, table.num_rows - 10), second)  # rewritten with fewer rows
    third.unlink()
    shutil.copy(second, folder / "extra.parquet")
    _, lines = _show(uri)
    assert lines[0] == "data: changed since training (2 changed, 1 missing, 1 new; 3 files trained on)"
    assert lines[1].startswith(f"  {first}: changed (modified ") and lines[1].endswith("; footer unchanged)")
    assert lines[2].startswith(f"  {second}: changed (size {recorded[second.name]['bytes']} -> ")
    assert lines[3] == f"  {third}: missing"
    assert lines[4] == f"  {folder / 'extra.parquet'}: new (not in the training data)"
    assert len(lines) == 5
