"""A cluster that requires TLS: `distml submit` over tls:// with a client certificate, refusals in one line."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from distml import load_model
from distml.cli import main


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    """A CA made by the test, a certificate for 127.0.0.1 (scheduler and workers) and one for the client."""
    trustme = pytest.importorskip("trustme")
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("distml-client")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    server.private_key_and_cert_chain_pem.write_to_path(str(folder / "server.pem"))
    client.cert_chain_pems[0].write_to_path(str(folder / "client-cert.pem"))
    client.private_key_pem.write_to_path(str(folder / "client-key.pem"))
    trustme.CA().issue_cert("stranger").private_key_and_cert_chain_pem.write_to_path(str(folder / "stranger.pem"))
    return {name: folder / f"{name}.pem" for name in ("ca", "server", "client-cert", "client-key", "stranger")}


@pytest.fixture(scope="session")
def tls_scheduler(certs):
    """A scheduler and two worker processes that accept only TLS connections with a certificate from the CA."""
    from distributed import LocalCluster, Security

    server = str(certs["server"])
    security = Security(require_encryption=True, tls_ca_file=str(certs["ca"]),
                        tls_scheduler_cert=server, tls_worker_cert=server, tls_client_cert=server)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", protocol="tls://",
                      dashboard_address=":0", memory_limit="1GiB", silence_logs=50, security=security) as cluster:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        yield cluster.scheduler_address


def _job(tmp_path, folder, **cluster):
    path = tmp_path / f"job-{len(list(tmp_path.glob('job-*')))}.yaml"
    doc = {"name": "tls-test", "data": {"path": str(folder), "target": "target"},
           "model": {"kind": "logistic", "params": {"epochs": 2}}, "output": {"store": str(tmp_path / "models")}}
    if cluster:
        doc["cluster"] = cluster
    path.write_text(yaml.safe_dump(doc))
    return path


def _flags(certs):
    return ["--tls-ca-file", str(certs["ca"]), "--tls-cert", str(certs["client-cert"]),
            "--tls-key", str(certs["client-key"])]


def test_submit_over_tls_gives_the_same_model_as_over_tcp(tmp_path, make_data, certs, tls_scheduler, cluster):
    folder, _ = make_data("classification", rows=4_000, features=5, files=2)
    runs = {}
    for label, args in (("tls", ["--scheduler", tls_scheduler, *_flags(certs)]),
                        ("tcp", ["--scheduler", cluster.scheduler_address])):
        result = CliRunner().invoke(main, ["submit", str(_job(tmp_path, folder)), "--json", *args])
        assert result.exit_code == 0, result.stderr
        runs[label] = json.loads(result.stdout)
    assert runs["tls"]["metrics"] == runs["tcp"]["metrics"]
    tls_model, tcp_model = load_model(runs["tls"]["model"]), load_model(runs["tcp"]["model"])
    np.testing.assert_array_equal(tls_model[-1].coef_, tcp_model[-1].coef_)


def test_the_job_file_names_the_certificates(tmp_path, make_data, certs, tls_scheduler):
    from distml.cluster import connect
    from distml.jobfile import load_job

    folder, _ = make_data("classification", rows=4_000, features=5, files=2)
    job = _job(tmp_path, folder, scheduler=tls_scheduler, tls_ca_file=str(certs["ca"]),
               tls_cert=str(certs["client-cert"]), tls_key=str(certs["client-key"]))
    with connect(load_job(job).cluster) as client:  # the same connect `submit` uses, without training again
        assert client.scheduler.address == tls_scheduler
        assert client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3


def _refused(args, job):
    started = time.monotonic()
    result = CliRunner().invoke(main, ["submit", str(job), *args])
    elapsed = time.monotonic() - started
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    assert elapsed < 15
    return lines[0]


def test_a_client_without_certificates_is_refused_in_one_line(tmp_path, make_data, certs, tls_scheduler):
    folder, _ = make_data("classification", rows=4_000, features=5, files=2)
    job = _job(tmp_path, folder)
    line = _refused(["--scheduler", tls_scheduler], job)
    assert line == (f"Error: {tls_scheduler}: a tls:// scheduler needs --tls-ca-file and --tls-cert (or "
                    "cluster.tls_ca_file/tls_cert in the job file, or distributed.comm.tls.* in Dask's configuration)")
    plain = tls_scheduler.replace("tls://", "tcp://")
    line = _refused(["--scheduler", plain], job)
    assert line.startswith(f"Error: cannot reach the Dask scheduler at {plain} within 10s (")
    assert "TLS" in line
    strangers = ["--scheduler", tls_scheduler, "--tls-ca-file", str(certs["ca"]), "--tls-cert", str(certs["stranger"])]
    line = _refused(strangers, job)  # a certificate from another CA: the scheduler ends the handshake
    assert line == (f"Error: cannot reach the Dask scheduler at {tls_scheduler} within 10s (the scheduler ended the "
                    "TLS handshake: it does not accept this client certificate (is it signed by the cluster's CA?))")


def test_jobs_commands_reach_a_tls_scheduler_with_the_flags_through_dask_configuration(certs, tls_scheduler):
    import dask

    from distml.service import _connect

    assert _connect(tls_scheduler) is None  # no certificates: unreachable, not a traceback
    with dask.config.set({"distributed.comm.tls.ca-file": str(certs["ca"]),
                          "distributed.comm.tls.client.cert": str(certs["client-cert"]),
                          "distributed.comm.tls.client.key": str(certs["client-key"])}):
        client = _connect(tls_scheduler)
        assert client is not None
        with client:
            assert client.scheduler.address == tls_scheduler


def test_a_missing_certificate_file_is_one_line_naming_the_key_or_flag(tmp_path, make_data, certs):
    folder, _ = make_data("classification", rows=4_000, features=5, files=2)
    missing = tmp_path / "nope.pem"
    line = _refused(["--tls-cert", str(missing)], _job(tmp_path, folder))
    assert line == f"Error: --tls-cert: {str(missing)!r} no such file"
    listed = CliRunner().invoke(main, ["jobs", "list", "--store", str(tmp_path / "models"), "--tls-cert", str(missing)])
    assert listed.exit_code == 2 and listed.stderr == f"Error: --tls-cert: {str(missing)!r} no such file\n"
    line = _refused([], _job(tmp_path, folder, scheduler="tls://127.0.0.1:1", tls_ca_file=str(missing)))
    assert line.startswith(f"Error: {tmp_path / 'job-1.yaml'}: cluster.tls_ca_file: no such file; got '")


def test_the_embedded_cluster_can_talk_tls():
    from distml.cluster import connect
    from distml.spec import ClusterSpec

    with connect(ClusterSpec(tls=True, n_workers=1, threads_per_worker=1)) as client:
        assert client.scheduler.address.startswith("tls://127.0.0.1:")
        assert client.submit(sum, [1, 2, 3], pure=False).result(timeout=30) == 6
        assert client.run_on_scheduler(_worker_ttl) == 60  # distml's bound for the embedded cluster (Dask's: 300)


def _worker_ttl(dask_scheduler):
    return dask_scheduler.worker_ttl


@pytest.fixture
def tls_flags_undone():
    """The jobs commands put their --tls-* files in this process's Dask configuration: undo it afterwards."""
    import dask

    from distml.tls import TLS_CONFIG_KEYS

    with dask.config.set({key: None for key in TLS_CONFIG_KEYS.values()}):
        yield


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _detached(tmp_path, folder, certs, tls_scheduler, params):
    job = _job(tmp_path, folder)
    doc = yaml.safe_load(job.read_text())
    doc["model"]["params"] = params
    doc["data"]["holdout"] = 0  # what these tests check is the service, not the model
    doc["output"].update(report=False, evaluation_report=False)
    job.write_text(yaml.safe_dump(doc))
    submitted = _cli("submit", job, "--scheduler", tls_scheduler, "--detach", *_flags(certs))
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip()
    assert f"job {job_id} submitted to {tls_scheduler}" in submitted.stderr
    return job_id, tmp_path / "models"


