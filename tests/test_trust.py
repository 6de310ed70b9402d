"""Loading a model never runs code: crafted files are refused by name, every file is verified, signing."""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from distml import load_model
from distml.cli import main
from distml.errors import SpecError, StoreError
from distml.runner import run_job
from distml.jobfile import parse_job
from distml.skops_io import skops_io
from distml.synth import make_dataset, make_table
from distml.trust import ALLOWED_TYPES, SAVED_ESTIMATORS, schema_nodes

KEY = "a-test-signing-key-0123456789"
sio = skops_io()  # the first import of skops in this process, as distml imports it (distml.skops_io)


def _spec(data, store, model=None, target="target", name="trust-test", **extra):
    output = {"store": str(store), "report": True, "evaluation_report": True, **extra.pop("output", {})}
    return parse_job({"name": name, "seed": 1, "data": {"path": str(data), "target": target, **extra},
                      "model": model or {"kind": "logistic", "params": {"epochs": 1}}, "output": output}, "test")


@pytest.fixture(scope="module")
def small(make_data):
    return make_data("classification", rows=4_000, features=4, files=2)


@pytest.fixture
def saved(client, tmp_path, small):
    """A freshly saved logistic model: its version folder."""
    return Path(run_job(_spec(small[0], tmp_path / "models"), client).uri)


def _schema_types(payload: bytes) -> set[tuple[str, str]]:
    schema = json.loads(zipfile.ZipFile(io.BytesIO(payload)).read("schema.json"))
    return {(n["__loader__"], f"{n['__module__']}.{n['__class__']}") for n in schema_nodes(schema)}


