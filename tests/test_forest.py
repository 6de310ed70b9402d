"""The forest family on a real cluster: quality against in-memory scikit-learn, classes, determinism, errors."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dask.utils import key_split
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.pipeline import Pipeline

from distml import load_model
from distml.blocks import persist
from distml.cluster import worker_resources
from distml.data import open_dataset
from distml.errors import DataError, SpecError
from distml.features import plan_features
from distml.jobfile import parse_job
from distml.models import _forest_trees, forest
from distml.models.base import TrainContext
from distml.runner import run_job
from distml.spec import DataSpec
from distml.synth import make_dataset

TREES = {"n_estimators": 40, "max_depth": 10}


def _context(client, plan, seed=0, job_id="20260101-000000-forest", worker_memory=None, **callbacks) -> TrainContext:
    """The context the runner would build for this plan and cluster (optionally with less worker memory)."""
    n_workers, threads, memory = worker_resources(client)
    return TrainContext.create(client=client, job_id=job_id, seed=seed, plan=plan,
                               resources=(n_workers, threads, worker_memory or memory), **callbacks)


def _fit(client, folder, params, *, seed=0, partition_bytes=200_000, keep=False, **changes):
    """Plan features over ``folder`` (no holdout) and train a forest; returns the Pipeline (and plan)."""
    dataset = open_dataset(DataSpec(path=str(folder), target="target", holdout=0.0), seed)
    dataset.partition(partition_bytes)
    params = forest.Params(**params)
    plan = plan_features(dataset, client, f"20260101-000000-s{seed}", forest.task(params))
    parts = persist(plan.parts, client, "20260101-000000-p") if keep else plan.parts
    model = forest.train(parts, params, _context(client, plan, seed, **changes))
    return Pipeline([("features", plan.transformer), ("model", model)])


def _frames(folder: Path, test: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    train = pd.concat([pd.read_parquet(p) for p in sorted(Path(folder).glob("*.parquet"))], ignore_index=True)
    return train, pd.read_parquet(test)


def _reference(cls, train: pd.DataFrame, **params):
    return cls(**params, random_state=0, n_jobs=1).fit(train.drop(columns=["target"]), train["target"])


def _side_by_side(client, folder, test, cls, params, **fit):
    """distml's forest and scikit-learn's fitted on the same rows: (ours, theirs, holdout X, holdout y)."""
    ours = _fit(client, folder, params, **fit)
    train, holdout = _frames(folder, test)
    return ours, _reference(cls, train, **params), holdout.drop(columns=["target"]), holdout["target"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """30k training rows in 4 files and a 20k-row test file; made once for the module."""
    root = tmp_path_factory.mktemp("forest")

    def make(kind, sort_by_target=False, classes=3):
        return make_dataset(root / f"{kind}-{sort_by_target}-{classes}", kind, rows=30_000, features=8, files=4,
                            classes=classes, seed=3, sort_by_target=sort_by_target, test_rows=20_000)

    return make


@pytest.mark.parametrize("sort_by_target", [False, True], ids=["shuffled-files", "label-sorted-files"])
def test_forest_accuracy_within_half_a_point_of_sklearn(client, data, sort_by_target):
    ours, theirs, X, y = _side_by_side(client, *data("classification", sort_by_target), RandomForestClassifier, TREES)
    assert abs(ours.score(X, y) - theirs.score(X, y)) < 0.005, (ours.score(X, y), theirs.score(X, y))
    model = ours[-1]
    assert isinstance(model, RandomForestClassifier) and len(model.estimators_) == 40
    assert model.classes_.tolist() == [0, 1, 2] and model.n_classes_ == 3 and model.n_outputs_ == 1
    assert model.n_features_in_ == 8 and not hasattr(model, "feature_names_in_")


def test_forest_regression_r2_within_a_hundredth_of_sklearn(client, data):
    params = {"n_estimators": 30, "max_depth": 12, "max_samples": 0.5}
    ours, theirs, X, y = _side_by_side(client, *data("regression", classes=2), RandomForestRegressor, params, keep=True)
    assert abs(ours.score(X, y) - theirs.score(X, y)) < 0.01, (ours.score(X, y), theirs.score(X, y))
    assert isinstance(ours[-1], RandomForestRegressor) and ours[-1].max_features == 1.0


def test_rare_class_missing_from_partitions_keeps_probabilities_aligned(client, tmp_path):
    """A class in 15 rows of one file: trees that never drew it still answer over all three classes."""
    rng = np.random.default_rng(0)
    for i in range(3):
        x = rng.normal(size=(4000, 3))
        label = np.where(x[:, 0] > 0, "hi", "lo").astype(object)
        if i == 1:
            x[:15, 1] = 8.0
            label[:15] = "rare"
        pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "target": label}),
                       tmp_path / f"part-{i}.parquet")
    model = _fit(client, tmp_path, {"n_estimators": 20, "max_samples": 0.05, "max_depth": 6})
    frame = pd.DataFrame({"a": [1.0, -1.0, 0.0], "b": [0.0, 0.0, 8.0], "c": [0.0, 0.0, 0.0]})
    proba = model.predict_proba(frame)
    assert model.classes_.tolist() == ["hi", "lo", "rare"] and proba.shape == (3, 3)
    assert all(tree.n_classes_ == 3 for tree in model[-1].estimators_)
    assert any(tree.tree_.value[:, 0, 2].max() == 0 for tree in model[-1].estimators_)  # some never saw it
    assert model.predict(frame)[:2].tolist() == ["hi", "lo"] and proba[2, 2] > proba[0, 2]
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def _same_forest(a, b) -> bool:
    return all(np.array_equal(s.tree_.threshold, t.tree_.threshold) and np.array_equal(s.tree_.value, t.tree_.value)
               for s, t in zip(a[-1].estimators_, b[-1].estimators_, strict=True))


def test_same_seed_gives_the_same_forest_whatever_the_grouping_and_partitioning(client, data):
    folder, _ = data("classification")
    params = {"n_estimators": 12, "max_depth": 8, "max_samples": 0.3}
    first = _fit(client, folder, params)
    client.get_task_stream(start=0, stop=0)
    # tiny worker memory: one tree per group, several waves; bigger partitions; blocks held in memory
    again = _fit(client, folder, params, partition_bytes=2**20, keep=True, worker_memory=4 * 2**20)
    keys = {key_split(t["key"]) for t in client.get_task_stream()}
    assert _same_forest(first, again)
    assert {"distml-sample", "distml-merge", "distml-tree"} <= keys
    assert not _same_forest(first, _fit(client, folder, params, seed=1))


def test_candidates_with_the_same_draws_share_samples_and_each_gets_its_own_forest(client, make_data):
    """``train_many``: per-tree settings share each sampling pass; each forest equals its own ``train``'s."""
    folder, test = make_data("classification", rows=4000, features=5, files=2, classes=3)
    dataset = open_dataset(DataSpec(path=str(folder), target="target", holdout=0.0), 0)
    dataset.partition(100_000)
    plan = plan_features(dataset, client, "20260101-000000-m", None)
    grid = [{"n_estimators": 4, "max_samples": 0.3, **tree} for tree in (
        {"max_depth": 3}, {"min_samples_leaf": 5, "max_features": 1.0, "criterion": "entropy"},
        {"max_features": 99})] + [{"n_estimators": 3, "max_depth": 4, "class_weight": "balanced", "oob_score": True}]
    params = [forest.Params(**g) for g in grid]
    X = plan.transformer.transform(pd.read_parquet(test).drop(columns=["target"]))

    client.get_task_stream(start=0, stop=0)
    started = time.time()
    shared = forest.train_many(plan.parts, params, _context(client, plan, job_id="20260101-000000-all"))
    sampled = {str(t["key"]) for t in client.get_task_stream(start=started)
               if str(t["key"]).startswith("distml-sample-20260101-000000-all-")}
    for i, (p, ours) in enumerate(zip(params, shared)):
        if p.max_features == 99:  # refused for this candidate alone, as its own train refuses it
            assert isinstance(ours, DataError) and str(ours).startswith("model.params.max_features: 99 is more")
            continue
        theirs = forest.train(plan.parts, p, _context(client, plan, job_id=f"20260101-000000-c{i}"))
        assert ours.get_params() == theirs.get_params() and len(ours.estimators_) == p.n_estimators
        np.testing.assert_array_equal(ours.predict_proba(X), theirs.predict_proba(X))
        assert all(np.array_equal(a.tree_.threshold, b.tree_.threshold)
                   for a, b in zip(ours.estimators_, theirs.estimators_, strict=True))
        if p.oob_score:
            assert ours.oob_score_ == theirs.oob_score_
    # the two draws (4 trees, and 3 balanced) each sampled the partitions once, not once per candidate
    assert {k.split("-")[5] for k in sampled} == {"s0", "s1"}
    assert len({k for k in sampled if k.split("-")[5] == "s0"}) == len(
        {k for k in sampled if k.split("-")[5] == "s1"})


