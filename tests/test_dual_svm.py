"""The Nyström route's exact linear SVM (``_dual_svm``): lanes of dual coordinate descent, added (CoCoA+)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from sklearn.svm import LinearSVC

from distml.blocks import persist
from distml.cluster import worker_resources
from distml.data import open_dataset
from distml.features import plan_features
from distml.models._dual_svm import smoothed_hinge, train_dual
from distml.models.base import TrainContext
from distml.spec import DataSpec
from distml.synth import _write, make_rows

JOB = "20260101-000000-dual"
TOL = 1e-3  # tighter than the route's DUAL_TOL: the solver itself must reach the optimum


def _held(client, tmp_path, rows: int = 6000, classes: int = 2):
    X, y = make_rows("classification", rows, 6, classes, seed=3, stream=0, noise=2.0)
    for i, part in enumerate(np.array_split(np.arange(rows), 4)):
        _write(tmp_path / f"part-{i}.parquet", X[part], y[part], None)
    dataset = open_dataset(DataSpec(path=str(tmp_path), target="target", holdout=0.0), 0)
    dataset.partition(1)  # a piece a file: four partitions, two a lane
    logs: list[str] = []
    plan = plan_features(dataset, client, f"{JOB}-plan", "classification")
    ctx = TrainContext.create(client=client, job_id=JOB, seed=0, plan=plan, resources=worker_resources(client),
                              log=logs.append)
    parts = persist(plan.parts, client, f"{JOB}-keep")
    blocks = client.gather(parts.train)
    Z = np.concatenate([np.asarray(b.X, dtype=np.float32) for b in blocks]).astype(np.float64)
    return ctx, parts, Z, np.concatenate([b.y for b in blocks]), logs


def _primal(Z: np.ndarray, signs: np.ndarray, coef: np.ndarray, intercept: float, C: float) -> float:
    """The SVM's primal with the intercept regularised as liblinear's (a bias feature of 1)."""
    margins = signs * (Z @ coef + intercept)
    return 0.5 * (coef @ coef + intercept**2) + C * np.maximum(0.0, 1.0 - margins).sum()


def _mapped(client, parts, Z: np.ndarray, components: int, dtype: type = np.float32):
    """The route's held features: an rbf Nyström map fitted on the rows, each partition mapped on the workers."""
    from sklearn.kernel_approximation import Nystroem

    from distml.models._approx_sgd import _map_part, fit_nystroem

    approx = fit_nystroem(Nystroem(n_components=components, gamma=0.1, random_state=0), Z, factor="cholesky")
    held = replace(parts, train=[client.submit(_map_part, f, approx, dtype) for f in parts.train])
    return held, np.concatenate(client.gather([client.submit(lambda b: b.X, f) for f in held.train])).astype(np.float64)


def _optimum(Z: np.ndarray, signs: np.ndarray, r: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, float]:
    """The smoothed-hinge primal's minimiser (features, then the intercept) by L-BFGS, in memory (``c``: each
    row's bound of α, C times its class weight)."""
    from scipy.optimize import minimize

    A = np.hstack([Z, np.ones((len(Z), 1))])

    def primal(v: np.ndarray) -> tuple[float, np.ndarray]:
        margins = signs * (A @ v)
        with np.errstate(divide="ignore", invalid="ignore"):  # r = 0 (a landmark row): the hinge's subgradient
            alpha = np.clip((1.0 - margins) / r, 0.0, c)  # the loss's slope, as the dual variable
        return 0.5 * v @ v + smoothed_hinge(margins, r, c).sum(), v - A.T @ (alpha * signs)

    best = minimize(primal, np.zeros(A.shape[1]), jac=True, method="L-BFGS-B", options={"gtol": 1e-10, "maxiter": 5000})
    return best.x, float(best.fun)


def test_the_lanes_solve_the_svm_of_the_map_with_its_residual_diagonal(client, tmp_path):
    ctx, parts, X, y, logs = _held(client, tmp_path)
    held, Z = _mapped(client, parts, X, components=200)
    w, solve = train_dual(held, ctx, Z.shape[1], 1.0, None, residual=True, tol=TOL, max_rounds=400)
    w = w[0]
    client.cancel([*parts.train, *held.train])
    signs = np.where(y == np.unique(y)[1], 1.0, -1.0)
    r = np.maximum(1.0 - np.einsum("ij,ij->i", Z, Z), 0.0)
    best, lowest = _optimum(Z, signs, r, np.ones(len(Z)))
    ours = 0.5 * w @ w + smoothed_hinge(signs * (Z @ w[:-1] + w[-1]), r, np.ones(len(Z))).sum()
    assert solve["duality_gap"] <= TOL and solve["lanes"] == 2 and solve["residual_diagonal"]
    assert lowest <= ours <= lowest * (1 + TOL)  # the gap bounds our distance to the optimum
    assert np.linalg.norm(w - best) <= np.sqrt(2 * (ours - lowest)) + 1e-6  # strong convexity: |w - w*|^2 <= 2 gap
    assert logs[-1].startswith(f"dual round {solve['rounds']}: ")


