"""Benchmark: distml's forest on a 2-worker cluster vs scikit-learn in memory, and on data larger than the cluster.

Run on demand (not part of the test suite):

    /work/venv/bin/python tests/benchmarks/bench_forest.py [--rows 1000000] [--trees 100]

Case ``fits``: the same rows (all of them, no holdout) trained by distml's forest
on a LocalCluster of 2 single-threaded workers and by
``RandomForestClassifier(n_jobs=2)`` in memory; both scored on the same test file.
Case ``larger``: a dataset bigger than the cluster's total worker memory; it
must finish with no worker restarted (worker process ids checked before and after).
Prints a table and writes JSON to ``bench-results/``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

FEATURES = 20


def _dataset(root: Path, rows: int, files: int) -> tuple[Path, Path]:
    from distml.synth import make_dataset

    folder = root / f"forest-{rows}-{FEATURES}"
    test = folder.with_name(folder.name + "-test.parquet")
    if not test.exists():  # made once, then reused
        make_dataset(folder, "classification", rows=rows, features=FEATURES, files=files, classes=2, seed=7,
                     test_rows=100_000)
    return folder, test


def _cluster(memory: str):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, memory_limit=memory, silence_logs=40)
    return cluster, Client(cluster, set_as_default=False)


def _distml(folder: Path, test: Path, params: dict, memory: str, store: Path) -> dict:
    from distml import load_model
    from distml.runner import run_job
    from distml.jobfile import parse_job

    spec = parse_job({"name": "bench-forest", "seed": 0,
                      "data": {"path": str(folder), "target": "target", "holdout": 0.0},
                      "model": {"kind": "forest", "params": params}, "output": {"store": str(store)}}, "bench")
    cluster, client = _cluster(memory)
    with cluster, client:
        client.wait_for_workers(2)
        pids = sorted(client.run(os.getpid).values())
        cpu = sum(client.run(_cpu_seconds).values()) + _cpu_seconds()
        started = time.perf_counter()
        result = run_job(spec, client, log=lambda m: print("   ", m, flush=True))
        wall = time.perf_counter() - started
        restarted = sorted(client.run(os.getpid).values()) != pids
        cpu = sum(client.run(_cpu_seconds).values()) + _cpu_seconds() - cpu
    frame = pd.read_parquet(test)
    accuracy = load_model(result.uri).score(frame.drop(columns=["target"]), frame["target"])
    return {"train_s": result.timings["train"], "job_s": round(wall, 2), "job_cpu_s": round(cpu, 1), "timings": result.timings,
            "accuracy": round(float(accuracy), 4), "worker_restarted": restarted, "memory_limit": memory}


def _cpu_seconds() -> float:
    """CPU time of this process, all threads (workers and client: robust to a busy machine)."""
    times = os.times()
    return times.user + times.system


def _sklearn(folder: Path, test: Path, params: dict) -> dict:
    from sklearn.ensemble import RandomForestClassifier

    started = time.perf_counter()
    train = pd.concat([pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))], ignore_index=True)
    read = time.perf_counter() - started
    model = RandomForestClassifier(**params, n_jobs=2, random_state=0)
    started, cpu = time.perf_counter(), _cpu_seconds()
    model.fit(train.drop(columns=["target"]), train["target"])
    fit, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    frame = pd.read_parquet(test)
    accuracy = model.score(frame.drop(columns=["target"]), frame["target"])
    return {"train_s": round(fit, 2), "fit_cpu_s": round(cpu, 1), "read_s": round(read, 2), "accuracy": round(float(accuracy), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--max-samples", type=float, default=0.1)
    parser.add_argument("--max-depth", type=int, default=None)
    parser.add_argument("--memory", default="4GiB", help="worker memory limit, case fits")
    parser.add_argument("--large-rows", type=int, default=8_000_000)
    parser.add_argument("--large-memory", default="512MiB", help="worker memory limit, case larger")
    parser.add_argument("--large-trees", type=int, default=20)
    parser.add_argument("--large-max-samples", type=float, default=0.05)
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--skip-fits", action="store_true")
    parser.add_argument("--data", default="bench-results/data", help="where datasets are made once and kept")
    args = parser.parse_args()
    root, out = Path(args.data), Path("bench-results")
    out.mkdir(exist_ok=True)
    params = {"n_estimators": args.trees, "max_samples": args.max_samples, "max_depth": args.max_depth}
    results: dict = {}
    if not args.skip_fits:
        folder, test = _dataset(root, args.rows, 8)
        print(f"case fits: {args.rows:,} rows x {FEATURES} features, {params}", flush=True)
        results["fits"] = {"rows": args.rows, "params": params, "sklearn": _sklearn(folder, test, params),
                           "distml": _distml(folder, test, params, args.memory, root / "models")}
    if not args.skip_large:
        large = {"n_estimators": args.large_trees, "max_samples": args.large_max_samples, "max_depth": 12}
        folder, test = _dataset(root, args.large_rows, 32)
        size = args.large_rows * (FEATURES + 1) * 8
        print(f"case larger: {args.large_rows:,} rows ({size / 2**30:.1f} GiB as float64) on 2 x "
              f"{args.large_memory} workers, {large}", flush=True)
        results["larger"] = {"rows": args.large_rows, "bytes_in_memory": size, "params": large,
                             "distml": _distml(folder, test, large, args.large_memory, root / "models")}
    _print(results)
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    path = out / f"forest-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


def _print(results: dict) -> None:
    print(f"\n{'run':<58} {'train s':>8} {'cpu s':>7} {'job s':>8} {'accuracy':>9} {'restarted':>9}")
    if "fits" in results:
        sk, dm = results["fits"]["sklearn"], results["fits"]["distml"]
        print(f"{'sklearn RandomForestClassifier(n_jobs=2), in memory':<58} {sk['train_s']:>8} "
              f"{sk['fit_cpu_s']:>7} {'-':>8} {sk['accuracy']:>9} {'-':>9}")
        _row("distml forest, 2 workers x 1 thread", dm)
        print(f"distml train / sklearn fit: {dm['train_s'] / sk['train_s']:.2f}x wall "
              f"(sklearn read {sk['read_s']}s not counted); cpu s: distml's whole job (workers + client) "
              "vs sklearn's fit")
    if "larger" in results:
        lg = results["larger"]
        _row(f"distml forest, {lg['rows']:,} rows > 2 x {lg['distml']['memory_limit']}", lg["distml"])


def _row(name: str, r: dict) -> None:
    print(f"{name:<58} {r['train_s']:>8} {r['job_cpu_s']:>7} {r['job_s']:>8} {r['accuracy']:>9} "
          f"{r['worker_restarted']!s:>9}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
