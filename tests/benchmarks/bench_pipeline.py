"""distml's linear and logistic jobs against scikit-learn in memory and dask-ml, side by side in one run.

Run on demand: ``python tests/benchmarks/bench_pipeline.py [--rows 2000000] [--features 20]``.
Prints a table and writes JSON to ``bench-results/pipeline-<time>.json``.

Every contender trains on the same training rows (distml's hash split) and is
scored on the same holdout rows. Times are wall seconds measured in this run:
distml's whole job (stats pass, training, evaluation, saving) and its train
phase alone; scikit-learn's read of the Parquet files plus ``fit``; dask-ml's
read plus ``fit`` on the same cluster. Ratios are against scikit-learn.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared reference split
from reference import split_frames  # noqa: E402

SEED, HOLDOUT, WORKERS = 0, 0.2, 2


def split(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training and holdout rows exactly as distml splits them (the benchmark may read rows; distml may not)."""
    return split_frames(folder, SEED, HOLDOUT)


def score(kind: str, model, test: pd.DataFrame) -> float:
    from sklearn.metrics import accuracy_score, r2_score

    X, y = test.drop(columns=["target"]), test["target"].to_numpy()
    pred = np.asarray(model.predict(X if hasattr(model, "steps") else np.array(X, dtype=np.float64)))
    return r2_score(y, pred) if kind == "regression" else accuracy_score(y, pred)


def run_distml(client, folder: Path, store: Path, model: dict) -> tuple[float, float, object]:
    from distml import load_model
    from distml.runner import run_job
    from distml.jobfile import parse_job

    spec = parse_job({"name": "bench", "seed": SEED,
                      "data": {"path": str(folder), "target": "target", "holdout": HOLDOUT},
                      "model": model, "output": {"store": str(store)}}, "bench")
    started = time.perf_counter()
    result = run_job(spec, client)
    return time.perf_counter() - started, result.timings["train"], load_model(result.uri)


def run_sklearn(folder: Path, estimator) -> tuple[float, object]:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    started = time.perf_counter()
    train, _ = split(folder)
    model = make_pipeline(StandardScaler(), estimator).fit(train.drop(columns=["target"]), train["target"])
    return time.perf_counter() - started, model


def run_dask_ml(folder: Path, make_estimator, incremental: bool) -> tuple[float, object]:
    """dask-ml reads the same rows into a dask array on the cluster (its own default client)."""
    import dask.dataframe as dd
    from dask_ml.preprocessing import StandardScaler

    started = time.perf_counter()
    frame = dd.read_parquet(str(folder))
    values = frame.to_dask_array(lengths=True)  # columns x0..xN, then the target
    X, y = values[:, :-1], values[:, -1]
    if incremental or make_estimator is not None and "Logistic" in getattr(make_estimator, "__name__", ""):
        y = y.astype("int64")
    scaler = StandardScaler().fit(X)
    Xs = scaler.transform(X)
    if incremental:
        from dask_ml.wrappers import Incremental

        model = Incremental(make_estimator()).fit(Xs, y, classes=[0, 1])
    else:
        model = make_estimator().fit(Xs, y)
    elapsed = time.perf_counter() - started

    class Scaled:  # score dask-ml's model on the same holdout rows, in memory
        def predict(self, X):
            out = model.predict(scaler.transform(X))
            return out.compute() if hasattr(out, "compute") else out

    return elapsed, Scaled()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args()

    from dask_ml.linear_model import LinearRegression as DaskLinear
    from dask_ml.linear_model import LogisticRegression as DaskLogistic
    from distributed import Client, LocalCluster
    from sklearn.linear_model import LinearRegression, LogisticRegression, SGDClassifier

    from distml.synth import make_dataset

    work = Path(tempfile.mkdtemp(prefix="distml-bench-"))
    datasets = {
        "regression": make_dataset(work / "reg", "regression", args.rows, args.features, 16)[0],
        "binary": make_dataset(work / "bin", "classification", args.rows, args.features, 16)[0],
        "binary, files sorted by label": make_dataset(work / "sorted", "classification", args.rows,
                                                      args.features, 16, sort_by_target=True)[0],
    }
    rows: list[dict] = []

    def record(dataset, contender, seconds, model, kind, train_seconds=None):
        _, test = split(datasets[dataset])
        rows.append({"dataset": dataset, "contender": contender, "seconds": round(seconds, 2),
                     "train_seconds": None if train_seconds is None else round(train_seconds, 2),
                     "metric": "r2" if kind == "regression" else "accuracy",
                     "score": round(float(score(kind, model, test)), 5)})
        print(f"  {dataset:<30} {contender:<40} {seconds:8.1f}s  {rows[-1]['metric']} {rows[-1]['score']:.4f}",
              flush=True)

    with LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", memory_limit="4GiB", silence_logs=40) as cluster:
        with Client(cluster, set_as_default=False) as client:
            for name, model in [("distml linear exact", {"kind": "linear", "params": {"solver": "exact"}}),
                                ("distml linear sgd", {"kind": "linear", "params": {"solver": "sgd"}})]:
                total, train, fitted = run_distml(client, datasets["regression"], work / "models", model)
                record("regression", name, total, fitted, "regression", train)
            for dataset in ("binary", "binary, files sorted by label"):
                total, train, fitted = run_distml(client, datasets[dataset], work / "models", {"kind": "logistic"})
                record(dataset, "distml logistic", total, fitted, "classification", train)
        seconds, fitted = run_sklearn(datasets["regression"], LinearRegression())
        record("regression", "sklearn LinearRegression (in memory)", seconds, fitted, "regression")
        for dataset in ("binary", "binary, files sorted by label"):
            seconds, fitted = run_sklearn(datasets[dataset], LogisticRegression(max_iter=500))
            record(dataset, "sklearn LogisticRegression lbfgs", seconds, fitted, "classification")
        with Client(cluster) as dask_ml_client:  # dask-ml finds its client as the global default
            seconds, fitted = run_dask_ml(datasets["regression"], DaskLinear, incremental=False)
            record("regression", "dask-ml LinearRegression", seconds, fitted, "regression")
            for dataset in ("binary", "binary, files sorted by label"):
                seconds, fitted = run_dask_ml(datasets[dataset], lambda: SGDClassifier(loss="log_loss"), True)
                record(dataset, "dask-ml Incremental(SGDClassifier)", seconds, fitted, "classification")
            seconds, fitted = run_dask_ml(datasets["binary"], DaskLogistic, incremental=False)
            record("binary", "dask-ml LogisticRegression", seconds, fitted, "classification")
            del dask_ml_client

    reference = {r["dataset"]: r for r in rows if r["contender"].startswith("sklearn")}
    print(f"\n{args.rows:,} rows x {args.features} features, {WORKERS} single-threaded workers\n")
    print(f"{'dataset':<30} {'contender':<40} {'seconds':>8} {'/ sklearn':>9} {'score':>8} {'- sklearn':>10}")
    for r in rows:
        ref = reference[r["dataset"]]
        r["time_ratio_vs_sklearn"] = round(r["seconds"] / ref["seconds"], 2)
        r["score_delta_vs_sklearn"] = round(r["score"] - ref["score"], 5)
        print(f"{r['dataset']:<30} {r['contender']:<40} {r['seconds']:8.1f} {r['time_ratio_vs_sklearn']:9.2f} "
              f"{r['score']:8.4f} {r['score_delta_vs_sklearn']:+10.4f}")
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    path = out / f"pipeline-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps({"rows": args.rows, "features": args.features, "workers": WORKERS,
                                "results": rows}, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
