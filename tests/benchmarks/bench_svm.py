"""Cascade SVM against one in-memory SVC on the same rows, and first-layer scaling from 1 to 2 workers.

Run on demand: ``python tests/benchmarks/bench_svm.py [--sizes 20000,50000,100000] [--repeat 3]``.
``--noisy-sizes 20000,50000`` adds the noisy dataset (``distml.synth.make_noisy_rows``: most rows end as
support vectors, best accuracy about 0.80): one SVC and distml side by side at those sizes, and distml
alone at ``--noisy-alone 200000,500000``, with the route distml took and the prediction time per 10k rows
(``--sizes ''`` and ``--scaling-size 0`` skip the first dataset); ``--noisy-cascade 50000`` also runs the
cascade on those rows (``switch_sv_fraction: 1``), with its phases; ``--noisy-classes 3`` makes that data
three classes (the route then trains one-vs-one); ``--noisy-seeds 0,1,2`` runs each size on that many datasets
(one per seed) and prints the median accuracy gap and time ratio with their spread, as one 10k-row test set
moves an accuracy by tenths of a point.
Each size runs ``--repeat`` times, cascade and reference side by side each time; a summary gives the
median ratio. Prints a table and writes JSON to ``bench-results/svm-<time>.json``. The cascade runs as
a ``kind: svm`` job on a LocalCluster of two single-threaded workers, each with LocalCluster's share of
the machine's memory unless ``--worker-memory`` says otherwise, warmed up (imports done) like a running
cluster; its time is the job's ``train`` phase. The reference is ``SVC`` with the same C, kernel and
gamma, fitted in this process on the same (transformed) rows.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
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


def _predict_seconds(predict, X, rows: int = 10_000) -> float:
    """Seconds ``predict`` takes on ``rows`` rows (the first ``rows`` of ``X``, repeated if fewer), in this process."""
    X = pd.concat([X] * -(-rows // len(X)), ignore_index=True).iloc[:rows] if isinstance(X, pd.DataFrame) \
        else np.resize(X, (rows, X.shape[1]))
    started = time.perf_counter()
    predict(X)
    return round(time.perf_counter() - started, 3)


def _scored(model, X) -> np.ndarray:
    """Labels as distml's batch scoring computes them (``distml.predict._scores``)."""
    from distml.predict import _scores

    return _scores(model, X, (), False)["prediction"].to_numpy()


def run_noisy(folder: Path, store: Path, workers: int, memory: str) -> dict:
    """distml on the noisy data with the family's defaults (``kind: svm``, kernel rbf, C 1): the route it measured."""
    from distributed import Client, LocalCluster

    from distml import load_model
    from distml.jobfile import parse_job
    from distml.runner import run_job

    spec = parse_job({"name": "bench-svm-noisy", "seed": SEED,
                      "data": {"path": str(folder), "target": "target", "holdout": HOLDOUT},
                      "model": {"kind": "svm", "params": {"kernel": "rbf"}}, "output": {"store": str(store)}}, "bench")
    events: list[str] = []
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit=memory, silence_logs=40) as cluster, \
            Client(cluster, set_as_default=False) as client:
        client.run(_warm_up)
        started = time.perf_counter()
        result = run_job(spec, client, log=events.append)
        whole = time.perf_counter() - started
    model = load_model(result.uri)
    training = json.loads((Path(result.uri) / "manifest.json").read_text()).get("training", {})
    route = {**training.get("route", {}), "solver": training.get("solver")}  # solver: the dual's rounds and gap
    estimator = model[-1]
    size = len(estimator.support_) if hasattr(estimator, "support_") else estimator[0].n_components
    test = pd.read_parquet(folder.with_name(folder.name + "-test.parquet")).drop(columns=["target"])
    return {"seconds": result.timings["train"], "job_seconds": round(whole, 3), "accuracy": result.metrics["accuracy"],
            "route": route.get("taken", "cascade"), "sv_fraction": route.get("sv_fraction"),
            "size": size, "predict_10k": _predict_seconds(model.predict, test), "record": route,
            # distml's own scoring (``distml score``, evaluation): a Nyström map's normalisation folded into w
            "score_10k": _predict_seconds(lambda X: _scored(model, X), test),
            "gamma": float(estimator.gamma if hasattr(estimator, "gamma") else estimator[0].gamma), "model": model}


