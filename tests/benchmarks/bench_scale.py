"""Benchmark: a table many times larger than the cluster's memory, against the same job on data that fits.

Run on demand (not part of the test suite):

    /work/venv/bin/python tests/benchmarks/bench_scale.py [--ratio 5] [--memory 512MiB] [--forest]

The cluster is a LocalCluster of 2 single-threaded worker processes with an
enforced memory limit each. The data is a ``distml.synth.make_table`` table
(numeric, string-categorical and boolean columns with nulls, a string target,
``missing: impute``). To write gigabytes quickly, one generated chunk is written
as many files with a per-file shift of the numeric columns, so rows differ
between files and each file gets its own holdout draws.

Two cases, each run as a full ``run_job`` (stats, train, eval, save):
``fits`` — a dataset whose training blocks fit in cluster memory (persisted);
``larger`` — a dataset whose in-memory size is ``--ratio`` times the total
worker memory (re-read from Parquet at every pass).
Reported side by side: the data/memory ratio (pandas in-memory bytes measured
by the statistics pass, over the workers' total memory limit), wall time,
rows/s, each worker's peak RSS (polled with psutil every 0.25 s) and worker
restarts (distinct worker process ids seen, minus the workers); rows/s both
over the whole job and over the data passes alone (stats + train + eval, so
the fixed cost of starting and saving does not flatter the larger run). Prints a table
and writes JSON to ``bench-results/``.
"""
from __future__ import annotations

import argparse
import json
import platform
import threading
import time
from pathlib import Path

CHUNK_ROWS = 500_000
NUMERIC = 20


def _write_files(folder: Path, files: int) -> Path:
    """``files`` Parquet files of CHUNK_ROWS rows, made from one generated chunk (reused between runs)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from distml.synth import make_table

    if folder.exists() and len(list(folder.glob("*.parquet"))) == files:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    base = folder.parent / "chunk"
    if not base.exists():
        make_table(base, rows=CHUNK_ROWS, files=1, numeric=NUMERIC, null_targets=50)
    chunk = pq.read_table(next(base.glob("*.parquet")))
    for i in range(files):
        shifted = chunk
        for j in range(NUMERIC):  # a small per-file shift: the files are not copies of each other
            name = f"x{j}"
            shifted = shifted.set_column(shifted.schema.get_field_index(name), name,
                                         pc.add(chunk[name], pa.scalar(0.01 * ((i * 7 + j) % 11))))
        pq.write_table(shifted, folder / f"part-{i:05d}.parquet", row_group_size=100_000)
    return folder


class Watch:
    """Polls every worker's RSS and process id while a job runs."""

    def __init__(self, client) -> None:
        self.client, self.peak, self.pids = client, {}, set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.is_set():
            try:
                for address, (pid, rss) in self.client.run(_rss, on_error="ignore").items():
                    self.pids.add(pid)
                    self.peak[address] = max(self.peak.get(address, 0), rss)
            except Exception:  # a worker restarting mid-poll: the next poll sees the new one
                pass
            self.stop.wait(0.25)

    def __enter__(self) -> Watch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _rss() -> tuple[int, int]:
    import os

    import psutil

    return os.getpid(), psutil.Process().memory_info().rss


