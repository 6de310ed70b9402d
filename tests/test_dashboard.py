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

    from distml.runner import run_job
    from distml.jobfile import load_job

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
