"""A saved model evaluated on new labelled Parquet data: the job's metrics, computed on the cluster.

The model's own feature transformer builds each partition's block on the
workers, and ``distml.evaluate`` reduces the same sufficient statistics a job
reduces on its holdout; only those sums reach the client.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from distml.errors import DataError, JobFailed, first_line

if TYPE_CHECKING:
    from distributed import Client


def evaluate_dataset(model_uri: str, data_url: str, client: Client, *, model_options: dict[str, Any] | None = None,
                     data_options: dict[str, Any] | None = None, signing_key_file: str | None = None,
                     partition_size: str | None = None) -> dict[str, Any]:
    """The family's metrics of the model at ``model_uri`` on every row of ``data_url`` with a target, and
    the same details a job's manifest holds (confusion matrix, per-class scores, curves, residual quantiles).

    The target column is the one the model was trained on; rows whose target is null are skipped
    (and counted), as in training. Bad input (a missing column, a column of another kind, a label
    the model never saw) is a ``DataError``; a failure on the cluster a ``JobFailed``.
    """
    from distml.blocks import PartSource
    from distml.cluster import memory_headroom, worker_resources
    from distml.data import open_dataset
    from distml.evaluate import evaluate
    from distml.predict import check_columns
    from distml.runner import new_job_id, partition_bytes
    from distml.spec import DataSpec
    from distml.store import open_model

    pipeline, manifest, version_uri = open_model(model_uri, model_options, signing_key_file=signing_key_file)
    target = manifest.get("data", {}).get("target")
    features = [str(c) for c in pipeline.feature_names_in_]
    spec = DataSpec(path=data_url, storage_options=data_options or {}, target=target, features=features,
                    holdout=0.0, partition_size=partition_size)
    dataset = open_dataset(spec, seed=0)
    check_columns(data_url, dataset.arrow_schema, [*features, target], manifest.get("data", {}).get("schema", {}), ())
    n_workers, threads, _ = worker_resources(client)
    dataset.partition(partition_bytes(partition_size, dataset, threads,
                                      memory_headroom(client) * n_workers // max(1, threads)))
    classes = None if manifest.get("classes") is None else np.asarray(manifest["classes"])
    missing = (manifest.get("job") or {}).get("data", {}).get("missing", "error")
    transformer, estimator = pipeline[:-1], pipeline[-1]
    sources = [PartSource(piece, dataset.reader, transformer, 0.0, "train", drop_nulls=missing == "drop")
               for piece in dataset.pieces]
    run_id = new_job_id()
    try:
        evaluation = evaluate(estimator, sources, client, run_id, classes)
    except Exception as exc:
        message = first_line(exc, 300)
        if "is not one of the model's classes" in message:
            raise DataError(f"{data_url}: column '{target}': {message}") from None
        raise JobFailed(f"evaluate {run_id} failed: {type(exc).__name__}: {message}") from None
    metrics = evaluation.metrics
    rows = metrics.pop("rows")
    return {"model": version_uri, "data": data_url, "target": target, "rows": rows,
            "skipped_rows": dataset.num_rows - rows, "metrics": metrics, "evaluation": evaluation.details}
