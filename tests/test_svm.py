"""The svm family on a real cluster: cascade and linear SVMs against in-memory scikit-learn, and bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dask.utils import key_split

from distml.errors import DataError, JobFailed, SpecError
from distml.jobfile import parse_job
from distml.runner import run_job
from distml.synth import make_nonlinear_dataset
from reference import split_frames, xy

SEED, HOLDOUT = 0, 0.2


@pytest.fixture(scope="session")
def nonlinear(data_dir):
    """Nonlinear datasets written once per session, keyed by (rows, classes)."""
    cache: dict[tuple[int, int], Path] = {}

    def make(rows: int, classes: int) -> Path:
        if (rows, classes) not in cache:
            cache[rows, classes] = make_nonlinear_dataset(data_dir / f"nonlinear-{rows}-{classes}", rows=rows,
                                                          classes=classes, files=4)[0]
        return cache[rows, classes]

    return make


def svm_job(folder: Path, store: Path, name: str = "svm-job", **params):
    return parse_job({"name": name, "seed": SEED, "data": {"path": str(folder), "target": "target",
                                                           "holdout": HOLDOUT},
                      "model": {"kind": "svm", "params": params}, "output": {"store": str(store)}}, "job.yaml")


def reference_accuracy(folder: Path, model, estimator) -> float:
    """Accuracy on the same holdout rows of ``estimator`` fitted in memory on all training rows (in place)."""
    train, test = split_frames(folder, SEED, HOLDOUT)
    (X, y), (Xt, yt) = xy(train), xy(test)
    features = model[0]
    estimator.fit(features.transform(X), y)
    return float((estimator.predict(features.transform(Xt)) == yt).mean())


# both in the slow tier: the default run compares a binary cascade with one SVC on 4,000 rows
# (test_svm_job_saves_a_model_that_predicts_probabilities_on_raw_rows)
@pytest.mark.parametrize("classes", [pytest.param(2, marks=pytest.mark.slow),
                                     pytest.param(3, marks=pytest.mark.slow)])  # 3 classes: one-vs-one too
def test_cascade_is_within_a_third_of_a_point_of_one_svc_on_40k_rows(client, nonlinear, tmp_path, classes):
    from sklearn.svm import SVC

    from distml import load_model

    folder = nonlinear(40_000, classes)
    events: list[str] = []
    result = run_job(svm_job(folder, tmp_path, chunk_rows=4000), client, log=events.append)
    model = load_model(result.uri)
    svc = model[-1]
    assert type(svc) is SVC and svc.kernel == "rbf"
    one = SVC(C=svc.C, kernel="rbf", gamma=svc.gamma)
    reference = reference_accuracy(folder, model, one)
    assert abs(result.metrics["accuracy"] - reference) <= 0.003, (result.metrics["accuracy"], reference)
    # the cascade solves the whole problem, not an approximation of it: (nearly) the same support vectors
    assert abs(len(svc.support_) - len(one.support_)) <= 0.01 * len(one.support_), (len(svc.support_),
                                                                                      len(one.support_))
    assert any("pass 1 layer 1/" in e for e in events) and any("pass 2 layer 1/" in e for e in events)


@pytest.mark.parametrize("classes", [2, 3])
def test_linear_kernel_is_within_half_a_point_of_linearsvc(client, make_data, tmp_path, classes):
    from sklearn.linear_model import SGDClassifier
    from sklearn.svm import LinearSVC

    from distml import load_model

    folder, _ = make_data(rows=20_000, classes=classes)
    result = run_job(svm_job(folder, tmp_path, kernel="linear"), client)
    model = load_model(result.uri)
    assert type(model[-1]) is SGDClassifier and model[-1].loss == "hinge"
    assert model[-1].shuffle is True  # training turns scikit-learn's own shuffle off per step; the saved model keeps it
    reference = reference_accuracy(folder, model, LinearSVC(C=1.0, loss="hinge", max_iter=5000))
    assert abs(result.metrics["accuracy"] - reference) <= 0.005, (result.metrics["accuracy"], reference)


def test_same_seed_gives_identical_support_vectors_however_chunks_are_read(client, nonlinear, tmp_path,
                                                                           monkeypatch):
    from distml import load_model, runner
    from distml.models import svm

    folder = nonlinear(6_000, 3)
    params = {"chunk_rows": 1000, "feedback_tol": 0.0, "max_passes": 3}  # every violator is refitted
    events: list[str] = []
    models = [load_model(run_job(svm_job(folder, tmp_path / "0", **params), client, log=events.append).uri)[-1]]
    assert any("refitted with" in e for e in events), events
    monkeypatch.setattr(svm, "_chunks_per_read", lambda n_chunks, params, ctx: 2)  # as when memory is short:
    monkeypatch.setattr(runner, "PERSIST_FRACTION", 0.0)  # blocks read from storage, screened in one read each
    events.clear()
    models.append(load_model(run_job(svm_job(folder, tmp_path / "1", **params), client, log=events.append).uri)[-1])
    assert any("re-reading Parquet at every pass" in e for e in events), events
    assert len(models[0].support_vectors_) > 0
    np.testing.assert_array_equal(models[0].support_vectors_, models[1].support_vectors_)
    np.testing.assert_array_equal(models[0].dual_coef_, models[1].dual_coef_)


def test_svm_job_saves_a_model_that_predicts_probabilities_on_raw_rows(client, nonlinear, job_file, tmp_path):
    from click.testing import CliRunner

    from distributed import get_task_stream
    from sklearn.svm import SVC

    from distml import load_model
    from distml.cli import main

    folder = nonlinear(4_000, 2)
    path = job_file(name="svm-proba", data={"path": str(folder), "target": "target"},
                    model={"kind": "svm", "params": {"chunk_rows": 1500, "probability": True}})
    address = client.scheduler.address
    with get_task_stream(client=client) as stream:
        out = CliRunner().invoke(main, ["submit", str(path), "--scheduler", address, "--json"])
    assert out.exit_code == 0, out.output
    model = load_model(next((tmp_path / "models" / "svm-proba").iterdir()).as_uri())
    test = pd.read_parquet(folder.with_name(folder.name + "-test.parquet"))
    raw, truth = test.drop(columns=["target"]), test["target"].to_numpy()
    proba = model.predict_proba(raw)
    assert proba.shape == (len(raw), 2) and np.allclose(proba.sum(axis=1), 1.0)
    predicted = model.predict(raw)
    assert set(predicted) == {0, 1}, set(predicted)  # a constant model predicts one class
    # as good as one SVC fitted in memory on the same training rows, and far better than the majority class
    train, _ = split_frames(folder, SEED, HOLDOUT)
    svc = model[-1]
    one = SVC(C=svc.C, kernel="rbf", gamma=svc.gamma).fit(model[0].transform(xy(train)[0]), xy(train)[1])
    ours = float((predicted == truth).mean())
    theirs = float((one.predict(model[0].transform(raw)) == truth).mean())
    majority = float(pd.Series(truth).value_counts(normalize=True).iloc[0])
    assert abs(ours - theirs) <= 0.01 and ours >= majority + 0.1, (ours, theirs, majority)
    # every task the job ran groups on the dashboard under its phase word, never under the job id
    keys = [str(t["key"]) for t in stream.data if str(t["key"]).startswith("distml-")]
    groups = {key_split(k) for k in keys}
    assert all(key_split(k) == "distml-" + k.split("-")[1] for k in keys), groups
    phases = {"load", "stats", "cut", "pick", "svm", "layer", "screen", "top", "size", "kkt", "refit", "eval"}
    assert {f"distml-{phase}" for phase in phases} <= groups, groups


def test_nystroem_approximation_saves_a_pipeline_that_beats_the_linear_kernel(client, nonlinear, tmp_path):
    from sklearn.kernel_approximation import Nystroem
    from sklearn.pipeline import Pipeline

    from distml import load_model

    from distributed import get_task_stream

    folder = nonlinear(8_000, 2)
    with get_task_stream(client=client) as stream:
        approx = run_job(svm_job(folder, tmp_path, approximation="nystroem", n_components=200, epochs=10), client)
    keys = [str(t["key"]) for t in stream.data if str(t["key"]).startswith(f"distml-sample-{approx.job_id}-")]
    assert keys and {key_split(k) for k in keys} == {"distml-sample"}, keys  # the sample draws group as a phase
    linear = run_job(svm_job(folder, tmp_path, kernel="linear"), client)
    estimator = load_model(approx.uri)[-1]
    assert isinstance(estimator, Pipeline) and isinstance(estimator[0], Nystroem)
    assert type(estimator[-1]).__name__ == "SGDClassifier"
    assert approx.metrics["accuracy"] > linear.metrics["accuracy"] + 0.05


def test_support_vector_guard_stops_the_job_with_a_suggestion_and_no_artifact(client, nonlinear, tmp_path):
    folder = nonlinear(4_000, 2)
    with pytest.raises(JobFailed, match=r"found [\d,]+ support vectors, more than "
                                        r"model.params.max_support_vectors=100; use kernel: linear"):
        run_job(svm_job(folder, tmp_path, chunk_rows=1000, max_support_vectors=100), client)
    assert not (tmp_path / "svm-job").exists()


@pytest.mark.parametrize("params, message", [
    ({"kernel": "rbff"}, "model.params.kernel: must be 'linear', 'rbf', 'poly' or 'sigmoid'"),
    ({"kernel": "linear", "chunk_rows": 100}, "chunk_rows does not apply to kernel linear"),
    ({"alpha": 0.01}, "alpha does not apply to the cascade"),
    ({"approximation": "rbf_sampler", "kernel": "poly"}, "rbf_sampler approximates the rbf kernel only"),
])
def test_bad_params_are_one_line_errors_naming_the_field(tmp_path, params, message):
    with pytest.raises(SpecError) as err:
        svm_job(tmp_path, tmp_path, **params)
    assert message in str(err.value) and "\n" not in str(err.value)


def _tiny(tmp_path: Path, y: np.ndarray) -> Path:
    folder = tmp_path / "tiny"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pd.DataFrame({"a": rng.normal(size=len(y)), "b": rng.normal(size=len(y)), "target": y}).to_parquet(
        folder / "part-0.parquet")
    return folder


@pytest.mark.parametrize("labels, params, message", [
    ([0] * 200, {}, "has a single class"),
    ([0] * 1900 + [1] * 100, {"chunk_rows": 200}, "model.params.chunk_rows=200 is too small for class 1"),
    ([0] * 60 + [1] * 6, {"probability": True}, "model.params.probability needs at least 10 training rows"),
])
def test_data_that_cannot_train_fails_early_with_one_line_and_no_artifact(client, tmp_path, labels, params, message):
    job = parse_job({"name": "svm-bad", "data": {"path": str(_tiny(tmp_path, np.array(labels))), "target": "target",
                                                 "holdout": 0.0},
                     "model": {"kind": "svm", "params": params}, "output": {"store": str(tmp_path / "models")}}, "j")
    with pytest.raises(DataError) as err:
        run_job(job, client)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "models" / "svm-bad").exists()


@pytest.mark.parametrize("classes, kernel", [(2, "rbf"), (2, "poly"), (2, "sigmoid"), (3, "rbf"), (4, "poly")])
def test_evaluation_labels_are_exactly_the_saved_svcs_predictions(classes, kernel):
    from sklearn.svm import SVC

    from distml.evaluate import predictions
    from distml.kernels import binary_decision
    from distml.synth import make_nonlinear_rows

    X, y = make_nonlinear_rows(3_000, 8, classes, seed=1, stream=0)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    model = SVC(kernel=kernel, gamma=0.1).fit(X[:2_000], y[:2_000])
    pred, proba, score = predictions(model, X[2_000:])
    assert len(set(pred)) == classes
    np.testing.assert_array_equal(pred, model.predict(X[2_000:]))
    assert proba is None and (score is not None) == (classes == 2)
    if classes == 2:
        np.testing.assert_allclose(binary_decision(model, X[2_000:]), model.decision_function(X[2_000:]),
                                   rtol=0, atol=1e-9)


@pytest.mark.parametrize("classes, kernel, weights", [(2, "rbf", None), (2, "poly", None), (2, "sigmoid", None),
                                                      (3, "rbf", "balanced"), (4, "poly", None)])
def test_an_svc_solved_on_a_gram_matrix_is_the_svc_libsvm_fits_on_the_rows(classes, kernel, weights):
    import skops.io as sio
    from sklearn.svm import SVC

    from distml.kernels import fit_svc
    from distml.synth import make_nonlinear_rows

    X, y = make_nonlinear_rows(3_000, 8, classes, seed=2, stream=0)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    params = {"kernel": kernel, "C": 1.0, "gamma": 0.1, "coef0": 0.5, "class_weight": weights}
    reference = SVC(**params).fit(X[:2_000], y[:2_000])
    model = fit_svc(X[:2_000], y[:2_000], params, gram_bytes=8 * 2_000**2)
    assert type(model) is SVC and model.get_params() == reference.get_params()
    # float32 kernel entries (~1e-6 off) move a few borderline rows at most; libsvm's tolerance is 1e-3
    assert len(np.setxor1d(model.support_, reference.support_)) <= 0.01 * len(reference.support_)
    np.testing.assert_allclose(model.support_vectors_, X[:2_000][model.support_])
    held_out = X[2_000:]
    np.testing.assert_allclose(model.decision_function(held_out), reference.decision_function(held_out), atol=2e-2)
    assert (model.predict(held_out) == reference.predict(held_out)).mean() >= 0.995
    restored = sio.loads(sio.dumps(model), trusted=sio.get_untrusted_types(data=sio.dumps(model)))
    np.testing.assert_array_equal(restored.predict(held_out), model.predict(held_out))
    # a matrix over the budget: libsvm's own kernel, the very same fit
    native = fit_svc(X[:2_000], y[:2_000], params, gram_bytes=8 * 2_000**2 - 1)
    np.testing.assert_array_equal(native.support_, reference.support_)
    np.testing.assert_array_equal(native.dual_coef_, reference.dual_coef_)


@pytest.mark.parametrize("worker_memory, threads, expected", [(12 * 2**30, 1, 256 * 2**20), (512 * 2**20, 1, 128 * 2**20),
                                                              (512 * 2**20, 2, 64 * 2**20), (None, 1, 256 * 2**20)])
def test_a_fit_builds_a_gram_matrix_of_at_most_256_mib_or_a_quarter_of_its_threads_memory(worker_memory, threads,
                                                                                          expected):
    from types import SimpleNamespace

    from distml.models.svm import _gram_bytes

    env = SimpleNamespace(worker_memory=worker_memory, max_in_flight=2 * threads, n_workers=2)
    assert _gram_bytes(SimpleNamespace(env=env)) == expected
