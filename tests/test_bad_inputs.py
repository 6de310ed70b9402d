"""Issue 16, the job file, model parameters and scheduler address: each bad input is one line, exit 2, bounded time.

Every case runs the real CLI (click's runner) and asserts the exact line the
user sees; the hang cases also assert the time taken. The silent listener and
the HTTP server are started here, on 127.0.0.1, and closed at the end.
"""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from distml.cli import main

TCP_ERROR = re.escape("cannot reach the Dask scheduler at ") + r"tcp://127\.0\.0\.1:\d+" + re.escape(" within 10s (")


def run(*argv, env=None):
    result = CliRunner().invoke(main, list(argv), env=env)
    return result.exit_code, result.stderr, result.stdout


def refused(code, err, out, message):
    """Exit 2, stderr exactly ``Error: <message>`` (a pattern must match the whole line), no traceback anywhere."""
    assert code == 2, err
    assert "Traceback" not in err + out
    if isinstance(message, re.Pattern):
        assert re.fullmatch(f"Error: {message.pattern}\n", err), err
    else:
        assert err == f"Error: {message}\n"


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.parquet"
    pd.DataFrame({"a": rng.normal(size=60), "target": rng.integers(0, 2, 60)}).to_parquet(path)
    return path


def job(tmp_path, data, model=None, **sections):
    doc = {"name": "bad-input", "data": {"path": str(data), "target": "target"},
           "model": model or {"kind": "logistic"}, "output": {"store": str(tmp_path / "models")}, **sections}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def submit(job_path, *args, env=None):
    return run("submit", str(job_path), "--quiet", *args, env=env)


# --- scheduler addresses: one check, wherever the address came from ---------

BAD_ADDRESSES = [
    ("garbage", "must be a Dask scheduler address like tcp://host:8786"),
    ("http://127.0.0.1:8787", "must use tcp://, tls:// or ws:// (http:// is not a Dask scheduler protocol), "
                              "like tcp://host:8786"),
    ("inproc://127.0.0.1/1/2", "inproc:// only reaches a scheduler inside this same process; use tcp://host:port"),
    # tls:// is taken since the --tls-* options exist (tests/test_tls.py); wss:// is not
    ("wss://127.0.0.1:1", "wss:// is not supported; use tls://host:port for an encrypted connection"),
    ("tcp://127.0.0.1", "must name the scheduler's port, like tcp://host:8786"),
    ("tcp://127.0.0.1:99999", "port must be a number from 1 to 65535"),
    ("127.0.0.1:8786", "must be a Dask scheduler address like tcp://host:8786"),
]


@pytest.mark.parametrize("address,problem", BAD_ADDRESSES)
def test_a_bad_address_is_named_with_where_it_came_from(tmp_path, data, address, problem):
    started = time.monotonic()
    refused(*submit(job(tmp_path, data), "--scheduler", address), f"--scheduler: {problem}; got {address!r}")
    path = job(tmp_path, data, cluster={"scheduler": address})
    refused(*submit(path), f"{path}: cluster.scheduler: {problem}; got {address!r}")
    refused(*submit(job(tmp_path, data), env={"DISTML_SCHEDULER": address}),
            f"DISTML_SCHEDULER: {problem}; got {address!r}")
    assert time.monotonic() - started < 15  # refused before any connection is tried
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").rglob("manifest.json"))


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_scoring_commands_check_the_address_the_same_way(tmp_path, data, command):
    args = [command, str(tmp_path / "models" / "m"), str(data)] + ([str(tmp_path / "out")] if command == "predict"
                                                                   else [])
    refused(*run(*args, "--scheduler", "garbage"),
            "--scheduler: must be a Dask scheduler address like tcp://host:8786; got 'garbage'")


