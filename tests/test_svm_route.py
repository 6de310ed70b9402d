"""The kernel svm family chooses its route from a probe SVC: Nyström features on noisy data, the cascade otherwise."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from distml.jobfile import parse_job
from distml.models._svm_route import PROBE_ROWS
from distml.runner import run_job
from reference import split_frames, train_rows_with_draws, xy

SEED, HOLDOUT = 0, 0.2


@pytest.fixture(scope="session")
def noisy(data_dir):
    """10,500 noisy rows (8,400 for training): most rows of any SVC on them end as support vectors."""
    from distml.synth import make_noisy_dataset

    return make_noisy_dataset(data_dir / "noisy-10500", rows=10_500, features=24)[0]


def svm_job(folder: Path, store: Path, **params):
    return parse_job({"name": "svm-route", "seed": SEED, "data": {"path": str(folder), "target": "target",
                                                                  "holdout": HOLDOUT},
                      "model": {"kind": "svm", "params": params}, "output": {"store": str(store)}}, "job.yaml")


def route_record(result) -> dict:
    return json.loads((Path(result.uri) / "manifest.json").read_text())["training"]["route"]


def probe_fraction(folder: Path, features, gamma: float) -> float:
    """Support-vector share of one SVC on the ``PROBE_ROWS`` training rows with the lowest draws (the probe's rows)."""
    from sklearn.svm import SVC

    frame, draws = train_rows_with_draws(folder, SEED, HOLDOUT)
    X, y = xy(frame.iloc[np.argsort(draws, kind="stable")[:PROBE_ROWS]])
    return len(SVC(C=1.0, gamma=gamma).fit(features.transform(X), y).support_) / PROBE_ROWS


def test_noisy_data_takes_the_measured_nystroem_route_within_a_point_of_one_svc(client, noisy, tmp_path):
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import SGDClassifier
    from sklearn.pipeline import Pipeline

    from distml import load_model

    events: list[str] = []
    result = run_job(svm_job(noisy, tmp_path / "a"), client, log=events.append)
    model = load_model(result.uri)
    features, chosen = model[0], model[-1]
    assert isinstance(chosen, Pipeline) and type(chosen[0]) is Nystroem and type(chosen[-1]) is SGDClassifier
    route = route_record(result)
    # the fraction recorded is the one the probe's rows give one SVC, and it is what chose the route
    measured = probe_fraction(noisy, features, chosen[0].gamma)
    assert route["taken"] == "nystroem" and route["threshold"] == 0.6 and route["probe"]["rows"] == PROBE_ROWS
    assert abs(route["sv_fraction"] - measured) <= 0.01 and route["sv_fraction"] > 0.6, (route, measured)
    # the curve's largest size within its noise of the best, so the route doubles it: 8,400 rows give 8 per component
    sizes = [p["n_components"] for p in route["curve"]]
    assert sizes == [250, 500] and chosen[0].n_components == route["n_components"] == 1000, route
    assert "1000 components: twice the 500 components, the most within" in route["reason"], route["reason"]
    assert route["train_seconds"] > 0 and route["choice_seconds"] > 0
    line = next(e for e in events if e.startswith("svm route: "))
    assert line.startswith(f"svm route: nystroem: {route['sv_fraction']:.0%} of a 4,000-row probe SVC's rows are "
                           "support vectors, more than switch_sv_fraction=0.6"), line
    # within a point of one SVC (same C, kernel, gamma) on the same training rows, scored on the same rows
    reference = one_svc_accuracy(noisy, features, chosen[0].gamma)
    assert abs(result.metrics["accuracy"] - reference) <= 0.01, (result.metrics["accuracy"], reference)
    raw = pd.read_parquet(noisy.with_name(noisy.name + "-test.parquet")).drop(columns=["target"])
    assert set(model.predict(raw)) == {0, 1}
    # evaluation and batch scoring fold the map's normalisation into the coefficients: the same decision values
    from distml.kernels import folded_decision

    decision = model.decision_function(raw)
    assert np.allclose(folded_decision(model, raw), decision, rtol=1e-9, atol=1e-9 * np.abs(decision).max())
    from distml.predict import _scores

    assert (_scores(model, raw, (), False)["prediction"].to_numpy() == model.predict(raw)).all()


def one_svc_accuracy(folder: Path, features, gamma: float) -> float:
    """Holdout accuracy of one SVC (C=1, rbf, ``gamma``) on the job's training rows."""
    from sklearn.svm import SVC

    train, test = split_frames(folder, SEED, HOLDOUT)
    (X, y), (Xt, yt) = xy(train), xy(test)
    one = SVC(C=1.0, gamma=gamma).fit(features.transform(X), y)
    return float((one.predict(features.transform(Xt)) == yt).mean())


@pytest.mark.slow
def test_three_noisy_classes_take_the_nystroem_route_one_vs_one_within_a_point_of_one_svc(client, data_dir,
                                                                                          tmp_path):
    from sklearn.linear_model import SGDClassifier
    from sklearn.multiclass import OneVsOneClassifier

    from distml import load_model
    from distml.synth import make_noisy_dataset

    folder = make_noisy_dataset(data_dir / "noisy3-10500", rows=10_500, features=24, classes=3)[0]
    events: list[str] = []
    result = run_job(svm_job(folder, tmp_path), client, log=events.append)
    model = load_model(result.uri)
    route = route_record(result)
    assert route["taken"] == "nystroem" and route["sv_fraction"] > 0.6, route
    # one binary SVM per pair of classes, as SVC decides, each trained on its pair's rows only
    assert route["multiclass"] == "one-vs-one" and "a linear SVM instead (one-vs-one)" in route["reason"], route
    ovo = model[-1][-1]
    assert type(ovo) is OneVsOneClassifier and [type(e) for e in ovo.estimators_] == [SGDClassifier] * 3
    assert ovo.classes_.tolist() == [0, 1, 2]
    assert "one-vs-one: 3 binary linear SVMs, one per pair of the 3 classes, each on its pair's rows (as SVC)" in events
    solve = json.loads((Path(result.uri) / "manifest.json").read_text())["training"]["solver"]
    assert solve["problems"] == 3 and sum(e.startswith("dual round ") for e in events) == solve["rounds"]
    assert any(e.startswith(f"linear SVM: dual coordinate descent (CoCoA+), {solve['rounds']} rounds") for e in events)
    assert abs(route["sv_fraction"] - probe_fraction(folder, model[0], model[-1][0].gamma)) <= 0.01
    reference = one_svc_accuracy(folder, model[0], model[-1][0].gamma)
    assert abs(result.metrics["accuracy"] - reference) <= 0.01, (result.metrics["accuracy"], reference)
    raw = pd.read_parquet(folder.with_name(folder.name + "-test.parquet")).drop(columns=["target"])
    assert set(model.predict(raw)) == {0, 1, 2}
    from distml.kernels import folded_predict  # evaluation's and distml score's one-vs-one labels

    assert (folded_predict(model, raw) == model.predict(raw)).all()


def _measured(route: dict) -> dict:
    """A route record without its timings."""
    return {**{k: v for k, v in route.items() if not k.endswith("seconds")},
            "probe": {k: v for k, v in route["probe"].items() if k != "seconds"},
            "curve": [{k: v for k, v in p.items() if k != "seconds"} for p in route["curve"]]}


@pytest.mark.slow
def test_the_same_seed_gives_the_same_route_and_the_same_nystroem_model(client, noisy, tmp_path):
    from distml import load_model

    first, again = (run_job(svm_job(noisy, tmp_path / name), client) for name in "ab")
    one, twin = load_model(first.uri)[-1], load_model(again.uri)[-1]
    np.testing.assert_array_equal(twin[0].components_, one[0].components_)
    np.testing.assert_array_equal(twin[-1].coef_, one[-1].coef_)
    assert _measured(route_record(again)) == _measured(route_record(first))
    assert again.metrics == first.metrics


@pytest.mark.slow
def test_data_with_few_support_vectors_keeps_the_cascade_and_records_why(client, data_dir, tmp_path):
    from sklearn.svm import SVC

    from distml import load_model
    from distml.synth import make_nonlinear_dataset

    folder = make_nonlinear_dataset(data_dir / "nonlinear-route-12000", rows=12_000, classes=2, files=4)[0]
    events: list[str] = []
    result = run_job(svm_job(folder, tmp_path), client, log=events.append)
    model = load_model(result.uri)
    assert type(model[-1]) is SVC
    route = route_record(result)
    measured = probe_fraction(folder, model[0], model[-1].gamma)
    assert route["taken"] == "cascade" and route["curve"] == [] and route["n_components"] is None
    assert abs(route["sv_fraction"] - measured) <= 0.01 and route["sv_fraction"] <= 0.6, (route, measured)
    assert any(e.startswith("svm route: cascade: ") and "at most switch_sv_fraction=0.6" in e for e in events)


@pytest.mark.slow
def test_probabilities_on_the_nystroem_route_come_from_a_logistic_model_on_raw_rows(client, noisy, tmp_path):
    from distml import load_model

    result = run_job(svm_job(noisy, tmp_path, probability=True), client)
    chosen = load_model(result.uri)
    assert route_record(result)["taken"] == "nystroem" and chosen[-1][-1].loss == "log_loss"
    raw = pd.read_parquet(noisy.with_name(noisy.name + "-test.parquet")).drop(columns=["target"])
    proba = chosen.predict_proba(raw)
    assert proba.shape == (len(raw), 2) and np.allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(chosen.predict(raw), chosen.classes_[proba.argmax(axis=1)])


def test_an_explicit_approximation_wins_and_streamed_features_give_the_model_held_ones_do(client, noisy, tmp_path,
                                                                                          monkeypatch):
    from distml import load_model
    from distml.models import svm

    params = {"approximation": "nystroem", "n_components": 100}
    events: list[str] = []
    held = run_job(svm_job(noisy, tmp_path / "held", **params), client, log=events.append)
    assert "training" not in json.loads((Path(held.uri) / "manifest.json").read_text())  # no probe, no route
    assert not any(e.startswith("svm route") for e in events)
    assert any(e.startswith("kernel features: ") and "held on the workers" in e for e in events), events
    monkeypatch.setattr(svm, "MAPPED_SHARE", 0.0)  # as when the features would not fit: mapped at every epoch
    events.clear()
    streamed = run_job(svm_job(noisy, tmp_path / "streamed", **params), client, log=events.append)
    assert any("mapping the rows again at every epoch" in e for e in events), events
    one, two = load_model(held.uri)[-1], load_model(streamed.uri)[-1]
    assert type(one[0]).__name__ == "Nystroem" and one[0].n_components == 100
    # the same SGD steps on the same float32 features, up to BLAS rounding (its blocks follow the batch shapes)
    np.testing.assert_allclose(one[-1].coef_, two[-1].coef_, rtol=0, atol=1e-4)
    np.testing.assert_allclose(one[-1].intercept_, two[-1].intercept_, rtol=0, atol=1e-4)
    assert abs(held.metrics["accuracy"] - streamed.metrics["accuracy"]) <= 0.001
    # room for the features as float16 but not as float32: held at half precision rather than mapped every epoch
    limits = [w["memory_limit"] for w in client.scheduler_info()["workers"].values()]
    monkeypatch.setattr(svm, "MAPPED_SHARE", 3 * 8400 * 100 / (min(limits) * len(limits)))
    events.clear()
    halved = run_job(svm_job(noisy, tmp_path / "halved", **params), client, log=events.append)
    assert "kernel features: 2 MiB of float16 held on the workers for the epochs" in events, events
    three = load_model(halved.uri)[-1]
    np.testing.assert_allclose(three[-1].coef_, one[-1].coef_, rtol=0, atol=0.05 * np.abs(one[-1].coef_).max())
    # within what SGD's own seed moves on these rows (five seeds in memory span 0.4 points, float32 or float16)
    assert abs(halved.metrics["accuracy"] - held.metrics["accuracy"]) <= 0.005


@pytest.mark.parametrize("kernel", [{"kernel": "rbf", "gamma": 0.1}, {"kernel": "rbf"},
                                    {"kernel": "sigmoid", "gamma": 0.01, "coef0": 0.5},
                                    {"kernel": "poly", "degree": 3, "gamma": 0.1, "coef0": 1.0}])
def test_the_eigh_fitted_nystroem_is_scikit_learns_map(kernel):
    from sklearn.kernel_approximation import Nystroem

    from distml.models._approx_sgd import fit_nystroem

    rng = np.random.default_rng(0)
    X, Z = rng.normal(size=(1500, 8)), rng.normal(size=(300, 8))
    theirs = Nystroem(n_components=300, random_state=3, **kernel).fit(X)
    ours = fit_nystroem(Nystroem(n_components=300, random_state=3, **kernel), X)
    assert type(ours) is Nystroem and ours.n_features_in_ == 8 and ours.get_feature_names_out().shape == (300,)
    np.testing.assert_array_equal(ours.component_indices_, theirs.component_indices_)
    np.testing.assert_array_equal(ours.components_, theirs.components_)
    # the poly kernel on 8 features has rank 165 < 300: its null directions are round-off in both maps
    np.testing.assert_allclose(ours.transform(Z), theirs.transform(Z), atol=1e-6 if kernel["kernel"] == "poly" else 1e-10)
    if kernel["kernel"] != "poly":
        scale = np.abs(theirs.normalization_).max()
        np.testing.assert_allclose(ours.normalization_, theirs.normalization_, rtol=0, atol=1e-7 * scale)


def test_the_cholesky_factored_nystroem_approximates_scikit_learns_kernel():
    """The route's maps: the same basis, a rotation of scikit-learn's map, so the same approximate kernel; a
    basis kernel Cholesky cannot factor well (duplicate basis rows) gets scikit-learn's map instead."""
    from sklearn.kernel_approximation import Nystroem

    from distml.models._approx_sgd import fit_nystroem

    rng = np.random.default_rng(0)
    X, Z = rng.normal(size=(1500, 8)), rng.normal(size=(300, 8))
    theirs = Nystroem(n_components=300, random_state=3, gamma=0.1).fit(X)
    ours = fit_nystroem(Nystroem(n_components=300, random_state=3, gamma=0.1), X, factor="cholesky")
    assert type(ours) is Nystroem and ours.get_feature_names_out().shape == (300,)
    np.testing.assert_array_equal(ours.components_, theirs.components_)
    np.testing.assert_allclose(np.tril(ours.normalization_), ours.normalization_)  # L⁻¹, not K^-1/2
    assert np.abs(ours.normalization_ - theirs.normalization_).max() > 0.1
    mine, sklearns = ours.transform(Z), theirs.transform(Z)
    np.testing.assert_allclose(mine @ mine.T, sklearns @ sklearns.T, rtol=0, atol=1e-9)
    doubled = np.repeat(X[:150], 2, axis=0)
    fallback = fit_nystroem(Nystroem(n_components=300, random_state=3, gamma=0.1), doubled, factor="cholesky")
    reference = Nystroem(n_components=300, random_state=3, gamma=0.1).fit(doubled)
    np.testing.assert_allclose(fallback.transform(Z), reference.transform(Z), atol=1e-8)


def test_the_map_beyond_the_curve_is_twice_its_largest_where_rows_and_memory_allow():
    from distml.models._svm_route import _beyond

    curve = [250, 500, 1000, 2000]
    assert _beyond(curve, 32_000, 0) == _beyond(curve, 400_000, 4 * 2**30) == 4000
    assert _beyond(curve, 31_999, 0) is None  # fewer than 8 rows per component
    assert _beyond(curve, 400_000, 3 * 2**29) is None  # four 4,000² float64 matrices: more than a quarter
    assert _beyond([250, 500], 8_400, 0) == 1000


def test_an_epoch_task_attaches_the_streamed_map_only_while_it_runs():
    """The map of a streamed approximation reaches each task once per worker (``SGDFit.transform``); the
    lane state a task returns, and so every average and checkpoint, carries no n×n normalisation."""
    import copy

    from sklearn.kernel_approximation import Nystroem

    from distml.blocks import Block
    from distml.models._approx_sgd import _ApproxSGD
    from distml.models._sgd import LaneState, StepInput, _sgd_epoch_part
    from distml.models.svm import _hinge_loss

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(600, 5)), rng.integers(0, 2, 600)
    approx = Nystroem(n_components=50, random_state=0).fit(X)
    block = Block(X, y, rng.random(600))
    model = _ApproxSGD(average=True, random_state=0)
    step = StepInput(None, 0.0, _hinge_loss, {"classes": np.array([0, 1])})
    (state,) = _sgd_epoch_part([LaneState(model)], [block], [step], 7, [approx])
    assert state.error is None and state.n_trained == 600 and state.model.approx_ is None
    # the epoch's starting model is scored through the map too, and keeps none either
    scored = StepInput(state.model, 0.5, _hinge_loss, {"classes": np.array([0, 1])})
    (again,) = _sgd_epoch_part([LaneState(copy.deepcopy(model))], [block], [scored], 7, [approx])
    with_map = copy.deepcopy(state.model)
    with_map.approx_ = approx
    assert again.model.approx_ is None and state.model.approx_ is None
    assert again.val_loss == _hinge_loss(with_map, X[block.u < 0.5], y[block.u < 0.5]) > 0
