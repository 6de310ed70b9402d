"""Checkpoints and ``distml jobs resume``: a driver killed after a checkpoint resumes to the same model.

The kill is deterministic: the test hook ``DISTML_TEST_EXIT_AFTER_CHECKPOINT=N`` (``distml.checkpoints``)
ends the submitting process right after it wrote checkpoint N, as a crash there would.
"""
from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys

import numpy as np
import processes
import pytest

from distml.checkpoints import EXIT_HOOK, HOOK_EXIT_STATUS, Checkpoints
from distml.jobs import JobRecords

DISTML = [sys.executable, "-m", "distml"]


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """One real scheduler and two single-threaded workers for the whole module: every run has two lanes."""
    with processes.dask_processes(tmp_path_factory.mktemp("cluster")) as address:
        yield address


@pytest.fixture(scope="module")
def softmax_job(scheduler, tmp_path_factory):
    """A 6-epoch softmax job file and its uninterrupted model (two lanes, as on every cluster here)."""
    import yaml

    from distml.synth import make_dataset

    root = tmp_path_factory.mktemp("softmax")
    folder, _ = make_dataset(root / "data", "classification", 4000, 6, 4, 3, 0, False)
    job = root / "resume-softmax.yaml"
    job.write_text(yaml.safe_dump({
        "name": "resume-softmax", "seed": 0, "data": {"path": str(folder), "target": "target"},
        "model": {"kind": "logistic", "params": {"solver": "softmax", "epochs": 6}},
        "output": {"store": str(root / "models")}}))
    return job, reference_model(job, scheduler)


