"""A search's SGD candidates sharing their epochs (``_sgd.train_sgd_many``) against each candidate's own ``train``.

Every shared task reads its group of partitions once and advances every running candidate: each model must be
bitwise the one the candidate's own fit gives, the whole group must make one task per group of partitions per
epoch (counted by distinct task keys in the scheduler's task stream), and a candidate that stops early must
leave the later epochs.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from distml.cluster import worker_resources
from distml.data import open_dataset
from distml.features import plan_features
from distml.models import linear, logistic, svm
from distml.models._sgd import MIX
from distml.models.base import TrainContext
from distml.spec import DataSpec

JOB = "20260101-000000-sgdmany"
ES = {"early_stopping": True, "validation_fraction": 0.2}
# (family, task, candidates): alphas, rates and schedules as a search would vary them; the stopping ones
# (tol so loose that the first scored epoch is never beaten by it) stop at different epochs.
ROUTES = {
    "logistic-softmax": (logistic, "classification", [
        {"solver": "softmax", "alpha": 1e-5, "epochs": 2}, {"solver": "softmax", "alpha": 1e-3, "epochs": 4},
        {"solver": "softmax", "alpha": 1e-4, "epochs": 6, "eta0": 0.05, "tol": 10.0, "n_iter_no_change": 1, **ES}]),
    "logistic-sgd": (logistic, "classification", [{"solver": "sgd", "alpha": a, "epochs": 2} for a in (1e-4, 1e-2)]
                     + [{"solver": "sgd", "alpha": 1e-3, "epochs": 3, "class_weight": "balanced"}]),
    "linear-sgd": (linear, "regression", [{"solver": "sgd", "alpha": a, "epochs": e} for a, e in ((0.0, 2), (1e-2, 4))]
                   + [{"solver": "sgd", "eta0": 0.001, "epochs": 5, "tol": 10.0, "n_iter_no_change": 1, **ES}]),
    "svm-linear": (svm, "classification", [{"kernel": "linear", "C": c, "epochs": 2} for c in (0.1, 10.0)]
                   + [{"kernel": "linear", "loss": "squared_hinge", "epochs": 3, "early_stopping": True}]),
    "svm-nystroem": (svm, "classification", [{"approximation": "nystroem", "n_components": 20, "C": c, "epochs": 2}
                                             for c in (0.1, 10.0)] + [{"approximation": "nystroem", "n_components": 20,
                                                                       "loss": "squared_hinge", "epochs": 3}]),
}


def _prepare(client, folder, kind, log):
    dataset = open_dataset(DataSpec(path=str(folder), target="target", holdout=0.0), 0)
    dataset.partition(1_000)  # the smallest partitions, a file each (1,000 rows): groups of MIX, 4 + 4 + 1, dealt to two lanes
    plan = plan_features(dataset, client, f"{JOB}-plan", kind)
    ctx = TrainContext.create(client=client, job_id=JOB, seed=0, plan=plan, resources=worker_resources(client),
                              log=log)
    return plan.parts, ctx


def _tasks_per_epoch(client, job_id, fit):
    """``fit()``'s result and its training tasks per epoch, counted by distinct key in the task stream."""
    client.get_task_stream(start=0, stop=0)  # starts the scheduler's task stream if it is not recording yet
    result = fit()
    prefix = f"distml-train-{job_id}-"
    keys = {str(r["key"]).removeprefix(prefix) for r in client.get_task_stream() if str(r["key"]).startswith(prefix)}
    return result, Counter(int(k.split("-")[0]) for k in keys)


def _steps(model):
    """A model's estimators: itself, or each step of a pipeline."""
    return [step for _, step in model.steps] if hasattr(model, "steps") else [model]


def _state(model):
    """Every fitted number of each estimator of a model, to compare bitwise."""
    return [{k: v for k, v in vars(s).items() if k.endswith("_") and not k.startswith("_")} for s in _steps(model)]


# "-streamed": the route's kernel features mapped again at every epoch (as when they would not fit in memory)
# instead of held on the workers, by the shared epochs and by each candidate's own fit alike
CASES = [*ROUTES, "svm-nystroem-streamed"]
KERNEL_FEATURES = {"held": "held on the workers for the epochs", "streamed": "mapping the rows again at every epoch"}


