"""The command line: parse, call the library, print. No training logic here.

Heavy libraries are imported inside the commands so ``distml --help`` is quick.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from distml.errors import DistmlError


class CliError(click.ClickException):
    """A ``DistmlError`` as click shows it: one ``Error: …`` line on stderr and its exit status."""

    def __init__(self, error: DistmlError) -> None:
        super().__init__(error.message)
        self.exit_code = error.exit_code


class Group(click.Group):
    """Turns every ``DistmlError`` raised by a command into its one-line message and exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DistmlError as exc:
            if os.environ.get("DISTML_DEBUG"):
                raise
            raise CliError(exc) from None


class Size(click.ParamType):
    """A memory size like ``2GiB``."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from distml.spec import parse_size

        try:
            parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return str(value)


def store_option(required: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--store", "store", default=None, metavar="URL",
                        help="Model store URL (a folder, file:// or s3://); overrides output.store.")


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="distml")
def main() -> None:
    """distml: train scikit-learn models on Parquet data across a Dask cluster."""


def _echo_event(quiet: bool) -> tuple[Callable[[str, float], None], Callable[[str], None]]:
    started = time.perf_counter()
    last: dict[str, int] = {}

    def progress(phase: str, fraction: float) -> None:
        step = int(fraction * 10)
        if not quiet and last.get(phase) != step:
            last[phase] = step
            click.echo(f"{time.perf_counter() - started:7.1f}s  {phase:<6} {fraction:6.0%}", err=True)

    def log(message: str) -> None:
        if not quiet:
            click.echo(f"{time.perf_counter() - started:7.1f}s  {message}", err=True)

    return progress, log


@main.command()
@click.argument("job_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--scheduler", default=None, metavar="ADDR",
              help="Address of a running Dask scheduler (tcp://host:8786); default: an embedded local cluster.")
@store_option()
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Workers of the embedded cluster.")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="Threads per embedded worker.")
@click.option("--memory-limit", type=Size(), default=None, help="Memory limit per embedded worker, e.g. 2GiB.")
@click.option("--quiet", is_flag=True, help="Print only the summary.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def submit(job_file: str, scheduler: str | None, store: str | None, workers: int | None,
           threads: int | None, memory_limit: str | None, quiet: bool, as_json: bool) -> None:
    """Run the job in JOB_FILE: train, evaluate and save the model."""
    from distml.cluster import connect, dashboard_link
    from distml.data import open_dataset
    from distml.runner import run_job
    from distml.spec import load_job
    from distml.store import Store

    spec = load_job(job_file).with_overrides(
        scheduler=scheduler, n_workers=workers, threads_per_worker=threads, memory_limit=memory_limit, store=store)
    dataset = open_dataset(spec.data, spec.seed)
    Store(spec.output.store, spec.output.storage_options).check_writable()
    progress, log = _echo_event(quiet or as_json)
    with connect(spec.cluster) as client:
        link = dashboard_link(client)
        if link and not (quiet or as_json):
            click.echo(f"dashboard: {link}", err=True)
        result = run_job(spec, client, dataset=dataset, progress=progress, log=log)
    summary = {"job_id": result.job_id, "model": result.uri, "rows": result.rows, "metrics": result.metrics,
               "timings": result.timings, "persisted": result.persisted}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"job {result.job_id} succeeded")
    click.echo(f"  model     {result.uri}")
    click.echo("  rows      " + ", ".join(f"{k} {v:,}" for k, v in result.rows.items()))
    click.echo("  time      " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))
    if result.metrics:
        click.echo("  metrics   " + ", ".join(_metric(k, v) for k, v in result.metrics.items() if k != "rows"))


def _metric(name: str, value: float) -> str:
    return f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}"


@main.command("make-data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--kind", type=click.Choice(["classification", "regression"]), default="classification",
              show_default=True, help="What the target is.")
@click.option("--rows", type=click.IntRange(10), default=100_000, show_default=True, help="Training rows.")
@click.option("--features", type=click.IntRange(1, 10_000), default=10, show_default=True, help="Feature columns.")
@click.option("--files", type=click.IntRange(1), default=4, show_default=True, help="Parquet files to write.")
@click.option("--classes", type=click.IntRange(2, 100), default=2, show_default=True,
              help="Classes (classification).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed: the same arguments give the same data.")
@click.option("--sorted", "sort_by_target", is_flag=True, help="Sort each file by the target.")
@click.option("--string-labels", is_flag=True, help="Write class labels as strings.")
def make_data(out: str, kind: str, rows: int, features: int, files: int, classes: int, seed: int,
              sort_by_target: bool, string_labels: bool) -> None:
    """Write a synthetic Parquet dataset to OUT/ and a test file OUT-test.parquet."""
    from distml.synth import make_dataset

    folder, test = make_dataset(out, kind, rows, features, files, classes, seed, sort_by_target,
                                string_labels=string_labels)
    click.echo(f"wrote {rows:,} rows in {files} files to {folder}/ and a test file {test}")


@main.group(cls=Group)
def models() -> None:
    """List and show saved models."""


@models.command("list")
@click.argument("store", default="./models")
def models_list(store: str) -> None:
    """List the models and versions in STORE."""
    from distml.store import Store

    st = Store(store, {})
    names = st.models()
    if not names:
        click.echo(f"no models in {store}", err=True)
        return
    for name in names:
        for version in st.versions(name):
            metrics = st.read_manifest(name, version).get("metrics", {})
            shown = ", ".join(_metric(k, v) for k, v in metrics.items() if k != "rows")
            click.echo(f"{name}  {version}  {shown}")


@models.command("show")
@click.argument("uri")
def models_show(uri: str) -> None:
    """Show the manifest of the model version at URI (``<store>/<name>[/<version>]``)."""
    from distml.store import split_uri

    st, name, version = split_uri(uri)
    if version is None:
        versions = st.versions(name)
        if not versions:
            raise DistmlError(f"{uri}: no saved versions of model '{name}'")
        version = versions[-1]
    click.echo(json.dumps(st.read_manifest(name, version), indent=2))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
