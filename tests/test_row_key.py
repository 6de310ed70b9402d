"""``data.row_key``: a CLI job keyed by a column draws its rows as an estimator with ``row_key`` does, so
the models that use the draws (a forest's bootstrap, the SVC's cascade chunks) equal on the same rows
and seed, however the collection is partitioned; a missing or null key is refused in one line."""
from __future__ import annotations

import json
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

import distml
from distml import load_model
from distml.cli import main
from distml.jobfile import parse_job
from distml.runner import run_job

ROWS = 1600
FEATURES = ["a", "b", "cat"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """Two Parquet files (so ``dd.read_parquet``'s index restarts) with a shuffled integer ``id`` column."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"a": rng.normal(size=ROWS), "b": rng.normal(size=ROWS),
                          "cat": rng.choice(["x", "y", "z"], size=ROWS), "id": rng.permutation(ROWS) * 3 + 11})
    score = frame.a - 0.7 * frame.b + 0.8 * (frame.cat == "x") + rng.normal(scale=0.6, size=ROWS)
    frame["label"] = (score > 0.2).astype(np.int64)
    folder = tmp_path_factory.mktemp("row-key") / "table"
    folder.mkdir()
    frame.iloc[:900].to_parquet(folder / "part-0.parquet", index=False)
    frame.iloc[900:].to_parquet(folder / "part-1.parquet", index=False)
    return folder, frame


def _cli(client, store, folder, kind, params, **data):
    """The CLI job's saved Pipeline, manifest and URI, as ``Estimator.fit`` trains: every row (holdout 0), seed 0."""
    spec = parse_job({"name": "keyed", "seed": 0, "model": {"kind": kind, "params": params},
                      "data": {"path": str(folder), "target": "label", "holdout": 0, **data},
                      "output": {"store": str(store), "report": False, "evaluation_report": False}}, "test")
    uri = run_job(spec, client).uri
    return load_model(uri), json.loads((Path(uri) / "manifest.json").read_text()), uri


def _probe():
    rng = np.random.default_rng(9)
    return pd.DataFrame({"a": rng.normal(size=400), "b": rng.normal(size=400), "cat": rng.choice(["x", "y", "z"], 400)})


@pytest.mark.parametrize("kind, estimator, params, method", [
    ("forest", distml.RandomForestClassifier, {"n_estimators": 6, "max_depth": 6}, "predict_proba"),
    ("svm", distml.SVC, {"kernel": "rbf", "chunk_rows": 400}, "decision_function"),
])
def test_a_keyed_cli_job_equals_the_keyed_estimator_on_any_partitioning(client, tmp_path, table, kind, estimator,
                                                                       params, method):
    folder, frame = table
    probe = _probe()
    family = {**params, **({"task": "classification"} if kind == "forest" else {})}
    expected, manifest, _ = _cli(client, tmp_path, folder, kind, family, row_key="id")
    assert [str(c) for c in expected.feature_names_in_] == FEATURES  # the key is no input of the saved Pipeline
    assert manifest["data"]["row_key"] == manifest["job"]["data"]["row_key"] == "id"
    assert manifest["data"]["features"] == FEATURES
    ddf = dd.read_parquet(str(folder))
    layouts = (ddf, ddf.repartition(npartitions=3)) if kind == "forest" else (ddf.repartition(npartitions=3),)
    fits = [lambda m, layout=layout: m.fit(layout[[*FEATURES, "id"]], layout["label"]) for layout in layouts]
    if kind == "forest":  # as read, and by the Parquet URL (the job's own reader): one family is enough
        fits.append(lambda m: m.fit(str(folder), target="label"))
    for fit in fits:
        model = fit(estimator(client=client, row_key="id", **params))
        assert model.feature_names_in_.tolist() == FEATURES
        np.testing.assert_array_equal(model.predict(probe), expected.predict(probe))
        np.testing.assert_allclose(getattr(model, method)(probe), getattr(expected, method)(probe),
                                   rtol=1e-9, atol=1e-12)
    unkeyed, _, _ = _cli(client, tmp_path, folder, kind, family, features=FEATURES)
    # the draws matter here: keyed by file and row number, the same job gives another model
    assert not np.allclose(getattr(unkeyed, method)(probe), getattr(expected, method)(probe), rtol=1e-9)


def test_a_keyed_job_and_a_keyed_collection_draw_every_row_alike(table):
    """The holdout, cv folds and validation slices all cut the rows' draws: a job's pieces (files cut into
    row groups) and a collection's partitions, keyed by an integer or a string column, give each row one draw."""
    from distml.data import open_dataset
    from distml.frames import open_collection
    from distml.spec import DataSpec

    folder, frame = table
    frame = frame.assign(name=[f"row-{i}" for i in frame["id"]])
    folder = folder.parent / "named"
    folder.mkdir()
    frame.iloc[:700].to_parquet(folder / "part-0.parquet", index=False, row_group_size=300)
    frame.iloc[700:].to_parquet(folder / "part-1.parquet", index=False, row_group_size=500)
    for key in ("id", "name"):
        dataset = open_dataset(DataSpec(path=str(folder), target="label", holdout=0.2, row_key=key), 7)
        assert key not in dataset.features
        dataset.pieces = [p for f in dataset.files for p in _groups(f)]  # one piece per row group
        read = [dataset.reader.read(piece) for piece in dataset.pieces]
        assert all(key not in part.columns for part, _ in read)
        job = np.concatenate([draws for _, draws in read])
        ddf = dd.read_parquet(str(folder))
        for layout in (ddf, ddf.repartition(npartitions=5)):
            collection = open_collection(layout.drop(columns="label"), layout["label"], target="label", seed=7,
                                         row_key=key)
            keyed = np.concatenate([collection.reader.read(piece)[1] for piece in collection.pieces])
            np.testing.assert_array_equal(keyed, job)
        unkeyed = open_dataset(DataSpec(path=str(folder), target="label", row_key=None, features=FEATURES), 7)
        assert not np.array_equal(np.concatenate([unkeyed.reader.read(p)[1] for p in unkeyed.cut(1 << 20)]), job)
        assert 0.15 < (job < 0.2).mean() < 0.25


def test_a_warm_start_from_a_keyed_parent_continues_keyed_and_says_to_key_an_unkeyed_child(client, tmp_path, table):
    from distml.errors import DataError

    folder, _ = table
    model = {"kind": "logistic", "params": {"solver": "softmax", "epochs": 1}}
    _, _, uri = _cli(client, tmp_path, folder, model["kind"], model["params"], row_key="id")

    def child(**data):
        return parse_job({"name": "child", "seed": 0, "model": {**model, "warm_start": uri},
                          "data": {"path": str(folder), "target": "label", "holdout": 0, **data},
                          "output": {"store": str(tmp_path), "report": False, "evaluation_report": False}}, "test")

    continued = load_model(run_job(child(row_key="id"), client).uri)
    assert [str(c) for c in continued.feature_names_in_] == FEATURES
    with pytest.raises(DataError) as caught:
        run_job(child(), client)
    assert str(caught.value) == (f"{folder}: has column(s) id the parent was not trained on (set data.row_key: id "
                                 f"as the parent did); model.warm_start {uri} expects a, b, cat")


def _groups(info):
    """A file's row groups as pieces of their own (``Dataset.cut`` would join these small ones)."""
    from distml.data import Piece

    starts = np.cumsum([0, *info.row_group_rows])
    return [Piece(info.path, info.key, (i,), 0, int(starts[i]), n) for i, n in enumerate(info.row_group_rows)]


# --- bad input -------------------------------------------------------------------------------------


def _submit(cluster, tmp_path, folder, **data):
    """``distml submit`` of a keyed job on ``folder``: (exit code, stderr), the store and the job file."""
    doc = {"name": "keyed", "seed": 0, "model": {"kind": "forest", "params": {"n_estimators": 2}},
           "data": {"path": str(folder), "target": "label", "holdout": 0, **data},
           "output": {"store": str(tmp_path / "models"), "report": False, "evaluation_report": False}}
    job = tmp_path / "keyed.yaml"
    job.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(main, ["submit", str(job), "--quiet", "--scheduler", cluster.scheduler_address])
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "models").glob("keyed/*/manifest.json")), "a refused job saved a model"
    assert not list((tmp_path / "models").glob("keyed/*/model.skops"))
    return result.exit_code, result.stderr


