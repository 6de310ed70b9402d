"""Batch scoring: a saved Pipeline applied to a Parquet dataset on the cluster, written as Parquet.

One task per input file reads it a row group at a time, predicts, and writes one
output file of the same name under a temporary prefix. Only when every file is
written are they moved into place and ``_SUCCESS`` written, so a failed or
killed run leaves nothing that looks complete (readers skip ``_``-names).
"""
from __future__ import annotations

import json
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from distml.errors import DataError, JobFailed, SpecError, first_line
from distml.remote import filesystem, open_url

if TYPE_CHECKING:
    from distributed import Client
    from sklearn.pipeline import Pipeline

SUCCESS = "_SUCCESS"


@dataclass(frozen=True)
class Output:
    """Where predictions go: a folder (local or any fsspec URL) and what each file holds."""

    url: str
    storage_options: dict[str, Any]
    columns: tuple[str, ...] = ()  # input columns copied through, before the predictions
    proba: bool = False  # also one ``proba_<class>`` column per class


@dataclass(frozen=True)
class ScoredFile:
    """One input file and the output file it becomes (the same path relative to the roots)."""

    source: str  # path in the input filesystem
    key: str  # path relative to the input root, and so to the output root
    target: str = ""  # URL of the output file under the temporary prefix


def _kind_of_type_name(name: str) -> str:
    """An Arrow type's name (as the manifest keeps it) as numeric, boolean, categorical or other."""
    if name == "bool":
        return "boolean"
    if name.startswith(("int", "uint", "float", "double", "halffloat", "decimal")):
        return "numeric"
    if name.startswith(("string", "large_string", "utf8", "large_utf8", "dictionary")):
        return "categorical"
    return "other"


def check_columns(url: str, schema: Any, features: list[str], trained: dict[str, str],
                  passthrough: tuple[str, ...]) -> None:
    """Refuse a file that lacks a feature or passthrough column or holds one of another kind than in training."""
    from distml.schemas import column_kind

    names = set(schema.names)
    for column in [*features, *passthrough]:
        if column not in names:
            role = "feature" if column in features else "passthrough"
            raise DataError(f"{url}: {role} column '{column}' not found; columns are {', '.join(schema.names)}")
    for column in features:
        found, expected = column_kind(schema.field(column).type), _kind_of_type_name(trained.get(column, ""))
        if expected != "other" and found != expected:
            raise DataError(f"{url}: column '{column}' is {schema.field(column).type} ({found}), "
                            f"expected {expected} as in training ({trained[column]})")


def _predict_part(scored: ScoredFile, pipeline: Pipeline, protocol: str, storage_options: dict[str, Any],
                  columns: list[str], passthrough: tuple[str, ...], proba: bool,
                  out_options: dict[str, Any]) -> int:
    """Score one input file batch by batch into its target; returns the rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs = filesystem(protocol, storage_options)
    out_fs, out_path = open_url(scored.target, out_options)
    out_fs.makedirs(posixpath.dirname(out_path), exist_ok=True)  # a local folder; nothing on object stores
    rows = 0
    writer = None
    with fs.open(scored.source, "rb") as f, out_fs.open(out_path, "wb") as sink:
        source = pq.ParquetFile(f)
        for i in range(source.metadata.num_row_groups):
            # One row group at a time: pyarrow's batch iterator reads ahead several.
            frame = source.read_row_group(i, columns=columns).to_pandas()
            table = pa.Table.from_pandas(_scores(pipeline, frame, passthrough, proba), preserve_index=False)
            writer = writer or pq.ParquetWriter(sink, table.schema)
            writer.write_table(table)
            rows += len(frame)
            del frame, table
            pa.default_memory_pool().release_unused()  # freed pages would count as the worker's memory
        if writer is None:  # a file without rows: an empty output with the right columns
            frame = source.schema_arrow.empty_table().select(columns).to_pandas()
            table = pa.Table.from_pandas(_scores(pipeline, frame, passthrough, proba), preserve_index=False)
            writer = pq.ParquetWriter(sink, table.schema)
        writer.close()
    return rows


def _scores(pipeline: Pipeline, frame: Any, passthrough: tuple[str, ...], proba: bool) -> Any:
    """The output rows of one batch: passthrough columns, ``prediction``, and probabilities if asked."""
    import pandas as pd

    from distml.kernels import folded_predict

    out = frame[list(passthrough)].reset_index(drop=True) if passthrough else pd.DataFrame(index=range(len(frame)))
    features = frame[list(pipeline.feature_names_in_)]
    labels = folded_predict(pipeline, features) if len(frame) else None  # a Nyström model: its kernel only
    out["prediction"] = labels if labels is not None else \
        pipeline.predict(features) if len(frame) else pd.Series([], dtype=object)
    if proba:
        classes = pipeline.classes_
        values = pipeline.predict_proba(features) if len(frame) else None
        for j, cls in enumerate(classes):
            out[f"proba_{cls}"] = values[:, j] if values is not None else pd.Series([], dtype=float)
    return out


def predict_dataset(model_uri: str, data_url: str, output: Output, client: Client, *,
                    model_options: dict[str, Any] | None = None, data_options: dict[str, Any] | None = None,
                    overwrite: bool = False, run_id: str | None = None, signing_key_file: str | None = None,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Score every Parquet file under ``data_url`` with the model at ``model_uri``; return a summary.

    Raises ``DataError``/``SpecError`` (exit 2) for bad input before anything is written, and
    ``JobFailed`` if scoring fails; then no output is committed and the temporary files are removed.
    """
    from distml.runner import new_job_id
    from distml.store import open_model
    from distml.tasks import map_bounded, task_key

    pipeline, manifest, version_uri = open_model(model_uri, model_options, signing_key_file=signing_key_file)
    if output.proba and not hasattr(pipeline, "predict_proba"):
        raise SpecError(f"{version_uri}: --proba needs a model with predict_proba; "
                        f"{type(pipeline[-1]).__name__} has none")
    features = [str(c) for c in pipeline.feature_names_in_]
    protocol, files = _input_files(data_url, data_options or {}, features, manifest, output.columns)
    out_fs, out_root = _output_root(output, overwrite)
    run_id = run_id or new_job_id()
    temp = posixpath.join(out_root, f"_temporary-{run_id}")
    columns = list(dict.fromkeys([*output.columns, *features]))
    files = [ScoredFile(f.source, f.key, _url(out_fs, posixpath.join(temp, f.key))) for f in files]
    shared = client.scatter(pipeline, broadcast=True, hash=False)
    try:
        counts = map_bounded(client, _predict_part, files, key=lambda i: task_key("predict", run_id, i),
                             max_in_flight=max(1, sum(client.nthreads().values())),
                             on_done=(lambda done: progress(done, len(files))) if progress else None,
                             pipeline=shared, protocol=protocol, storage_options=data_options or {},
                             columns=columns, passthrough=output.columns, proba=output.proba,
                             out_options=output.storage_options)
    except Exception as exc:
        _remove(out_fs, temp)
        raise JobFailed(f"predict {run_id} failed: {type(exc).__name__}: {first_line(exc, 300)}; "
                        f"nothing was written to {output.url}") from None
    finally:
        client.cancel([shared])
    return _commit(out_fs, out_root, temp, files, counts, overwrite, {
        "model": version_uri, "data": data_url, "run_id": run_id, "columns": list(output.columns),
        "proba": output.proba})


