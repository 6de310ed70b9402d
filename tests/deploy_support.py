"""Helpers for tests/test_deploy.py: read deploy/, validate it, and run it locally.

The three deploy targets (compose, plain Kubernetes manifests, the Dask
operator's DaskCluster) are reduced to the same small description of each role
(scheduler, worker, submit) so one test can check they agree, and the compose
file's commands are rewritten for loopback so another can rehearse them.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
KUBE_DIR = DEPLOY / "kubernetes"
DASKCLUSTER_FILE = KUBE_DIR / "operator" / "daskcluster.yaml"

ROLES = ("scheduler", "worker", "submit")
LOOPBACK = "127.0.0.1"


# --- reading the files ---------------------------------------------------------


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def load_manifests() -> list[tuple[Path, dict[str, Any]]]:
    """Every YAML document under deploy/kubernetes/, with the file it came from."""
    docs = []
    for path in sorted(KUBE_DIR.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path, doc))
    return docs


# --- schemas -------------------------------------------------------------------


def compose_spec_schema() -> dict[str, Any]:
    """The Compose specification's JSON schema, as vendored by check-jsonschema."""
    text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    return json.loads(text.read_text())


_K8S_DEFS = "https://kubernetes.io/api/_definitions.json"


def kubernetes_version() -> str:
    from kubernetes_validate.utils import latest_version

    return latest_version()


def validate_kubernetes(doc: dict[str, Any]) -> None:
    """Validate one built-in resource against the bundled schemas, rejecting unknown keys."""
    import kubernetes_validate

    kubernetes_validate.validate(doc, kubernetes_version(), strict=True)


def daskcluster_validator():
    """A validator for DaskCluster resources.

    The structure is the Dask Kubernetes operator's CRD
    (dask_kubernetes/operator/customresources/templates.yaml: DaskCluster,
    DaskScheduler, DaskWorker, SimpleObjectMeta); the pod and service specs
    inside it are checked against the same strict Kubernetes schemas that
    kubernetes-validate uses for built-in resources.
    """
    import jsonschema
    from referencing import Registry, Resource

    defs_path = resources.files("kubernetes_validate").joinpath(
        f"kubernetes-json-schema/v{kubernetes_version()}-local-strict/_definitions.json"
    )
    definitions = json.loads(defs_path.read_text())
    simple_meta = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "kubernetes.dask.org/v1"},
            "kind": {"const": "DaskCluster"},
            "metadata": {"$ref": f"{_K8S_DEFS}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
            "spec": {
                "type": "object",
                "required": ["scheduler", "worker"],
                "additionalProperties": False,
                "properties": {
                    "idleTimeout": {"type": "integer"},
                    "scheduler": {
                        "type": "object",
                        "required": ["spec", "service"],
                        "additionalProperties": False,
                        "properties": {
                            "metadata": simple_meta,
                            "spec": {"$ref": f"{_K8S_DEFS}#/$defs/io.k8s.api.core.v1.PodSpec"},
                            "service": {"$ref": f"{_K8S_DEFS}#/$defs/io.k8s.api.core.v1.ServiceSpec"},
                        },
                    },
                    "worker": {
                        "type": "object",
                        "required": ["spec"],
                        "additionalProperties": False,
                        "properties": {
                            "replicas": {"type": "integer", "minimum": 0},
                            "metadata": simple_meta,
                            "spec": {"$ref": f"{_K8S_DEFS}#/$defs/io.k8s.api.core.v1.PodSpec"},
                        },
                    },
                },
            },
        },
    }
    registry = Registry().with_resource(_K8S_DEFS, Resource.from_contents(definitions))
    return jsonschema.Draft202012Validator(schema, registry=registry)


# --- one description of each role, whatever the target --------------------------


@dataclass
class Role:
    """What one kind of process is given: image, argv, environment, ports, memory."""

    image: str
    argv: list[str]
    env: dict[str, Any] = field(default_factory=dict)  # value, or ("secret", key)
    ports: set[int] = field(default_factory=set)
    memory: int | None = None  # bytes
    replicas: int | None = None


