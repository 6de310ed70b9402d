"""The command line: parse, call the library, print. No training logic here.

Heavy libraries are imported inside the commands so ``distml --help`` is quick.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Any

import click

from distml.cli_models import models, reading_store
from distml.cli_options import (
    Group,
    Size,
    apply_tls_flags,
    metric_text,
    selection_lines,
    signing_key_option,
    storage_option,
    storage_options,
    tls_flags,
    tls_options,
)
from distml.cli_scoring import evaluate_command, predict
from distml.console import interruptible, summary_lines


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="distml")
def main() -> None:
    """distml: train scikit-learn models on Parquet data across a Dask cluster."""


def run() -> None:
    """The ``distml`` command: ``main``, then an exit that skips tearing down the interpreter's modules.

    Every command has finished its work when ``main`` returns (records and artifacts written and
    verified, clusters closed), and freeing scikit-learn's, skops' and pandas' modules one by one
    only delays the shell's prompt. Output is flushed first; if a thread other than a daemon is still
    running, the ordinary exit waits for it as usual.
    """
    import logging
    import threading

    try:
        main()
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code or 0)


@main.command()
@click.argument("job_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--scheduler", default=None, metavar="ADDR",
              help="Address of a running Dask scheduler (tcp://host:8786); default: an embedded local cluster.")
@click.option("--store", default=None, metavar="URL",
              help="Model store URL (a folder, file:// or s3://); overrides output.store.")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Workers of the embedded cluster.")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="Threads per embedded worker.")
@click.option("--memory-limit", type=Size(), default=None, help="Memory limit per embedded worker, e.g. 2GiB.")
@click.option("--quiet", is_flag=True, help="Print only the summary.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--detach/--wait", default=False, show_default=True,
              help="Return at once with the job id; the job's driver runs on the cluster (needs --scheduler).")
@signing_key_option
@tls_options
@interruptible
def submit(job_file: str, scheduler: str | None, store: str | None, workers: int | None,
           threads: int | None, memory_limit: str | None, quiet: bool, as_json: bool, detach: bool,
           signing_key_file: str | None) -> None:
    """Run the job in JOB_FILE: train, evaluate and save the model."""
    from distml.cluster import begin_job, connect
    from distml.console import Console
    from distml.data import open_dataset
    from distml.errors import SpecError
    from distml.jobfile import load_job
    from distml.runner import new_job_id, run_job
    from distml.search_space import check_rows
    from distml.signing import resolve_key
    from distml.store import Store
    from distml.tracking import cluster_info

    spec = load_job(job_file).with_overrides(
        scheduler=scheduler, n_workers=workers, threads_per_worker=threads, memory_limit=memory_limit, store=store,
        signing_key_file=signing_key_file, **tls_flags())
    resolve_key(key_file=spec.output.signing_key_file)  # an unreadable key file stops the job here
    if detach and not (spec.cluster.scheduler or os.environ.get("DISTML_SCHEDULER")):
        raise SpecError("--detach needs a running cluster (--scheduler tcp://host:8786): "
                        "an embedded cluster stops when distml exits")
    dataset = open_dataset(spec.data, spec.seed)
    check_rows(spec, dataset.num_rows)
    Store(spec.output.store, spec.output.storage_options).check_writable()
    begin_job(spec.cluster, spec.data.path, None if detach else spec.output.evaluation_report)
    console = Console(quiet or as_json)
    with connect(spec.cluster) as client:
        if detach:
            return _detached(spec, client, as_json)
        job_id = new_job_id()
        info = cluster_info(client)
        console.log(f"job {job_id} on {info['scheduler']}; dashboard {info['dashboard'] or '(none)'}"
                    + (f", jobs page {info['page']}" if info["page"] else ""))
        try:
            result = run_job(spec, client, dataset=dataset, job_id=job_id, progress=console.progress,
                             log=console.log, phase=console.phase)
        finally:
            console.close()
    summary = {"job_id": result.job_id, "model": result.uri, "rows": result.rows, "metrics": result.metrics,
               "timings": result.timings, "persisted": result.persisted, "report": result.report,
               **result.summary}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"job {result.job_id} succeeded")
    click.echo(f"  model     {result.uri}")
    if result.report:
        click.echo(f"  report    {result.report}")
    click.echo("  rows      " + ", ".join(f"{k} {v:,}" for k, v in result.rows.items()))
    click.echo("  time      " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))
    if result.metrics:
        click.echo("  metrics   " + ", ".join(metric_text(k, v) for k, v in result.metrics.items() if k != "rows"))
    for line in selection_lines(result.summary.get("cv"), result.summary.get("search")):
        click.echo(line)
    for line in summary_lines(result.summary):
        click.echo(line)


def _detached(spec: Any, client: Any, as_json: bool) -> None:
    from distml.jobs import JobRecords
    from distml.service import detach
    from distml.tracking import cluster_info

    job_id = detach(spec, client)
    info = cluster_info(client)
    record = JobRecords(spec.output.store, spec.output.storage_options).uri(job_id)
    if as_json:
        click.echo(json.dumps({"job_id": job_id, "record": record, **info}, indent=2))
        return
    click.echo(job_id)
    click.echo(f"job {job_id} submitted to {info['scheduler']}; follow it with `distml jobs status {job_id} "
               f"--store {spec.output.store}`" + (f" or on {info['page']}" if info["page"] else ""), err=True)




@main.command("make-data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--kind", type=click.Choice(["classification", "regression", "nonlinear"]), default="classification",
              show_default=True, help="What the target is; nonlinear: classes with curved boundaries (kernel SVMs).")
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
    from distml.synth import make_dataset, make_nonlinear_dataset

    if kind == "nonlinear":
        if sort_by_target or string_labels:
            raise click.UsageError("--sorted and --string-labels apply to --kind classification or regression")
        folder, test = make_nonlinear_dataset(out, rows, features, files, classes, seed)
    else:
        folder, test = make_dataset(out, kind, rows, features, files, classes, seed, sort_by_target,
                                    string_labels=string_labels)
    click.echo(f"wrote {rows:,} rows in {files} files to {folder}/ and a test file {test}")


def jobs_store_option(command: Any) -> Any:
    """``--store`` and ``-o`` for the job commands, which read the records in the store's ``_jobs/``."""
    command = tls_options(storage_option(command))
    return click.option("--store", default="./models", envvar="DISTML_STORE", show_default=True, metavar="URL",
                        help="Model store holding the job records in _jobs/ (env DISTML_STORE).")(command)