def test_a_forest_search_with_early_stopping_does_not_share():
    params = [forest.Params(early_stopping=True), forest.Params()]
    assert forest.train_many(None, params, None) is None  # decided before any pass: no cluster needed


def test_layout_bounds_a_groups_sample_by_worker_memory(client, data):
    folder, _ = data("classification")
    dataset = open_dataset(DataSpec(path=str(folder), target="target", holdout=0.0), 0)
    dataset.partition(2**20)
    plan = plan_features(dataset, client, "20260101-000000-l", None)
    params = forest.Params(n_estimators=20, max_samples=0.3)
    ctx = _context(client, plan, worker_memory=4 * 2**20)
    rates, _, _ = _forest_trees._draw_rates(params, ctx, False)
    layout = _forest_trees._layout(params, ctx, rates)
    assert sorted(t for g in layout.groups for t in g) == list(range(20))
    assert layout.group_bytes <= _forest_trees.TASK_BUDGET * 4 * 2**20 and len(layout.waves) > 1
    whole = forest.Params(max_samples=1.0)
    tiny = _context(client, plan, worker_memory=2 * 2**20)
    with pytest.raises(DataError, match=r"^model\.params\.max_samples: one tree's sample takes about \d+ MiB"):
        _forest_trees._layout(whole, tiny, _forest_trees._draw_rates(whole, tiny, False)[0])