def parse_size(text: str | int) -> int:
    """Sizes as compose ("2G"), Kubernetes ("2Gi") and Dask ("2GiB") write them."""
    from dask.utils import parse_bytes

    text = str(text).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt])(?:i?b?)?", text, re.IGNORECASE)
    if m:  # compose and Kubernetes binary units
        return int(float(m.group(1)) * 1024 ** ("kmgt".index(m.group(2).lower()) + 1))
    return parse_bytes(text)


def compose_roles(compose: dict[str, Any]) -> dict[str, Role]:
    roles = {}
    for name in ROLES:
        svc = compose["services"][name]
        cmd = svc["command"]
        argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        ports = set()
        for spec in svc.get("ports", []):
            ports.add(int(str(spec).split(":")[-1].split("/")[0]))
        deploy = svc.get("deploy", {})
        memory = deploy.get("resources", {}).get("limits", {}).get("memory")
        roles[name] = Role(
            image=svc["image"],
            argv=argv,
            env=dict(svc.get("environment", {})),
            ports=ports,
            memory=parse_size(memory) if memory else None,
            replicas=deploy.get("replicas"),
        )
    return roles


def _container_role(pod_spec: dict[str, Any], replicas: int | None = None) -> Role:
    (container,) = pod_spec["containers"]
    env = {}
    for item in container.get("env", []):
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        env[item["name"]] = ("secret", ref["key"]) if ref else item.get("value")
    limits = container.get("resources", {}).get("limits", {})
    return Role(
        image=container["image"],
        argv=list(container.get("command", [])) + list(container.get("args", [])),
        env=env,
        ports={p["containerPort"] for p in container.get("ports", [])},
        memory=parse_size(limits["memory"]) if "memory" in limits else None,
        replicas=replicas,
    )


def kubernetes_roles(docs: list[dict[str, Any]]) -> dict[str, Role]:
    """Roles of the plain manifests: the scheduler and worker Deployments and the Job."""
    roles = {}
    for doc in docs:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        component = doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        roles[component] = _container_role(doc["spec"]["template"]["spec"], doc["spec"].get("replicas"))
    return roles


def daskcluster_roles(doc: dict[str, Any]) -> dict[str, Role]:
    return {
        "scheduler": _container_role(doc["spec"]["scheduler"]["spec"]),
        "worker": _container_role(doc["spec"]["worker"]["spec"], doc["spec"]["worker"].get("replicas")),
    }


# --- compose interpolation -------------------------------------------------------

_INTERP = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation: ${X}, ${X:-default}, ${X:?error}, $$."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        val = env.get(name)
        if op in (":-", "-") and (val is None or (op == ":-" and val == "")):
            return arg
        if op in (":?", "?") and (val is None or (op == ":?" and val == "")):
            raise KeyError(f"{name}: {arg}")
        return val or ""

    return _INTERP.sub(sub, value)


# --- running the compose services as local processes -----------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def localize(argv: list[str], scheduler_port: int) -> list[str]:
    """Rewrite a compose command for this machine: the service name ``scheduler``
    becomes 127.0.0.1, the scheduler gets a free port, and every server binds to
    loopback (``--host``, dashboards on 127.0.0.1 with a free port)."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        arg = arg.replace("tcp://scheduler:8786", f"tcp://{LOOPBACK}:{scheduler_port}")
        if arg == "--port":
            out += [arg, str(scheduler_port)]
            next(args)
        elif arg == "--dashboard-address":
            out += [arg, f"{LOOPBACK}:0"]
            next(args)
        else:
            out.append(arg)
    if out[:2] in (["dask", "scheduler"], ["dask", "worker"]):
        out[2:2] = ["--host", LOOPBACK]
    return out


def start(argv: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a process in its own process group, so its children can be stopped with it."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone


def stop_all(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    """Terminate the processes last started first (workers before the scheduler they report to, which
    otherwise keeps them retrying), kill whatever has not exited within ``grace``, then kill what is
    left of each one's process group (e.g. a nanny's worker)."""
    deadline = time.monotonic() + grace
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        _kill_group(proc)


def run_bounded(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run a command to completion within ``timeout`` seconds; on time-out kill its
    whole process group (a shell and the commands it started) and raise."""
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        raise AssertionError(f"{argv[:3]} did not finish in {timeout}s\nstdout:\n{out}\nstderr:\n{err}")
    finally:
        _kill_group(proc)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def child_env(extra: dict[str, str], bin_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DASK_"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env
