"""Where a distml job's time goes, side by side with the read floor, scikit-learn and dask-ml, in one run.

Run on demand (not part of the test suite):

    python tests/benchmarks/bench_speed.py [--sizes 200000 2000000] [--big-ratio 3] [--repeats 3]
                                           [--families linear logistic svm forest] [--no-dask-ml]

For each size (and for a dataset ``--big-ratio`` times the memory of the big case's cluster, two
workers of ``--memory-limit`` each) it measures, every figure ``--repeats`` times (median, with the
min–max spread):

- the read floor: the same Parquet files read to numpy by plain pyarrow in 2 processes (rows/s);
- scikit-learn in memory: the whole Python process (imports, read with pandas, fit) and the fit alone;
- dask-ml (where it applies: linear, logistic) on a 2-worker LocalCluster: read + fit;
- each distml family as a user runs it, ``distml submit --json`` on the embedded cluster (2 workers ×
  1 thread): the whole process, each phase, rows/s of each pass (statistics, each training epoch,
  evaluation), the passes made (from the job record's events), and the time outside the data
  phases (whole process minus stats, train and eval: start-up, save, shutdown).

Prints a table and writes JSON to ``bench-results/speed-<time>.json``. Times are wall seconds; the
machine should be otherwise idle (say so when it was not).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_pipeline: dask-ml's run, the shared split
from bench_pipeline import run_dask_ml, split  # noqa: E402

WORKERS, SEED, HOLDOUT = 2, 0, 0.2
FAMILIES = {  # family -> (data kind, distml model, scikit-learn estimator built in the child process)
    "linear": ("regression", {"kind": "linear", "params": {"solver": "exact"}}, "LinearRegression()"),
    "logistic": ("classification", {"kind": "logistic"}, "LogisticRegression(max_iter=500)"),
    "svm": ("classification", {"kind": "svm", "params": {"kernel": "linear"}}, "LinearSVC()"),
    "forest": ("classification", {"kind": "forest", "params": {"n_estimators": 100, "max_samples": 0.1}},
               "RandomForestClassifier(n_estimators=100, max_samples=0.1, n_jobs=2, random_state=0)"),
}
SKLEARN_IMPORTS = ("from sklearn.linear_model import LinearRegression, LogisticRegression\n"
                   "from sklearn.svm import LinearSVC\nfrom sklearn.ensemble import RandomForestClassifier\n")


# --- the read floor ----------------------------------------------------------

def _read_files_part(paths: list[str]) -> int:
    """Read whole files to one float64 numpy matrix each, as plainly as pyarrow allows; the rows read."""
    import numpy as np
    import pyarrow.parquet as pq

    rows = 0
    for path in paths:
        table = pq.read_table(path)
        matrix = np.column_stack([column.to_numpy() for column in table.columns]).astype(np.float64, copy=False)
        rows += len(matrix)
    return rows


def read_floor(folder: Path) -> tuple[float, int]:
    """Seconds for 2 processes to read every file of ``folder`` to numpy (pool start not counted)."""
    from concurrent.futures import ProcessPoolExecutor

    paths = sorted(str(p) for p in folder.glob("*.parquet"))
    shares = [paths[i::WORKERS] for i in range(WORKERS)]
    with ProcessPoolExecutor(WORKERS) as pool:
        list(pool.map(_read_files_part, [[] for _ in range(WORKERS)]))  # start and import first
        started = time.perf_counter()
        rows = sum(pool.map(_read_files_part, shares))
        return time.perf_counter() - started, rows


# --- scikit-learn in memory (a child process, timed whole) ---------------------

def sklearn_child(folder: str, estimator: str) -> None:
    """The child: read distml's training rows with pandas, fit, print the fit's seconds as JSON."""
    exec(SKLEARN_IMPORTS, globals())  # noqa: S102 - the benchmark's own fixed text
    train, _ = split(Path(folder))
    X, y = train.drop(columns=["target"]).to_numpy(), train["target"].to_numpy()
    model = eval(estimator)  # noqa: S307 - the benchmark's own fixed text
    started = time.perf_counter()
    model.fit(X, y)
    print(json.dumps({"fit": time.perf_counter() - started}))


def run_sklearn(folder: Path, estimator: str) -> dict:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--sklearn-child", str(folder), estimator],
                         capture_output=True, text=True, check=True)
    return {"process": time.perf_counter() - started, **json.loads(out.stdout.strip().splitlines()[-1])}


# --- distml, as a user runs it --------------------------------------------------

def run_distml(folder: Path, model: dict, work: Path, memory_limit: str | None) -> dict:
    """``distml submit --json`` in a fresh process; phases from its summary, passes from its job record."""
    store = work / "models"
    job = work / f"job-{model['kind']}.json"  # JSON is YAML
    job.write_text(json.dumps({"name": f"speed-{model['kind']}", "seed": SEED,
                               "data": {"path": str(folder), "target": "target", "holdout": HOLDOUT},
                               "model": model, "output": {"store": str(store), "report": False}}))
    command = [sys.executable, "-m", "distml", "submit", str(job), "--json", "--workers", str(WORKERS),
               "--threads", "1"] + (["--memory-limit", memory_limit] if memory_limit else [])
    began = time.time()
    started = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - started
    ended = time.time()
    if out.returncode:
        raise RuntimeError(f"distml submit failed: {out.stderr.strip()[-500:]}")
    summary = json.loads(out.stdout)
    record = json.loads((store / "_jobs" / f"{summary['job_id']}.json").read_text())
    events = record["events"]
    epochs = sum(1 for _, message in events if re.match(r"epoch \d+", message))
    solver_passes = [int(m.group(1)) for _, message in events
                     if (m := re.search(r"(\d+) passes over the data", message))]
    waited = sum(float(m.group(1)) for _, message in events
                 if (m := re.match(r"waited ([\d.]+)s for the client's", message)))
    rows = summary["rows"]
    t = summary["timings"]
    train_passes = solver_passes[-1] if solver_passes else max(1, epochs)
    # the client's wait for its imports happens inside the stats phase but is no data work
    data = sum(t.get(p, 0.0) for p in ("stats", "train", "eval")) - waited
    stamp = lambda at: datetime.fromisoformat(at).timestamp()  # noqa: E731
    return {
        "process": wall, "phases": t, "persisted": summary["persisted"], "outside_phases": wall - data,
        "outside": {"until_job_started": stamp(events[0][0]) - began, "imports_waited": waited,
                    "save": t.get("save", 0.0), "after_job_ended": ended - stamp(events[-1][0])},
        "passes": 1 + train_passes + (1 if t.get("eval") else 0),
        "stats_rows_per_s": rows["total"] / (t["stats"] - waited) if t.get("stats") else None,
        "train_rows_per_s_per_pass": rows["train"] * train_passes / t["train"] if t.get("train") else None,
        "eval_rows_per_s": rows["holdout"] / t["eval"] if t.get("eval") else None,
        "metric": {k: v for k, v in summary["metrics"].items() if k in ("accuracy", "r2")},
    }


# --- repeats and the table ------------------------------------------------------

def summarize(runs: list[dict]) -> dict:
    """Median and min–max of every number across repeats (nested dicts too)."""
    out: dict = {}
    for key, value in runs[0].items():
        if isinstance(value, dict):
            out[key] = summarize([r[key] for r in runs])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            values = [r[key] for r in runs]
            out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        else:
            out[key] = value
    return out


def med(value: dict | None) -> float:
    return float("nan") if value is None else value["median"]


def spread(value: dict) -> str:
    return f"{value['median']:7.2f} ({value['min']:.2f}–{value['max']:.2f})"


def print_case(case: dict) -> None:
    floor_rate = med(case["floor"]["rows_per_s"])
    print(f"\n== {case['name']}: {case['rows']:,} rows x {case['features']} features, {WORKERS} workers x 1 thread"
          + (f", memory limit {case['memory_limit']} each (data {case['data_memory_ratio']:.1f}x cluster memory)"
             if case["memory_limit"] else "") + f"; median of {case['repeats']} (min–max)")
    print(f"  read floor (pyarrow -> numpy, {WORKERS} processes): {spread(case['floor']['seconds'])} s, "
          f"{floor_rate / 1e6:.2f} M rows/s")
    for family, r in case["families"].items():
        d = r["distml"]
        print(f"  {family}")
        if "sklearn" in r:
            print(f"    scikit-learn  process {spread(r['sklearn']['process'])} s   fit {spread(r['sklearn']['fit'])} s")
        if "dask_ml" in r:
            print(f"    dask-ml       read+fit {spread(r['dask_ml']['seconds'])} s")
        phases = ", ".join(f"{p} {med(v):.2f}" for p, v in d["phases"].items())
        print(f"    distml        process {spread(d['process'])} s   outside phases {spread(d['outside_phases'])} s")
        print("                  outside: " + ", ".join(f"{k.replace('_', ' ')} {med(v):.2f}"
                                                      for k, v in d["outside"].items()))
        print(f"                  phases: {phases}; passes {med(d['passes']):.0f}, persisted {d['persisted']}")
        rates = [(name, med(d.get(key))) for name, key in (("stats", "stats_rows_per_s"),
                                                            ("train/pass", "train_rows_per_s_per_pass"),
                                                            ("eval", "eval_rows_per_s"))]
        print("                  rows/s: " + ", ".join(f"{n} {v / 1e6:.2f}M ({v / floor_rate:.0%} of floor)"
                                                        for n, v in rates if v == v))
        if "sklearn" in r:
            print(f"                  vs scikit-learn: process {med(d['process']) / med(r['sklearn']['process']):.2f}x, "
                  f"train phase / fit {med(d['phases']['train']) / med(r['sklearn']['fit']):.2f}x")


def run_case(name: str, rows: int, features: int, args: argparse.Namespace, work: Path,
             memory_limit: str | None, in_memory: bool) -> dict:
    from distml.synth import make_dataset

    files = max(4, rows // 125_000)
    case: dict = {"name": name, "rows": rows, "features": features, "repeats": args.repeats,
                  "memory_limit": memory_limit, "families": {}}
    folders = {kind: make_dataset(work / f"{name}-{kind}", kind, rows, features, files, seed=SEED)[0]
               for kind in {FAMILIES[f][0] for f in args.families}}
    floors = []
    for _ in range(args.repeats):
        seconds, read = read_floor(next(iter(folders.values())))
        floors.append({"seconds": seconds, "rows_per_s": read / seconds})
    case["floor"] = summarize(floors)
    if memory_limit:
        from distml.spec import parse_size

        case["data_memory_ratio"] = rows * (features + 1) * 8 / (WORKERS * parse_size(memory_limit))
    for family in args.families:
        kind, model, estimator = FAMILIES[family]
        result: dict = {"distml": summarize([run_distml(folders[kind], model, work, memory_limit)
                                             for _ in range(args.repeats)])}
        if in_memory:
            result["sklearn"] = summarize([run_sklearn(folders[kind], estimator) for _ in range(args.repeats)])
            if args.dask_ml and family in ("linear", "logistic"):
                result["dask_ml"] = summarize([{"seconds": dask_ml(folders[kind], family)}
                                               for _ in range(args.repeats)])
        case["families"][family] = result
        print(f"  ({name}: {family} done)", flush=True)
    print_case(case)
    return case


def dask_ml(folder: Path, family: str) -> float:
    from dask_ml.linear_model import LinearRegression, LogisticRegression
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=40) as cluster, Client(cluster):  # dask-ml's default
        seconds, _ = run_dask_ml(folder, LinearRegression if family == "linear" else LogisticRegression,
                                 incremental=False)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[200_000, 2_000_000])
    parser.add_argument("--features", type=int, default=28)
    parser.add_argument("--big-ratio", type=float, default=3.0, help="data / cluster memory of the big case (0: skip)")
    parser.add_argument("--memory-limit", default="400MiB", help="memory of each worker in the big case")
    parser.add_argument("--big-families", nargs="*", default=["logistic"], choices=sorted(FAMILIES))
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=sorted(FAMILIES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-dask-ml", dest="dask_ml", action="store_false")
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--sklearn-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sklearn_child:
        return sklearn_child(*args.sklearn_child)

    from distml.spec import parse_size

    work = Path(tempfile.mkdtemp(prefix="distml-speed-"))
    cases = [run_case(f"{rows // 1000}k", rows, args.features, args, work, None, True) for rows in args.sizes]
    if args.big_ratio:
        big_rows = int(args.big_ratio * WORKERS * parse_size(args.memory_limit) / (8 * (args.features + 1))) + 1
        big_args = argparse.Namespace(**{**vars(args), "families": args.big_families})
        cases.append(run_case("larger-than-memory", big_rows, args.features, big_args, work, args.memory_limit,
                              False))
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    path = out / f"speed-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps({"machine": platform.platform(), "cores": os.cpu_count(),
                                "load_average_at_end": os.getloadavg(), "workers": WORKERS,
                                "cases": cases}, indent=2))
    print(f"\nwrote {path}")
    return None


if __name__ == "__main__":
    main()
