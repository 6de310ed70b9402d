"""The job service on real clusters: detached jobs, durable records, cancel, lost drivers, bad input."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import processes
import pytest

from distml.errors import StoreError
from waiting import poll
from distml.jobs import PHASE_ORDER, JobRecords, new_record

DISTML = [sys.executable, "-m", "distml"]
LONG_MODEL = {"kind": "logistic", "params": {"epochs": 1000}}  # runs far longer than any test waits


@pytest.fixture(scope="module")
def dask_processes(tmp_path_factory):
    """One real scheduler and two workers for this module's jobs (conftest's is one per test).

    Each test has a store of its own, and leaves no task of its job on the scheduler: its jobs succeed,
    are cancelled (the cancel test waits until their tasks are gone) or fail. The test that kills driver
    workers runs last; their nannies restart them.
    """
    with processes.dask_processes(tmp_path_factory.mktemp("cluster")) as address:
        yield address


def distml(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*DISTML, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def state_of(store: Path, job_id: str) -> str:
    return JobRecords(str(store)).read(job_id)["state"]


def watch_progress(store: Path, job_id: str, seen: list, stop: threading.Event, errors: list) -> None:
    """Read the record over and over, keeping (state, phase rank, progress) as a reader sees them.

    Only a record that does not exist yet is waited for; any other error (an unreadable record, a phase
    outside ``PHASE_ORDER``) is kept in ``errors`` for the test to raise.
    """
    records = JobRecords(str(store))
    try:
        while not stop.is_set():
            try:
                r = records.read(job_id)
            except StoreError as exc:
                if not str(exc).startswith(f"no job {job_id} in "):
                    raise
            else:
                seen.append((r["state"], PHASE_ORDER.index(r["phase"]), r["progress"]))
            time.sleep(0.02)
    except BaseException as exc:  # noqa: BLE001 - handed to the test's thread, which raises it
        errors.append(exc)


def distinct_in_order(values: list) -> list:
    """``values`` with consecutive repeats collapsed: what a reader saw change, in order."""
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


def test_detached_jobs_outlive_the_submitter_run_concurrently_and_progress_never_goes_back(
        dask_processes, make_data, job_file, tmp_path):
    folder, _ = make_data(rows=4000, files=2)
    store = tmp_path / "models"
    jobs = [job_file(name=f"det-{i}", data={"path": str(folder), "target": "target"},
                     model={"kind": "logistic", "params": {"solver": "softmax"}},  # logs each epoch
                     output={"store": str(store)}) for i in range(2)]
    ids: list[str] = []
    seen: list = []
    errors: list = []
    stop = threading.Event()
    watcher = None
    try:
        for job in jobs:  # each submitter has exited (subprocess.run waits for it) before its job ends
            started = time.monotonic()
            out = distml("submit", job, "--scheduler", dask_processes, "--detach")
            assert out.returncode == 0, out.stderr
            assert time.monotonic() - started < 45  # seconds, on a loaded 2-core machine; ~3 s when idle
            ids.append(out.stdout.strip().splitlines()[0])
            if watcher is None:  # the first job, watched from the moment its submitter returns
                watcher = threading.Thread(target=watch_progress, args=(store, ids[0], seen, stop, errors))
                watcher.start()
        for job_id in ids:
            waited = distml("jobs", "wait", job_id, "--store", store, "--timeout", 90)
            assert waited.returncode == 0, waited.stderr
    finally:
        stop.set()
        if watcher is not None:
            watcher.join()
    models = set()
    for job_id, name in zip(ids, ("det-0", "det-1")):
        status = distml("jobs", "status", job_id, "--store", store)
        assert status.returncode == 0 and "succeeded" in status.stdout and "dashboard" in status.stdout
        record = JobRecords(str(store)).read(job_id)
        assert record["name"] == name and record["driver"]["kind"] == "task" and record["progress"] == 1.0
        manifest = json.loads((Path(record["model"]) / "manifest.json").read_text())
        assert "report.html" in manifest["files"] and (Path(record["model"]) / "report.html").stat().st_size > 0
        models.add(record["model"])
    assert len(models) == 2
    if errors:
        raise errors[0]
    progress = [(rank, fraction) for _, rank, fraction in seen]
    assert progress == sorted(progress), "a reader saw the job's progress go backwards"
    states = distinct_in_order([state for state, _, _ in seen])
    assert states in (["queued", "running", "succeeded"], ["running", "succeeded"]), states
    assert seen[-1] == ("succeeded", PHASE_ORDER.index("save"), 1.0), seen[-1]
    # every phase was entered, in the job's order (the record's per-phase progress, kept in insertion order)
    assert list(JobRecords(str(store)).read(ids[0])["phases"]) == ["read", "stats", "train", "eval", "save"]
    listed = distml("jobs", "list", "--store", store)
    assert listed.stdout.count("succeeded") == 2
    logs = distml("jobs", "logs", ids[0], "--store", store)
    assert "phase train started" in logs.stdout and "epoch" in logs.stdout and "job succeeded" in logs.stdout


def submit_long_job(scheduler: str, make_data, job_file, tmp_path: Path, name: str) -> tuple[Path, str]:
    """Submit a slow job detached to ``scheduler``; returns its store and job id."""
    folder, _ = make_data(rows=4000, files=2)
    store = tmp_path / "models"
    job = job_file(name=name, data={"path": str(folder), "target": "target"}, model=LONG_MODEL,
                   output={"store": str(store)})
    return store, distml("submit", job, "--scheduler", scheduler, "--detach").stdout.split()[0]


def test_cancel_ends_a_running_job_within_10s_and_saves_nothing(dask_processes, make_data, job_file, tmp_path):
    from distributed import Client

    store, job_id = submit_long_job(dask_processes, make_data, job_file, tmp_path, "long")
    poll(lambda: JobRecords(str(store)).read(job_id)["phase"] == "train", 60)
    started = time.monotonic()
    out = distml("jobs", "cancel", job_id, "--store", store)
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - started < 10
    assert out.stdout.strip().startswith(f"job {job_id} cancelled")
    assert state_of(store, job_id) == "cancelled"
    assert not (store / "long").exists()
    with Client(dask_processes, set_as_default=False) as client:
        def left() -> bool:
            return not [k for k in client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.tasks))
                        if job_id in str(k)]
        poll(left, 10)
    again = distml("jobs", "cancel", job_id, "--store", store)
    assert again.returncode == 2 and again.stderr.strip() == f"Error: job {job_id} already cancelled; there is nothing to cancel"
    waited = distml("jobs", "wait", job_id, "--store", store)
    assert waited.returncode == 1 and "cancelled" in waited.stderr


def test_a_job_whose_driver_worker_dies_twice_is_reported_failed(dask_processes, make_data, job_file, tmp_path):
    """The detached driver resumes once by itself (tests/test_resume.py); a second loss ends the job failed."""
    from distributed import Client

    store, job_id = submit_long_job(dask_processes, make_data, job_file, tmp_path, "orphan")
    killed: list[str] = []
    for _ in range(2):
        record = poll(lambda: (r := JobRecords(str(store)).read(job_id))["phase"] == "train"
                      and r["driver"].get("worker") not in killed and r, 90)
        with Client(dask_processes, set_as_default=False) as client:
            worker = record["driver"]["worker"]
            pid = client.run(os.getpid, workers=[worker])[worker]
        os.kill(pid, signal.SIGKILL)
        killed.append(worker)

    def reported_failed() -> bool:
        out = distml("jobs", "status", job_id, "--store", store)
        return "failed" in out.stdout and out

    out = poll(reported_failed, 90, every=1)
    assert "driver" in out.stdout
    assert not (store / "orphan").exists()


def test_a_record_whose_scheduler_is_gone_is_closed_as_failed_on_the_next_look(tmp_path):
    records = JobRecords(str(tmp_path))
    record = new_record({"name": "ghost"}, "20260101-000000-abcdef", str(tmp_path), {"scheduler": "tcp://127.0.0.1:9"},
                        {"kind": "client", "id": "x", "scheduler": "tcp://127.0.0.1:9"}, state="running")
    record["heartbeat"] = time.time() - 600
    records.write(record)
    out = distml("jobs", "list", "--store", tmp_path)
    assert out.returncode == 0 and "failed" in out.stdout
    after = records.read(record["job_id"])
    assert after["state"] == "failed" and "cannot be reached" in after["error"]


def test_bad_job_ids_empty_stores_and_finished_jobs_get_one_line_and_the_right_exit(tmp_path, make_data, job_file):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = distml("jobs", "list", "--store", empty)
    assert out.returncode == 0 and out.stderr.strip() == f"no job records in {empty}"
    out = distml("jobs", "status", "20260101-000000-abcdef", "--store", empty)
    assert out.returncode == 2
    assert out.stderr.strip() == (f"Error: no job 20260101-000000-abcdef in {empty} "
                                  f"(see `distml jobs list --store {empty}`)")
    out = distml("jobs", "logs", "../etc/passwd", "--store", empty)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "is not a job id" in out.stderr
    records = JobRecords(str(empty))
    for job_id, state, error in (("20260101-000000-000001", "succeeded", None),
                                 ("20260101-000000-000002", "failed", "job failed in phase train: boom")):
        r = new_record({"name": "done"}, job_id, str(empty), {}, {}, state=state)
        r.update(error=error, model="x" if state == "succeeded" else None)
        records.write(r)
    out = distml("jobs", "cancel", "20260101-000000-000001", "--store", empty)
    assert out.returncode == 2 and out.stderr.strip() == \
        "Error: job 20260101-000000-000001 already succeeded; there is nothing to cancel"
    out = distml("jobs", "wait", "20260101-000000-000002", "--store", empty)
    assert out.returncode == 1 and out.stderr.strip() == \
        "Error: job 20260101-000000-000002 failed: job failed in phase train: boom"
    folder, _ = make_data(rows=4000, files=2)
    job = job_file(name="nodetach", data={"path": str(folder), "target": "target"})
    out = subprocess.run([*DISTML, "submit", str(job), "--detach"], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "DISTML_SCHEDULER"})
    assert out.returncode == 2 and "--detach needs a running cluster" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["--help"], ["jobs", "list", "--store", "{tmp}"]])
def test_help_and_jobs_list_start_in_under_a_second_without_importing_dask(argv, tmp_path):
    code = ("import sys; from distml.cli import main\n"
            "try:\n    main(sys.argv[1:], standalone_mode=False)\nfinally:\n"
            "    assert 'distributed' not in sys.modules and 'dask' not in sys.modules, 'dask imported'\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=30)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # the process's own CPU seconds: what its imports cost, whatever else the shared machine is running
    took = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert out.returncode == 0, out.stderr
    assert took < 1.0, f"distml {' '.join(args)} took {took:.2f} CPU seconds"


def test_console_redraws_one_bar_per_phase_on_a_terminal_and_prints_plain_lines_otherwise():
    import io

    from distml.console import Console

    tty, plain = io.StringIO(), io.StringIO()
    for stream, is_tty in ((tty, True), (plain, False)):
        console = Console(stream=stream, tty=is_tty)
        console.phase("train", "started", 0.0)
        for i in range(1, 21):
            console.progress("train", i / 20)
        console.phase("train", "done", 1.0)
        console.close()
    assert "\r\x1b[2K" in tty.getvalue() and "train  [" in tty.getvalue() and "%/s" in tty.getvalue()
    lines = plain.getvalue().splitlines()
    assert "\r" not in plain.getvalue() and len([line for line in lines if "train  [" in line]) == 11  # first report, then every 10%
    assert "ETA" in plain.getvalue() and lines[-1].endswith("phase train done in 1.00s")
