"""Issue 15: cross-validation and hyperparameter search on the cluster, against scikit-learn on the same rows."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from reference import split_frames, train_rows_with_draws, xy
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from distml import load_model
from distml.blocks import Block
from distml.cli import main
from distml.folds import DRAW_BINS, _draw_histogram_part, folds_from_histogram
from distml.jobfile import parse_job
from distml.models import FAMILIES
from distml.runner import run_job
from distml.search_space import SearchSpec, candidates


def _job(client, tmp_path, folder, model, seed=0, holdout=0.2, log=None, **sections):
    data = {"path": str(folder), "target": "target", "holdout": holdout, **sections.pop("data", {})}
    spec = parse_job({"name": "select", "seed": seed, "data": data, "model": model,
                      "output": {"store": str(tmp_path / "models")}, **sections}, "test")
    result = run_job(spec, client, log=log)
    manifest = json.loads((Path(result.uri) / "manifest.json").read_text())
    return result, manifest, load_model(result.uri)


def _reference_folds(frame: pd.DataFrame, u: np.ndarray, k: int, classes: np.ndarray | None) -> list[np.ndarray]:
    """Row indices of each fold, from the same draws, histogram and quantile rule distml uses."""
    y = frame["target"].to_numpy()
    block = Block(np.arange(len(frame), dtype=np.float64)[:, None], y, u)
    folds = folds_from_histogram(_draw_histogram_part(block, classes), np.full(k, 1 / k), classes)
    return [folds.test_filter(f).apply(block).X[:, 0].astype(np.int64) for f in range(k)]


# --- folds and candidates, no cluster ------------------------------------------------


def test_folds_are_stratified_disjoint_and_keep_draws_uniform():
    rng = np.random.default_rng(0)
    y = rng.choice([0, 1, 2], size=30_000, p=[0.7, 0.25, 0.05])
    block = Block(np.arange(len(y), dtype=np.float64)[:, None], y, rng.random(len(y)))
    classes = np.array([0, 1, 2])
    folds = folds_from_histogram(_draw_histogram_part(block, classes), np.full(5, 0.2), classes)
    seen = np.zeros(len(y), dtype=np.int64)
    for f in range(5):
        test, train = folds.test_filter(f).apply(block), folds.train_filter(f).apply(block)
        seen[test.X[:, 0].astype(np.int64)] += 1
        assert len(test.y) + len(train.y) == len(y)
        assert not set(test.X[:, 0]) & set(train.X[:, 0])
        for c in classes:  # each class's share of the fold, to within one histogram bin's rows
            n_c = int((y == c).sum())
            assert abs(int((test.y == c).sum()) - n_c / 5) <= n_c / DRAW_BINS + 1
        assert train.u.min() >= 0 and train.u.max() < 1 and abs(train.u.mean() - 0.5) < 0.01
        assert test.u.min() >= 0 and test.u.max() < 1 and abs(test.u.mean() - 0.5) < 0.02
    assert (seen == 1).all()  # every row is in exactly one fold


def test_grid_and_random_candidates():
    params = FAMILIES["forest"].Params
    grid = SearchSpec.model_validate({"params": {"max_depth": [2, 4], "n_estimators": {"low": 10, "high": 40,
                                                                                         "num": 3}}})
    assert candidates(grid, params, 0) == [{"max_depth": d, "n_estimators": n} for d in (2, 4) for n in (10, 25, 40)]
    random = SearchSpec.model_validate({"method": "random", "n_iter": 20, "seed": 3, "params": {
        "max_depth": {"low": 2, "high": 12}, "min_impurity_decrease": {"low": 1e-6, "high": 1e-2, "log": True}}})
    drawn = candidates(random, params, 0)
    assert drawn == candidates(random, params, 99)  # its own seed wins over the job's
    assert len(drawn) == 20 and all(isinstance(c["max_depth"], int) and 2 <= c["max_depth"] <= 12 for c in drawn)
    decrease = np.array([c["min_impurity_decrease"] for c in drawn])
    assert decrease.min() >= 1e-6 and decrease.max() <= 1e-2 and np.median(decrease) < 1e-3  # log-uniform


# --- on the cluster ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def regression(make_data):
    return make_data("regression", rows=30_000, features=5, files=3)  # 1.4 MB: partitions of 1MiB cut it


def test_ridge_search_scores_equal_scikit_learn_on_the_same_folds(client, tmp_path, regression):
    folder, _ = regression
    alphas = [0.0, 10.0, 1000.0, 100000.0]
    result, manifest, model = _job(client, tmp_path, folder, {"kind": "linear"},
                                   search={"params": {"alpha": alphas}, "cv": 3}, data={"partition_size": "1MiB"})
    frame, u = train_rows_with_draws(folder, 0, 0.2)
    folds = _reference_folds(frame, u, 3, None)
    X_all = model.named_steps["features"].transform(frame.drop(columns=["target"]))
    y_all = frame["target"].to_numpy()
    rows = manifest["search"]["candidates"]
    assert [r["params"]["alpha"] for r in rows] == alphas
    for row, alpha in zip(rows, alphas):
        expected = []
        for test in folds:
            train = np.setdiff1d(np.arange(len(frame)), test)
            ref = (Ridge(alpha=alpha) if alpha else LinearRegression()).fit(X_all[train], y_all[train])
            expected.append(r2_score(y_all[test], ref.predict(X_all[test])))
        np.testing.assert_allclose(row["scores"], expected, rtol=1e-9, atol=1e-9)
    best = alphas[int(np.argmax([r["mean"] for r in rows]))]
    assert manifest["search"]["best"] == {"alpha": best}
    assert manifest["job"]["model"]["params"]["alpha"] == 0.0  # the job file as written...
    refit = (Ridge(alpha=best) if best else LinearRegression()).fit(X_all, y_all)  # ...refitted with the best
    np.testing.assert_allclose(model.named_steps["model"].coef_, refit.coef_, rtol=1e-7, atol=1e-9)
    assert result.summary["search"]["best"] == {"alpha": best}

    # the folds come from the rows' draws, not from the partitions: other partitions, same scores
    _, again, _ = _job(client, tmp_path, folder, {"kind": "linear"}, search={"params": {"alpha": alphas}, "cv": 3},
                       data={"partition_size": "8MiB"})
    assert again["data"]["partitions"] != manifest["data"]["partitions"]
    for a, b in zip(again["search"]["candidates"], rows):
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-9)


def test_logistic_cv_mean_within_half_a_point_of_cross_val_score(client, tmp_path, make_data):
    folder, _ = make_data("classification", rows=20_000, features=8, files=4, classes=3)
    result, manifest, _ = _job(client, tmp_path, folder, {"kind": "logistic"}, data={"cv": 3})
    cv = manifest["cv"]
    assert cv["k"] == 3 and len(cv["folds"]) == 3 and cv["scoring"] == "accuracy"
    train, _ = split_frames(folder, 0, 0.2)
    X, y = xy(train)
    assert sum(f["rows"] for f in cv["folds"]) == len(train)
    counts = np.array([[f["rows"] for f in cv["folds"]]])
    assert counts.max() - counts.min() <= 3  # folds of equal size, class by class
    theirs = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), X, y,
                             cv=StratifiedKFold(3, shuffle=True, random_state=0))
    assert abs(cv["mean"]["accuracy"] - theirs.mean()) < 0.005, (cv["mean"], theirs)
    assert cv["std"]["accuracy"] == pytest.approx(np.std([f["accuracy"] for f in cv["folds"]]))
    assert result.summary["cv"]["mean"] == cv["mean"]


def _assert_candidates_shared_passes(client, started, job_id, logs, candidates, folds):
    """Each fold's exact logistic candidates made one task per partition and pass between them, in the passes
    of the longest fit alone rather than the sum of all (counted from the scheduler's task stream)."""
    prefix = f"distml-train-{job_id}-"
    train = [str(r["key"]).removeprefix(prefix) for r in client.get_task_stream(start=started)
             if str(r["key"]).startswith(prefix)]
    assert not [k for k in train if re.match(r"r\d+f\d+c\d+-", k)]  # no candidate made a pass of its own
    shared = [m for m in logs if "shared passes" in m]
    assert len(shared) == folds
    for fold, message in enumerate(shared):
        tasks = [k.removeprefix(f"r0f{fold}all-").split("-") for k in train if k.startswith(f"r0f{fold}all-")]
        passes = len({t[0] for t in tasks})
        assert len(tasks) == passes * len({t[1] for t in tasks})  # one task per partition and pass, for all
        alone = int(message.split("alone: ")[1].rstrip(")"))
        assert message == f"{candidates} exact logistic fits from {passes} shared passes over the data (alone: {alone})"
        assert 2 * passes <= alone, (passes, alone)


def _sklearn_grid(estimator, grid, X, y):
    search = GridSearchCV(estimator, grid, cv=StratifiedKFold(3, shuffle=True, random_state=0)).fit(X, y)
    return dict(zip(map(str, search.cv_results_["params"]), search.cv_results_["mean_test_score"]))


def test_search_picks_what_grid_search_cv_picks(client, tmp_path, make_data):
    folder, _ = make_data("classification", rows=5000, features=20, files=2, classes=2, seed=4)
    train, _ = split_frames(folder, 0, 0.2)
    X, y = xy(train)
    fold_rows = len(train) * 2 / 3

    alphas = [1e-4, 1e-2, 1e-1, 1.0]
    logs: list[str] = []
    client.get_task_stream(start=0, stop=0)  # makes sure the scheduler records a task stream
    started = time.time()
    result, manifest, _ = _job(client, tmp_path, folder, {"kind": "logistic"}, log=logs.append,
                               search={"params": {"alpha": alphas}, "cv": 3})
    _assert_candidates_shared_passes(client, started, result.job_id, logs, len(alphas), folds=3)
    theirs = _sklearn_grid(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
                           {"logisticregression__C": [1 / (a * fold_rows) for a in alphas]}, X, y)
    by_alpha = dict(zip(alphas, theirs.values()))
    picked = manifest["search"]["best"]["alpha"]
    assert by_alpha[picked] >= max(by_alpha.values()) - 0.002, (picked, by_alpha)

    depths = [1, 3, 10]
    _, manifest, _ = _job(client, tmp_path, folder, {"kind": "forest", "params": {"n_estimators": 30}},
                          search={"params": {"max_depth": depths}, "cv": 3})
    theirs = _sklearn_grid(RandomForestClassifier(n_estimators=30, random_state=0), {"max_depth": depths}, X, y)
    by_depth = dict(zip(depths, theirs.values()))
    picked = manifest["search"]["best"]["max_depth"]
    assert by_depth[picked] >= max(by_depth.values()) - 0.002, (picked, by_depth)
    ours = {r["params"]["max_depth"]: r["mean"] for r in manifest["search"]["candidates"]}
    assert max(ours.values()) == pytest.approx(max(by_depth.values()), abs=0.02)


def test_successive_halving_keeps_the_best_third_on_three_times_the_rows(client, tmp_path, regression):
    folder, _ = regression
    alphas = [0.0, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7]
    _, manifest, _ = _job(client, tmp_path, folder, {"kind": "linear", "params": {"solver": "sgd", "epochs": 2}},
                          search={"params": {"alpha": alphas}, "halving": {"factor": 3, "min_rows": 100}})
    search = manifest["search"]
    assert [r["fraction"] for r in search["rounds"]] == pytest.approx([1 / 9, 1 / 3, 1.0])
    rounds = [r["round"] for r in search["candidates"]]
    assert sorted(rounds) == [0] * 6 + [1] * 2 + [2]  # 9 candidates, then 3, then 1
    last = next(r for r in search["candidates"] if r["round"] == 2)
    assert search["best"] == last["params"] and search["scored_by"] == "validation share 0.2"
    train_rows = {r["round"]: r["train_rows"] for r in search["candidates"]}
    assert train_rows[0] < train_rows[1] < train_rows[2]
    assert train_rows[2] == pytest.approx(3 * train_rows[1], rel=0.01)


# --- bad input: one line, exit 2, before any work -------------------------------------------


@pytest.mark.parametrize("sections,message", [
    ({"search": {"params": {"gamma": [1, 2]}}},
     ("search.params.gamma: model kind 'logistic' has no parameter 'gamma' (it has solver, alpha, max_iter, tol, "
      "eta0, batch_size, epochs, class_weight, early_stopping, validation_fraction, n_iter_no_change)")),
    ({"search": {"params": {"alpha": []}}}, "search.params: alpha has an empty list of values; got {'alpha': []}"),
    ({"search": {"params": {}}}, ("search.params: must map at least one model parameter to a list of values or a "
                                  "range {low, high, log, num}; got {}")),
    ({"data_cv": 1}, "data.cv: must be greater than or equal to 2; got 1"),
    ({"search": {"params": {"alpha": [0.1, "big"]}}},
     "search.params.alpha: must be a valid number, unable to parse string as a number; got 'big'"),
    ({"search": {"params": {"epochs": {"low": 1, "high": 9}}}},
     "search.params: epochs: a grid needs num (how many values) in a range; got {'epochs': {'high': 9, 'low': 1}}"),
], ids=["unknown-parameter", "empty-list", "empty-grid", "cv-1", "wrong-type", "range-without-num"])
def test_bad_search_is_one_line_before_any_work(tmp_path, sections, message):
    data = {"path": str(tmp_path / "nowhere"), "target": "target"}
    if "data_cv" in sections:
        data["cv"] = sections.pop("data_cv")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "data": data, "model": {"kind": "logistic"}, **sections}))
    result = CliRunner().invoke(main, ["submit", str(path), "--quiet"])
    assert result.exit_code == 2
    assert result.stderr == f"Error: {path}: {message}\n"
    assert not (tmp_path / "models").exists()


def test_cv_with_too_few_training_rows_is_refused_before_the_cluster(tmp_path):
    rng = np.random.default_rng(0)
    pd.DataFrame({"a": rng.normal(size=12), "target": rng.integers(0, 2, 12)}).to_parquet(tmp_path / "d.parquet")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "model": {"kind": "logistic"},
                                    "data": {"path": str(tmp_path / "d.parquet"), "target": "target",
                                             "holdout": 0.5, "cv": 5},
                                    "output": {"store": str(tmp_path / "models")}}))
    result = CliRunner().invoke(main, ["submit", str(path), "--quiet", "--scheduler", "tcp://127.0.0.1:1"])
    assert result.exit_code == 2
    assert result.stderr == (f"Error: data.cv: 5 needs at least 10 training rows; {tmp_path / 'd.parquet'} has 12 "
                             "rows and data.holdout 0.5 leaves about 6\n")
    assert not (tmp_path / "models").exists()
