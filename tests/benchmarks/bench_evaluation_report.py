"""Benchmark: what evaluation.html and model.onnx add to a job's save phase.

Run on demand (not part of the test suite):

    python tests/benchmarks/bench_evaluation_report.py [--repeats 5]

Trains a binary logistic model with permutation importance on a small table (numeric, string and
boolean columns), then times, in fresh interpreters: importing matplotlib's Figure and SVG backend,
and importing skl2onnx; and, in this process, drawing ``evaluation_html`` from the saved manifest
and converting the Pipeline with ``to_onnx``. Medians of the repeats; prints a table and writes
JSON to ``bench-results/``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _import_seconds(statement: str) -> float:
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    from distml import load_model
    from distml.jobfile import parse_job
    from distml.onnx_export import to_onnx
    from distml.report import evaluation_html
    from distml.runner import run_job
    from distml.synth import make_table

    root = Path(tempfile.mkdtemp(prefix="bench-report-"))
    table = make_table(root / "t", rows=20_000, files=2)
    spec = parse_job({"name": "bench", "seed": 0, "data": {"path": str(table), "target": "label", "missing": "impute"},
                      "model": {"kind": "logistic"}, "evaluation": {"permutation_importance": True},
                      "output": {"store": str(root / "models")}}, "bench")
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster, set_as_default=False) as client:
        result = run_job(spec, client)
    manifest = json.loads((Path(result.uri) / "manifest.json").read_text())
    pipeline = load_model(result.uri)
    kinds = {"x0": "numeric", "x1": "numeric", "x2": "numeric", "x3": "numeric", "color": "categorical",
             "city": "categorical", "flag": "boolean"}
    rows = {
        "import matplotlib (fresh process)": [_import_seconds(
            "import matplotlib.figure, matplotlib.backends.backend_svg") for _ in range(args.repeats)],
        "import skl2onnx (fresh process)": [_import_seconds("import skl2onnx") for _ in range(args.repeats)],
    }
    evaluation_html(manifest, "bench")  # the first drawing loads fonts
    to_onnx(pipeline, kinds)
    for name, fn in (("draw evaluation.html", lambda: evaluation_html(manifest, "bench")),
                     ("convert to model.onnx", lambda: to_onnx(pipeline, kinds))):
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        rows[name] = times
    medians = {name: statistics.median(t) for name, t in rows.items()}
    print(f"{'step':<36} {'median s':>9}")
    for name, value in medians.items():
        print(f"{name:<36} {value:9.3f}")
    print(f"save phase of the job (with both imports warm in the background/cold): {result.timings['save']:.3f} s")
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "evaluation_report.json").write_text(json.dumps(
        {"medians_s": medians, "all_s": rows, "save_phase_s": result.timings["save"], "repeats": args.repeats,
         "cpus": os.cpu_count(), "python": platform.python_version(),
         "html_bytes": len(evaluation_html(manifest, "bench"))}, indent=2))


if __name__ == "__main__":
    main()