def _input_files(data_url: str, options: dict[str, Any], features: list[str], manifest: dict[str, Any],
                 passthrough: tuple[str, ...]) -> tuple[str, list[ScoredFile]]:
    """The dataset's Parquet files, each checked from its footer against the model's columns."""
    import pyarrow.parquet as pq

    from distml.data import list_parquet_files, root_folder

    try:
        fs, root = open_url(data_url, options)
        paths = list_parquet_files(fs, root, data_url)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{data_url}: cannot list the dataset ({type(exc).__name__}: {first_line(exc)})") from None
    trained = manifest.get("data", {}).get("schema", {})
    base = root_folder(fs, root)
    for path in paths:
        url = _url(fs, path)
        try:
            with fs.open(path, "rb") as f:
                schema = pq.ParquetFile(f).schema_arrow
        except Exception as exc:
            raise DataError(f"{url}: not a readable Parquet file ({first_line(exc) or type(exc).__name__})") from None
        check_columns(url, schema, features, trained, passthrough)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol, [ScoredFile(p, posixpath.relpath(p, base)) for p in paths]


def _output_root(output: Output, overwrite: bool) -> tuple[Any, str]:
    """The output's filesystem and root; an existing output is refused unless ``overwrite``."""
    try:
        fs, root = open_url(output.url, output.storage_options)
        exists = fs.exists(root) and (not fs.isdir(root) or bool(fs.ls(root)))
    except Exception as exc:
        raise SpecError(f"{output.url}: cannot open the output ({type(exc).__name__}: {first_line(exc)})") from None
    if exists and not overwrite:
        raise SpecError(f"{output.url}: the output exists; choose another folder or pass --overwrite to replace it")
    if exists and not fs.isdir(root):
        raise SpecError(f"{output.url}: the output is a file, expected a folder")
    return fs, root


def _commit(fs: Any, root: str, temp: str, files: list[ScoredFile], counts: list[int], overwrite: bool,
            about: dict[str, Any]) -> dict[str, Any]:
    """Move the scored files into place, then write ``_SUCCESS``: the output is complete only with it."""
    if overwrite:
        for old in fs.ls(root, detail=False) if fs.exists(root) else []:
            if posixpath.basename(old.rstrip("/")) != posixpath.basename(temp):
                fs.rm(old, recursive=True)
    for scored in files:
        final = posixpath.join(root, scored.key)
        if posixpath.dirname(scored.key):
            fs.makedirs(posixpath.dirname(final), exist_ok=True)
        fs.mv(posixpath.join(temp, scored.key), final)
    _remove(fs, temp)
    summary = {**about, "files": [{"path": f.key, "rows": n} for f, n in zip(files, counts)],
               "rows": int(sum(counts)), "created": datetime.now(timezone.utc).isoformat()}
    with fs.open(posixpath.join(root, SUCCESS), "w") as f:
        f.write(json.dumps(summary, indent=2))
    return summary


def _remove(fs: Any, path: str) -> None:
    """Remove a temporary prefix; what cannot be removed stays under a ``_``-name readers skip."""
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except Exception:
        pass


def _url(fs: Any, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else f"{protocol}://{path}"