@pytest.fixture
def silent_listener():
    """A TCP socket on 127.0.0.1 that accepts connections and never says a word."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    accepted, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    server.close()
    for conn in accepted:
        conn.close()


@pytest.fixture
def http_server():
    """``python -m http.server`` on 127.0.0.1: it listens, but speaks HTTP, not Dask."""
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(re.search(r"port (\d+)", proc.stdout.readline()).group(1))
        yield f"tcp://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("server", ["silent_listener", "http_server"])
def test_a_listener_that_never_completes_the_handshake_fails_within_15_seconds(tmp_path, data, server, request):
    address = request.getfixturevalue(server)
    started = time.monotonic()
    result = submit(job(tmp_path, data), "--scheduler", address)
    assert time.monotonic() - started < 15
    refused(*result, f"cannot reach the Dask scheduler at {address} within 10s "
                     "(something listens there but did not complete the Dask handshake)")


def test_a_worker_address_is_not_taken_for_a_scheduler(tmp_path, data, cluster):
    worker = next(iter(cluster.scheduler_info["workers"]))
    refused(*submit(job(tmp_path, data), "--scheduler", worker),
            f"{worker} answers as Worker, not as a Dask scheduler; expected the scheduler's address "
            "(tcp://host:8786)")


# --- model parameters: finite numbers only, in every family ------------------

NON_FINITE = [
    ("linear", {"solver": "exact"}, "alpha", "inf"),
    ("linear", {"solver": "sgd"}, "eta0", "nan"),
    ("logistic", {}, "alpha", "inf"),
    ("logistic", {}, "eta0", "-inf"),
    ("logistic", {}, "tol", "nan"),
    ("svm", {}, "C", "inf"),
    ("svm", {}, "gamma", "inf"),
    ("svm", {}, "coef0", "nan"),
    ("svm", {"kernel": "linear"}, "alpha", "inf"),
    ("forest", {}, "max_features", "nan"),
    ("forest", {}, "min_samples_leaf", "inf"),
    ("forest", {}, "max_samples", "inf"),
    ("forest", {}, "ccp_alpha", "inf"),
]


@pytest.mark.parametrize("kind,other,key,value", NON_FINITE)
def test_non_finite_parameters_are_refused(tmp_path, data, kind, other, key, value):
    path = job(tmp_path, data, model={"kind": kind, "params": {**other, key: float(value)}})
    assert f"{key}: {value.replace('inf', '.inf').replace('nan', '.nan')}" in path.read_text()  # as a user writes it
    refused(*submit(path), f"{path}: model.params.{key}: must be a finite number; got {value}")


def test_a_non_finite_class_weight_is_named_by_its_class(tmp_path, data):
    path = job(tmp_path, data, model={"kind": "logistic", "params": {"class_weight": {0: float("inf")}}})
    refused(*submit(path), f"{path}: model.params.class_weight.0: must be a finite number; got inf")


def test_a_union_field_gets_one_line(tmp_path, data):
    path = job(tmp_path, data, model={"kind": "forest", "params": {"max_features": "most"}})
    refused(*submit(path), f"{path}: model.params.max_features: must be 'sqrt' or 'log2' or a valid integer "
                           "or a valid number; got 'most'")


# --- the job file itself -------------------------------------------------------

def write(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_a_duplicate_key_is_refused_with_both_lines(tmp_path, data):
    path = write(tmp_path, f"name: x\nmodel: {{kind: logistic}}\ndata: {{path: {data}, target: target}}\n"
                           "model: {kind: svm}\n")
    refused(*submit(path), f"{path}: duplicate key 'model' at line 4 (first at line 2)")


def test_a_nested_duplicate_key_is_refused(tmp_path, data):
    path = write(tmp_path, f"name: x\nmodel:\n  kind: logistic\n  kind: svm\ndata: {{path: {data}, target: target}}\n")
    refused(*submit(path), f"{path}: duplicate key 'kind' at line 4 (first at line 3)")


def test_merge_keys_may_still_be_overridden(tmp_path, data):
    """A YAML merge (``<<: *base``) followed by an explicit key is not a duplicate; the job runs."""
    path = write(tmp_path, f"name: x\ndata:\n  <<: {{target: target, holdout: 0.5}}\n  holdout: 0.25\n  path: {data}\n"
                    f"model: {{kind: logistic}}\noutput: {{store: {tmp_path / 'models'}}}\n")
    from distml.jobfile import load_job

    assert load_job(path).data.holdout == 0.25


def test_a_job_file_over_1_mib_is_refused(tmp_path):
    path = write(tmp_path, "name: " + "x" * (1 << 20) + "\n")
    refused(*submit(path), f"{path}: the job file is larger than 1 MiB; expected a small YAML file")


def test_a_job_file_that_is_not_utf8_names_the_byte(tmp_path):
    path = write(tmp_path, b"name: caf\xe9\n")
    refused(*submit(path), f"{path}: not UTF-8 text (byte 0xe9 at offset 9)")


def test_20000_nested_brackets_are_one_line(tmp_path):
    path = write(tmp_path, "name: " + "[" * 20_000 + "]" * 20_000 + "\n")
    refused(*submit(path), f"{path}: nested deeper than 100 levels at line 1")


def laughs(levels, width=9):
    """A billion-laughs document: ``width ** levels`` values from a few hundred bytes, used as ``name:``."""
    lines = ["x:", f"  a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nname: *a{levels - 1}\n"


def test_an_alias_bomb_is_refused_quickly(tmp_path):
    path = write(tmp_path, laughs(10))
    started = time.monotonic()
    refused(*submit(path), f"{path}: YAML aliases expand it to more than 100,000 values (at line 7); "
                           "expected a plain job file")
    assert time.monotonic() - started < 5


def test_a_large_value_is_shown_cut_short(tmp_path, data):
    """Aliases under the bound (6,561 values) used as ``name:``: the message shows a few of them, not all."""
    anchors = "".join(f"\n    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 4))
    path = write(tmp_path, f"data:\n  path: {data}\n  target: target\n  storage_options:\n"
                           f"    a0: &a0 [{', '.join(['lol'] * 9)}]{anchors}\nname: *a3\nmodel: {{kind: logistic}}\n")
    refused(*submit(path), f"{path}: name: must be a valid string; got [[[...], [...], [...], [...], ...], "
                           "[[...], [...], [...], [...], ...], [[...]...")


def test_a_recursive_alias_is_refused(tmp_path):
    path = write(tmp_path, "name: &a [*a]\n")
    refused(*submit(path), f"{path}: a YAML alias refers to itself at line 1")
