"""Real parts for tests: a LocalCluster, dask scheduler/worker processes, an S3 server — all on 127.0.0.1."""
from __future__ import annotations

from pathlib import Path

import pytest

import processes
from distml.synth import make_dataset


@pytest.fixture(scope="session", autouse=True)
def reports_only_where_asked():
    """Jobs run in this process skip report.html and evaluation.html unless the job file asks for them.

    Together they are most of a small job's time on a warm cluster, and most tests check something
    else; the tests of the reports (and of the artifact's file list) say ``report: true`` /
    ``evaluation_report: true``, and jobs run by a ``distml`` subprocess keep the real defaults.
    """
    from distml.jobfile import JobSpec
    from distml.spec import OutputSpec

    def defaults(values: dict[str, bool]) -> None:
        for name, value in values.items():
            OutputSpec.model_fields[name].default = value
        OutputSpec.model_rebuild(force=True)
        JobSpec.model_rebuild(force=True)  # it embeds OutputSpec's validator

    saved = {name: OutputSpec.model_fields[name].default for name in ("report", "evaluation_report")}
    defaults(dict.fromkeys(saved, False))
    yield
    defaults(saved)


@pytest.fixture(scope="session")
def cluster():
    """Two single-threaded worker processes with enforced memory limits."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", memory_limit="1GiB", silence_logs=40) as cluster:
        yield cluster


@pytest.fixture
def client(cluster):
    from distributed import Client

    with Client(cluster, set_as_default=False) as client:
        yield client


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def make_data(data_dir):
    """Write (once per session) a synthetic dataset; returns its folder and test file."""
    cache: dict[tuple, tuple[Path, Path]] = {}

    def make(kind="classification", rows=20_000, features=8, files=4, classes=2, seed=0,
             sort_by_target=False, string_labels=False):
        args = (kind, rows, features, files, classes, seed, sort_by_target, string_labels)
        if args not in cache:
            name = "-".join(str(a).lower() for a in args)
            cache[args] = make_dataset(data_dir / name, kind, rows, features, files, classes, seed,
                                       sort_by_target, string_labels=string_labels)
        return cache[args]

    return make


@pytest.fixture(scope="session")
def moto_server():
    """moto in server mode on 127.0.0.1: an S3-compatible HTTP endpoint."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(moto_server):
    """A fresh bucket on the moto server and the storage_options that reach it."""
    import uuid

    import boto3

    bucket = f"b-{uuid.uuid4().hex[:12]}"
    opts = {"key": "testing-key", "secret": "testing-secret-value",
            "client_kwargs": {"endpoint_url": moto_server, "region_name": "us-east-1"}}
    boto = boto3.client("s3", endpoint_url=moto_server, aws_access_key_id=opts["key"],
                        aws_secret_access_key=opts["secret"], region_name="us-east-1")
    boto.create_bucket(Bucket=bucket)
    return {"bucket": bucket, "storage_options": opts, "boto": boto, "endpoint": moto_server}


@pytest.fixture
def dask_processes(tmp_path):
    """A real `dask scheduler` and two `dask worker` processes on 127.0.0.1; yields the address."""
    with processes.dask_processes(tmp_path) as address:
        yield address




@pytest.fixture
def job_file(tmp_path):
    """Write a job file from keyword sections; returns its path."""
    import yaml

    def write(name="test-job", data=None, model=None, output=None, **extra):
        doc = {"name": name, "seed": 0, "data": data, "model": model or {"kind": "logistic"},
               "output": output or {"store": str(tmp_path / "models")}, **extra}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    return write


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs: writes past it fail with ENOSPC, as on a full disk."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