def test_a_missing_row_key_column_is_refused_before_the_cluster(cluster, tmp_path, table):
    folder, _ = table
    code, err = _submit(cluster, tmp_path, folder, row_key="row")
    assert (code, err) == (2, f"Error: {folder}: data.row_key column 'row' not found; columns are a, b, cat, id, "
                              "label\n")
    assert not (tmp_path / "models").exists()
    for data, message in ((dict(row_key="label"), "data.row_key: is the target column; expected a column "
                           "identifying rows; got 'label'"),
                          (dict(row_key="id", features=["a", "id"]), "data.row_key: is listed in data.features; "
                           "the row key is not a feature; got 'id'")):
        code, err = _submit(cluster, tmp_path, folder, **data)
        assert (code, err) == (2, f"Error: {tmp_path / 'keyed.yaml'}: {message}\n")


def test_a_null_row_key_is_refused_by_file_and_the_record_keeps_the_key_for_resume(cluster, client, tmp_path):
    from distml.jobs import JobRecords
    from distml.service import resumable

    folder = tmp_path / "nulls"
    folder.mkdir()
    rng = np.random.default_rng(0)
    ids = pa.array([1, 2, None, 4, None, 6] * 50, type=pa.int64())
    pq.write_table(pa.table({"a": rng.normal(size=300), "id": ids, "label": rng.integers(0, 2, 300)}),
                   folder / "part-0.parquet")
    code, err = _submit(cluster, tmp_path, folder, row_key="id")
    assert (code, err) == (2, f"Error: {folder / 'part-0.parquet'}: data.row_key column 'id' has 100 null values "
                              "in row group 0; expected a key for every row\n")
    (record,) = JobRecords(str(tmp_path / "models")).list()
    assert record["state"] == "failed"
    spec, _ = resumable(JobRecords(str(tmp_path / "models")), record["job_id"])
    assert spec.data.row_key == "id"  # recorded as it is (not redacted as a secret)
    # with the keys filled in, `distml jobs resume` reruns the recorded job, keyed by the column
    pq.write_table(pa.table({"a": rng.normal(size=300), "id": np.arange(300), "label": rng.integers(0, 2, 300)}),
                   folder / "part-0.parquet")
    result = CliRunner().invoke(main, ["jobs", "resume", record["job_id"], "--store", str(tmp_path / "models"),
                                       "--scheduler", cluster.scheduler_address, "--quiet"])
    assert result.exit_code == 0, result.output
    (manifest,) = [json.loads(m.read_text()) for m in (tmp_path / "models").glob("keyed/*/manifest.json")]
    assert (manifest["data"]["row_key"], manifest["data"]["features"]) == ("id", ["a"])
    # an estimator refuses a null key of its collection by name too
    keys = pd.array([*range(150), *[None, 1, 2] * 50], dtype="Int64")  # nulls in the second partition only
    ddf = dd.from_pandas(pd.DataFrame({"a": rng.normal(size=300), "id": keys, "label": rng.integers(0, 2, 300)}),
                         npartitions=2)
    with pytest.raises(ValueError, match=r"^partition 1: row_key column 'id' has 50 null values; expected a key for every row$"):
        distml.LogisticRegression(client=client, row_key="id").fit(ddf[["a", "id"]], ddf["label"])