@pytest.mark.parametrize("case", CASES)
def test_candidates_sharing_epochs_get_the_models_of_their_own_fits(client, make_data, case, monkeypatch):
    """Bitwise the models of the candidates' own fits, from one task per group of partitions and epoch, the
    epochs of the longest candidate; the early-stopping candidate leaves when it stops."""
    route = case.removesuffix("-streamed")
    if case != route:
        monkeypatch.setattr(svm, "MAPPED_SHARE", 0.0)
    family, kind, grid = ROUTES[route]
    folder, _ = make_data(kind, rows=9000, features=4, files=9, classes=3 if route == "logistic-softmax" else 2)
    logs: list[str] = []
    parts, ctx = _prepare(client, folder, kind, logs.append)
    groups = -(-parts.n_parts // MIX)
    assert parts.n_parts >= 2 * MIX, parts.n_parts  # two lanes
    params = [family.Params(**p) for p in grid]
    alone, sections = [], []
    for i, p in enumerate(params):
        own = TrainContext(replace(ctx.env, job_id=f"{JOB}-{case}-c{i}", record_training=sections.append), ctx.data)
        alone.append(_tasks_per_epoch(client, own.env.job_id, lambda p=p, own=own: family.train(parts, p, own)))
    ran = [s["epochs_run"] for s in sections]  # the early-stopping candidates', in order
    epochs_alone = [ran.pop(0) if p.early_stopping else p.epochs for p in params]
    assert all(counts == dict.fromkeys(range(n), groups) for (_, counts), n in zip(alone, epochs_alone))

    alone_logs = logs.copy()
    logs.clear()
    shared_ctx = TrainContext(replace(ctx.env, job_id=f"{JOB}-{case}-all"), ctx.data)
    shared, counts = _tasks_per_epoch(client, shared_ctx.env.job_id,
                                      lambda: family.train_many(parts, params, shared_ctx))
    if route == "svm-nystroem":  # each own fit, and the shared one, held its features or mapped them again
        held = KERNEL_FEATURES["streamed" if case != route else "held"]
        assert [sum(line.startswith("kernel features: ") and line.endswith(held) for line in lines)
                for lines in (alone_logs, logs)] == [len(params), 1], (alone_logs, logs)

    for ours, (theirs, _) in zip(shared, alone):
        assert [(type(s), s.get_params()) for s in _steps(ours)] == [(type(s), s.get_params()) for s in _steps(theirs)]
        for mine, own in zip(_state(ours), _state(theirs)):
            assert mine.keys() == own.keys()
            for name in own:
                np.testing.assert_array_equal(mine[name], own[name], err_msg=name)
    assert counts == dict.fromkeys(range(max(epochs_alone)), groups)  # one task per group of MIX blocks per epoch
    running = [sum(n > e for n in epochs_alone) for e in range(max(epochs_alone))]  # fits trained in epoch e
    going_on = running[1:] + [0]
    assert [line for line in logs if line.startswith("epoch ")] == [
        f"epoch {e}: {k} of {len(params)} SGD fits trained; {going_on[e]} go on" for e, k in enumerate(running)]
    assert logs[-1] == (f"{len(params)} SGD fits from {max(epochs_alone)} shared epochs over the data "
                        f"(alone: {sum(epochs_alone)})")
    if "tol" in grid[-1]:  # the last candidate stopped early, and left the shared epochs while another went on
        assert epochs_alone[-1] < min(params[-1].epochs, max(epochs_alone)), epochs_alone


@pytest.mark.parametrize("kernel_routes", [
    [{"kernel": "linear"}, {"kernel": "rbf"}], [{"kernel": "linear"}, {"approximation": "nystroem", "n_components": 20}],
    [{"kernel": "rbf"}, {"kernel": "rbf", "C": 10.0}],
    [{"approximation": "nystroem", "n_components": 20}, {"approximation": "nystroem", "n_components": 40}]])
def test_a_search_whose_candidates_do_not_share_one_route_and_map_trains_each_alone(kernel_routes):
    """A measured kernel route is chosen per fit; candidates of different maps or routes share no features."""
    params = [svm.Params(**p) for p in kernel_routes]
    assert svm.train_many(None, params, None) is None  # decided before any pass: no cluster needed


def test_a_diverging_candidate_fails_alone_and_the_others_train_on(client, make_data):
    """A candidate whose step raises gets the exception its own fit raises, in its place; the others are unchanged."""
    folder, _ = make_data("regression", rows=9000, features=4, files=9)
    parts, ctx = _prepare(client, folder, "regression", lambda message: None)
    params = [linear.Params(solver="sgd", eta0=1e300, epochs=3), linear.Params(solver="sgd", epochs=2)]
    with pytest.raises(ValueError) as alone_error:
        linear.train(parts, params[0], TrainContext(replace(ctx.env, job_id=f"{JOB}-div-c0"), ctx.data))
    alone = linear.train(parts, params[1], TrainContext(replace(ctx.env, job_id=f"{JOB}-div-c1"), ctx.data))
    failed, fitted = linear.train_many(parts, params, TrainContext(replace(ctx.env, job_id=f"{JOB}-div"), ctx.data))
    assert type(failed) is ValueError and str(failed) == str(alone_error.value)
    assert "overflow" in str(failed)
    np.testing.assert_array_equal(fitted.coef_, alone.coef_)
    np.testing.assert_array_equal(fitted.intercept_, alone.intercept_)
