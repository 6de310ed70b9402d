"""Early stopping for every iterative family: it stops, records where and its curve, and keeps the quality.

SGD families (logistic, linear, the svm's linear route) stop on the validation slice carved from each
row's draw; the forest stops by trees on its out-of-bag score. Families that cannot stop early refuse
``early_stopping: true`` in one line before any work.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from reference import split_frames, xy
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import accuracy_score, r2_score
from sklearn.svm import LinearSVC

from distml import load_model
from distml.blocks import persist
from distml.checkpoints import Checkpoints
from distml.cli import main
from distml.cluster import worker_resources
from distml.console import summary_lines
from distml.data import open_dataset
from distml.features import plan_features
from distml.jobfile import parse_job
from distml.jobs import JobRecords
from distml.models import forest
from distml.models.base import TrainContext
from distml.runner import run_job
from distml.spec import DataSpec

ROWS, FILES = 4000, 4
WEIGHTS = np.array([1.5, -1.0, 0.8, 0.0, 0.5])


@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    """Binary labels from a noisy logistic model and a noisy linear target: losses level off in a few epochs."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("early")
    X = rng.normal(size=(ROWS, len(WEIGHTS)))
    columns = {f"x{j}": X[:, j] for j in range(len(WEIGHTS))}
    targets = {"classification": np.where(rng.random(ROWS) < 1 / (1 + np.exp(-2 * X @ WEIGHTS)), "yes", "no"),
               "regression": X @ WEIGHTS + rng.normal(scale=0.5, size=ROWS)}
    folders = {}
    for kind, target in targets.items():
        folder = root / kind
        folder.mkdir()
        frame = pd.DataFrame({**columns, "target": target})
        for i in range(FILES):
            frame.iloc[i * ROWS // FILES:(i + 1) * ROWS // FILES].to_parquet(folder / f"part-{i}.parquet", index=False)
        folders[kind] = folder
    return folders


def _job(folder, store, kind, params, name="early"):
    return parse_job({"name": name, "seed": 0, "data": {"path": str(folder), "target": "target", "holdout": 0.2},
                      "model": {"kind": kind, "params": params},
                      "output": {"store": str(store), "report": False, "evaluation_report": False}}, "test")


def _run(client, folder, store, kind, params):
    logs: list[str] = []
    result = run_job(_job(folder, store, kind, params), client, log=logs.append)
    manifest = json.loads((Path(result.uri) / "manifest.json").read_text())
    return result, manifest, load_model(result.uri), logs


def _held_out(folder):
    train, test = split_frames(folder, 0, 0.2)
    return xy(train), xy(test)


def _check_stop_rule(training, x, y, lower_is_better):
    """scikit-learn's rule, replayed on the recorded curve: it ends at the first point where n_iter_no_change
    points in a row failed to beat the best before them by tol, and the best is the kept model."""
    sign = -1 if lower_is_better else 1
    values = [sign * p[y] for p in training["curve"]]
    stale, best = 0, 0
    for i, value in enumerate(values):
        if i:
            stale = stale + 1 if value < values[best] + training["tol"] else 0
            best = i if value > values[best] else best
        assert stale < training["n_iter_no_change"] or i == len(values) - 1, (values, i)
    assert stale == training["n_iter_no_change"], values
    assert training["best"] == training["curve"][best]


SGD_CASES = {
    "logistic-sgd": ("classification", "logistic", {"solver": "sgd", "alpha": 1e-3}, "validation log loss"),
    "linear-sgd": ("regression", "linear", {"solver": "sgd"}, "validation mean squared error"),
    "svm-linear": ("classification", "svm", {"kernel": "linear"}, "validation hinge loss"),
}


@pytest.mark.parametrize("case", SGD_CASES)
def test_sgd_family_stops_early_records_its_curve_and_keeps_its_quality(client, easy, tmp_path, case):
    task, kind, params, metric = SGD_CASES[case]
    folder = easy[task]
    result, manifest, model, logs = _run(client, folder, tmp_path, kind,
                                         {**params, "epochs": 50, "early_stopping": True, "n_iter_no_change": 2})
    training = manifest["training"]
    assert training["metric"].startswith(metric)
    assert training["early_stopping"] is True and training["max_epochs"] == 50
    assert training["epochs_run"] < 50 and training["stopped_at"] == training["epochs_run"]
    # epoch 0 scores nothing (no model yet); every later epoch scores the model it started from, one log line each
    assert len(training["curve"]) == training["epochs_run"] - 1
    assert [p["epoch"] for p in training["curve"]] == list(range(1, training["epochs_run"]))
    scored = [line for line in logs if f": {metric}" in line]
    assert len(scored) == len(training["curve"])
    assert f"early stop after epoch {training['epochs_run'] - 1}" in "\n".join(logs)
    _check_stop_rule(training, "epoch", "validation_loss", lower_is_better=True)
    assert model[-1].n_iter_ == training["epochs_kept"] == training["best"]["epoch"]
    assert (f"  training  stopped after {training['epochs_run']} of 50 epochs; best {training['metric']} "
            f"{training['best']['validation_loss']:.5f} after {training['best']['epoch']}") in summary_lines(result.summary)
    (X, y), (X_test, y_test) = _held_out(folder)
    if task == "regression":
        theirs = r2_score(y_test, LinearRegression().fit(X, y).predict(X_test))
        assert abs(result.metrics["r2"] - theirs) < 0.005, (result.metrics["r2"], theirs)
    else:
        reference = LogisticRegression(C=1 / (1e-3 * len(y))) if kind == "logistic" else LinearSVC()
        theirs = accuracy_score(y_test, reference.fit(X, y).predict(X_test))
        assert result.metrics["accuracy"] > theirs - 0.005, (result.metrics["accuracy"], theirs)


def test_forest_stops_by_out_of_bag_score_and_keeps_the_forest_of_its_best_group(client, easy, tmp_path):
    folder = easy["classification"]
    params = {"n_estimators": 60, "max_depth": 5, "oob_score": True, "early_stopping": True, "tol": 0.005,
              "n_iter_no_change": 2}
    result, manifest, model, logs = _run(client, folder, tmp_path / "early", "forest", params)
    training = manifest["training"]
    kept = training["trees_kept"]
    assert training["metric"] == "out-of-bag accuracy" and training["max_trees"] == 60
    assert training["trees_grown"] < 60 and training["stopped_at"] == training["trees_grown"]
    assert training["curve"][-1]["trees"] == training["trees_grown"]
    assert len([line for line in logs if "trees, out-of-bag accuracy" in line]) == len(training["curve"])
    _check_stop_rule(training, "trees", "oob_score", lower_is_better=False)
    forest_model = model[-1]
    assert len(forest_model.estimators_) == forest_model.n_estimators == kept == training["best"]["trees"] < 60
    assert forest_model.oob_score_ == training["best"]["oob_score"]
    assert (f"  training  stopped at {training['trees_grown']} of 60 trees, kept {kept}; best out-of-bag accuracy "
            f"{forest_model.oob_score_:.4f}") in summary_lines(result.summary)
    # The kept trees are the first `kept` trees of any forest from this seed, and the incremental out-of-bag
    # tallies give exactly the score of the one full out-of-bag pass over them.
    _, _, plain_model, _ = _run(client, folder, tmp_path / "plain", "forest",
                                {"n_estimators": kept, "max_depth": 5, "oob_score": True})
    (X, y), (X_test, y_test) = _held_out(folder)
    np.testing.assert_array_equal(model.predict_proba(X_test), plain_model.predict_proba(X_test))
    assert plain_model[-1].oob_score_ == forest_model.oob_score_
    theirs = RandomForestClassifier(n_estimators=kept, max_depth=5, random_state=0).fit(X, y)
    assert abs(result.metrics["accuracy"] - accuracy_score(y_test, theirs.predict(X_test))) < 0.01


class _Crash(Exception):
    """What the driver's death looks like to this test: raised right after a checkpoint is written."""


def test_forest_early_stopping_resumes_from_its_checkpointed_curve(client, easy, tmp_path):
    dataset = open_dataset(DataSpec(path=str(easy["regression"]), target="target", holdout=0.0), 0)
    dataset.partition(40_000)
    params = forest.Params(n_estimators=40, max_depth=4, early_stopping=True, n_iter_no_change=2, tol=0.005)
    plan = plan_features(dataset, client, "20260101-000000-ea51e0", forest.task(params))
    parts = persist(plan.parts, client, "20260101-000000-ea51e0")  # as the runner does when the blocks fit

    def fit(checkpoints=None, logs=None):
        training: dict = {}
        ctx = TrainContext.create(client=client, job_id="20260101-000000-ea51e0", seed=0, plan=plan,
                                  resources=worker_resources(client), checkpoints=checkpoints,
                                  log=(logs if logs is not None else []).append)
        ctx = replace(ctx, env=replace(ctx.env, record_training=training.update))
        return forest.train(parts, params, ctx), training

    expected, expected_training = fit()
    assert expected_training["trees_grown"] < 40 and len(expected_training["curve"]) >= 4
    records = JobRecords(str(tmp_path))
    first = Checkpoints(records, "20260101-000000-ea51e0")

    def write_then_crash(step, state):
        first.write(step, state)
        if step >= 2:
            raise _Crash

    with pytest.raises(_Crash):
        fit(SimpleNamespace(write=write_then_crash, restore=first.restore))
    logs: list[str] = []
    again = Checkpoints(records, "20260101-000000-ea51e0", resume=True)
    got, got_training = fit(again, logs)
    assert again.restored is not None and again.restored["step"] >= 2
    assert any(line.startswith("forest: resuming early stopping after") for line in logs), logs
    assert got_training == expected_training
    X = np.random.default_rng(1).normal(size=(200, plan.n_features))
    np.testing.assert_array_equal(got.predict(X), expected.predict(X))


REFUSED = [
    ("linear", {"early_stopping": True},
     "solver exact solves the normal equations in one pass and cannot stop early; use solver: sgd"),
    ("logistic", {"solver": "newton", "early_stopping": True},
     "solver newton is exact (it stops at tol or max_iter) and cannot stop early; use solver: sgd, softmax or auto"),
    ("logistic", {"solver": "lbfgs", "early_stopping": True},
     "solver lbfgs is exact (it stops at tol or max_iter) and cannot stop early; use solver: sgd, softmax or auto"),
    ("svm", {"kernel": "rbf", "early_stopping": True},
     ("kernel rbf without an approximation trains a cascade SVM, which cannot stop early; use kernel: linear or "
      "approximation: nystroem or rbf_sampler")),
    ("forest", {"bootstrap": False, "early_stopping": True},
     "early stopping scores the trees out of bag, which needs bootstrap: true (bootstrap is false)"),
]


@pytest.mark.parametrize("kind,params,reason", REFUSED, ids=[f"{k}-{p.get('solver', p.get('kernel', 'nobootstrap'))}"
                                                            for k, p, _ in REFUSED])
def test_a_family_that_cannot_stop_early_refuses_in_one_line_before_any_work(tmp_path, kind, params, reason):
    import yaml

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "refused", "data": {"path": str(tmp_path / "nowhere"), "target": "y"},
                                   "model": {"kind": kind, "params": params}}))
    out = CliRunner().invoke(main, ["submit", str(job), "--store", str(tmp_path / "models")])
    assert out.exit_code == 2
    assert out.output.strip() == f"Error: {job}: model.params.early_stopping: {reason}; got True"
    assert not (tmp_path / "models").exists()
