"""Issue 16 leftovers: the success path's record write failing, and a Nystroem map too large to fit."""
from __future__ import annotations

import errno
import time

import pytest

from distml import load_model
from distml.errors import DataError, JobFailed, StoreError
from distml.jobfile import parse_job
from distml.jobs import JobRecords
from distml.runner import run_job
from distml.synth import make_nonlinear_dataset


def _spec(folder, store, model, **data):
    return parse_job({"name": "leftover", "data": {"path": str(folder), "target": "target", **data}, "model": model,
                      "output": {"store": str(store)}}, "test")


def test_a_record_that_cannot_be_closed_after_the_save_says_the_model_is_saved(client, make_data, tmp_path,
                                                                               monkeypatch):
    folder, _ = make_data("classification", rows=4_000, features=4, files=2)
    write = JobRecords.write

    def full_disk_at_the_end(self, record):
        if record["state"] == "succeeded":
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError as exc:  # as JobRecords.write reports a full disk
                raise StoreError(f"{self.uri(record['job_id'])}: cannot write the job record") from exc
        return write(self, record)

    monkeypatch.setattr(JobRecords, "write", full_disk_at_the_end)
    with pytest.raises(JobFailed) as caught:
        run_job(_spec(folder, tmp_path / "models", {"kind": "logistic", "params": {"epochs": 1}}), client)
    version = next((tmp_path / "models" / "leftover").iterdir())
    record = next((tmp_path / "models" / "_jobs").glob("*.json"))
    job_id = record.stem
    assert caught.value.exit_code == 1
    assert caught.value.message == (f"job {job_id} saved its model {version}, but its record {record} could not be "
                                    "updated (the disk is full): it still says running")
    assert type(load_model(str(version))).__name__ == "Pipeline"  # the model itself is complete


def test_a_nystroem_map_too_large_for_the_workers_is_refused_before_sampling(client, tmp_path):
    folder, _ = make_nonlinear_dataset(tmp_path / "data", 10_000, 2, 2, 2, 0)
    model = {"kind": "svm", "params": {"approximation": "nystroem", "n_components": 20_000}}
    started = time.monotonic()
    with pytest.raises(DataError) as caught:
        run_job(_spec(folder, tmp_path / "models", model, holdout=0), client)
    assert time.monotonic() - started < 30
    n = 10_000  # training rows: Nystroem takes at most one component per row
    message = caught.value.message
    assert message.startswith(f"model.params.n_components=20000 with approximation: nystroem needs about "
                              f"{4 * 8 * n * n / 2**30:.1f} GiB in each worker (4 {n}x{n} matrices); "), message
    assert message.endswith(" GiB is available there; use n_components <= "
                            f"{int((0.6 * 2**30 / 32) ** 0.5)} or approximation: rbf_sampler"), message
