"""A 12-candidate search against 12 separate jobs, per family, side by side in one run.

Run on demand: ``python tests/benchmarks/bench_search.py [--rows 200000] [--repeats 3]``.
Prints a table and writes JSON to ``bench-results/search-<time>.json``.

Both sides score by the same rule (a 0.2 validation share of the training rows for the
search, the 0.2 holdout for each job) and both refit/save: the search refits the best
configuration once, each job saves its own. Two ratios per family: whole ``distml submit``
processes (12 embedded clusters against one), and jobs on one running cluster
(``run_job`` 12 times against one search), which leaves out the clusters' start-up.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

FAMILIES = {
    "linear": ({"kind": "linear"}, {"alpha": [0.0] + [10.0**e for e in range(-4, 7)]}),
    "logistic": ({"kind": "logistic"}, {"alpha": [10.0**e for e in range(-7, 5)]}),
    "logistic-sgd": ({"kind": "logistic", "params": {"solver": "sgd"}}, {"alpha": [10.0**e for e in range(-8, 4)]}),
    "logistic-mixed": ({"kind": "logistic"}, {"solver": ["newton", "sgd"], "alpha": [10.0**e for e in range(-6, 0)]}),
    "svm-linear": ({"kind": "svm", "params": {"kernel": "linear"}}, {"C": [10.0**e for e in range(-5, 7)]}),
    "forest": ({"kind": "forest", "params": {"max_samples": 0.1}},
               {"max_depth": [4, 8, 12, 16], "n_estimators": [20, 40, 60]}),
}


def job(folder: Path, store: Path, model: dict, kind: str, search: dict | None = None) -> dict:
    doc = {"name": f"bench-{kind}", "seed": 0, "data": {"path": str(folder), "target": "target"},
           "model": model, "output": {"store": str(store)}}
    if search:
        doc["search"] = {"params": search}
    return doc


def grid(search: dict) -> list[dict]:
    import itertools

    return [dict(zip(search, combo)) for combo in itertools.product(*search.values())]


def with_params(model: dict, params: dict) -> dict:
    return {**model, "params": {**model.get("params", {}), **params}}


def submit(doc: dict, where: Path) -> float:
    path = where / f"job-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(doc))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "distml", "submit", str(path), "--quiet"], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def on_cluster(client, doc: dict) -> float:
    from distml.jobfile import parse_job
    from distml.runner import run_job

    started = time.perf_counter()
    run_job(parse_job(doc, "bench"), client)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--families", default=",".join(FAMILIES))
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    from distml.synth import make_dataset

    results = []
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(
            n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=":0") as cluster, \
            Client(cluster, set_as_default=False) as client:
        tmp_path = Path(tmp)
        for kind in args.families.split(","):
            model, search = FAMILIES[kind]
            task = "regression" if kind == "linear" else "classification"
            folder, _ = make_dataset(tmp_path / kind, task, args.rows, args.features, files=4)
            store = tmp_path / "models"
            candidates = grid(search)
            row = {"family": kind, "candidates": len(candidates), "rows": args.rows, "runs": []}
            for _ in range(args.repeats):
                run = {"search_process": submit(job(folder, store, model, kind, search), tmp_path),
                       "jobs_process": sum(submit(job(folder, store, with_params(model, c), kind), tmp_path)
                                           for c in candidates),
                       "search_cluster": on_cluster(client, job(folder, store, model, kind, search)),
                       "jobs_cluster": sum(on_cluster(client, job(folder, store, with_params(model, c), kind))
                                           for c in candidates)}
                run["ratio_process"] = run["search_process"] / run["jobs_process"]
                run["ratio_cluster"] = run["search_cluster"] / run["jobs_cluster"]
                row["runs"].append(run)
            for name in ("ratio_process", "ratio_cluster", "search_process", "jobs_process",
                         "search_cluster", "jobs_cluster"):
                values = [r[name] for r in row["runs"]]
                row[name] = statistics.median(values)
                row[name + "_spread"] = [min(values), max(values)]
            results.append(row)

    print(f"{'family':<12} {'cands':>5} {'search s':>9} {'12 jobs s':>10} {'ratio':>6} {'spread':>13}   "
          f"{'on one cluster: search s':>25} {'12 jobs s':>10} {'ratio':>6}")
    for r in results:
        lo, hi = r["ratio_process_spread"]
        print(f"{r['family']:<12} {r['candidates']:>5} {r['search_process']:>9.1f} {r['jobs_process']:>10.1f} "
              f"{r['ratio_process']:>6.2f} {f'{lo:.2f}-{hi:.2f}':>13}   {r['search_cluster']:>25.1f} "
              f"{r['jobs_cluster']:>10.1f} {r['ratio_cluster']:>6.2f}")
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    path = out / f"search-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
