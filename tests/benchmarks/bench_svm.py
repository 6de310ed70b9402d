"""Cascade SVM against one in-memory SVC on the same rows, and first-layer scaling from 1 to 2 workers.

Run on demand: ``python tests/benchmarks/bench_svm.py [--sizes 20000,50000,100000] [--repeat 3]``.
Each size runs ``--repeat`` times, cascade and reference side by side each time; a summary gives the
median ratio. Prints a table and writes JSON to ``bench-results/svm-<time>.json``. The cascade runs as
a ``kind: svm`` job on a LocalCluster of two single-threaded workers, each with LocalCluster's share of
the machine's memory unless ``--worker-memory`` says otherwise, warmed up (imports done) like a running
cluster; its time is the job's ``train`` phase. The reference is ``SVC`` with the same C, kernel and
gamma, fitted in this process on the same (transformed) rows.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared reference split
from reference import split_frames

SEED, HOLDOUT = 0, 0.2
CHUNKS = re.compile(r"cascade SVM: (\d+) chunks")
# task-key phases of the cascade, in the order they run (distml-<phase>-<job id>-...)
PHASES = {"svm": "first layer", "layer": "merges", "screen": "screen", "top": "top", "kkt": "feedback check",
          "refit": "refit"}


def split(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training and holdout rows exactly as distml splits them (the benchmark may read rows; distml may not)."""
    return split_frames(folder, SEED, HOLDOUT)


def _warm_up() -> None:
    """Import on a worker what a job's tasks import (scikit-learn, pyarrow), outside the timed phase."""
    import pyarrow.parquet  # noqa: F401
    import sklearn.compose
    import sklearn.svm  # noqa: F401

    import distml.models.svm  # noqa: F401


def phase_spans(tasks: list[dict]) -> dict[str, float]:
    """Wall seconds from the first start to the last stop of each cascade phase's tasks (from the task stream)."""
    spans: dict[str, list[float]] = {}
    for task in tasks:
        phase = str(task["key"]).split("-")[1]
        for ss in task["startstops"]:
            if phase in PHASES and ss["action"] == "compute":
                lo, hi = spans.setdefault(phase, [ss["start"], ss["stop"]])
                spans[phase] = [min(lo, ss["start"]), max(hi, ss["stop"])]
    return {PHASES[p]: round(hi - lo, 3) for p, (lo, hi) in spans.items()}


def busy_seconds(tasks: list[dict], phase: str) -> float:
    """Wall seconds during which at least one task of ``phase`` computes (other tasks in between not counted).

    On one worker the scheduler slips merges and screens in between first-layer fits, so the
    first layer's span would count them; the union of its tasks' intervals does not.
    """
    spans = sorted((ss["start"], ss["stop"]) for task in tasks for ss in task["startstops"]
                   if ss["action"] == "compute" and str(task["key"]).split("-")[1] == phase)
    total, end = 0.0, float("-inf")
    for start, stop in spans:
        total += max(0.0, stop - max(start, end))
        end = max(end, stop)
    return round(total, 3)