def noisy_section(args: argparse.Namespace, tmp: Path) -> list[dict]:
    """The noisy dataset: one SVC and distml side by side at ``--noisy-sizes``, distml alone at ``--noisy-alone``."""
    from sklearn.svm import SVC

    from distml.synth import make_noisy_dataset

    sizes = [(int(s), True) for s in args.noisy_sizes.split(",") if s] + \
        [(int(s), False) for s in args.noisy_alone.split(",") if s]
    if not sizes:
        return []
    forced = {int(s) for s in args.noisy_cascade.split(",") if s}
    print(f"\nnoisy data ({args.noisy_features} features, {args.noisy_classes} classes, 10% flips), load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'rows':>8} {'who':>7} {'train s':>8} {'job s':>7} {'accuracy':>9} {'SVs/comp':>9} {'pred 10k s':>10}  route")
    out = []
    seeds = [int(s) for s in args.noisy_seeds.split(",")]
    for (size, with_svc), seed in itertools.product(sizes, seeds):
        folder = make_noisy_dataset(tmp / f"noisy-{size}-{args.noisy_classes}-{seed}", rows=size,
                                    features=args.noisy_features, classes=args.noisy_classes, seed=seed)[0]
        ours = run_noisy(folder, tmp / "models", 2, args.worker_memory)
        model = ours.pop("model")
        row = {"rows": size, "seed": seed, "train_rows": int(size * (1 - HOLDOUT)), "classes": args.noisy_classes,
               "distml": ours, "load": os.getloadavg()[0]}
        print(f"{size:>8} {'distml':>7} {ours['seconds']:>8.1f} {ours['job_seconds']:>7.1f} {ours['accuracy']:>9.4f} "
              f"{ours['size']:>9} {ours['predict_10k']:>10.2f}  {ours['route']} (distml score 10k rows "
              f"{ours['score_10k']:.2f} s; probe SV fraction "
              f"{ours['sv_fraction']}{', ' + ours['record']['multiclass'] if ours['record'].get('multiclass') else ''})",
              flush=True)
        if with_svc:
            train, test = split(folder)
            X, y = model[0].transform(train.drop(columns=["target"])), train["target"].to_numpy()
            Xt, yt = model[0].transform(test.drop(columns=["target"])), test["target"].to_numpy()
            started = time.perf_counter()
            svc = SVC(C=1.0, kernel="rbf", gamma=ours["gamma"]).fit(X, y)
            ref = {"seconds": round(time.perf_counter() - started, 3), "accuracy": float((svc.predict(Xt) == yt).mean()),
                   "support_vectors": int(svc.n_support_.sum()), "predict_10k": _predict_seconds(svc.predict, Xt)}
            row["svc"], row["ratio"] = ref, round(ours["seconds"] / ref["seconds"], 3)
            row["accuracy_gap"] = round(ours["accuracy"] - ref["accuracy"], 4)
            print(f"{size:>8} {'SVC':>7} {ref['seconds']:>8.1f} {'':>7} {ref['accuracy']:>9.4f} "
                  f"{ref['support_vectors']:>9} {ref['predict_10k']:>10.2f}  one SVC in this process "
                  f"(distml/SVC time {row['ratio']:.2f}, accuracy {row['accuracy_gap']:+.4f})", flush=True)
        if size in forced:
            cascade = run_cascade(folder, tmp / "models", 2, {"switch_sv_fraction": 1.0}, args.worker_memory)
            cascade.pop("model")
            row["cascade"] = cascade
            phases = ", ".join(f"{k} {v:.1f}" for k, v in cascade["phases"].items())
            print(f"{size:>8} {'cascade':>7} {cascade['seconds']:>8.1f} {'':>7} {cascade['accuracy']:>9.4f} "
                  f"{cascade['support_vectors']:>9} {'':>10}  the cascade kept (switch_sv_fraction: 1): {phases}",
                  flush=True)
        out.append(row)
        Path(args.out).mkdir(exist_ok=True)  # each size as it finishes: a long run that is stopped keeps its rows
        (Path(args.out) / "svm-noisy-latest.json").write_text(json.dumps(out, indent=2))
        if with_svc and len(seeds) > 1 and seed == seeds[-1]:
            _print_spread([r for r in out if r["rows"] == size and "svc" in r])
    return out


def _print_spread(rows: list[dict]) -> None:
    """One size's runs over the data's seeds: median (min-max) of the accuracy gap to one SVC and of the time ratio."""
    gaps, ratios = [r["accuracy_gap"] for r in rows], [r["ratio"] for r in rows]
    print(f"{rows[0]['rows']:>8} {'spread':>7}  over data seeds {[r['seed'] for r in rows]}: accuracy distml - SVC "
          f"{statistics.median(gaps):+.4f} ({min(gaps):+.4f} to {max(gaps):+.4f}), distml/SVC time "
          f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})", flush=True)


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
    parser.add_argument("--noisy-sizes", default="20000,50000", help="noisy rows for one SVC and distml ('': none)")
    parser.add_argument("--noisy-alone", default="200000,500000", help="noisy rows for distml alone ('': none)")
    parser.add_argument("--noisy-features", type=int, default=24, help="features of the noisy data (20-28)")
    parser.add_argument("--noisy-classes", type=int, default=2, help="classes of the noisy data")
    parser.add_argument("--noisy-seeds", default="0",
                        help="seeds of the noisy data, one dataset each (a 10k-row test set moves accuracy by tenths)")
    parser.add_argument("--noisy-cascade", default="",
                        help="of those noisy sizes, the ones where the cascade also runs, kept by switch_sv_fraction: 1")
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
    for size in [int(s) for s in args.sizes.split(",") if s]:
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
    noisy = noisy_section(args, tmp)
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    path = out / f"svm-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"sizes": rows_out, "summary": summary,
                                "scaling": {"rows": args.scaling_size, "runs": scaling, "first_layer_speedup": speedup},
                                "params": params, "noise": args.noise, "cores": os.cpu_count(),
                                "noisy": {"features": args.noisy_features, "sizes": noisy}}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
