"""End to end against a real object store: SeaweedFS (`weed mini`) on 127.0.0.1.

The dataset is read from s3://, the model written to s3://, and every stored
file is read back with plain boto3 and checked against the manifest's sha256.
"""
from __future__ import annotations

import hashlib
import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import fsspec
import pytest
import yaml
from click.testing import CliRunner

from distml.cli import main

WEED = Path(sys.executable).parent / "weed"
KEY, SECRET = "distml-test", "seaweed-secret-value"


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _ports(n: int) -> list[int]:
    """Ports p whose gRPC twin p + 10000 is free too (SeaweedFS's default offset)."""
    found: list[int] = []
    while len(found) < n:
        p = random.randint(20000, 30000)
        if p not in found and _free(p) and _free(p + 10000):
            found.append(p)
    return found


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    master, volume, filer, s3, admin, iceberg, lance = _ports(7)
    data = tmp_path_factory.mktemp("seaweed")
    env = {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [str(WEED), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
         f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}", f"-s3.port={s3}",
         f"-admin.port={admin}", f"-s3.port.iceberg={iceberg}", f"-s3.port.lance={lance}",
         "-admin.ui=false", "-webdav=false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    endpoint = f"http://127.0.0.1:{s3}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                          region_name="us-east-1")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket="distml")
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("SeaweedFS did not start within 60 s") from None
                time.sleep(0.5)
        yield endpoint, client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_dataset_from_s3_model_to_s3_every_file_verified_with_boto3(cluster, tmp_path, make_data, seaweed):
    endpoint, boto = seaweed
    folder, _ = make_data("classification", rows=20_000, features=6, files=3)
    opts = {"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    fsspec.filesystem("s3", **opts).put(str(folder) + "/", "distml/flights/", recursive=True)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "name": "seaweed-e2e", "data": {"path": "s3://distml/flights/", "target": "target", "storage_options": opts},
        "model": {"kind": "linear", "params": {"solver": "exact"}},
        "output": {"store": "s3://distml/models", "storage_options": opts}}))
    result = CliRunner().invoke(main, ["submit", str(job), "--scheduler", cluster.scheduler_address, "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    prefix = summary["model"].removeprefix("s3://distml/") + "/"
    objects = {o["Key"]: o for o in boto.list_objects_v2(Bucket="distml", Prefix=prefix)["Contents"]}
    manifest = json.loads(boto.get_object(Bucket="distml", Key=prefix + "manifest.json")["Body"].read())
    assert set(objects) == {prefix + "manifest.json", *(prefix + name for name in manifest["files"])}
    for name, entry in manifest["files"].items():
        body = boto.get_object(Bucket="distml", Key=prefix + name)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"] and len(body) == entry["bytes"]
    assert SECRET not in json.dumps(manifest)
    assert manifest["data"]["url"] == "s3://distml/flights/"
    assert manifest["rows"]["total"] == 20_000