def _job(tmp_path, folder, params, target="target"):
    return parse_job({"name": "forest-job", "seed": 0,
                      "data": {"path": str(folder), "target": target, "holdout": 0.2},
                      "model": {"kind": "forest", "params": params},
                      "output": {"store": str(tmp_path / "models")}}, "job.yaml")


def test_forest_job_saves_a_pipeline_with_importances_by_input_column(client, data, tmp_path):
    folder, test = data("classification")
    result = run_job(_job(tmp_path, folder, {"n_estimators": 10, "max_depth": 6}), client)
    model = load_model(result.uri)
    frame = pd.read_parquet(test).head(50)
    assert model.predict(frame.drop(columns=["target"])).shape == (50,)
    assert result.metrics["accuracy"] > 0.6
    manifest = json.loads((Path(result.uri) / "manifest.json").read_text())
    importances = manifest["feature_importances"]
    assert set(importances) == {f"x{j}" for j in range(8)}
    assert sum(importances.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("params,target,message", [
    ({"max_samples": 10**6}, "target",
     r"model\.params\.max_samples: 1000000 rows per tree is more than the \d+ training rows"),
    ({"task": "regression"}, "target", r"target 'target' holds 'class-a'; expected numbers for a regression"),
], ids=["max-samples-larger-than-the-data", "regression-on-string-target"])
def test_bad_data_for_a_forest_fails_before_work_with_one_line_and_no_artifact(client, tmp_path, params, target,
                                                                               message, make_data):
    from distributed import get_task_stream

    folder, _ = make_data("classification", rows=3000, string_labels=True)
    with get_task_stream(client=client) as stream, pytest.raises(DataError, match=message) as info:
        run_job(_job(tmp_path, folder, params, target), client)
    assert "\n" not in str(info.value) and info.value.exit_code == 2
    assert not list((tmp_path / "models").rglob("manifest.json"))
    # every task the scheduler ran during the job (whichever client sent it): the statistics pass that found
    # the problem, and no sampling, tree or out-of-bag work (the workers' warm-up imports read no data)
    groups = {key_split(t["key"]) for t in stream.data}
    assert groups - {"distml-warm"} == {"distml-stats"}, groups


@pytest.mark.parametrize("params,field", [
    ({"n_estimators": 0}, "n_estimators"),
    ({"max_samples": 1.5}, "max_samples"),
    ({"bootstrap": False, "max_samples": 0.5}, "max_samples"),
    ({"task": "regression", "criterion": "gini"}, "criterion"),
    ({"max_depth": 0}, "max_depth"),
    ({"bootstrap": False, "oob_score": True}, "oob_score"),
])
def test_bad_forest_params_are_one_line_errors_naming_the_field(params, field):
    with pytest.raises(SpecError) as info:
        parse_job({"name": "x", "data": {"path": "d", "target": "t"},
                   "model": {"kind": "forest", "params": params}}, "job.yaml")
    assert "\n" not in str(info.value) and "model.params" in str(info.value) and field in str(info.value)
    assert info.value.exit_code == 2


def test_tree_size_limits_and_pruning_act_as_in_sklearn(client, data):
    params = {"n_estimators": 20, "max_samples": 0.3, "max_leaf_nodes": 64, "ccp_alpha": 1e-3,
              "min_impurity_decrease": 1e-5}
    ours, theirs, X, y = _side_by_side(client, *data("classification"), RandomForestClassifier, params)
    assert abs(ours.score(X, y) - theirs.score(X, y)) < 0.01, (ours.score(X, y), theirs.score(X, y))
    model = ours[-1]
    assert (model.max_leaf_nodes, model.ccp_alpha, model.min_impurity_decrease) == (64, 1e-3, 1e-5)
    leaves = [tree.get_n_leaves() for tree in model.estimators_]
    assert max(leaves) <= 64 and np.mean(leaves) < 0.8 * 64  # capped, and pruning cut the trees below the cap
    assert np.mean(leaves) == pytest.approx(
        np.mean([tree.get_n_leaves() for tree in theirs.estimators_]), rel=0.2)


@pytest.mark.parametrize("kind, cls", [("classification", RandomForestClassifier), ("regression", RandomForestRegressor)])
def test_out_of_bag_score_agrees_with_sklearns_and_the_holdout(client, data, kind, cls):
    params = {"n_estimators": 30, "max_depth": 10, "max_samples": 0.5, "oob_score": True}
    logs: list[str] = []
    progress: list[float] = []
    ours, theirs, X, y = _side_by_side(client, *data(kind, classes=3 if kind == "classification" else 2), cls,
                                       params, log=logs.append, report=lambda phase, done: progress.append(done))
    model = ours[-1]
    assert model.oob_score and abs(model.oob_score_ - theirs.oob_score_) < 0.01, \
        (model.oob_score_, theirs.oob_score_)
    assert abs(model.oob_score_ - ours.score(X, y)) < 0.01, (model.oob_score_, ours.score(X, y))
    assert any(f"out-of-bag {'accuracy' if kind == 'classification' else 'R²'} {model.oob_score_:.4f} on 30,000 "
               "training rows" in line for line in logs), logs
    # trees fill the train phase's bar to 0.9, the out-of-bag pass the rest, and it never goes back
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert pytest.approx(0.9) in progress and any(0.9 < p < 1.0 for p in progress), progress
