"""distml's estimators on Dask collections: the same model as the CLI job on the same rows and seed,
lazy blockwise prediction equal to the saved Pipeline's, save/load, and the row draws' independence
of partitioning."""
from __future__ import annotations

import copy
import re

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

import distml
from distml import load_model
from distml.jobfile import parse_job
from distml.runner import run_job

ROWS = 3000


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """One Parquet file: numeric features, a string category, a precomputed column ``a2 = 2a + 1``, and
    a binary and a numeric target."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=ROWS), "b": rng.normal(size=ROWS), "c": rng.uniform(size=ROWS),
                          "cat": rng.choice(["x", "y", "z"], size=ROWS)})
    frame["a2"] = 2 * frame["a"] + 1
    score = frame.a - 0.5 * frame.b + (frame.cat == "x") + rng.normal(scale=0.5, size=ROWS)
    frame["label"] = (score > 0.3).astype(np.int64)
    frame["value"] = score * 3.0
    folder = tmp_path_factory.mktemp("estimators") / "table"
    folder.mkdir()
    frame.to_parquet(folder / "part-0.parquet", index=False)
    return folder, frame


FEATURES = ["a", "b", "c", "cat", "a2"]


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory, table):
    """The CLI job's Pipeline for (target, kind, params) on the table, run once per module (without the
    performance and evaluation reports, which take seconds to make)."""
    store = tmp_path_factory.mktemp("cli-models")
    cache = {}

    def run(client, target, kind, params):
        key = (target, kind, tuple(sorted(params.items())))
        if key not in cache:
            spec = parse_job({"name": "same", "seed": 0,
                              "data": {"path": str(table[0]), "target": target, "holdout": 0, "features": FEATURES},
                              "model": {"kind": kind, "params": params},
                              "output": {"store": str(store), "report": False, "evaluation_report": False}}, "test")
            cache[key] = load_model(run_job(spec, client).uri)
        return cache[key]

    return run


def _parquet_frame(folder):
    """``dd.read_parquet`` output with the computed column ``a2`` made in Dask (not read)."""
    ddf = dd.read_parquet(str(folder), columns=["a", "b", "c", "cat", "label", "value"])
    ddf["a2"] = 2 * ddf["a"] + 1
    return ddf


@pytest.mark.parametrize("kind, estimator, target", [
    ("logistic", distml.LogisticRegression, "label"),
    ("linear", distml.LinearRegression, "value"),
])
def test_fit_on_read_parquet_with_computed_column_equals_cli_job(client, cli_model, table, kind, estimator, target):
    folder, frame = table
    expected = cli_model(client, target, kind, {})
    ddf = _parquet_frame(folder)
    model = estimator(client=client).fit(ddf[FEATURES], ddf[target])
    assert model.feature_names_in_.tolist() == FEATURES and model.n_features_in_ == 5
    np.testing.assert_allclose(model.coef_, expected[-1].coef_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.intercept_, expected[-1].intercept_, rtol=1e-9, atol=1e-12)
    # predict is lazy, blockwise, and computes to exactly what the CLI's Pipeline gives on the rows
    predicted = model.predict(ddf[FEATURES])
    assert dask.is_dask_collection(predicted) and predicted.npartitions == ddf.npartitions
    np.testing.assert_array_equal(predicted.compute().to_numpy(), model.to_sklearn().predict(frame[FEATURES]))
    np.testing.assert_allclose(predicted.compute().to_numpy(), expected.predict(frame[FEATURES]), rtol=1e-9)


def test_linear_on_from_pandas_in_parts_equals_cli_job(client, cli_model, table):
    """Partitioning changes only the summation order of the normal equations."""
    _, frame = table
    expected = cli_model(client, "value", "linear", {})
    ddf = dd.from_pandas(frame, npartitions=4)
    model = distml.LinearRegression(client=client).fit(ddf[FEATURES], ddf["value"])
    np.testing.assert_allclose(model.coef_, expected[-1].coef_, rtol=1e-9)
    score = model.score(ddf[FEATURES], ddf["value"])
    assert dask.is_dask_collection(score)
    assert float(score.compute()) == pytest.approx(expected.score(frame[FEATURES], frame["value"]), rel=1e-9)


def test_forest_from_parquet_url_equals_cli_job_and_from_pandas_predicts_lazily(client, cli_model, table):
    folder, frame = table
    params = {"n_estimators": 12, "max_depth": 6}
    expected = cli_model(client, "label", "forest", {**params, "task": "classification"})
    # fit(URL) opens the Parquet as the CLI does (same files, same row keys): predictions equal exactly
    by_url = distml.RandomForestClassifier(client=client, **params).fit(str(folder), target="label",
                                                                        features=FEATURES)
    assert by_url.feature_names_in_.tolist() == FEATURES
    np.testing.assert_array_equal(by_url.to_sklearn().predict_proba(frame), expected.predict_proba(frame))
    # a Dask DataFrame's rows are keyed by its index (other bootstrap draws): as accurate, and
    # predict_proba is lazy with one column per class, equal to the Pipeline's
    ddf = dd.from_pandas(frame, npartitions=3)
    model = distml.RandomForestClassifier(client=client, **params).fit(ddf[FEATURES], ddf["label"])
    proba = model.predict_proba(ddf[FEATURES])
    assert dask.is_dask_collection(proba) and list(proba.columns) == ["0", "1"]
    np.testing.assert_array_equal(proba.compute().to_numpy(), model.to_sklearn().predict_proba(frame[FEATURES]))
    accuracy = (model.predict(frame[FEATURES]) == frame.label).mean()
    assert accuracy > (expected.predict(frame) == frame.label).mean() - 0.02
    assert model.feature_importances_.shape == (len(model.to_sklearn()[:-1].get_feature_names_out()),)


def test_save_stores_a_versioned_artifact_that_load_model_verifies(client, tmp_path, table):
    _, frame = table
    ddf = dd.from_pandas(frame, npartitions=2)
    model = distml.LogisticRegression(client=client, random_state=3).fit(ddf[FEATURES], ddf["label"])
    uri = model.save(str(tmp_path / "store"), "from-python")
    assert uri.startswith(str(tmp_path / "store" / "from-python"))
    loaded = load_model(uri)
    np.testing.assert_array_equal(loaded.predict_proba(frame[FEATURES]), model.predict_proba(frame[FEATURES]))
    import json
    from pathlib import Path

    manifest = json.loads((Path(uri) / "manifest.json").read_text())
    assert manifest["job"]["name"] == "from-python" and manifest["job"]["seed"] == 3
    assert manifest["rows"] == {"total": ROWS, "train": ROWS, "holdout": 0}
    assert set(manifest["files"]) >= {"model.skops"}


def test_row_draws_follow_the_index_not_the_partitions(table):
    """The holdout/validation draws of a row depend on (seed, index value) only."""
    from distml.frames import open_collection

    _, frame = table
    draws = []
    for n in (1, 4):
        ddf = dd.from_pandas(frame, npartitions=n)
        dataset = open_collection(ddf[FEATURES], ddf["label"], target="label", seed=7)
        parts = [dataset.reader.read(piece) for piece in dataset.pieces]
        index = np.concatenate([f.index.to_numpy() for f, _ in parts])
        draws.append(np.concatenate([d for _, d in parts])[np.argsort(index)])
    np.testing.assert_array_equal(draws[0], draws[1])
    assert 0.45 < (draws[0] < 0.5).mean() < 0.55


def test_get_params_set_params_clone_and_bad_parameters(client):
    from sklearn.base import clone

    model = distml.LogisticRegression(alpha=0.01, client=client)
    assert model.get_params()["alpha"] == 0.01 and model.get_params()["client"] is client
    copy = clone(model.set_params(epochs=3))
    assert copy.epochs == 3 and copy.client is client and copy is not model
    with pytest.raises(ValueError, match=r"LogisticRegression: epochs: Input should be greater than or equal to 1"):
        distml.LogisticRegression(epochs=0, client=client).fit(np.zeros((4, 2)), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="requires y to be passed"):
        distml.LinearRegression(client=client).fit(np.zeros((4, 2)))


def test_dask_array_fit_predicts_and_scores_lazily(client, table):
    import dask.array as da

    _, frame = table
    X = frame[["a", "b", "c"]].to_numpy()
    Xd, yd = da.from_array(X, chunks=(1000, 3)), da.from_array(frame["label"].to_numpy(), chunks=1000)
    model = distml.LinearSVC(client=client).fit(Xd, yd)
    assert not hasattr(model, "feature_names_in_") and model.n_features_in_ == 3
    margins = model.decision_function(Xd)
    assert isinstance(margins, da.Array) and margins.chunks == ((1000, 1000, 1000),)
    np.testing.assert_array_equal(margins.compute(), model.to_sklearn().decision_function(
        pd.DataFrame(X, columns=["x0", "x1", "x2"])))
    accuracy = model.score(Xd, yd)
    assert dask.is_dask_collection(accuracy)
    assert float(accuracy.compute()) == model.score(X, frame["label"].to_numpy()) > 0.7


def test_partial_fit_continues_the_fitted_model_with_its_feature_plan(client, table):
    """A linear SVM fitted on a few rows, then continued on the whole table with flipped labels, follows them.

    Each continued pass is ten times the first fit's steps, so the SGD average (which carries the first
    fit) turns over in two passes with a wide margin.
    """
    frame = table[1]
    few = dd.from_pandas(frame.iloc[: ROWS // 10], npartitions=1)
    model = distml.LinearSVC(client=client, epochs=1).fit(few[FEATURES], few["label"])
    transformer, steps = model.to_sklearn()[0], model.t_
    first = distml.LinearSVC(client=client, epochs=5).partial_fit(few[FEATURES], few["label"])
    np.testing.assert_array_equal(first.coef_, model.coef_)  # unfitted, partial_fit fits: one pass
    ddf = dd.from_pandas(frame, npartitions=2)
    flipped = 1 - ddf["label"]
    before = float(model.score(ddf[FEATURES], flipped).compute())
    for _ in range(2):
        model.partial_fit(ddf[FEATURES], flipped)
    assert model.to_sklearn()[0] is transformer  # the feature plan of the first fit is reused
    assert model.t_ > steps
    assert before < 0.3 and float(model.score(ddf[FEATURES], flipped).compute()) > 0.6
    assert model.manifest_["rows"]["train"] == ROWS and model.manifest_["job"]["model"]["params"]["epochs"] == 1
    with pytest.raises(ValueError, match="feature column 'cat' not found"):
        model.partial_fit(ddf[["a", "b", "c", "a2"]], flipped)


BATCH = ROWS // 2


@pytest.fixture(scope="module")
def batches(tmp_path_factory, table):
    """The table's two halves as two Parquet folders, the second with its targets moved (the class boundary
    higher, the values shifted): new data a continued model must follow."""
    _, frame = table
    root = tmp_path_factory.mktemp("batches")
    first, second = frame.iloc[:BATCH].reset_index(drop=True), frame.iloc[BATCH:].reset_index(drop=True)
    second = second.assign(label=(second["value"] > 3.0).astype(np.int64), value=second["value"] + 2.0)
    folders = []
    for name, rows in (("first", first), ("second", second)):
        (root / name).mkdir()
        rows.to_parquet(root / name / "part-0.parquet", index=False)
        folders.append(root / name)
    return folders[0], folders[1], second


def _cli_job(client, store, folder, target, kind, params, warm=None):
    """The saved Pipeline and URI of a CLI job on ``folder`` (``warm``: its model.warm_start)."""
    model = {"kind": kind, "params": params, **({"warm_start": warm} if warm else {})}
    spec = parse_job({"name": "cli", "seed": 0, "model": model,
                      "data": {"path": str(folder), "target": target, "holdout": 0, "features": FEATURES},
                      "output": {"store": str(store), "report": False, "evaluation_report": False}}, "test")
    uri = run_job(spec, client).uri
    return load_model(uri), uri


def _loss(kind, pipeline, frame, target):
    from sklearn.metrics import log_loss, mean_squared_error

    if kind == "logistic":
        return log_loss(frame[target], pipeline.predict_proba(frame[FEATURES]))
    return mean_squared_error(frame[target], pipeline.predict(frame[FEATURES]))


@pytest.mark.parametrize("kind, estimator, target, solver", [
    ("logistic", distml.LogisticRegression, "label", "softmax"),
    ("linear", distml.LinearRegression, "value", "sgd"),
])
def test_partial_fit_equals_the_cli_warm_start_and_follows_the_new_rows(client, tmp_path, batches, kind, estimator,
                                                                        target, solver):
    first, second, new_rows = batches
    params = {"solver": solver, "epochs": 3}
    cli_parent, parent_uri = _cli_job(client, tmp_path, first, target, kind, params)
    cli_child, _ = _cli_job(client, tmp_path, second, target, kind, {**params, "epochs": 1}, warm=parent_uri)

    model = estimator(client=client, **params).fit(str(first), target=target, features=FEATURES)
    np.testing.assert_allclose(model.coef_, cli_parent[-1].coef_, rtol=1e-9, atol=1e-12)
    fitted, parent_job = copy.deepcopy(model.to_sklearn()), model.manifest_["job_id"]
    transformer = model.to_sklearn()[0]
    ddf = _parquet_frame(second)
    assert model.partial_fit(ddf[FEATURES], ddf[target]) is model
    # one pass of SGD from the fitted coefficients over the new rows: the CLI's warm start with epochs 1
    np.testing.assert_allclose(model.coef_, cli_child[-1].coef_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.intercept_, cli_child[-1].intercept_, rtol=1e-9, atol=1e-12)
    assert model.to_sklearn()[0] is transformer  # the fitted feature plan, as a warm start keeps the parent's
    assert model.manifest_["parent"] == {"uri": None, "job_id": parent_job}
    assert _loss(kind, model.to_sklearn(), new_rows, target) < 0.9 * _loss(kind, fitted, new_rows, target)
    if kind == "logistic":  # the new rows are checked as a warm start checks them; the solver must stay
        with pytest.raises(ValueError, match=r"^dask DataFrame \(1 partitions\): target 'label' has class\(es\) 2 "
                                             r"that the fitted LogisticRegression does not know; expected only 0, 1$"):
            model.partial_fit(ddf[FEATURES], ddf[target] + 1)
        with pytest.raises(ValueError, match="partial_fit: the model was fitted with solver 'softmax', not 'sgd'"):
            model.set_params(solver="sgd").partial_fit(ddf[FEATURES], ddf[target])


@pytest.mark.parametrize("estimator, message", [
    (distml.LogisticRegression(), ("LogisticRegression has no partial_fit with solver='auto': partial_fit continues "
                                  "the model by SGD, so it needs solver='softmax' or 'sgd'")),
    (distml.LogisticRegression(solver="newton"), "with solver='newton'"),
    (distml.LinearRegression(), ("LinearRegression has no partial_fit with solver='exact': partial_fit continues "
                                "the model by SGD, so it needs solver='sgd'")),
])
def test_partial_fit_is_absent_for_exact_solvers_and_says_which_solver_has_it(estimator, message):
    assert not hasattr(estimator, "partial_fit")
    with pytest.raises(AttributeError, match=re.escape(message)):
        estimator.partial_fit(np.zeros((4, 2)), [0, 1, 0, 1])
    assert hasattr(estimator.set_params(solver="sgd"), "partial_fit")


def test_forest_without_bootstrap_on_read_parquet_with_computed_column_predicts_as_the_cli_job(client, cli_model,
                                                                                             table):
    """With no row draws involved (no bootstrap, no holdout) the same rows in the same order give the same
    forest: the trees' seeds come from the job's seed alone. (With bootstrap, a Dask DataFrame's rows draw
    their counts from the row key, not from the Parquet file and row number the CLI uses.)"""
    folder, frame = table
    params = {"n_estimators": 6, "max_depth": 5, "bootstrap": False}
    expected = cli_model(client, "label", "forest", {**params, "task": "classification"})
    ddf = _parquet_frame(folder)
    model = distml.RandomForestClassifier(client=client, **params).fit(ddf[FEATURES], ddf["label"])
    proba = model.predict_proba(ddf[FEATURES])
    assert dask.is_dask_collection(proba)
    np.testing.assert_array_equal(proba.compute().to_numpy(), expected.predict_proba(frame[FEATURES]))
    np.testing.assert_array_equal(model.predict(frame[FEATURES]), expected.predict(frame[FEATURES]))


def test_fit_on_an_s3_url_equals_the_local_path_fit(client, table, s3):
    """fit("s3://bucket/table/", target=...) on the S3 server reads what the local folder holds: the same model."""
    folder, frame = table
    s3["boto"].put_object(Bucket=s3["bucket"], Key="table/part-0.parquet", Body=(folder / "part-0.parquet").read_bytes())
    local = distml.LinearRegression(client=client).fit(str(folder), target="value", features=FEATURES)
    remote = distml.LinearRegression(client=client).fit(f"s3://{s3['bucket']}/table/", target="value",
                                                        features=FEATURES, storage_options=s3["storage_options"])
    assert remote.feature_names_in_.tolist() == FEATURES and remote.manifest_["rows"]["train"] == ROWS
    np.testing.assert_array_equal(remote.coef_, local.coef_)
    assert remote.intercept_ == local.intercept_
    np.testing.assert_array_equal(remote.predict(frame[FEATURES]), local.predict(frame[FEATURES]))


def test_progress_draws_a_tqdm_bar_per_phase_with_no_escape_codes(client, table, capsys):
    _, frame = table
    distml.LinearRegression(client=client, progress=True).fit(frame[FEATURES], frame["value"])
    err = capsys.readouterr().err
    assert "stats: 100%" in err and "train: 100%" in err
    assert "\x1b" not in err  # no cursor movement, which a notebook's output shows as text


def test_progress_opens_one_tqdm_auto_bar_at_a_time_and_is_quietly_off_without_tqdm(monkeypatch):
    import sys
    import types

    from distml.estimators._progress import phase_bars

    opened = []

    class Bar:  # stands in for tqdm.auto's class (in Jupyter: tqdm.notebook's widget)
        def __init__(self, **kwargs):
            self.kwargs, self.n, self.shown, self.closed = kwargs, 0, [], False
            opened.append(self)

        def refresh(self):
            assert not self.closed and all(bar.closed for bar in opened[:-1])  # only this bar is open
            self.shown.append(self.n)

        def close(self):
            self.closed = True

    monkeypatch.setitem(sys.modules, "tqdm.auto", types.SimpleNamespace(tqdm=Bar))
    bars = phase_bars(True)
    for phase, fraction in [("stats", 0.5), ("stats", 1.0), ("train", 0.25), ("train", 0.5), ("eval", 0.5)]:
        bars(phase, fraction)
    bars.close()  # the fit's end closes a phase that never reported 1.0
    assert [bar.kwargs["desc"] for bar in opened] == ["stats", "train", "eval"]
    assert [bar.shown for bar in opened] == [[50, 100], [25, 50], [50]] and all(bar.closed for bar in opened)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # tqdm is not installed
    assert phase_bars(True) is None and phase_bars(False) is None