def distml(*args, env=None, timeout=240):  # generous: a loaded machine starts Python slowly
    return subprocess.run([*DISTML, *map(str, args)], check=False, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def in_process(*args):
    """A command that ends before any cluster work, run in this process (no interpreter start-up)."""
    from click.testing import CliRunner

    from distml.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def reference_model(job, scheduler):
    """The uninterrupted run, in this process, on the same cluster."""
    from distributed import Client

    from distml import load_model
    from distml.jobfile import load_job
    from distml.runner import run_job

    spec = load_job(job)
    with Client(scheduler, set_as_default=False) as client:
        return load_model(run_job(spec, client).uri)


def killed_after(job, store, scheduler, step):
    """Submit with the kill hook at checkpoint ``step``; returns the job id of the record it left running."""
    killed = distml("submit", job, "--scheduler", scheduler, "--store", store, "--quiet", env={EXIT_HOOK: str(step)})
    assert killed.returncode == HOOK_EXIT_STATUS, killed.stderr
    (record,) = [r for r in JobRecords(str(store)).list() if r["state"] == "running"]
    job_id = record["job_id"]
    assert (store / "_jobs" / job_id / f"checkpoint-{step}.json").exists()
    assert (store / "_jobs" / job_id / f"checkpoint-{step}.skops").exists()
    assert not (store / "_jobs" / job_id / f"checkpoint-{step - 1}.json").exists()  # only the newest is kept
    return job_id


def killed_then_resumed(job, store, scheduler, step):
    """Submit with the kill hook at checkpoint ``step``, then resume; returns (job id, record, resume output)."""
    job_id = killed_after(job, store, scheduler, step)
    records = JobRecords(str(store))
    resumed = distml("jobs", "resume", job_id, "--store", store, "--scheduler", scheduler)
    assert resumed.returncode == 0, resumed.stderr
    return job_id, records.read(job_id), resumed


@pytest.mark.timeout(420)  # two CLI runs of a whole job
def test_a_softmax_job_killed_after_epoch_2_of_6_resumes_to_the_identical_model(scheduler, softmax_job, tmp_path):
    from distml import load_model

    job, expected = softmax_job
    store = tmp_path / "models"
    job_id, record, resumed = killed_then_resumed(job, store, scheduler, step=2)

    assert f"job {job_id} succeeded (resumed from checkpoint 2)" in resumed.stdout
    assert f"job {job_id}: resumed from checkpoint 2: redoing the read and statistics passes and" in resumed.stderr
    got = load_model(record["model"])
    np.testing.assert_array_equal(got[-1].coef_, expected[-1].coef_)
    np.testing.assert_array_equal(got[-1].intercept_, expected[-1].intercept_)
    assert record["state"] == "succeeded" and record["error"] is None
    assert record["resumed"]["checkpoint"] == 2 and record["resumed"]["by"] == "cli"
    assert record["resumed"]["train_progress_at_checkpoint"] == pytest.approx(2 / 6)
    assert any(m.startswith("resumed from checkpoint 2:") for _, m in record["events"])
    messages = [m for _, m in record["events"]]
    after = messages[next(i for i, m in enumerate(messages) if m.startswith("resumed from checkpoint")):]
    assert [m.split(":")[0] for m in after if m.startswith("epoch ")] == [f"epoch {e}" for e in (2, 3, 4, 5)]

    again = in_process("jobs", "resume", job_id, "--store", store)
    assert again.exit_code == 2
    assert again.output.strip() == f"Error: job {job_id} already succeeded ({record['model']}); there is nothing to resume"


def newton_passes(messages):
    """The passes over the data the Newton solver reports at its end, and the steps it logged."""
    (done,) = [m for m in messages if m.startswith("newton: converged after ")]
    return int(done.split(", ")[1].split()[0]), [m.split(":")[0] for m in messages if m.startswith("newton step ")]


@pytest.mark.slow  # three runs of a job; test_newton_killed_in_step_3_… covers the resume in process by default
@pytest.mark.timeout(420)
def test_a_newton_logistic_job_killed_after_step_2_resumes_to_identical_coefficients(scheduler, make_data,
                                                                                     job_file, tmp_path):
    """The default logistic solver through the CLI: the resumed job continues after step 2, redoing no pass."""
    from distml import load_model

    folder, _ = make_data(rows=3000, features=6, files=3, classes=3)
    store = tmp_path / "models"
    job = job_file(name="resume-newton", data={"path": str(folder), "target": "target"},
                   model={"kind": "logistic", "params": {"solver": "newton", "tol": 1e-10}})
    expected = reference_model(job, scheduler)[-1]
    uninterrupted = int(expected.n_iter_[0])
    assert uninterrupted >= 4  # a step 3 and more to redo after the kill
    job_id, record, resumed = killed_then_resumed(job, store, scheduler, step=2)

    assert f"job {job_id} succeeded (resumed from checkpoint 2)" in resumed.stdout
    got = load_model(record["model"])[-1]
    np.testing.assert_array_equal(got.coef_, expected.coef_)
    np.testing.assert_array_equal(got.intercept_, expected.intercept_)
    assert got.n_iter_[0] == uninterrupted
    assert record["state"] == "succeeded" and record["resumed"]["checkpoint"] == 2
    assert 0 < record["resumed"]["train_progress_at_checkpoint"] < 1  # the gradient's way down to tol
    messages = [m for _, m in record["events"]]
    at = next(i for i, m in enumerate(messages) if m.startswith("resumed from checkpoint 2:"))
    after = messages[at:]
    (continuing,) = [m for m in after if m.startswith("newton: continuing after step 2 from its checkpoint (")]
    passes_before = int(continuing.split("(")[1].split()[0])
    total, steps = newton_passes(after)
    assert steps == [f"newton step {s}" for s in range(3, uninterrupted + 1)]
    # The resumed job counts the killed run's passes up to checkpoint 2 as made and ends with the
    # uninterrupted run's total (the in-process test counts the passes each run makes from the task stream).
    (reference,) = [r for r in JobRecords(str(store)).list() if r["job_id"] != job_id]
    assert newton_passes([m for _, m in reference["events"]])[0] == total
    assert 3 <= passes_before < total


@pytest.mark.timeout(420)
def test_a_forest_killed_after_its_first_tree_group_resumes_to_identical_predictions(scheduler, make_data, job_file,
                                                                                     tmp_path):
    import pandas as pd

    from distml import load_model

    folder, test = make_data(rows=3000, features=5, files=3)
    store = tmp_path / "models"
    job = job_file(name="resume-forest", data={"path": str(folder), "target": "target"},
                   model={"kind": "forest", "params": {"n_estimators": 8, "max_depth": 6}})
    expected = reference_model(job, scheduler)
    _, record, _ = killed_then_resumed(job, store, scheduler, step=1)

    got = load_model(record["model"])
    frame = pd.read_parquet(test)
    np.testing.assert_array_equal(got.predict_proba(frame), expected.predict_proba(frame))
    assert len(got[-1].estimators_) == 8
    assert record["state"] == "succeeded" and record["resumed"]["checkpoint"] == 1


@pytest.mark.timeout(420)
def test_a_cascade_svm_reading_s3_with_a_secret_killed_after_its_first_layer_resumes_with_its_job_file(
        scheduler, s3, make_data, job_file, tmp_path):
    """The record's job file has the data's key and secret redacted: resuming needs the job file again."""
    from distml import load_model

    folder, _ = make_data(rows=2000, features=4, files=3)
    for path in sorted(folder.iterdir()):
        s3["boto"].upload_file(str(path), s3["bucket"], f"data/{path.name}")
    store = tmp_path / "models"
    job = job_file(name="resume-cascade", data={"path": f"s3://{s3['bucket']}/data/", "target": "target",
                                                "storage_options": s3["storage_options"], "holdout": 0},
                   model={"kind": "svm", "params": {"chunk_rows": 300, "feedback_tol": 0.0}},
                   output={"store": str(store), "report": False, "evaluation_report": False})
    expected = reference_model(job, scheduler)[-1]
    job_id = killed_after(job, store, scheduler, step=1)

    refused = in_process("jobs", "resume", job_id, "--store", store, "--scheduler", scheduler)
    assert refused.exit_code == 2
    assert refused.output.strip() == (
        f"Error: job {job_id}'s recorded job file has its secret data.storage_options.key redacted; pass the "
        "same job file with --job-file so the resumed job can read its data and store")
    resumed = in_process("jobs", "resume", job_id, "--store", store, "--scheduler", scheduler, "--job-file", job)
    assert resumed.exit_code == 0, resumed.output
    assert f"job {job_id} succeeded (resumed from checkpoint 1)" in resumed.stdout

    record = JobRecords(str(store)).read(job_id)
    assert record["state"] == "succeeded" and record["resumed"]["checkpoint"] == 1
    messages = [m for _, m in record["events"]]
    after = messages[next(i for i, m in enumerate(messages) if m.startswith("resumed from checkpoint 1:")):]
    layers = [m.split(":")[0] + (" (restored)" if "from the checkpoint" in m else "")
              for m in after if m.startswith("cascade pass 1 layer ")]
    assert layers == ["cascade pass 1 layer 1/3 (restored)", "cascade pass 1 layer 2/3", "cascade pass 1 layer 3/3"]
    got = load_model(record["model"])[-1]
    assert len(got.support_) > 0
    np.testing.assert_array_equal(got.support_vectors_, expected.support_vectors_)
    np.testing.assert_array_equal(got.dual_coef_, expected.dual_coef_)
    np.testing.assert_array_equal(got.intercept_, expected.intercept_)


def test_resume_refuses_a_missing_job_and_changed_data_in_one_line(scheduler, make_data, job_file, tmp_path):
    import shutil

    store = tmp_path / "models"
    missing = in_process("jobs", "resume", "20260101-000000-abcdef", "--store", store)
    assert missing.exit_code == 2
    assert missing.output.strip() == (f"Error: no job 20260101-000000-abcdef in {store} "
                                      f"(see `distml jobs list --store {store}`)")

    source, _ = make_data(rows=2000, features=4, files=2)
    folder = tmp_path / "data"
    shutil.copytree(source, folder)
    job = job_file(name="resume-changed", data={"path": str(folder), "target": "target"},
                   model={"kind": "logistic", "params": {"epochs": 3}})
    killed = distml("submit", job, "--scheduler", scheduler, "--quiet", env={EXIT_HOOK: "1"})
    assert killed.returncode == HOOK_EXIT_STATUS, killed.stderr
    (record,) = JobRecords(str(store)).list()
    first, second = sorted(folder.iterdir())[:2]
    shutil.copy(second, first)  # the same name, other rows
    changed = in_process("jobs", "resume", record["job_id"], "--store", store, "--scheduler", scheduler)
    assert changed.exit_code == 2
    line = changed.output.strip()
    assert line.startswith(f"Error: {first}: changed (") and line.endswith(
        f"since job {record['job_id']}'s checkpoint 1; a resumed job must read the same data; "
        "submit it as a new job instead")


def _detached_until_resumed_after_checkpoint_2(job, store, tmp_path):
    """Submit ``job`` detached to a cluster whose drivers exit after checkpoint 2; its final record, once it
    succeeded after the driver resumed by itself from that checkpoint."""
    from distml.service import wait

    with processes.dask_processes(tmp_path, env={**os.environ, EXIT_HOOK: "2"}) as address:
        submitted = distml("submit", job, "--scheduler", address, "--store", store, "--detach")
        assert submitted.returncode == 0, submitted.stderr
        record = wait(JobRecords(str(store)), submitted.stdout.strip(), timeout=240)
    assert record["state"] == "succeeded"
    assert record["resumed"]["by"] == "driver" and record["resumed"]["checkpoint"] == 2
    return record


@pytest.mark.timeout(420)  # a cluster of its own, and a worker restart
def test_a_detached_job_whose_driver_worker_dies_resumes_by_itself_once_to_the_identical_model(softmax_job, tmp_path):
    """The hook is in the workers' environment: the detached driver's worker dies after checkpoint 2 and
    its nanny restarts it; the scheduler reruns the driver, which resumes from the checkpoint (and its lanes)."""
    from distml import load_model

    job, expected = softmax_job
    record = _detached_until_resumed_after_checkpoint_2(job, tmp_path / "models", tmp_path)
    got = load_model(record["model"])
    np.testing.assert_array_equal(got[-1].coef_, expected[-1].coef_)


def test_a_cascade_layer_checkpoint_gives_back_its_sets_and_a_layer_over_the_limit_is_not_gathered(client, tmp_path):
    """Through a job's real checkpoint files: a fitted set comes back with its SVC, an unfitted one with its rows."""
    from sklearn.svm import SVC

    from distml.checkpoints import Checkpoints
    from distml.models._svsets import LayerCheckpoints, SVSet
    from distml.models.base import TrainEnv

    rng = np.random.default_rng(0)
    X, ids = rng.normal(size=(60, 3)), rng.random(60)
    y = (X[:, 0] > 0).astype(np.int64)
    model = SVC().fit(X, y)
    keep = model.support_
    sets = [SVSet(X[keep], y[keep], ids[keep], model, 2, fitted=ids), SVSet(X[:5], np.zeros(5, np.int64), ids[:5])]
    saved = Checkpoints(JobRecords(str(tmp_path)), "20260101-000000-abcdef", resume=True)
    logged = []
    env = TrainEnv(client=client, job_id=saved.job_id, seed=0, max_in_flight=2, n_workers=2, worker_memory=0,
                   log=logged.append, checkpoint=saved.write, restore=saved.restore)
    futures, rows = client.scatter(sets), len(keep) + 5

    LayerCheckpoints(env, {"n_chunks": 2}, limit=rows - 1).write(1, {"stage": "tree", "depth": 1}, futures, rows)
    assert saved.latest() is None
    skipped = (f"cascade SVM: checkpoint 1 not written: its 2 sets hold {rows:,} support vectors, more than "
               f"the {rows - 1:,} (max_support_vectors) the client gathers")
    assert logged == [skipped]
    LayerCheckpoints(env, {"n_chunks": 2}, limit=rows).write(1, {"stage": "tree", "depth": 1}, futures, rows)
    assert saved.latest()["step"] == 1
    assert LayerCheckpoints(env, {"n_chunks": 3}, limit=rows).restore() is None  # another plan: start over
    assert logged[-1].startswith("cascade SVM: the checkpoint's chunks or kernel matrix budget do not match")

    state, restored = LayerCheckpoints(env, {"n_chunks": 2}, limit=rows).restore()
    assert state["stage"] == "tree" and state["depth"] == 1
    back = client.gather(restored)
    for got, put in zip(back, sets):
        np.testing.assert_array_equal(got.X, put.X)
        np.testing.assert_array_equal(got.y, put.y)
        np.testing.assert_array_equal(got.ids, put.ids)
        assert got.dropped == put.dropped
    np.testing.assert_array_equal(back[0].model.dual_coef_, model.dual_coef_)
    assert back[1].model is None and back[0].fitted is None  # only the one set of a top layer keeps its fitted ids


class Killed(Exception):
    """Raised by ``KilledAt`` where the test hook would end the driver."""


class KilledAt(Checkpoints):
    """A job's checkpoints whose driver dies (``Killed``) right after writing checkpoint ``at``."""

    def __init__(self, records, job_id, *, at):
        super().__init__(records, job_id)
        self.at = at

    def write(self, step, state):
        super().write(step, state)
        if step == self.at:
            raise Killed


@pytest.fixture(scope="module")
def exact_plan(cluster, make_data):
    """The feature plan of a 3-class dataset (every row trains), shared by the in-process exact-solver fits."""
    from distributed import Client

    from distml.data import open_dataset
    from distml.features import plan_features
    from distml.spec import DataSpec

    folder, _ = make_data(rows=3000, features=6, files=3, classes=3)
    dataset = open_dataset(DataSpec(path=str(folder), target="target", holdout=0.0), 0)
    dataset.partition(100_000)
    with Client(cluster, set_as_default=False) as client:
        return plan_features(dataset, client, "20260101-000000-0e1070-plan", "classification")


_FIT_CALLS = itertools.count()


def exact_fit(client, plan, checkpoints, job_id, solver="newton", die_at=None, max_iter=100):
    """Fit ``solver`` (newton, lbfgs) in this process with ``checkpoints``; returns (estimator, log, passes made).

    ``die_at``: the fit is killed (``Killed``) when it logs a line starting so.
    """

    from distml.cluster import worker_resources
    from distml.models import logistic
    from distml.models.base import TrainContext

    logs = []

    def log(message):
        logs.append(message)
        if die_at and message.startswith(die_at):
            raise Killed

    # The checkpoints carry the job's id; the tasks get one of their own per call, so that this call's passes are
    # counted by key and not by a time cut in the task stream (records arrive there out of stop order).
    keys_id = f"{job_id}_{next(_FIT_CALLS)}"
    ctx = TrainContext.create(client=client, job_id=keys_id, seed=0, plan=plan, resources=worker_resources(client),
                              log=log, checkpoints=checkpoints)
    client.get_task_stream(start=0, stop=0)  # starts the scheduler's task stream if it is not recording yet
    estimator = None
    try:
        estimator = logistic.train(plan.parts, logistic.Params(solver=solver, tol=1e-10 if solver == "newton" else 1e-4,
                                                                max_iter=max_iter), ctx)
    except Killed:
        pass
    prefix = f"distml-train-{keys_id}-"
    passes = {str(r["key"]).removeprefix(prefix).split("-")[0] for r in client.get_task_stream()
              if str(r["key"]).startswith(prefix)}
    return estimator, logs, len(passes)


def test_newton_killed_in_step_3_resumes_after_step_2_to_identical_coefficients_redoing_only_step_3(
        client, exact_plan, tmp_path):
    """Through a job's real checkpoint files: killed once step 3's passes are made, before its checkpoint."""

    records = JobRecords(str(tmp_path))
    job_id, plan = "20260101-000000-0e1070", exact_plan
    expected, expected_logs, expected_passes = exact_fit(client, plan, None, "20260101-000000-a11a11")
    assert expected.n_iter_[0] >= 4
    killed, _, killed_passes = exact_fit(client, plan, Checkpoints(records, job_id), job_id, die_at="newton step 3:")
    assert killed is None
    saved = Checkpoints(records, job_id, resume=True)
    assert saved.latest()["step"] == 2
    got, logs, resumed_passes = exact_fit(client, plan, saved, job_id)

    np.testing.assert_array_equal(got.coef_, expected.coef_)
    np.testing.assert_array_equal(got.intercept_, expected.intercept_)
    assert got.n_iter_[0] == expected.n_iter_[0]
    continuing = re.fullmatch(r"newton: continuing after step 2 from its checkpoint \((\d+) passes made before\)",
                              logs[0])
    assert continuing, logs[0]
    assert [m.split(":")[0] for m in logs if m.startswith("newton step ")] == [
        f"newton step {s}" for s in range(3, int(expected.n_iter_[0]) + 1)]
    step_3 = killed_passes - int(continuing.group(1))  # the killed run's passes after its last checkpoint
    assert step_3 >= 1
    assert killed_passes + resumed_passes - expected_passes == step_3  # redone: step 3's passes, no more
    assert logs[-1] == expected_logs[-1]  # the same "converged after N iterations, P passes" line
    assert saved.latest()["step"] == expected.n_iter_[0]


def test_lbfgs_resumed_in_process_after_iteration_3_replays_its_passes_to_identical_coefficients(client, exact_plan,
                                                                                                tmp_path, monkeypatch):
    """scipy's L-BFGS-B runs again from zero; the passes the killed run made are answered from its checkpoint."""

    records = JobRecords(str(tmp_path))
    job_id, plan = "20260101-000000-1bf650", exact_plan
    expected, expected_logs, expected_passes = exact_fit(client, plan, None, "20260101-000000-b11b11", "lbfgs")
    assert expected.n_iter_[0] >= 6, expected.n_iter_
    killed, _, killed_passes = exact_fit(client, plan, KilledAt(records, job_id, at=3), job_id, "lbfgs")
    assert killed is None
    saved = Checkpoints(records, job_id, resume=True)
    got, logs, resumed_passes = exact_fit(client, plan, saved, job_id, "lbfgs")

    np.testing.assert_array_equal(got.coef_, expected.coef_)
    np.testing.assert_array_equal(got.intercept_, expected.intercept_)
    assert logs[0] == f"lbfgs: replaying iterations 1-3 from the checkpoint ({killed_passes} passes made before)"
    assert killed_passes + resumed_passes == expected_passes  # no pass redone
    assert logs[-2:] == expected_logs[-2:]  # scipy's message, then "converged after N iterations, P passes"
    assert saved.latest()["step"] == expected.n_iter_[0]

    from distml.models import _fullbatch

    monkeypatch.setattr(_fullbatch, "LBFGS_CHECKPOINT_BYTES", 0)  # no log of passes is small enough
    capped = Checkpoints(records, "20260101-000000-c0ffee")
    _, capped_logs, _ = exact_fit(client, plan, capped, capped.job_id, "lbfgs", max_iter=2)
    assert "lbfgs: no checkpoints from iteration 1 on: the log of its passes would exceed 0 MiB" in capped_logs
    assert capped.latest() is None


@pytest.mark.slow  # a cluster of its own, a reference fit and a worker restart; the softmax test covers it by default
@pytest.mark.timeout(420)
def test_a_detached_cascade_svm_whose_driver_worker_dies_resumes_by_itself_after_layer_2(scheduler, make_data,
                                                                                         job_file, tmp_path):
    """As the softmax one, for the cascade: the rerun driver restores layer 2's support-vector sets."""
    from distml import load_model

    folder, _ = make_data(rows=2000, features=4, files=3)
    store = tmp_path / "models"
    job = job_file(name="detached-cascade", data={"path": str(folder), "target": "target", "holdout": 0},
                   model={"kind": "svm", "params": {"chunk_rows": 300, "feedback_tol": 0.0}},
                   output={"store": str(store), "report": False, "evaluation_report": False})
    expected = reference_model(job, scheduler)[-1]
    record = _detached_until_resumed_after_checkpoint_2(job, store, tmp_path)
    messages = [m for _, m in record["events"]]
    after = messages[next(i for i, m in enumerate(messages) if m.startswith("resumed from checkpoint 2:")):]
    layers = [m.split(":")[0] + (" (restored)" if "from the checkpoint" in m else "")
              for m in after if m.startswith("cascade pass 1 layer ")]
    assert layers == ["cascade pass 1 layer 2/3 (restored)", "cascade pass 1 layer 3/3"]
    got = load_model(record["model"])[-1]
    np.testing.assert_array_equal(got.support_vectors_, expected.support_vectors_)
    np.testing.assert_array_equal(got.dual_coef_, expected.dual_coef_)
    np.testing.assert_array_equal(got.intercept_, expected.intercept_)


def _pairs_fit(client, plan, checkpoints, job_id):
    from distml.cluster import worker_resources
    from distml.models import svm
    from distml.models._pairs import train_pairs
    from distml.models.base import TrainContext

    logs = []
    ctx = TrainContext.create(client=client, job_id=job_id, seed=0, plan=plan, resources=worker_resources(client),
                              log=logs.append, checkpoints=checkpoints)
    params = svm.Params(kernel="linear", epochs=4)
    try:
        return train_pairs(plan.parts, svm._sgd_fit(params, ctx, None), ctx, params.C, params.alpha), logs
    except Killed:
        return None, logs


def test_pairs_killed_after_epoch_2_resume_together_to_identical_models(client, exact_plan, tmp_path):
    """The Nyström route's one-vs-one fits share one checkpoint per epoch and resume from it together."""

    records = JobRecords(str(tmp_path))
    job_id = "20260101-000000-0a1b2c"
    expected, expected_logs = _pairs_fit(client, exact_plan, None, "20260101-000000-0d0e0f")
    killed, killed_logs = _pairs_fit(client, exact_plan, KilledAt(records, job_id, at=2), job_id)
    assert killed is None and killed_logs[-1].startswith("epoch 1: 3 one-vs-one fits trained in ")
    saved = Checkpoints(records, job_id, resume=True)
    got, logs = _pairs_fit(client, exact_plan, saved, job_id)

    assert [line.split(":")[0] for line in logs[1:]] == ["epoch 2", "epoch 3"]
    assert logs[-2:] == expected_logs[-2:]
    assert len(got.estimators_) == len(expected.estimators_) == 3
    for one, twin in zip(got.estimators_, expected.estimators_):
        np.testing.assert_array_equal(one.coef_, twin.coef_)
        np.testing.assert_array_equal(one.intercept_, twin.intercept_)
    assert saved.latest()["step"] == 4
    # each pair was fitted with SVC's regularisation for its own rows
    counts = dict(zip(exact_plan.classes.tolist(), exact_plan.class_counts.tolist()))
    assert [e.alpha for e in got.estimators_] == [1.0 / (counts[a] + counts[b]) for a, b in ((0, 1), (0, 2), (1, 2))]
