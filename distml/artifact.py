"""What a job saves beside the model: its manifest and the companion files the job file asks for.

The manifest says what the model is and where it came from (data files, rows, metrics, timings,
library versions), with secrets redacted; ``evaluation.html`` and ``model.onnx`` are optional.
"""
from __future__ import annotations

import functools
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distml.data import Dataset
    from distml.jobfile import JobSpec


def build_manifest(spec: JobSpec, dataset: Dataset, job_id: str, plan: Any, metrics: dict[str, float],
              rows: dict[str, int], timings: dict[str, float], started: float, n_workers: int,
              persisted: bool) -> dict[str, Any]:
    """Everything needed to know what a model is and where it came from; secrets redacted."""
    from distml.lineage import file_lineage
    from distml.store import redact

    return {
        "job_id": job_id,
        "created": datetime.now(timezone.utc).isoformat(),
        "job": redact(spec.model_dump(mode="json")),
        "data": {
            "url": dataset.url,
            "files": [file_lineage(dataset, f) for f in dataset.files],
            "schema": dataset.schema,
            "target": dataset.target,
            "features": dataset.features,
            "row_key": dataset.row_key,
            "partitions": plan.parts.n_parts,
            "persisted": persisted,
            "train_bytes": plan.train_bytes,
            "memory_bytes": plan.stats.memory_bytes,
            "dropped_rows": {"null_target": plan.stats.dropped_target, "nulls": plan.stats.dropped_nulls},
        },
        "rows": rows,
        "target_kind": plan.target_kind,
        "classes": plan.classes.tolist() if plan.classes is not None else None,
        "metrics": metrics,
        "timings": {**timings, "wall": round(time.time() - started, 3)},
        "cluster": {"workers": n_workers},
        "versions": dict(library_versions()),
    }


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Installed versions, read once per process (an estimator's many small fits each write a manifest)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("distml", "dask", "distributed", "scikit-learn", "numpy", "pandas", "pyarrow", "skops", "fsspec",
                 "matplotlib", "skl2onnx", "onnxruntime"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out



def companion_files(spec: JobSpec, pipeline: Any, manifest: dict[str, Any], dataset: Dataset, log: Callable[[str], None]) -> dict[str, bytes]:
    """The files saved beside the model that the job file asks for: ``evaluation.html``, ``model.onnx``.

    A model ONNX cannot express is still saved; the reason goes to the log and ``manifest["onnx"]``.
    """
    files: dict[str, bytes] = {}
    if spec.output.onnx:
        from distml.onnx_export import OnnxUnsupported, to_onnx

        try:
            files["model.onnx"] = to_onnx(pipeline, dataset.kinds)
            manifest["onnx"] = {"file": "model.onnx"}
        except OnnxUnsupported as exc:
            manifest["onnx"] = {"file": None, "reason": str(exc)}
            log(f"model.onnx not written: {exc}")
    if spec.output.evaluation_report:
        from distml.report import evaluation_html

        files["evaluation.html"] = evaluation_html(manifest, spec.name)
        manifest["evaluation_report"] = "evaluation.html"
    return files
