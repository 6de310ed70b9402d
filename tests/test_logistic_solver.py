"""The exact logistic solvers against scikit-learn's ``LogisticRegression(lbfgs)`` on the same transformed rows.

The reference is run to a tight tolerance (scikit-learn's own default ``tol=1e-4`` stops about 1e-3 from
the optimum on these rows), so both sides are the optimum of the same objective: coefficients must agree to
1e-4 relative, within 15 passes over the data, counted from the scheduler's task stream.
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from distml.blocks import persist
from distml.cluster import worker_resources
from distml.data import open_dataset
from distml.errors import JobCancelled, SpecError
from distml.features import plan_features
from distml.jobfile import parse_job
from distml.models import logistic
from distml.models.base import TrainContext
from distml.spec import DataSpec
from distml.synth import _write, make_rows

JOB = "20260101-000000-lr"


def _prepare(client, folder, job_id=JOB, partition_bytes=100_000, log=None):
    """Plan features over ``folder`` (every row trains); returns (plan, context)."""
    dataset = open_dataset(DataSpec(path=str(folder), target="target", holdout=0.0), 0)
    dataset.partition(partition_bytes)
    plan = plan_features(dataset, client, f"{job_id}-plan", "classification")
    ctx = TrainContext.create(client=client, job_id=job_id, seed=0, plan=plan,
                              resources=worker_resources(client), log=log or (lambda message: None))
    return plan, ctx


_COUNTED_CALLS = itertools.count()


def _counted(client, ctx, n_parts, fit):
    """``fit(ctx)``'s result and how many passes over the data its training tasks made (the scheduler's task stream).

    Exact solvers make one task per partition per pass, whatever the number of fits sharing the pass. Each call's
    tasks get a key namespace of their own and are counted by key, not by a time cut in the task stream (whose
    records arrive out of stop order, so a cut can take in an earlier fit's).
    """
    own = TrainContext(replace(ctx.env, job_id=f"{ctx.env.job_id}_{next(_COUNTED_CALLS)}"), ctx.data)
    client.get_task_stream(start=0, stop=0)  # starts the scheduler's task stream if it is not recording yet
    result = fit(own)
    prefix = f"distml-train-{own.env.job_id}-"
    keys = {str(r["key"]).removeprefix(prefix) for r in client.get_task_stream() if str(r["key"]).startswith(prefix)}
    passes = {int(k.split("-")[0]) for k in keys}
    assert passes, "no training task was recorded"
    assert n_parts is None or len(keys) == len(passes) * n_parts
    return result, len(passes)


def _fit(client, folder, params, *, keep=False, job_id=JOB, partition_bytes=100_000):
    """Plan features over ``folder`` (every row trains) and fit; returns (estimator, plan, log, passes)."""
    logs: list[str] = []
    plan, ctx = _prepare(client, folder, job_id, partition_bytes, logs.append)
    parts = persist(plan.parts, client, f"{job_id}-keep") if keep else plan.parts
    exact = params.get("solver", "auto") in ("auto", "newton", "lbfgs")  # exact: one task per partition per pass
    estimator, passes = _counted(client, ctx, parts.n_parts if exact else None,
                                 lambda own: logistic.train(parts, logistic.Params(**params), own))
    if keep:
        client.cancel(parts.train + parts.holdout)
    return estimator, plan, logs, passes


def _rows(folder: Path) -> tuple[pd.DataFrame, np.ndarray]:
    frame = pd.concat([pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))], ignore_index=True)
    return frame.drop(columns=["target"]), frame["target"].to_numpy()


def _assert_close(ours: np.ndarray, theirs: np.ndarray, rtol: float) -> None:
    scale = np.abs(theirs).max()
    assert np.abs(ours - theirs).max() <= rtol * scale, (np.abs(ours - theirs).max() / scale, ours, theirs)


@pytest.mark.parametrize("classes,class_weight", [(2, None), (3, None), (3, "balanced"), (2, {0: 3.0, 1: 0.5})],
                         ids=["binary", "3-class", "3-class-balanced", "binary-dict-weights"])
def test_newton_coefficients_equal_lbfgs_to_1e_4_within_15_passes(client, make_data, classes, class_weight):
    folder, _ = make_data("classification", rows=8000, features=6, files=3, classes=classes)
    estimator, plan, logs, passes = _fit(client, folder, {"class_weight": class_weight})
    X, y = _rows(folder)
    X = plan.transformer.transform(X)
    assert estimator.C == pytest.approx(1.0 / (1e-5 * len(y)))  # alpha per row, as SGDClassifier's
    reference = LogisticRegression(C=estimator.C, class_weight=class_weight, tol=1e-10, max_iter=10_000).fit(X, y)

    assert type(estimator) is LogisticRegression
    assert estimator.coef_.shape == reference.coef_.shape == (1 if classes == 2 else classes, 6)
    _assert_close(estimator.coef_, reference.coef_, 1e-4)
    _assert_close(estimator.intercept_, reference.intercept_, 1e-4)
    np.testing.assert_array_equal(estimator.classes_, reference.classes_)
    np.testing.assert_allclose(estimator.predict_proba(X), reference.predict_proba(X), atol=1e-5)
    np.testing.assert_array_equal(estimator.predict(X), reference.predict(X))
    assert passes <= 15
    assert logs[0] == f"solver auto: newton (6 features, {classes} classes)"
    assert f"newton: converged after {estimator.n_iter_[0]} iterations, {passes} passes over the data" in logs


def test_lbfgs_follows_scikit_learns_own_path(client, make_data):
    """``solver: lbfgs`` is scipy's L-BFGS-B with scikit-learn's settings: the same stopping point."""
    folder, _ = make_data("classification", rows=8000, features=6, files=3, classes=3)
    estimator, plan, logs, passes = _fit(client, folder, {"solver": "lbfgs"})
    X, y = _rows(folder)
    reference = LogisticRegression(C=estimator.C).fit(plan.transformer.transform(X), y)  # scikit-learn's defaults
    _assert_close(estimator.coef_, reference.coef_, 1e-6)
    assert estimator.n_iter_[0] == reference.n_iter_[0]
    assert f"lbfgs: converged after {estimator.n_iter_[0]} iterations, {passes} passes over the data" in logs


def _write_layouts(root: Path) -> tuple[Path, Path]:
    """The same 9000 rows of 3 classes twice: in files grouped by class (each nearly one class), and shuffled."""
    X, y = make_rows("classification", 9000, 5, 3, seed=3, stream=0)
    grouped, shuffled = root / "grouped", root / "shuffled"
    for folder in (grouped, shuffled):
        folder.mkdir(parents=True, exist_ok=True)
    stray = np.random.default_rng(0).permutation(len(y))[:240]  # a few rows of other classes in each file
    rest = np.setdiff1d(np.arange(len(y)), stray)
    files = [half for c in range(3) for half in np.array_split(rest[y[rest] == c], 2)]  # two files per class
    for i, rows in enumerate(files):
        _write(grouped / f"part-{i}.parquet", X[np.concatenate([rows, stray[i::6]])],
               y[np.concatenate([rows, stray[i::6]])], None)
    for i, rows in enumerate(np.array_split(np.random.default_rng(1).permutation(len(y)), 6)):
        _write(shuffled / f"part-{i}.parquet", X[rows], y[rows], None)
    return grouped, shuffled


def test_class_grouped_files_give_the_coefficients_of_shuffled_files(client, tmp_path):
    grouped, shuffled = _write_layouts(tmp_path)
    per_file = [pd.read_parquet(p)["target"].value_counts(normalize=True).max() for p in sorted(grouped.iterdir())]
    assert min(per_file) > 0.9, per_file  # each file is nearly one class
    ours, _, _, passes = _fit(client, grouped, {"class_weight": "balanced"}, keep=True)
    theirs, _, _, _ = _fit(client, shuffled, {"class_weight": "balanced"})
    np.testing.assert_allclose(ours.coef_, theirs.coef_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ours.intercept_, theirs.intercept_, rtol=1e-7, atol=1e-9)
    assert passes <= 15


def test_max_iter_reached_is_said_in_the_log(client, make_data):
    folder, _ = make_data("classification", rows=8000, features=6, files=3, classes=2)
    estimator, _, logs, passes = _fit(client, folder, {"solver": "newton", "max_iter": 1})
    assert estimator.n_iter_[0] == 1 and passes == 2
    assert ("warning: newton did not converge within max_iter=1 (tol 1e-06); "
            "the model is the last iterate: raise model.params.max_iter") in logs


SHARED = {
    "binary": (2, [{"alpha": a} for a in (1e-5, 1e-3, 1e-1)]),
    "3-class": (3, [{"alpha": a} for a in (1e-5, 1e-3, 1e-1)]
                + [{"solver": "lbfgs", "alpha": 1e-4, "class_weight": "balanced", "tol": 1e-5, "max_iter": 12}]),
}


@pytest.mark.parametrize("case", list(SHARED))
def test_candidates_sharing_passes_get_the_coefficients_of_their_own_fits(client, make_data, case):
    """``train_many`` stacks every running candidate into each pass: each ends bitwise where its own ``train`` does,
    in as many passes as the longest of them alone."""
    classes, grid = SHARED[case]
    folder, _ = make_data("classification", rows=4000, features=5, files=2, classes=classes)
    plan, ctx = _prepare(client, folder)
    params = [logistic.Params(**p) for p in grid]
    alone = [_counted(client, ctx, plan.parts.n_parts, lambda own, p=p: logistic.train(plan.parts, p, own))
             for p in params]
    logs: list[str] = []
    shared_ctx = TrainContext(replace(ctx.env, job_id=f"{JOB}-all", log=logs.append), ctx.data)
    shared, passes = _counted(client, shared_ctx, plan.parts.n_parts,
                              lambda own: logistic.train_many(plan.parts, params, own))

    for ours, (theirs, _) in zip(shared, alone):
        assert type(ours) is LogisticRegression and ours.get_params() == theirs.get_params()
        np.testing.assert_array_equal(ours.coef_, theirs.coef_)
        np.testing.assert_array_equal(ours.intercept_, theirs.intercept_)
        np.testing.assert_array_equal(ours.n_iter_, theirs.n_iter_)
    alone_passes = [n for _, n in alone]
    assert passes == max(alone_passes) < sum(alone_passes), (passes, alone_passes)
    assert logs == [f"{len(grid)} exact logistic fits from {passes} shared passes over the data "
                    f"(alone: {sum(alone_passes)})"]


def test_a_cancel_between_shared_passes_ends_every_candidates_solver(client, make_data):
    folder, _ = make_data("classification", rows=4000, features=5, files=2, classes=3)
    plan, ctx = _prepare(client, folder)
    reports: list[float] = []

    def report(phase: str, fraction: float) -> None:
        reports.append(fraction)
        if len(reports) == 2:
            raise JobCancelled("cancelled")

    cancelling = TrainContext(replace(ctx.env, job_id=f"{JOB}-cancel", report=report), ctx.data)
    params = [logistic.Params(alpha=a) for a in (1e-5, 1e-3)] + [logistic.Params(solver="lbfgs")]
    with pytest.raises(JobCancelled):
        logistic.train_many(plan.parts, params, cancelling)
    assert reports == [0.0, 0.0]
    assert not [t for t in threading.enumerate() if t.name.startswith("distml-fit-")]


def _job(params):
    return {"name": "x", "data": {"path": "d", "target": "target"}, "model": {"kind": "logistic", "params": params}}


@pytest.mark.parametrize("params,message", [
    ({"solver": "newton", "validation_fraction": 0.2},
     "model.params: validation_fraction does not apply to solver newton (exact, it stops at tol or max_iter)"),
    ({"solver": "lbfgs", "epochs": 5},
     "model.params: epochs does not apply to solver lbfgs (exact, it stops at tol or max_iter)"),
    ({"solver": "softmax", "max_iter": 5}, "model.params: max_iter does not apply to solver softmax (SGD)"),
])
def test_a_parameter_the_solver_would_ignore_is_refused_in_one_line(params, message):
    with pytest.raises(SpecError) as info:
        parse_job(_job(params), "job.yaml")
    assert str(info.value).startswith(f"job.yaml: {message}; got "), str(info.value)
    assert "\n" not in str(info.value)


def test_auto_takes_softmax_when_an_sgd_parameter_is_set_or_the_data_is_wide():
    assert logistic.Params().pick_solver(6, 3) == "newton"
    assert logistic.Params(early_stopping=True).pick_solver(6, 3) == "softmax"
    assert logistic.Params(epochs=3).pick_solver(6, 3) == "softmax"
    assert logistic.Params().pick_solver(logistic.NEWTON_MAX_WIDTH - 1, 2) == "newton"
    assert logistic.Params().pick_solver(logistic.NEWTON_MAX_WIDTH // 4, 4) == "softmax"


def test_softmax_on_class_grouped_files_scores_within_half_a_point(client, tmp_path):
    """Weak features, four classes of unequal size, each file one class: lanes mix partitions, so no drift."""
    solver, classes = "softmax", 4
    X, y = make_rows("classification", 40_000, 6, classes, seed=5, stream=0, noise=4.0)
    test_X, test_y = make_rows("classification", 10_000, 6, classes, seed=5, stream=1, noise=4.0)
    for i, rows in enumerate(np.array_split(np.argsort(y, kind="stable"), 8)):
        _write(tmp_path / f"part-{i}.parquet", X[rows], y[rows], None)
    columns = [f"x{j}" for j in range(6)]
    ours, plan, _, _ = _fit(client, tmp_path, {"solver": solver}, keep=True)
    reference = LogisticRegression(max_iter=1000).fit(plan.transformer.transform(pd.DataFrame(X, columns=columns)), y)
    test = plan.transformer.transform(pd.DataFrame(test_X, columns=columns))
    theirs = (reference.predict(test) == test_y).mean()
    assert (ours.predict(test) == test_y).mean() > theirs - 0.005, ((ours.predict(test) == test_y).mean(), theirs)