def test_three_classes_solve_one_svm_per_pair_on_its_rows_with_its_class_weights(client, tmp_path):
    from distml.models._pairs import pairs_of

    ctx, parts, X, y, _ = _held(client, tmp_path, rows=3000, classes=3)
    held, Z = _mapped(client, parts, X, components=100)
    pairs, weights = pairs_of([0, 1, 2]), {0: 1.0, 1: 2.0, 2: 0.5}
    tol = 3 * TOL  # three problems, the gap the largest of theirs
    W, solve = train_dual(held, ctx, Z.shape[1], 0.5, weights, residual=True, pairs=pairs, tol=tol, max_rounds=400)
    client.cancel([*parts.train, *held.train])
    assert W.shape == (3, Z.shape[1] + 1) and solve["problems"] == 3 and solve["duality_gap"] <= tol
    r = np.maximum(1.0 - np.einsum("ij,ij->i", Z, Z), 0.0)
    for (negative, positive), w in zip(pairs, W):
        rows = np.isin(y, (negative, positive))
        signs = np.where(y[rows] == positive, 1.0, -1.0)
        c = 0.5 * np.where(y[rows] == positive, weights[positive], weights[negative])
        best, lowest = _optimum(Z[rows], signs, r[rows], c)
        ours = 0.5 * w @ w + smoothed_hinge(signs * (Z[rows] @ w[:-1] + w[-1]), r[rows], c).sum()
        assert lowest <= ours <= lowest * (1 + tol)
        assert np.linalg.norm(w - best) <= np.sqrt(2 * (ours - lowest)) + 1e-6


def test_without_a_residual_the_lanes_approach_the_svm_liblinear_solves(client, tmp_path):
    ctx, parts, Z, y, _ = _held(client, tmp_path)
    w, solve = train_dual(parts, ctx, Z.shape[1], 1.0, None, residual=False, max_rounds=100)
    w = w[0]
    client.cancel(parts.train)
    signs = np.where(y == np.unique(y)[1], 1.0, -1.0)
    ref = LinearSVC(C=1.0, loss="hinge", intercept_scaling=1.0, tol=1e-6, max_iter=200_000).fit(Z, y)
    ours, theirs = _primal(Z, signs, w[:-1], w[-1], 1.0), _primal(Z, signs, ref.coef_[0], ref.intercept_[0], 1.0)
    assert ours <= theirs * 1.01  # the plain hinge converges sublinearly: within 1% after 100 rounds
    assert ((Z @ w[:-1] + w[-1] > 0) == (ref.decision_function(Z) > 0)).mean() >= 0.98


def test_the_same_seed_gives_the_same_coefficients(client, tmp_path):
    ctx, parts, Z, _, _ = _held(client, tmp_path, rows=3000)
    first = train_dual(parts, ctx, Z.shape[1], 0.5, {0: 2.0}, residual=True)[0]
    second = train_dual(parts, ctx, Z.shape[1], 0.5, {0: 2.0}, residual=True)[0]
    client.cancel(parts.train)
    assert np.array_equal(first, second)


def test_a_resumed_solve_continues_from_its_checkpoint_to_the_same_coefficients(client, tmp_path, monkeypatch):
    from distml.models import _dual_svm

    monkeypatch.setattr(_dual_svm, "CHECKPOINT_SECONDS", 0.0)  # a checkpoint every round
    ctx, parts, Z, _, _ = _held(client, tmp_path, rows=3000)
    saved: dict[int, dict] = {}
    saving = replace(ctx, env=replace(ctx.env, checkpoint=lambda step, state: saved.__setitem__(step, state)))
    whole, solve = train_dual(parts, saving, Z.shape[1], 1.0, None, residual=True, tol=0.0, max_rounds=6)
    assert sorted(saved) == list(range(1, 7)) and solve["rounds"] == 6
    resumed = replace(ctx, env=replace(ctx.env, restore=lambda: (3, saved[3])))
    again, solve_again = train_dual(parts, resumed, Z.shape[1], 1.0, None, residual=True, tol=0.0, max_rounds=6)
    client.cancel(parts.train)
    assert np.array_equal(whole, again) and solve_again == solve


def test_float16_held_features_solve_as_their_float32_values_do(client, tmp_path):
    from distml.blocks import Block

    ctx, parts, X, _, _ = _held(client, tmp_path, rows=3000)
    half, Z = _mapped(client, parts, X, components=100, dtype=np.float16)
    widened = replace(half, train=[client.submit(lambda b: Block(b.X.astype(np.float32), b.y, b.u), f)
                                   for f in half.train])
    W16 = train_dual(half, ctx, Z.shape[1], 1.0, None, residual=True, max_rounds=5)[0]
    W32 = train_dual(widened, ctx, Z.shape[1], 1.0, None, residual=True, max_rounds=5)[0]
    client.cancel([*parts.train, *half.train, *widened.train])
    assert np.array_equal(W16, W32)


def test_the_smoothed_hinge_is_the_hinge_without_a_residual_and_quadratic_near_the_margin():
    m = np.array([2.0, 1.0, 0.9, 0.0, -1.0])
    c = np.full(5, 2.0)
    assert np.allclose(smoothed_hinge(m, np.zeros(5), c), 2.0 * np.maximum(0.0, 1.0 - m))
    r = np.full(5, 0.25)  # quadratic for 1 - m < c r = 0.5
    assert np.allclose(smoothed_hinge(m, r, c), [0.0, 0.0, 0.01 / 0.5, 2.0 - 0.5, 4.0 - 0.5])
