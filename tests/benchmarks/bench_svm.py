"""Cascade SVM against one in-memory SVC on the same rows, and first-layer scaling from 1 to 2 workers.

Run on demand: ``python tests/benchmarks/bench_svm.py [--sizes 20000,50000,100000]``. Prints a table and
writes JSON to ``bench-results/svm-<time>.json``. The cascade runs as a ``kind: svm`` job on a
LocalCluster of single-threaded workers, warmed up (imports done) like a running cluster; its time is the
job's ``train`` phase. The reference is
``SVC`` with the same C, kernel and gamma, fitted in this process on the same (transformed) rows.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared reference split
from reference import split_frames

SEED, HOLDOUT = 0, 0.2
LAYER = re.compile(r"cascade pass 1 layer 1/\d+: (\d+) sets, ([\d,]+) support vectors, ([\d.]+)s")


def split(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training and holdout rows exactly as distml splits them (the benchmark may read rows; distml may not)."""
    return split_frames(folder, SEED, HOLDOUT)


def _warm_up() -> None:
    """Import on a worker what a job's tasks import (scikit-learn, pyarrow), outside the timed phase."""
    import pyarrow.parquet  # noqa: F401
    import sklearn.compose
    import sklearn.svm  # noqa: F401

    import distml.models.svm  # noqa: F401


def run_cascade(folder: Path, store: Path, workers: int, chunk_rows: int) -> dict:
    from distributed import Client, LocalCluster

    from distml import load_model
    from distml.runner import run_job
    from distml.spec import parse_job

    spec = parse_job({"name": "bench-svm", "seed": SEED,
                      "data": {"path": str(folder), "target": "target", "holdout": HOLDOUT},
                      "model": {"kind": "svm", "params": {"kernel": "rbf", "chunk_rows": chunk_rows}},
                      "output": {"store": str(store)}}, "bench")
    events: list[str] = []
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit="3GiB", silence_logs=40) as cluster, \
            Client(cluster, set_as_default=False) as client:
        client.run(_warm_up)  # a running cluster has its imports done, as this process has for the reference
        result = run_job(spec, client, log=events.append)
    layer = next(LAYER.search(e) for e in events if LAYER.search(e))
    model = load_model(result.uri)
    return {"seconds": result.timings["train"], "accuracy": result.metrics["accuracy"],
            "first_layer_seconds": float(layer.group(3)), "chunks": int(layer.group(1)),
            "support_vectors": len(model[-1].support_), "model": model,
            "passes": sum("KKT violators" in e and "layer 1/" in e for e in events) + 1}


def run_reference(folder: Path, model) -> dict:
    from sklearn.svm import SVC

    train, test = split(folder)
    features, svc = model[0], model[-1]
    X, y = features.transform(train.drop(columns=["target"])), train["target"].to_numpy()
    Xt, yt = features.transform(test.drop(columns=["target"])), test["target"].to_numpy()
    started = time.perf_counter()
    reference = SVC(C=svc.C, kernel=svc.kernel, gamma=svc.gamma).fit(X, y)
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 3), "accuracy": float((reference.predict(Xt) == yt).mean()),
            "support_vectors": int(reference.n_support_.sum())}


def main() -> None:
    from distml.synth import make_nonlinear_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,50000,100000", help="total rows (train + 20%% holdout)")
    parser.add_argument("--scaling-size", type=int, default=50_000, help="rows for the 1 vs 2 worker run")
    parser.add_argument("--chunk-rows", type=int, default=5000)
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args()
    rows_out, tmp = [], Path(tempfile.mkdtemp(prefix="bench-svm-"))
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    header = f"{'rows':>8} {'train':>7} {'cascade s':>10} {'SVC s':>8} {'ratio':>6} {'acc cascade':>12} " \
             f"{'acc SVC':>8} {'SVs cascade':>12} {'SVs SVC':>8} {'passes':>6}"
    print(header)
    for size in [int(s) for s in args.sizes.split(",")]:
        folder, _ = make_nonlinear_dataset(tmp / f"data-{size}", rows=size, classes=2, files=4)
        cascade = run_cascade(folder, tmp / "models", 2, args.chunk_rows)
        reference = run_reference(folder, cascade.pop("model"))
        row = {"rows": size, "train_rows": int(size * (1 - HOLDOUT)), "cascade": cascade, "svc": reference,
               "ratio": round(cascade["seconds"] / reference["seconds"], 3)}
        rows_out.append(row)
        print(f"{size:>8} {row['train_rows']:>7} {cascade['seconds']:>10.1f} {reference['seconds']:>8.1f} "
              f"{row['ratio']:>6.2f} {cascade['accuracy']:>12.4f} {reference['accuracy']:>8.4f} "
              f"{cascade['support_vectors']:>12} {reference['support_vectors']:>8} {cascade['passes']:>6}",
              flush=True)
    folder, _ = make_nonlinear_dataset(tmp / f"data-{args.scaling_size}", rows=args.scaling_size, classes=2, files=4)
    scaling = {w: run_cascade(folder, tmp / "models", w, args.chunk_rows) for w in (1, 2)}
    for run in scaling.values():
        run.pop("model")
    speedup = scaling[1]["first_layer_seconds"] / scaling[2]["first_layer_seconds"]
    print(f"first layer at {args.scaling_size} rows ({scaling[1]['chunks']} chunks): "
          f"1 worker {scaling[1]['first_layer_seconds']:.2f}s, 2 workers {scaling[2]['first_layer_seconds']:.2f}s, "
          f"speed-up {speedup:.2f}x; whole cascade {scaling[1]['seconds']:.1f}s vs {scaling[2]['seconds']:.1f}s")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    path = out / f"svm-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"sizes": rows_out, "scaling": {"rows": args.scaling_size, "runs": scaling,
                                                                "first_layer_speedup": round(speedup, 3)},
                                "chunk_rows": args.chunk_rows, "cores": os.cpu_count()}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