def _rewrite(version: Path, filename: str, payload: bytes) -> None:
    """Replace one file of a version and fix its sha256 in the manifest, as a writer of the store could."""
    (version / filename).write_bytes(payload)
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["files"][filename] = {"sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}
    (version / "manifest.json").write_text(json.dumps(manifest))


def _with_verbose(payload: bytes, node: dict) -> bytes:
    """The same model file with ``Pipeline.verbose`` replaced by ``node``."""
    source = zipfile.ZipFile(io.BytesIO(payload))
    schema = json.loads(source.read("schema.json"))
    schema["content"]["content"]["verbose"] = node
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            target.writestr(info, json.dumps(schema) if info.filename == "schema.json" else source.read(info))
    return out.getvalue()


def _text(value: str) -> dict:
    return {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode",
            "content": json.dumps(value), "is_json": True}


def _call(module: str, name: str, *args: dict) -> dict:
    """A skops node that calls ``module.name(*args)`` when the file is loaded."""
    return {"__class__": name, "__module__": module, "__loader__": "ConstructorFromReduceNode",
            "content": {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode",
                        "content": list(args)}}


EMPTY_DICT = {"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode", "content": {},
              "key_types": {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode", "content": []}}


def _payloads(sentinel: Path) -> dict[str, tuple[dict, str]]:
    """Each crafted node, and the type the refusal must name."""
    code = f"open({str(sentinel)!r}, 'w').write('ran')"
    return {
        "numpy.testing runstring": (_call("numpy.testing._private.utils", "runstring", _text(code), EMPTY_DICT),
                                    "numpy.testing._private.utils.runstring"),
        "sklearn.utils._testing subprocess": (
            _call("sklearn.utils._testing", "assert_run_python_script_without_output", _text(code)),
            "sklearn.utils._testing.assert_run_python_script_without_output"),
        "builtins.eval": (_call("builtins", "eval", _text(code)), "builtins.eval"),
        "builtins.exec": (_call("builtins", "exec", _text(code)), "builtins.exec"),
        "posix.system": (_call("posix", "system", _text(f"touch {sentinel}")), "posix.system"),
        "a function node": ({"__class__": "system", "__module__": "posix", "__loader__": "FunctionNode",
                             "content": {"module_path": "posix", "function": "system"}}, "posix.system"),
        "an operator node": ({"__class__": "methodcaller", "__module__": "operator",
                              "__loader__": "OperatorFuncNode", "attrs": EMPTY_DICT}, "operator.methodcaller"),
        "an estimator distml never writes": ({"__class__": "FunctionTransformer",
                                              "__module__": "sklearn.preprocessing._function_transformer",
                                              "__loader__": "ObjectNode", "content": EMPTY_DICT},
                                             "sklearn.preprocessing._function_transformer.FunctionTransformer"),
        "a custom class whose import runs code": ({"__class__": "Payload", "__module__": "distml_payload",
                                                   "__loader__": "ObjectNode", "content": EMPTY_DICT},
                                                  "distml_payload.Payload"),
    }


@pytest.mark.parametrize("case", list(_payloads(Path("x"))))
def test_crafted_model_files_are_refused_by_type_and_never_run(saved, tmp_path, monkeypatch, case):
    sentinel = tmp_path / "sentinel"
    # the custom class's module would write the sentinel when imported
    (tmp_path / "distml_payload.py").write_text(f"open({str(sentinel)!r}, 'w').write('imported')\n"
                                                "class Payload:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    node, named = _payloads(sentinel)[case]
    _rewrite(saved, "model.skops", _with_verbose((saved / "model.skops").read_bytes(), node))
    with pytest.raises(StoreError) as refused:
        load_model(str(saved))
    assert str(refused.value).startswith(f"{saved}/model.skops: refusing to load")
    assert named in str(refused.value) and "\n" not in str(refused.value)
    assert not sentinel.exists()
    assert "distml_payload" not in sys.modules


def test_the_runstring_payload_is_real_under_a_prefix_rule(saved, tmp_path):
    """The attack the allow-list stops: trusting what starts with ``numpy.`` runs the file's code."""
    sentinel = tmp_path / "sentinel"
    code = f"open({str(sentinel)!r}, 'w').write('ran')"
    payload = _with_verbose((saved / "model.skops").read_bytes(),
                            _call("numpy.testing._private.utils", "runstring", _text(code), EMPTY_DICT))
    untrusted = sio.get_untrusted_types(data=payload)
    sio.loads(payload, trusted=[t for t in untrusted if t.startswith(("sklearn.", "numpy."))])
    assert sentinel.read_text() == "ran"


def test_skops_is_imported_without_all_of_scikit_learn_and_still_trusts_only_the_allow_list(saved):
    """In a fresh process: skops' default trust list stays empty, so its audit names every scikit-learn type
    of the model file, each of which distml's allow-list must then accept; the model loads and predicts."""
    script = f"""
import sys
from distml.skops_io import skops_io
sio = skops_io()
from distml import load_model
from distml.trust import ALLOWED_TYPES
payload = open({str(saved / "model.skops")!r}, "rb").read()
untrusted = set(sio.get_untrusted_types(data=payload))
assert "sklearn.pipeline.Pipeline" in untrusted and untrusted <= ALLOWED_TYPES, untrusted
model = load_model({str(saved)!r})
print(type(model).__name__, [m for m in ("sklearn.gaussian_process", "sklearn.neural_network") if m in sys.modules])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Pipeline []\n"  # modules that only skops' scan of all estimators would import


def test_a_pickle_renamed_model_skops_is_refused_unread(saved, tmp_path):
    sentinel = tmp_path / "sentinel"

    class Payload:
        def __reduce__(self):
            return (shutil.copy, (__file__, str(sentinel)))

    _rewrite(saved, "model.skops", pickle.dumps(Payload()))
    with pytest.raises(StoreError, match=r"model.skops: not a skops model file \(expected a zip archive"):
        load_model(str(saved))
    assert not sentinel.exists()


def test_a_flipped_byte_in_the_model_is_refused(saved):
    payload = bytearray((saved / "model.skops").read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    (saved / "model.skops").write_bytes(bytes(payload))
    with pytest.raises(StoreError, match=r"model.skops: sha256 does not match the manifest"):
        load_model(str(saved))


def test_every_listed_file_is_verified_and_unlisted_files_are_refused(saved):
    report = saved / "report.html"
    report.write_text(report.read_text() + "<script>tampered</script>")
    with pytest.raises(StoreError, match=r"report.html: sha256 does not match the manifest"):
        load_model(str(saved))
    report.unlink()
    with pytest.raises(StoreError, match=r"report.html: listed in the manifest but missing"):
        load_model(str(saved))


def test_a_file_the_manifest_does_not_list_is_refused(saved):
    (saved / "model.onnx").write_bytes(b"not listed")
    with pytest.raises(StoreError) as refused:
        load_model(str(saved))
    assert str(refused.value) == (f"{saved}/model.onnx: the file is not listed in the manifest; "
                                  "refusing the version")


def test_a_manifest_that_is_not_an_object_is_refused(saved):
    (saved / "manifest.json").write_text("[1, 2]")
    with pytest.raises(StoreError, match=r"manifest.json: expected a JSON object with a 'files' mapping; got list"):
        load_model(str(saved))


def _swap(victim: Path, other: Path) -> None:
    """Put another (benign) model in the victim's version and fix its sha256: the checksum cannot tell."""
    _rewrite(victim, "model.skops", (other / "model.skops").read_bytes())


def test_signed_manifests_refuse_a_swapped_model_and_a_wrong_key(client, tmp_path, small, monkeypatch):
    monkeypatch.setenv("DISTML_SIGNING_KEY", KEY)
    store = tmp_path / "models"
    first = Path(run_job(_spec(small[0], store), client).uri)
    other = Path(run_job(_spec(small[0], store, model={"kind": "logistic", "params": {"epochs": 1,
                                                                                        "alpha": 0.1}}), client).uri)
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["signature"]["algorithm"] == "hmac-sha256" and len(manifest["signature"]["value"]) == 64
    raw = pd.read_parquet(small[1]).drop(columns=["target"])
    np.testing.assert_array_equal(load_model(str(first)).predict(raw),
                                  load_model(str(first), signing_key=KEY).predict(raw))
    with pytest.raises(StoreError, match=r"manifest.json: the manifest's signature does not match the configured key"):
        load_model(str(first), signing_key="another-key")
    _swap(first, other)
    with pytest.raises(StoreError, match=r"manifest.json: the manifest's signature does not match"):
        load_model(str(first))
    monkeypatch.delenv("DISTML_SIGNING_KEY")
    assert type(load_model(str(first))).__name__ == "Pipeline"  # without a key the checksum alone cannot tell


def test_with_a_key_an_unsigned_manifest_is_refused_and_models_show_says_why(client, tmp_path, small):
    version = Path(run_job(_spec(small[0], tmp_path / "models"), client).uri)
    assert "signature" not in json.loads((version / "manifest.json").read_text())
    key_file = tmp_path / "signing.key"
    key_file.write_text(KEY + "\n")
    with pytest.raises(StoreError, match=r"the manifest is unsigned and a signing key is configured; refusing it"):
        load_model(str(version), signing_key_file=str(key_file))
    shown = CliRunner().invoke(main, ["models", "show", str(version)])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["version"] == version.name
    assert shown.stderr == (f"{version}: unsigned\nevaluation report: {version}/evaluation.html\n"
                            "data: unchanged since training (2 files: same size, time and footer)\n")
    refused = CliRunner().invoke(main, ["models", "show", str(version), "--signing-key-file", str(key_file)])
    assert refused.exit_code == 2 and refused.stdout == ""
    assert refused.stderr == (f"Error: {version}/manifest.json: the manifest is unsigned and a signing key "
                              "is configured; refusing it\n")


def test_submit_signs_with_a_key_file_and_models_show_verifies(tmp_path, small, job_file):
    key_file = tmp_path / "signing.key"
    key_file.write_text(KEY)
    path = job_file(name="signed", data={"path": str(small[0]), "target": "target"},
                    model={"kind": "logistic", "params": {"epochs": 1}},
                    output={"store": str(tmp_path / "models"), "signing_key_file": str(key_file),
                            "evaluation_report": True})
    cli = CliRunner().invoke(main, ["submit", str(path), "--quiet", "--workers", "1"])
    assert cli.exit_code == 0, cli.output
    version = next((tmp_path / "models" / "signed").iterdir())
    shown = CliRunner().invoke(main, ["models", "show", str(version), "--signing-key-file", str(key_file)])
    assert shown.exit_code == 0 and shown.stderr == (f"{version}: signature verified\n"
                                                     f"evaluation report: {version}/evaluation.html\n"
                                                     "data: unchanged since training (2 files: same size, time and footer)\n")
    assert json.loads(shown.stdout)["job"]["output"]["signing_key_file"] == "***"
    assert type(load_model(str(version), signing_key=KEY)).__name__ == "Pipeline"
    missing = CliRunner().invoke(main, ["submit", str(path), "--signing-key-file", str(tmp_path / "none.key")])
    assert missing.exit_code == 2
    assert missing.stderr == f"Error: {tmp_path / 'none.key'}: cannot read the signing key file (No such file or directory)\n"


def test_an_empty_key_file_is_a_usage_error(tmp_path):
    from distml.signing import resolve_key

    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    with pytest.raises(SpecError, match=r"empty.key: the signing key file is empty"):
        resolve_key(key_file=str(empty))


def test_the_allow_list_is_exactly_what_every_family_saves(client, tmp_path, monkeypatch):
    """Save a model of every family and feature plan; the trusted types are those they hold, and they load."""
    from distml.models import _svm_route

    monkeypatch.setattr(_svm_route, "PROBE_ROWS", 500)  # the route's one-vs-one model from 3,000 rows
    cls, test_cls = make_dataset(tmp_path / "cls", "classification", 3_000, 4, 2, 3, 0, False)
    binary, test_binary = make_dataset(tmp_path / "bin", "classification", 3_000, 4, 2, 2, 0, False)
    reg, test_reg = make_dataset(tmp_path / "reg", "regression", 3_000, 4, 2, 2, 0, False)
    table = make_table(tmp_path / "table", rows=3_000, files=2, null_targets=5)
    test_table = pd.read_parquet(table).dropna(subset=["label"]).head(200)
    tables = {"missing": "impute", "impute_strategy": "median", "rare_categories": "other"}
    jobs = [
        (reg, test_reg, {"kind": "linear"}, {}),
        (reg, test_reg, {"kind": "linear", "params": {"alpha": 1.0}}, {}),
        (reg, test_reg, {"kind": "linear", "params": {"solver": "sgd", "epochs": 1}}, {}),
        (cls, test_cls, {"kind": "logistic", "params": {"epochs": 1}}, {}),
        (cls, test_cls, {"kind": "logistic", "params": {"solver": "sgd", "epochs": 1}}, {}),
        (binary, test_binary, {"kind": "svm", "params": {"chunk_rows": 1_000, "probability": True}}, {}),
        (binary, test_binary, {"kind": "svm", "params": {"kernel": "linear", "epochs": 1}}, {}),
        (binary, test_binary, {"kind": "svm", "params": {"kernel": "linear", "loss": "squared_hinge",
                                                         "epochs": 1}}, {}),
        (binary, test_binary, {"kind": "svm", "params": {"approximation": "nystroem", "n_components": 20,
                                                         "epochs": 1}}, {}),
        (binary, test_binary, {"kind": "svm", "params": {"approximation": "rbf_sampler", "n_components": 20,
                                                         "epochs": 1}}, {}),
        (cls, test_cls, {"kind": "svm", "params": {"switch_sv_fraction": 0.0}}, {}),
        (cls, test_cls, {"kind": "forest", "params": {"n_estimators": 2}}, {}),
        (reg, test_reg, {"kind": "forest", "params": {"n_estimators": 2}}, {}),
        (table, test_table, {"kind": "logistic", "params": {"epochs": 1}}, tables),
        (table, test_table, {"kind": "forest", "params": {"n_estimators": 2}}, tables),
    ]
    seen: set[tuple[str, str]] = set()
    for i, (data, test, model, extra) in enumerate(jobs):
        target = "label" if data == table else "target"
        result = run_job(_spec(data, tmp_path / "models", model, target=target, name=f"family-{i}",
                               output={"report": False, "evaluation_report": False}, **extra), client)
        seen |= _schema_types((Path(result.uri) / "model.skops").read_bytes())
        rows = test if isinstance(test, pd.DataFrame) else pd.read_parquet(test)
        pipeline = load_model(result.uri)
        assert len(pipeline.predict(rows.drop(columns=[target]))) == len(rows)
    assert {name for _, name in seen} <= ALLOWED_TYPES
    assert {name for loader, name in seen if loader == "ObjectNode"} == SAVED_ESTIMATORS


def test_a_detached_job_whose_driver_lacks_the_submitters_key_fails_unsaved(cluster, tmp_path, small, job_file,
                                                                            monkeypatch):
    """The workers started without DISTML_SIGNING_KEY; the submitter has it, so the model must not be saved."""
    import subprocess

    store = tmp_path / "models"
    path = job_file(name="detached-signed", data={"path": str(small[0]), "target": "target"},
                    model={"kind": "logistic", "params": {"epochs": 1}}, output={"store": str(store)})
    monkeypatch.setenv("DISTML_SIGNING_KEY", KEY)
    distml = [sys.executable, "-m", "distml"]
    submitted = subprocess.run([*distml, "submit", str(path), "--scheduler", cluster.scheduler_address, "--detach"],
                               capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[0]
    waited = subprocess.run([*distml, "jobs", "wait", job_id, "--store", str(store), "--timeout", "90"],
                            capture_output=True, text=True, timeout=120)
    record = json.loads(next((store / "_jobs").glob(f"{job_id}*.json")).read_text())
    assert waited.returncode == 1 and record["state"] == "failed"
    assert record["error"] == ("the job's driver found no signing key on its worker; set DISTML_SIGNING_KEY for the "
                               "workers or output.signing_key_file to a file they can read, so the model is signed "
                               "as its submitter asked")
    assert not (store / "detached-signed").exists()