def test_a_detached_job_over_tls_is_followed_and_waited_for_with_the_flags(tmp_path, make_data, certs,
                                                                             tls_scheduler, tls_flags_undone):
    from distml.jobs import JobRecords

    folder, _ = make_data("classification", rows=4_000, features=5, files=2)
    job_id, store = _detached(tmp_path, folder, certs, tls_scheduler, {"epochs": 2})
    waited = _cli("jobs", "wait", job_id, "--store", store, "--timeout", 120, *_flags(certs))
    assert waited.exit_code == 0, waited.output
    record = JobRecords(str(store)).read(job_id)
    assert record["state"] == "succeeded" and waited.stdout.strip() == record["model"]
    assert record["driver"]["kind"] == "task" and record["driver"]["scheduler"] == tls_scheduler
    assert record["driver"]["worker"].startswith("tls://127.0.0.1:")
    assert load_model(record["model"])[-1].coef_.shape == (1, 5)
    status = _cli("jobs", "status", job_id, "--store", store, *_flags(certs))
    assert status.exit_code == 0, status.output
    assert "state      succeeded" in status.stdout and f"scheduler  {tls_scheduler}" in status.stdout


def test_a_detached_job_over_tls_is_cancelled_with_the_flags(tmp_path, make_data, certs, tls_scheduler,
                                                             tls_flags_undone):
    from waiting import poll

    from distml.jobs import JobRecords

    folder, _ = make_data("classification", rows=4_000, features=5, files=2)
    job_id, store = _detached(tmp_path, folder, certs, tls_scheduler, {"epochs": 1000})  # far longer than the test
    records = JobRecords(str(store))
    poll(lambda: records.read(job_id)["phase"] == "train", 60)
    status = _cli("jobs", "status", job_id, "--store", store, *_flags(certs))
    assert status.exit_code == 0 and "state      running" in status.stdout, status.output
    cancelled = _cli("jobs", "cancel", job_id, "--store", store, *_flags(certs))
    assert cancelled.exit_code == 0, cancelled.output
    assert cancelled.stdout.strip().startswith(f"job {job_id} cancelled")
    waited = _cli("jobs", "wait", job_id, "--store", store, *_flags(certs))
    assert waited.exit_code == 1
    assert waited.stderr.startswith(f"Error: job {job_id} was cancelled")
    assert records.read(job_id)["state"] == "cancelled" and not (store / "tls-test").exists()


