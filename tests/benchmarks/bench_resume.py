"""Checkpoints: how much work a resume can redo (the longest checkpoint interval), what they cost, how big they are.

Run on demand: ``python tests/benchmarks/bench_resume.py [--rows 40000] [--repeat 3]``. Each family runs
as a job on one LocalCluster of two single-threaded workers, after one unmeasured job of the same
family (imports and numba's compile done, as on a running cluster): softmax logistic (6 epochs),
newton logistic (the default solver; also the passes over the data between checkpoints), lbfgs logistic
(its checkpoint, the log of every pass, grows each iteration), forest (32 trees) and the kernel SVM's cascade (``chunk_rows`` 4000). Every checkpoint write is timed
and its size read back from its ``.json``; the intervals are the train-phase seconds from the phase's
start to the first checkpoint, between checkpoints, and from the last one to the phase's end. A kill
just before a checkpoint redoes at most the longest interval (plus the read and statistics passes,
which a resume always redoes). ``in checkpoints`` is the time spent writing them (for the cascade also
bringing each layer's support-vector sets to the client). Prints a table and writes JSON to
``bench-results/resume-<time>.json``; medians of ``--repeat`` runs.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the warm-up bench_svm uses
from benchmarks.bench_svm import _warm_up

MODELS = {
    "logistic softmax": {"kind": "logistic", "params": {"solver": "softmax", "epochs": 6}},
    "logistic newton": {"kind": "logistic", "params": {"solver": "newton"}},
    "logistic lbfgs": {"kind": "logistic", "params": {"solver": "lbfgs"}},
    "forest": {"kind": "forest", "params": {"n_estimators": 32, "max_depth": 10}},
    "svm cascade": {"kind": "svm", "params": {"chunk_rows": 4000}},
}


def run(client, folder: Path, store: Path, model: dict) -> dict:
    from distml.checkpoints import Checkpoints
    from distml.jobfile import parse_job
    from distml.jobs import JobRecords
    from distml.models._svsets import LayerCheckpoints
    from distml.runner import new_job_id, run_job

    spec = parse_job({"name": "bench-resume", "seed": 0, "data": {"path": str(folder), "target": "target"},
                      "model": model, "output": {"store": str(store), "report": False,
                                                 "evaluation_report": False}}, "bench")
    job_id, marks, writes, spent = new_job_id(), {}, [], [0.0]

    class Timed(Checkpoints):
        def write(self, step: int, state: dict) -> None:
            started = time.perf_counter()
            super().write(step, state)
            writes.append({"step": step, "at": started - marks["train"], "seconds": time.perf_counter() - started,
                           "bytes": (self.latest() or {}).get("bytes", 0),
                           "passes": (state.get("newton") or {}).get("passes")})

    def phase(name: str, state: str, seconds: float) -> None:
        marks[name if state == "started" else f"{name} end"] = time.perf_counter()

    gather = LayerCheckpoints.write

    def timed_gather(self, step, state, sets):  # the layer's sets come to the client before the write
        started = time.perf_counter()
        gather(self, step, state, sets)
        spent[0] += time.perf_counter() - started

    LayerCheckpoints.write = timed_gather
    try:
        run_job(spec, client, job_id=job_id, phase=phase, checkpoints=Timed(JobRecords(str(store)), job_id))
    finally:
        LayerCheckpoints.write = gather
    train = marks["train end"] - marks["train"]
    edges = [0.0, *(w["at"] + w["seconds"] for w in writes), train]
    intervals = [b - a for a, b in itertools.pairwise(edges)]
    written = spent[0] if model["kind"] == "svm" else sum(w["seconds"] for w in writes)
    out = {"train_seconds": train, "checkpoints": len(writes), "longest_interval": max(intervals),
           "in_checkpoints": written, "largest_bytes": max((w["bytes"] for w in writes), default=0),
           "writes": writes}
    if writes and writes[0]["passes"] is not None:  # newton: passes over the data between checkpoints
        (done,) = [m for _, m in JobRecords(str(store)).read(job_id)["events"] if m.startswith("newton: ")
                   and " passes over the data" in m]
        total = int(done.split(", ")[1].split()[0])
        edges = [0, *(w["passes"] for w in writes), total]
        out.update(passes=total, most_passes_redone=max(b - a for a, b in itertools.pairwise(edges)))
    return out


def main() -> None:
    from distributed import Client, LocalCluster

    from distml.synth import make_nonlinear_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--families", nargs="*", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    folder = make_nonlinear_dataset(tmp / "data", rows=args.rows, classes=2, files=4)[0]
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {args.rows:,} rows, "
          f"medians of {args.repeat} runs")
    print(f"{'family':<18} {'train s':>8} {'ckpts':>6} {'longest interval s':>19} {'share':>6} "
          f"{'in ckpts s':>11} {'largest ckpt':>13}")
    results = {}
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, silence_logs=40)
    client = Client(cluster, set_as_default=False)
    client.run(_warm_up)
    for name in args.families:
        model = MODELS[name]
        run(client, folder, tmp / "warm-up", model)  # compiled kernels (numba) and imports, as on a running cluster
        runs = [run(client, folder, tmp / f"models-{name.replace(' ', '-')}-{r}", model) for r in range(args.repeat)]
        med = {k: statistics.median(r[k] for r in runs) for k in
               ("train_seconds", "checkpoints", "longest_interval", "in_checkpoints", "largest_bytes")}
        results[name] = {"median": med, "runs": runs}
        print(f"{name:<18} {med['train_seconds']:>8.2f} {med['checkpoints']:>6.0f} {med['longest_interval']:>19.2f} "
              f"{med['longest_interval'] / med['train_seconds']:>6.0%} {med['in_checkpoints']:>11.2f} "
              f"{med['largest_bytes'] / 2**20:>10.2f} MiB", flush=True)
        if "passes" in runs[0]:
            print(f"{'':<18} passes {[r['passes'] for r in runs]}, at most "
                  f"{max(r['most_passes_redone'] for r in runs)} between checkpoints (a kill redoes at most those)")
    client.close()
    cluster.close()
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    path = out / f"resume-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"rows": args.rows, "families": results, "cores": os.cpu_count()}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
