"""The commands that use a saved model: ``distml predict`` (batch scoring) and ``distml evaluate``."""
from __future__ import annotations

import json
from typing import Any

import click

from distml.cli_options import (
    Size,
    metric_text,
    signing_key_option,
    storage_option,
    storage_options,
    tls_flags,
    tls_options,
)


def model_use_options(command: Any) -> Any:
    """The options a command that uses a saved model takes: where it runs, the store's options, the key."""
    for option in reversed([
        click.option("--scheduler", default=None, metavar="ADDR",
                     help="Address of a running Dask scheduler; default: an embedded local cluster."),
        click.option("--workers", type=click.IntRange(1, 256), default=None, help="Workers of the embedded cluster."),
        click.option("--memory-limit", type=Size(), default=None, help="Memory limit per embedded worker, e.g. 2GiB."),
        click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON."),
        storage_option, signing_key_option, tls_options,
    ]):
        command = option(command)
    return command


@click.command()
@click.argument("model")
@click.argument("data")
@click.argument("out")
@click.option("--columns", default="", metavar="A,B,…", help="Input columns to copy into the output (e.g. an id).")
@click.option("--proba", is_flag=True, help="Also write one proba_<class> column per class.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output (never done without it).")
@model_use_options
def predict(model: str, data: str, out: str, columns: str, proba: bool, overwrite: bool, scheduler: str | None,
            workers: int | None, memory_limit: str | None, as_json: bool, options: tuple[tuple[str, Any], ...],
            signing_key_file: str | None) -> None:
    """Score the Parquet dataset DATA with the saved MODEL on the cluster; write Parquet to OUT.

    One output file per input file, rows in the same order, with the --columns asked for,
    `prediction` and (--proba) the class probabilities. OUT is complete when OUT/_SUCCESS exists.
    """
    from distml.cluster import connect
    from distml.predict import Output, predict_dataset
    from distml.spec import ClusterSpec

    opts = storage_options(options)
    output = Output(out, opts, tuple(c.strip() for c in columns.split(",") if c.strip()), proba)
    cluster = ClusterSpec(scheduler=scheduler, n_workers=workers, memory_limit=memory_limit, **tls_flags())
    with connect(cluster) as client:
        summary = predict_dataset(model, data, output, client, model_options=opts, data_options=opts,
                                  overwrite=overwrite, signing_key_file=signing_key_file)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"predicted {summary['rows']:,} rows in {len(summary['files'])} files to {out}"
               f" (model {summary['model']})")


@click.command("evaluate")
@click.argument("model")
@click.argument("data")
@model_use_options
def evaluate_command(model: str, data: str, scheduler: str | None, workers: int | None, memory_limit: str | None,
                     as_json: bool, options: tuple[tuple[str, Any], ...], signing_key_file: str | None) -> None:
    """Compute the saved MODEL's metrics on the labelled Parquet dataset DATA, on the cluster."""
    from distml.assessment import evaluate_dataset
    from distml.cluster import connect
    from distml.spec import ClusterSpec

    opts = storage_options(options)
    with connect(ClusterSpec(scheduler=scheduler, n_workers=workers, memory_limit=memory_limit, **tls_flags())) as client:
        summary = evaluate_dataset(model, data, client, model_options=opts, data_options=opts,
                                   signing_key_file=signing_key_file)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{summary['model']} on {data}: {summary['rows']:,} rows"
               + (f" ({summary['skipped_rows']:,} skipped: null target)" if summary["skipped_rows"] else ""))
    click.echo("  metrics   " + ", ".join(metric_text(k, v) for k, v in summary["metrics"].items()))
    details = summary.get("evaluation") or {}
    if details.get("positive_class") is not None:
        click.echo(f"  positive  {details['positive_class']!r} (precision, recall, f1 and roc_auc are for it)")