@main.group(cls=Group)
def jobs() -> None:
    """List, follow, cancel, wait for and resume jobs (their records live in <store>/_jobs/)."""


def _records(store: str, options: tuple[tuple[str, Any], ...]) -> Any:
    from distml.jobs import JobRecords

    apply_tls_flags()  # a job's scheduler is reached by its recorded address, with these certificates
    return JobRecords(store, storage_options(options))


def _look(records: Any, job_id: str) -> dict[str, Any]:
    """A job's record, closed as failed first if its driver is gone."""
    from distml.service import reconcile

    return reconcile(records, records.read(job_id))


@jobs.command("list")
@jobs_store_option
@click.option("--json", "as_json", is_flag=True, help="Print the records (without their events) as JSON.")
def jobs_list(store: str, options: tuple[tuple[str, Any], ...], as_json: bool) -> None:
    """List the jobs recorded in the store, oldest first; a damaged record is skipped with a warning on stderr."""
    from distml.errors import first_line

    def skip(uri: str, problem: str) -> None:
        click.echo(f"warning: skipped {uri}: not a valid job record ({problem})", err=True)

    records = _records(store, options)
    found: list[tuple[dict[str, Any], str]] = []
    with reading_store(store):
        for r in records.list(on_bad=skip):
            try:
                r = _reconciled(records, r)
                found.append((r, _job_line(r)))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:  # e.g. a time that does not parse
                skip(records.uri(r["job_id"]), f"{type(exc).__name__}: {first_line(exc)}")
    if as_json:
        click.echo(json.dumps([{k: v for k, v in r.items() if k != "events"} for r, _ in found], indent=2))
        return
    if not found:
        click.echo(f"no job records in {store}", err=True)
        return
    for _, line in found:
        click.echo(line)


def _reconciled(records: Any, record: dict[str, Any]) -> dict[str, Any]:
    """``reconcile``, or the record as it is (with a warning) when its driver cannot be asked about
    (a ``tls://`` scheduler and no certificates): one such job must not hide the others."""
    from distml.errors import SpecError
    from distml.service import reconcile

    try:
        return reconcile(records, record)
    except SpecError as exc:
        click.echo(f"warning: {exc.message}; listed as recorded", err=True)
        return record


def _job_line(r: dict[str, Any]) -> str:
    """One job as ``jobs list`` prints it."""
    from distml.jobs import elapsed

    return (f"{r['job_id']}  {r.get('name') or '':<24} {r['state']:<9} {r.get('phase') or '':<6} "
            f"{float(r.get('progress') or 0):5.0%}  {elapsed(r):7.1f}s  {r.get('model') or r.get('error') or ''}")


@jobs.command("status")
@click.argument("job_id")
@jobs_store_option
@click.option("--json", "as_json", is_flag=True, help="Print the record (without its events) as JSON.")
def jobs_status(job_id: str, store: str, options: tuple[tuple[str, Any], ...], as_json: bool) -> None:
    """Show a job's state, phase, progress, elapsed time and dashboard link."""
    from distml.jobs import elapsed

    r = _look(_records(store, options), job_id)
    if as_json:
        click.echo(json.dumps({k: v for k, v in r.items() if k != "events"}, indent=2))
        return
    cluster = r.get("cluster") or {}
    rows = [("job", f"{r['job_id']} ({r.get('name')})"), ("state", r["state"]),
            ("phase", f"{r.get('phase')} {float(r.get('progress') or 0):.0%}"), ("elapsed", f"{elapsed(r):.1f}s"),
            ("created", r.get("created")), ("scheduler", cluster.get("scheduler")),
            ("dashboard", cluster.get("dashboard")), ("jobs page", cluster.get("page")),
            ("model", r.get("model")), ("report", r.get("report")), ("error", r.get("error"))]
    for label, value in rows:
        if value:
            click.echo(f"{label:<10} {value}")