def _case(name: str, folder: Path, memory: str, model: dict, store: Path, partition_size: str) -> dict:
    from distributed import Client, LocalCluster

    from distml.runner import run_job
    from distml.jobfile import parse_job
    from distml.spec import parse_size
    from distml.store import Store

    spec = parse_job({"name": f"bench-{name}", "seed": 0,
                      "data": {"path": str(folder), "target": "label", "missing": "impute",
                               "partition_size": partition_size},
                      "model": model, "output": {"store": str(store)}}, "bench")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit=memory, silence_logs=50) as cluster, \
            Client(cluster, set_as_default=False) as client:
        logs: list[str] = []
        with Watch(client) as watch:
            started = time.perf_counter()
            result = run_job(spec, client, log=logs.append)
            wall = time.perf_counter() - started
        version = result.uri.rstrip("/").rsplit("/", 1)[-1]
        manifest = Store(str(store), {}).read_manifest(spec.name, version)
    total_memory = 2 * parse_size(memory)
    rows = result.rows["total"]
    return {
        "case": name, "model": model["kind"], "rows": rows, "partitions": manifest["data"]["partitions"],
        "data_bytes": manifest["data"]["memory_bytes"], "train_block_bytes": manifest["data"]["train_bytes"],
        "data_memory_ratio": round(manifest["data"]["memory_bytes"] / total_memory, 2),
        "persisted": result.persisted, "wall_s": round(wall, 1), "rows_per_s": round(rows / wall),
        # The data passes alone (statistics, training, evaluation): without the fixed cost of starting and saving.
        "pass_rows_per_s": round(rows / sum(result.timings.get(p, 0.0) for p in ("stats", "train", "eval"))),
        "timings": result.timings, "accuracy": round(result.metrics["accuracy"], 4),
        "peak_rss_mib": [round(v / 2**20) for v in sorted(watch.peak.values())],
        "worker_restarts": max(0, len(watch.pids) - 2),
        "log": [line for line in logs if "training blocks" in line],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=5.0, help="data size / total worker memory (larger case)")
    parser.add_argument("--memory", default="512MiB", help="memory limit of each of the 2 workers")
    parser.add_argument("--fits-files", type=int, default=1, help="files of 500k rows in the case that fits")
    parser.add_argument("--epochs", type=int, default=2, help="logistic regression epochs")
    parser.add_argument("--partition-size", default="16MiB", help="data.partition_size of both jobs")
    parser.add_argument("--forest", action="store_true", help="also train a small forest on both datasets")
    parser.add_argument("--root", default="bench-data", help="where the generated data is kept")
    args = parser.parse_args()

    from distml.spec import parse_size

    root = Path(args.root)
    per_file = 237 * CHUNK_ROWS  # measured pandas bytes per row of this table, times rows per file
    files = int(args.ratio * 2 * parse_size(args.memory) / per_file) + 1
    fits = _write_files(root / f"fits-{args.fits_files}", args.fits_files)
    larger = _write_files(root / f"larger-{files}", files)
    models = [{"kind": "logistic", "params": {"epochs": args.epochs}}]
    if args.forest:
        models.append({"kind": "forest", "params": {"n_estimators": 8, "max_depth": 10}})
    results = []
    for model in models:
        for name, folder in (("fits", fits), ("larger", larger)):
            results.append(_case(name, folder, args.memory, model, root / "models", args.partition_size))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "timings"}), flush=True)
    _print(results)
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    path = out / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"machine": platform.platform(), "memory_per_worker": args.memory,
                                "workers": 2, "results": results}, indent=2))
    print(f"wrote {path}")


def _print(results: list[dict]) -> None:
    head = f"{'model':<9}{'case':<8}{'rows':>12}{'data GiB':>10}{'ratio':>7}{'persist':>8}{'wall s':>8}" \
           f"{'rows/s':>10}{'pass r/s':>10}{'peak MiB':>12}{'restarts':>9}{'acc':>8}"
    print(head)
    for r in results:
        print(f"{r['model']:<9}{r['case']:<8}{r['rows']:>12,}{r['data_bytes'] / 2**30:>10.2f}{r['data_memory_ratio']:>7}"
              f"{'yes' if r['persisted'] else 'no':>8}{r['wall_s']:>8}{r['rows_per_s']:>10,}{r['pass_rows_per_s']:>10,}"
              f"{'/'.join(map(str, r['peak_rss_mib'])):>12}{r['worker_restarts']:>9}{r['accuracy']:>8}")
    by = {(r["model"], r["case"]): r for r in results}
    for model in sorted({r["model"] for r in results}):
        if (model, "fits") in by and (model, "larger") in by:
            big, small = by[(model, "larger")], by[(model, "fits")]
            print(f"{model}: larger-than-memory throughput is {big['rows_per_s'] / small['rows_per_s']:.0%} of the "
                  f"in-memory run ({big['pass_rows_per_s'] / small['pass_rows_per_s']:.0%} counting the data passes only)")


if __name__ == "__main__":
    main()
