"""``model.warm_start``: continue a saved SGD model on new data, with its feature plan and classes."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from distml import load_model
from distml.errors import DataError, SpecError
from distml.jobfile import load_job
from distml.runner import run_job
from distml.store import open_model


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    """One dataset's files in two folders (two halves of the rows), and its test file."""
    from distml.synth import make_dataset

    root = tmp_path_factory.mktemp("warm")
    folder, test = make_dataset(root / "all", "classification", 6000, 6, 4, 3, 0, False)
    files = sorted(folder.glob("*.parquet"))
    out = []
    for name, chunk in (("first", files[:2]), ("second", files[2:])):
        (root / name).mkdir()
        for f in chunk:
            shutil.copy(f, root / name / f.name)
        out.append(root / name)
    return out[0], out[1], test


def job(job_file, name, path, warm=None, **params):
    model = {"kind": "logistic", "params": {"solver": "softmax", "epochs": 2, **params}}
    if warm:
        model["warm_start"] = warm
    return load_job(job_file(name=name, data={"path": str(path), "target": "target", "holdout": 0.1}, model=model))


def test_a_warm_start_continues_the_parent_on_new_data_and_records_it(client, halves, job_file):
    first, second, test = halves
    parent_uri = run_job(job(job_file, "warm-parent", first), client).uri
    child_uri = run_job(job(job_file, "warm-child", second, warm=parent_uri), client).uri

    parent, parent_manifest, _ = open_model(parent_uri)
    child, manifest, _ = open_model(child_uri)
    assert manifest["parent"] == {"uri": parent_uri, "job_id": parent_manifest["job_id"]}
    assert manifest["job"]["model"]["warm_start"] == parent_uri
    assert child[0] is not parent[0] and str(child[0]) == str(parent[0])
    np.testing.assert_array_equal(child[0].transform(pd.read_parquet(test)), parent[0].transform(pd.read_parquet(test)))
    assert np.abs(child[-1].coef_ - parent[-1].coef_).max() > 1e-3  # the coefficients moved
    frame = pd.read_parquet(test)
    y = frame.pop("target")
    parent_acc, child_acc = (float((m.predict(frame) == y).mean()) for m in (parent, child))
    assert child_acc >= parent_acc, (child_acc, parent_acc)

    cold = load_model(run_job(job(job_file, "warm-cold", second), client).uri)  # the same job without a parent
    assert not np.allclose(cold[-1].coef_, child[-1].coef_)


def test_a_warm_start_refuses_an_unseen_class_and_a_missing_column_by_name(client, halves, job_file, tmp_path):
    first, second, _ = halves
    parent_uri = run_job(job(job_file, "warm-base", first, epochs=1), client).uri
    frame = pd.read_parquet(sorted(second.glob("*.parquet"))[0])

    (tmp_path / "newclass").mkdir()
    frame.assign(target=np.where(np.arange(len(frame)) % 50 == 0, 7, frame["target"])).to_parquet(
        tmp_path / "newclass" / "part.parquet")
    with pytest.raises(DataError) as refused:
        run_job(job(job_file, "warm-newclass", tmp_path / "newclass", warm=parent_uri), client)
    assert refused.value.exit_code == 2
    assert refused.value.message == (
        f"{tmp_path / 'newclass'}: target 'target' has class(es) 7 that the model.warm_start parent "
        f"{parent_uri} does not know; expected only 0, 1, 2")

    (tmp_path / "fewer").mkdir()
    frame.drop(columns=["x3"]).to_parquet(tmp_path / "fewer" / "part.parquet")
    with pytest.raises(DataError) as missing:
        run_job(job(job_file, "warm-fewer", tmp_path / "fewer", warm=parent_uri), client)
    assert missing.value.message.startswith(f"{tmp_path / 'fewer'}: lacks the parent's feature column(s) x3; "
                                            f"model.warm_start {parent_uri} expects x0, ")


@pytest.mark.parametrize(("model", "what"), [
    ({"kind": "forest"}, "forest"),
    ({"kind": "linear", "params": {"solver": "exact"}}, "linear with solver exact"),
    ({"kind": "svm"}, "svm"),
])
def test_a_family_that_cannot_warm_start_is_refused_naming_the_key(job_file, tmp_path, model, what):
    path = job_file(name="warm-family", data={"path": str(tmp_path), "target": "target"},
                    model={**model, "warm_start": str(tmp_path / "models" / "x")})
    with pytest.raises(SpecError) as refused:
        load_job(path)
    assert refused.value.message.startswith(f"model.warm_start: {what} cannot warm start; expected logistic")