@jobs.command("logs")
@click.argument("job_id")
@jobs_store_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until the job ends.")
def jobs_logs(job_id: str, store: str, options: tuple[tuple[str, Any], ...], follow: bool) -> None:
    """Print the job's events with their times: phases, epochs, losses, warnings."""
    from distml.jobs import TERMINAL

    records, shown = _records(store, options), 0
    while True:
        r = _look(records, job_id)
        for when, message in r.get("events", [])[shown:]:
            click.echo(f"{when}  {message}")
        shown = len(r.get("events", []))
        if not follow or r["state"] in TERMINAL:
            return
        time.sleep(1)


@jobs.command("cancel")
@click.argument("job_id")
@jobs_store_option
def jobs_cancel(job_id: str, store: str, options: tuple[tuple[str, Any], ...]) -> None:
    """Cancel a queued or running job: its tasks stop on the cluster and no model is saved."""
    from distml.service import cancel

    r = cancel(_records(store, options), job_id)
    click.echo(f"job {job_id} {r['state']}" + (f": {r['error']}" if r.get("error") else ""))


@jobs.command("wait")
@click.argument("job_id")
@jobs_store_option
@click.option("--timeout", type=click.FloatRange(0), default=None, help="Give up after this many seconds.")
def jobs_wait(job_id: str, store: str, options: tuple[tuple[str, Any], ...], timeout: float | None) -> None:
    """Wait for a job to end; exit 0 if it succeeded, 1 if it failed or was cancelled."""
    from distml.errors import DistmlError, JobCancelled, JobFailed
    from distml.service import wait

    r = wait(_records(store, options), job_id, timeout)
    if r["state"] == "succeeded":
        click.echo(r["model"])
    elif r["state"] == "cancelled":
        raise JobCancelled(f"job {job_id} was cancelled" + (f": {r['error']}" if r.get("error") else ""))
    elif r["state"] == "failed":
        raise JobFailed(f"job {job_id} failed: {r.get('error')}")
    else:
        raise DistmlError(f"job {job_id} is still {r['state']} after {timeout:g}s")


@jobs.command("resume")
@click.argument("job_id")
@jobs_store_option
@click.option("--job-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The job's file again, when its record has redacted secrets (it must be the same job file).")
@click.option("--scheduler", default=None, metavar="ADDR", help="Address of a running Dask scheduler.")
@click.option("--quiet", is_flag=True, help="Print only the summary.")
@interruptible
def jobs_resume(job_id: str, store: str, options: tuple[tuple[str, Any], ...], job_file: str | None,
                scheduler: str | None, quiet: bool) -> None:
    """Rerun a failed or interrupted job from its record, continuing from its last checkpoint."""
    from distml.checkpoints import Checkpoints
    from distml.cluster import begin_job, connect
    from distml.console import Console
    from distml.dashboard import register_page
    from distml.data import open_dataset
    from distml.jobfile import load_job
    from distml.jobs import JobTracker
    from distml.runner import run_job
    from distml.service import check_same_data, note_resume, resumable
    from distml.tracking import cluster_info, publisher

    records = _records(store, options)
    given = load_job(job_file) if job_file else None
    if given is not None and given.output.store != store:  # as `submit --store` recorded it
        given = given.with_overrides(store=store)
    spec, record = resumable(records, job_id, given)
    spec = spec.with_overrides(scheduler=scheduler, **tls_flags())
    checkpoints = Checkpoints(records, job_id, resume=True)
    meta = checkpoints.latest()
    dataset = open_dataset(spec.data, spec.seed)
    if meta is not None:
        check_same_data(meta, dataset, job_id)
    begin_job(spec.cluster, spec.data.path, spec.output.evaluation_report)
    console = Console(quiet)
    with connect(spec.cluster) as client:
        register_page(client)
        records.clear_cancel(job_id)
        line = note_resume(record, meta, "cli")
        record.update(driver={"kind": "client", "id": client.id, "scheduler": client.scheduler.address},
                      cluster=cluster_info(client))
        console.log(f"job {job_id}: {line}")
        tracker = JobTracker(records, record, publisher(client))
        try:
            result = run_job(spec, client, dataset=dataset, tracker=tracker, checkpoints=checkpoints,
                             progress=console.progress, log=console.log, phase=console.phase)
        finally:
            console.close()
    click.echo(f"job {job_id} succeeded (resumed from checkpoint {meta['step'] if meta else 0})")
    click.echo(f"  model     {result.uri}")
    if result.metrics:
        click.echo("  metrics   " + ", ".join(metric_text(k, v) for k, v in result.metrics.items() if k != "rows"))


main.add_command(models)
main.add_command(predict)
main.add_command(evaluate_command)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
