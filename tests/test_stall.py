"""A frozen (SIGSTOPped) worker: the job's log names it, the scheduler drops it after its worker-ttl, the job ends."""
from __future__ import annotations

import os
import signal

import dask
import pytest

from distml import cluster as cluster_module
from distml.jobfile import parse_job
from distml.runner import run_job


def test_embedded_worker_ttl_is_bounded_unless_the_user_set_one():
    assert cluster_module.embedded_worker_ttl() == cluster_module.EMBEDDED_WORKER_TTL
    with dask.config.set({"distributed.scheduler.worker-ttl": "7s"}):
        assert cluster_module.embedded_worker_ttl() == "7s"


@pytest.mark.timeout(150)
def test_a_stopped_worker_is_named_in_the_log_and_the_job_ends_once_it_runs_again(tmp_path, make_data, monkeypatch):
    """SIGSTOP one worker of a real LocalCluster: the job's log and record name it within seconds; SIGCONT and the
    job completes. (The scheduler's own removal after worker-ttl is Dask's; a short ttl on a loaded machine also
    drops workers that are merely starved of CPU, so this test keeps Dask's default and resumes the worker.)"""
    import json
    import threading

    from distributed import Client, LocalCluster
    from waiting import poll

    monkeypatch.setattr(cluster_module, "STALL_AFTER", 3.0)
    monkeypatch.setattr(cluster_module, "WATCH_EVERY", 0.5)
    folder, _ = make_data("classification", rows=4_000, features=5, files=2)
    spec = parse_job({"name": "stall", "data": {"path": str(folder), "target": "target"},
                      "model": {"kind": "logistic", "params": {"epochs": 2}},
                      "output": {"store": str(tmp_path / "models")}}, "test")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0",
                      memory_limit="1GiB", silence_logs=50) as cluster, Client(cluster, set_as_default=False) as client:
        frozen, pid = min(client.run(os.getpid).items())
        lines: list[str] = []
        outcome: dict[str, object] = {}

        def job() -> None:
            try:
                outcome["result"] = run_job(spec, client, log=lines.append)
            except Exception as exc:  # reported by the assertion below
                outcome["error"] = exc

        os.kill(pid, signal.SIGSTOP)
        try:
            thread = threading.Thread(target=job, daemon=True)
            thread.start()
            warning = f"warning: worker {frozen} seems stalled: no heartbeat since "
            stalled = poll(lambda: [line for line in lines if line.startswith(warning)], timeout=60)
        finally:
            os.kill(pid, signal.SIGCONT)
        thread.join(timeout=90)
    assert not thread.is_alive() and "error" not in outcome, outcome
    assert stalled[0].endswith("s); the scheduler removes it after 300s (distributed.scheduler.worker-ttl) and "
                               "reruns its tasks on the other workers"), stalled[0]
    events = [m for path in (tmp_path / "models" / "_jobs").glob("*.json")
              for _, m in json.loads(path.read_text())["events"]]
    assert stalled[0] in events
    assert outcome["result"].metrics["accuracy"] > 0.7
