"""Logistic solvers: the softmax SGD inner loop's rows per CPU-second, and the exact solver against scikit-learn.

    python tests/benchmarks/bench_logistic.py [--rows 200000 2000000] [--repeats 3] [--out bench_logistic.json]

Part 1 times ``SoftmaxSGD.partial_fit`` (the compiled inner loop) on 28 features in process CPU time,
so a busy machine slows it less than wall time would. Part 2 trains ``solver: newton`` (the default) on
a 2-worker embedded cluster over Parquet files with blocks persisted, and scikit-learn's
``LogisticRegression(lbfgs)`` in memory on the same transformed rows; it reports fit times, passes and
the largest coefficient difference relative to the largest coefficient. Medians of the repeats.
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

FEATURES = 28


def inner_loop(repeats: int) -> list[dict]:
    from distml.models._softmax import SoftmaxSGD

    rng = np.random.default_rng(0)
    rows = []
    for classes in (2, 5):
        X, y = rng.normal(size=(500_000, FEATURES)), rng.integers(0, classes, 500_000)
        learner = SoftmaxSGD()
        learner.partial_fit(X[:1000], y[:1000], classes=np.arange(classes))  # compiles
        times = []
        for _ in range(repeats):
            start = time.process_time()
            learner.partial_fit(X, y, classes=np.arange(classes))
            times.append(time.process_time() - start)
        rows.append({"classes": classes, "rows_per_cpu_second": len(y) / float(np.median(times))})
    return rows


def exact_vs_sklearn(n_rows: int, classes: int, repeats: int, root: Path, client) -> dict:
    from sklearn.linear_model import LogisticRegression

    from distml.blocks import persist
    from distml.cluster import worker_resources
    from distml.data import open_dataset
    from distml.features import plan_features
    from distml.models import logistic
    from distml.models.base import TrainContext
    from distml.spec import DataSpec
    from distml.synth import make_dataset

    folder, _ = make_dataset(root / f"d-{n_rows}-{classes}", rows=n_rows, features=FEATURES, files=8,
                             classes=classes, seed=0)
    dataset = open_dataset(DataSpec(path=str(folder), target="target", holdout=0.0), 0)
    dataset.partition(16 * 2**20)
    plan = plan_features(dataset, client, "20260101-000000-bench", "classification")
    parts = persist(plan.parts, client, "20260101-000000-keep")
    ours, passes = [], 0
    for i in range(repeats):
        logs: list[str] = []
        ctx = TrainContext.create(client=client, job_id=f"20260101-000000-b{i}", seed=0, plan=plan,
                                  resources=worker_resources(client), log=logs.append)
        start = time.perf_counter()
        estimator = logistic.train(parts, logistic.Params(), ctx)
        ours.append(time.perf_counter() - start)
        passes = int(re.search(r"(\d+) passes", logs[-1]).group(1))
    client.cancel(parts.train + parts.holdout)
    frame = pd.concat([pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))], ignore_index=True)
    X, y = plan.transformer.transform(frame.drop(columns=["target"])), frame["target"].to_numpy()
    theirs = []
    for _ in range(repeats):
        start = time.perf_counter()
        reference = LogisticRegression(C=estimator.C).fit(X, y)
        theirs.append(time.perf_counter() - start)
    tight = LogisticRegression(C=estimator.C, tol=1e-10, max_iter=10_000).fit(X, y)
    scale = np.abs(tight.coef_).max()
    return {"rows": n_rows, "classes": classes, "newton_fit_s": float(np.median(ours)), "newton_passes": passes,
            "sklearn_fit_s": float(np.median(theirs)), "sklearn_iterations": int(reference.n_iter_[0]),
            "newton_rel_err": float(np.abs(estimator.coef_ - tight.coef_).max() / scale),
            "sklearn_default_rel_err": float(np.abs(reference.coef_ - tight.coef_).max() / scale)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 2_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench_logistic.json")
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    loop = inner_loop(args.repeats)
    print("| softmax inner loop | classes | rows per CPU-second |\n|---|---|---|")
    for row in loop:
        print(f"| {FEATURES} features | {row['classes']} | {row['rows_per_cpu_second'] / 1e6:.2f} M |")
    exact = []
    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address="127.0.0.1:0", silence_logs=40) as cluster, \
            Client(cluster, set_as_default=False) as client:
        for n_rows in args.rows:
            for classes in (2, 5):
                exact.append(exact_vs_sklearn(n_rows, classes, args.repeats, Path(tmp), client))
    print("\n| rows | classes | newton fit (s) | passes | rel. error | sklearn lbfgs fit (s) | iterations | "
          "its rel. error |\n|---|---|---|---|---|---|---|---|")
    for r in exact:
        print(f"| {r['rows']:,} | {r['classes']} | {r['newton_fit_s']:.2f} | {r['newton_passes']} | "
              f"{r['newton_rel_err']:.1e} | {r['sklearn_fit_s']:.2f} | {r['sklearn_iterations']} | "
              f"{r['sklearn_default_rel_err']:.1e} |")
    Path(args.out).write_text(json.dumps({"inner_loop": loop, "exact": exact}, indent=2))


if __name__ == "__main__":
    main()
