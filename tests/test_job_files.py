"""The example job files in jobs/ stay valid, and the SVM example runs as its comment says."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from distml.cli import main
from distml.jobfile import load_job

JOBS = sorted((Path(__file__).resolve().parents[1] / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("path", JOBS, ids=[p.stem for p in JOBS])
def test_every_example_job_file_is_valid(path):
    spec = load_job(path)
    assert spec.name == path.stem and spec.output.store == "./models"


def test_svm_example_runs_on_the_data_its_comment_makes(client, tmp_path, monkeypatch):
    from distml import load_model

    monkeypatch.chdir(tmp_path)  # the example's paths are relative, as a user runs it from the repo
    made = CliRunner().invoke(main, ["make-data", "data/nonlinear", "--kind", "nonlinear", "--rows", "6000",
                                     "--features", "8", "--files", "4"])
    assert made.exit_code == 0, made.output
    job = next(p for p in JOBS if p.stem == "svm")
    out = CliRunner().invoke(main, ["submit", str(job), "--scheduler", client.scheduler.address, "--quiet"])
    assert out.exit_code == 0, out.output
    model = load_model(next((tmp_path / "models" / "svm").iterdir()).as_uri())
    assert type(model[-1]).__name__ == "SVC" and len(model[-1].support_) > 0
    wrong = CliRunner().invoke(main, ["make-data", "data/x", "--kind", "nonlinear", "--sorted"])
    assert wrong.exit_code == 2 and "--sorted and --string-labels apply to" in wrong.output
