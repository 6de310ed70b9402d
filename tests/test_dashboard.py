"""The scheduler's /distml page, fetched over HTTP and rendered in a real headless Chromium."""
from __future__ import annotations

import json
import socket
import sys
import urllib.request
from pathlib import Path

import pytest
from browser import chromium_dom
from processes import dask_processes

BIN = Path(sys.executable).parent
ROUTES = ("['distributed.http.scheduler.prometheus', 'distributed.http.scheduler.info', "
          "'distributed.http.scheduler.json', 'distributed.http.health', 'distributed.http.proxy', "
          "'distributed.http.statics', 'distml.dashboard']")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


@pytest.fixture
def dashboard_cluster(tmp_path):
    """A `dask scheduler` serving its dashboard on a known loopback port (with distml's page in its
    HTTP routes config) and one `dask worker`; yields (scheduler address, dashboard URL)."""
    import os

    port = free_port()
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES": ROUTES}
    with dask_processes(tmp_path, n_workers=1, nthreads=2, env=env,
                        scheduler_args=("--dashboard-address", f"127.0.0.1:{port}")) as address:
        yield address, f"http://127.0.0.1:{port}"


def test_distml_page_lists_the_job_over_http_and_in_headless_chromium(dashboard_cluster, make_data, job_file,
                                                                      tmp_path):
    from distributed import Client

    from distml.jobfile import load_job
    from distml.runner import run_job

    address, base = dashboard_cluster
    assert "no distml jobs yet" in fetch(f"{base}/distml")  # served from the scheduler's routes config
    folder, _ = make_data(rows=4000, files=2)
    spec = load_job(job_file(name="page-job", data={"path": str(folder), "target": "target"}))
    with Client(address, set_as_default=False) as client:
        result = run_job(spec, client)  # registers the page plugin and publishes the record
    page = fetch(f"{base}/distml")
    assert "page-job" in page and result.job_id in page and "succeeded" in page
    record = json.loads(fetch(f"{base}/distml/jobs/{result.job_id}.json"))
    assert record["state"] == "succeeded" and record["model"] == result.uri and "events" not in record

    dom = chromium_dom(f"{base}/distml", tmp_path / "chrome")
    row = next(line for line in dom.splitlines() if result.job_id in line and "<tr" in line)
    assert "page-job" in row and '<td class="state">succeeded</td>' in row


def test_the_page_shows_a_lost_driver_at_once_and_a_record_closed_by_another_process(cluster, make_data,
                                                                                    job_file):
    """A driver killed before it closed its record: the page says `lost` as soon as the scheduler drops the
    client (it said `running` for as long as the scheduler ran), and `failed` once a reader closes the record."""
    import time

    from distributed import Client
    from waiting import poll

    from distml.dashboard import register_page
    from distml.jobfile import load_job
    from distml.jobs import JobTracker
    from distml.runner import new_job_id
    from distml.service import reconcile
    from distml.tracking import publisher, record_for, records_of

    folder, _ = make_data(rows=4000, files=2)
    spec = load_job(job_file(name="lost-job", data={"path": str(folder), "target": "target"}))
    base = cluster.dashboard_link.rsplit("/", 1)[0]
    job_id = new_job_id()
    driver = Client(cluster, set_as_default=False)
    register_page(driver)
    records = records_of(spec)
    tracker = JobTracker(records, record_for(spec, driver, job_id, {"kind": "client", "id": driver.id}),
                         publisher(driver))
    tracker.record["state"] = "running"
    tracker.flush()
    assert json.loads(fetch(f"{base}/distml/jobs/{job_id}.json"))["state"] == "running"
    driver.close()  # as a killed `distml submit`: no final record
    started = time.monotonic()
    lost = poll(lambda: json.loads(fetch(f"{base}/distml/jobs/{job_id}.json"))["state"] == "lost", timeout=10)
    assert lost and time.monotonic() - started < 10
    row = next(line for line in fetch(f"{base}/distml").splitlines() if job_id in line and "<tr" in line)
    assert '<td class="state">lost</td>' in row and "its driver is gone from this scheduler" in row

    stale = records.read(job_id)
    stale["heartbeat"] = 0  # as if 20 s had passed without a beat
    records.write(stale)
    closed = reconcile(records, records.read(job_id))
    assert closed["state"] == "failed" and "the submitting process disconnected" in closed["error"]
    shown = json.loads(fetch(f"{base}/distml/jobs/{job_id}.json"))
    assert shown["state"] == "failed" and shown["error"] == closed["error"]