def test_the_detached_driver_gets_the_job_file_without_the_clients_certificate_files(tmp_path, make_data, certs):
    """A worker on another machine has none of the submitter's files: the driver's job file must validate there."""
    import shutil

    from distml.jobfile import JobSpec, load_job
    from distml.service import driver_doc

    mine = tmp_path / "mine"
    shutil.copytree(certs["ca"].parent, mine)
    folder, _ = make_data("classification", rows=4_000, features=5, files=2)
    spec = load_job(_job(tmp_path, folder, tls_ca_file=str(mine / "ca.pem"))).with_overrides(
        scheduler="tls://127.0.0.1:8786", tls_cert=str(mine / "client-cert.pem"), tls_key=str(mine / "client-key.pem"))
    doc = driver_doc(spec)
    shutil.rmtree(mine)  # as on the worker's machine
    assert doc["cluster"]["scheduler"] == "tls://127.0.0.1:8786"
    assert not {"tls_ca_file", "tls_cert", "tls_key"} & set(doc["cluster"])
    assert JobSpec.model_validate(doc).data.path == str(folder)


def test_a_stale_job_on_a_tls_scheduler_is_not_closed_for_want_of_certificates(tmp_path, certs, tls_scheduler,
                                                                                tls_flags_undone):
    """Its driver can only be asked about with certificates: without them one line, and the record stays."""
    from distml.jobs import JobRecords, new_record

    records = JobRecords(str(tmp_path))
    job_id = "20260101-000000-abcdef"
    record = new_record({"name": "ghost"}, job_id, str(tmp_path), {"scheduler": tls_scheduler},
                        {"kind": "task", "key": f"distml-job-{job_id}", "scheduler": tls_scheduler}, state="running")
    record["heartbeat"] = time.time() - 600  # stale: a reader asks the scheduler about the driver
    records.write(record)
    line = (f"job {job_id}: whether its driver is alive is asked of its scheduler {tls_scheduler}, which needs "
            "--tls-ca-file and --tls-cert (or distributed.comm.tls.* in Dask's configuration)")
    status = _cli("jobs", "status", job_id, "--store", tmp_path)
    assert status.exit_code == 2 and status.stderr == f"Error: {line}\n"
    listed = _cli("jobs", "list", "--store", tmp_path)
    assert listed.exit_code == 0 and listed.stderr == f"warning: {line}; listed as recorded\n"
    assert listed.stdout.startswith(f"{job_id}  ghost") and " running " in listed.stdout
    assert records.read(job_id)["state"] == "running"

    status = _cli("jobs", "status", job_id, "--store", tmp_path, *_flags(certs))  # asked: the driver task is gone
    assert status.exit_code == 0 and "state      failed" in status.stdout, status.output
    assert records.read(job_id)["error"] == (f"the job's driver is gone: its driver task is gone on {tls_scheduler} "
                                             "(last phase start)")