def run_cascade(folder: Path, store: Path, workers: int, params: dict, memory: str) -> dict:
    from distributed import Client, LocalCluster, get_task_stream

    from distml import load_model
    from distml.runner import run_job
    from distml.jobfile import parse_job

    spec = parse_job({"name": "bench-svm", "seed": SEED,
                      "data": {"path": str(folder), "target": "target", "holdout": HOLDOUT},
                      "model": {"kind": "svm", "params": {"kernel": "rbf", **params}},
                      "output": {"store": str(store)}}, "bench")
    events: list[str] = []
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit=memory, silence_logs=40) as cluster, \
            Client(cluster, set_as_default=False) as client:
        client.run(_warm_up)  # a running cluster has its imports done, as this process has for the reference
        with get_task_stream(client) as stream:
            result = run_job(spec, client, log=events.append)
    model = load_model(result.uri)
    return {"seconds": result.timings["train"], "eval_seconds": result.timings["eval"],
            "accuracy": result.metrics["accuracy"],
            "phases": phase_spans(stream.data), "first_layer_busy": busy_seconds(stream.data, "svm"),
            "chunks": int(next(CHUNKS.search(e) for e in events if CHUNKS.search(e)).group(1)),
            "support_vectors": len(model[-1].support_), "model": model,
            "passes": sum("KKT violators" in e for e in events) + 1}


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
    parser.add_argument("--scaling-size", type=int, default=50_000, help="rows for the 1 vs 2 worker run (0: skip)")
    parser.add_argument("--chunk-rows", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (the machines are noisy)")
    parser.add_argument("--C", type=float, default=1.0, help="SVC's C, for the cascade and the reference")
    parser.add_argument("--noise", type=float, default=0.3, help="label noise of the synthetic data")
    parser.add_argument("--worker-memory", default="auto",
                        help="each worker's memory limit (auto: LocalCluster's share of this machine's memory)")
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args()
    params = {"chunk_rows": args.chunk_rows, "C": args.C}
    rows_out, tmp = [], Path(tempfile.mkdtemp(prefix="bench-svm-"))

    def dataset(size: int) -> Path:
        return make_nonlinear_dataset(tmp / f"data-{size}", rows=size, classes=2, files=4, noise=args.noise)[0]

    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; C={args.C}, "
          f"noise={args.noise}, chunk_rows={args.chunk_rows}")
    print(f"{'rows':>8} {'train':>7} {'cascade s':>10} {'SVC s':>8} {'ratio':>6} {'acc cascade':>12} "
          f"{'acc SVC':>8} {'SVs cascade':>12} {'SVs SVC':>8} {'passes':>6}  cascade phases (s)")
    summary = []
    for size in [int(s) for s in args.sizes.split(",")]:
        folder = dataset(size)
        ratios = []
        for repeat in range(args.repeat):  # side by side each time: a fresh cluster, then the reference
            cascade = run_cascade(folder, tmp / "models", 2, params, args.worker_memory)
            reference = run_reference(folder, cascade.pop("model"))
            row = {"rows": size, "train_rows": int(size * (1 - HOLDOUT)), "repeat": repeat, "cascade": cascade,
                   "svc": reference, "ratio": round(cascade["seconds"] / reference["seconds"], 3)}
            rows_out.append(row)
            ratios.append(row["ratio"])
            phases = ", ".join(f"{k} {v:.1f}" for k, v in cascade["phases"].items())
            phases += f"; the job's eval phase {cascade['eval_seconds']:.2f}"
            print(f"{size:>8} {row['train_rows']:>7} {cascade['seconds']:>10.1f} {reference['seconds']:>8.1f} "
                  f"{row['ratio']:>6.2f} {cascade['accuracy']:>12.4f} {reference['accuracy']:>8.4f} "
                  f"{cascade['support_vectors']:>12} {reference['support_vectors']:>8} {cascade['passes']:>6}  "
                  f"{phases}", flush=True)
        summary.append({"rows": size, "median_ratio": statistics.median(ratios), "min": min(ratios),
                        "max": max(ratios), "runs": len(ratios)})
    for line in summary:
        print(f"{line['rows']:>8} rows: median ratio {line['median_ratio']:.2f} of {line['runs']} runs "
              f"(min {line['min']:.2f}, max {line['max']:.2f})")
    scaling, speedup = {}, None
    if args.scaling_size:
        folder = dataset(args.scaling_size)
        scaling = {w: [] for w in (1, 2)}
        for _ in range(args.repeat):
            for w in (1, 2):
                run = run_cascade(folder, tmp / "models", w, params, args.worker_memory)
                run.pop("model")
                scaling[w].append(run)
        first = {w: statistics.median(r["first_layer_busy"] for r in runs) for w, runs in scaling.items()}
        whole = {w: statistics.median(r["seconds"] for r in runs) for w, runs in scaling.items()}
        speedup = first[1] / first[2]
        print(f"first layer at {args.scaling_size} rows ({scaling[1][0]['chunks']} chunks), median of {args.repeat}: "
              f"1 worker {first[1]:.2f}s, 2 workers {first[2]:.2f}s, speed-up {speedup:.2f}x; whole cascade "
              f"{whole[1]:.1f}s vs {whole[2]:.1f}s ({whole[1] / whole[2]:.2f}x)")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    path = out / f"svm-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"sizes": rows_out, "summary": summary,
                                "scaling": {"rows": args.scaling_size, "runs": scaling, "first_layer_speedup": speedup},
                                "params": params, "noise": args.noise, "cores": os.cpu_count()}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
