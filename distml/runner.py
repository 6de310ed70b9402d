"""One job from spec to saved artifact: job id, phases, timings, the performance report.

No algorithm code lives here; every step is a call into the module that owns it.
"""
from __future__ import annotations

import platform
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

from distml.errors import DistmlError, JobCancelled, JobFailed, StoreError, first_line, io_reason

if TYPE_CHECKING:
    from distributed import Client

    from distml.checkpoints import Checkpoints
    from distml.data import Dataset
    from distml.jobfile import JobSpec
    from distml.jobs import JobTracker
    from distml.warm import Parent

DEFAULT_PARTITION_BYTES = 64 * 2**20
PERSIST_FRACTION = 0.3  # persist training blocks only if they take under 30% of cluster memory

Progress = Callable[[str, float], None]
Log = Callable[[str], None]
PhaseState = Literal["started", "done", "failed"]
PhaseEvent = Callable[[str, PhaseState, float], None]  # (phase, state, seconds spent in it so far)


def new_job_id() -> str:
    """A job id that starts with digits, so task keys group by phase on the dashboard."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


@dataclass
class JobResult:
    """What a finished job tells its caller."""

    job_id: str
    uri: str
    metrics: dict[str, float]
    timings: dict[str, float]
    rows: dict[str, int]
    persisted: bool
    dashboard: str | None
    summary: dict[str, Any] = field(default_factory=dict)


class _Phases:
    """Times each phase, tells ``on_phase`` when one starts and ends, and names the phase an error happened in."""

    def __init__(self, on_phase: PhaseEvent) -> None:
        self.timings: dict[str, float] = {}
        self.current = "start"
        self.on_phase = on_phase

    def __call__(self, name: str) -> _Phases:
        self.current = name
        return self

    def __enter__(self) -> None:
        self.started = time.perf_counter()
        self.on_phase(self.current, "started", 0.0)

    def __exit__(self, *exc: object) -> None:
        self.timings[self.current] = round(time.perf_counter() - self.started, 3)
        self.on_phase(self.current, "done" if exc[0] is None else "failed", self.timings[self.current])


def partition_bytes(setting: str | None, dataset: Dataset, threads: int, headroom: int) -> int:
    """Partition size: the job's setting (``data.partition_size``), else small enough for memory and
    for every thread to work.

    A task holds about six copies of its partition at its peak (Arrow table,
    pandas frame, numpy block, transformed block, a shuffled copy), so a
    partition gets a sixth of the measured headroom per worker thread.
    """
    from distml.spec import parse_size

    if setting:
        return parse_size(setting)
    total = dataset.num_rows * 8 * (len(dataset.features) + 1)
    limit = DEFAULT_PARTITION_BYTES if not headroom else min(DEFAULT_PARTITION_BYTES, headroom // 6)
    return max(2**20, min(limit, total // max(1, 2 * threads)))


def run_job(spec: JobSpec, client: Client, *, dataset: Dataset | None = None, job_id: str | None = None,
            progress: Progress | None = None, log: Log | None = None, phase: PhaseEvent | None = None,
            tracker: JobTracker | None = None, checkpoints: Checkpoints | None = None) -> JobResult:
    """Run one job on ``client``: read, plan features, train, evaluate, save.

    Parameters
    ----------
    spec : JobSpec
        The validated job file (see ``distml.jobfile.load_job``).
    client : distributed.Client
        The cluster to run on; it is never made the default client.
    dataset : Dataset, optional
        An already opened dataset (``distml.data.open_dataset``); opened here if absent.
    job_id, progress, log, phase
        The job's id (new if absent), and callbacks for phase progress, events, and each phase's
        start and end (``phase(name, "started" | "done" | "failed", seconds)``).
    tracker : JobTracker, optional
        The job's durable record (``<store>/_jobs/<id>.json``); created here if absent.
    checkpoints : Checkpoints, optional
        Where the trainer's state is saved after each step (``distml.checkpoints``), and restored
        from when resuming; absent: saved beside the job's record, nothing restored.

    Returns
    -------
    JobResult
        The saved model's URI, metrics, row counts and per-phase timings.

    Raises
    ------
    JobCancelled
        ``distml jobs cancel`` asked for it (or the caller was interrupted); nothing is saved.
    """
    from distml.tracking import attached_tracker

    tracker = tracker or attached_tracker(spec, client, job_id or new_job_id())
    on_progress = progress or (lambda phase, fraction: None)
    on_log = log or (lambda message: None)
    on_phase = phase or (lambda name, state, seconds: None)

    def tracked_progress(phase: str, fraction: float) -> None:
        on_progress(phase, fraction)
        tracker.progress(phase, fraction)

    def tracked_log(message: str) -> None:
        on_log(message)
        tracker.log(message)

    def tracked_phase(name: str, state: PhaseState, seconds: float) -> None:
        on_phase(name, state, seconds)
        tracker.phase(name, state, seconds)

    if checkpoints is None:
        from distml.checkpoints import Checkpoints

        checkpoints = Checkpoints(tracker.records, tracker.job_id)
    checkpoints.log = tracked_log
    checkpoints.progress = lambda: float(tracker.record["phases"].get("train", 0.0))
    if tracker.record["state"] != "running":
        tracker.start()
    try:
        result = _run(spec, client, dataset, tracker, tracked_progress, tracked_log, tracked_phase, checkpoints)
    except BaseException as exc:
        unrecorded = _record_failure(tracker, exc)
        if isinstance(exc, KeyboardInterrupt):  # the caller was interrupted (Ctrl-C, or SIGTERM in the CLI)
            error: DistmlError = JobCancelled(f"job {tracker.job_id} was cancelled: {tracker.record['error']}")
        elif tracker.record["state"] == "cancelled" and not isinstance(exc, JobCancelled):
            error = JobCancelled(f"job {tracker.job_id} was cancelled")
        elif isinstance(exc, DistmlError):
            error = exc
        else:  # e.g. a task cancelled on the cluster
            error = JobFailed(f"job {tracker.job_id} failed: {tracker.record['error']}")
        if unrecorded:  # the cause comes first; the record's trouble must not hide it
            error = type(error)(f"{error.message}; {unrecorded}")
        if error is exc:
            raise
        raise error from (None if isinstance(exc, (KeyboardInterrupt, JobCancelled)) else exc)
    tracker.finish("succeeded", model=result.uri)
    return result


def _record_failure(tracker: JobTracker, exc: BaseException) -> str | None:
    """Write how the job ended: cancelled (asked for, or interrupted) or failed with its one line.

    Returns None when the record was written, else a clause saying it could not be (the same full
    disk or dead server that failed the job often fails the record too), so the caller can report
    both in one line instead of letting the record's error replace the job's.
    """
    if isinstance(exc, KeyboardInterrupt):
        state, error = "cancelled", "interrupted" + (f" by {exc}" if str(exc) else "")
    elif isinstance(exc, JobCancelled) or tracker.cancel_requested():
        state, error = "cancelled", None
    elif isinstance(exc, DistmlError):
        state, error = "failed", exc.message
    else:
        state, error = "failed", f"{type(exc).__name__}: {str(exc).strip()[:300]}"
    try:
        tracker.finish(state, error=error)
    except Exception as record_exc:  # noqa: BLE001 - reported in the job's one line, never raised over it
        cause = record_exc.__context__ if isinstance(record_exc, StoreError) and record_exc.__context__ else record_exc
        return (f"the job record {tracker.records.uri(tracker.job_id)} could not be updated either "
                f"({io_reason(cause)}): it still says {tracker.written_state or 'nothing'}")
    return None


def _run(spec: JobSpec, client: Client, dataset: Dataset | None, tracker: JobTracker,
         progress: Progress, log: Log, on_phase: PhaseEvent, checkpoints: Checkpoints) -> JobResult:
    """The job's phases, in order; ``run_job`` wraps them in the record's lifecycle."""
    from distml.cluster import dashboard_link, memory_headroom, worker_resources
    from distml.data import open_dataset
    from distml.models import FAMILIES
    from distml.signing import resolve_key
    from distml.store import Store

    job_id = tracker.job_id
    family = FAMILIES[spec.model.kind]
    phases = _Phases(on_phase)
    started = time.time()
    report = _start_report(client)
    try:
        from distml.warm import load_parent

        parent = load_parent(spec) if spec.model.warm_start else None  # model.warm_start: verified, same family
        with phases("read"):
            dataset = dataset or open_dataset(spec.data, spec.seed)
            n_workers, threads, memory = worker_resources(client)
            per_thread = memory_headroom(client) * n_workers // max(1, threads)
            dataset.partition(partition_bytes(spec.data.partition_size, dataset, threads, per_thread))
        from distml.checkpoints import data_files

        checkpoints.data_files = data_files(dataset)
        fitted, plan, parts = _train(spec, client, dataset, family, job_id, phases,
                                     (n_workers, threads, memory), progress, log, checkpoints, parent)
        check_finite(fitted, job_id, spec.model.params)  # before evaluation, which a NaN model breaks
        metrics: dict[str, float] = {}
        if parts.holdout:
            from distml.evaluate import evaluate

            with phases("eval"):
                metrics = evaluate(fitted, parts.holdout, client, job_id, plan.classes)
            if parts.persisted:
                client.cancel(parts.holdout)
        with phases("save"):
            from sklearn.pipeline import Pipeline

            pipeline = Pipeline([("features", plan.transformer), ("model", fitted)])
            rows = {"total": plan.stats.rows, "train": plan.stats.train_rows,
                    "holdout": plan.stats.rows - plan.stats.train_rows}
            manifest = _manifest(spec, dataset, job_id, plan, metrics, rows, phases.timings, started,
                                 n_workers, parts.persisted)
            if parent is not None:
                manifest["parent"] = parent.record()
            importances = feature_importances(plan.transformer, fitted)
            if importances:
                manifest["feature_importances"] = importances
            html = _finish_report(client, report, job_id)
            store = Store(spec.output.store, spec.output.storage_options)
            tracker.check_cancel(force=True)  # last look before anything is written
            uri = store.save(spec.name, pipeline, manifest, {"report.html": html.encode()} if html else None,
                             key=resolve_key(key_file=spec.output.signing_key_file))
    except DistmlError:
        raise
    except Exception as exc:
        message = first_line(exc, 300)
        raise JobFailed(f"job {job_id} failed in phase {phases.current}: {type(exc).__name__}: {message}") from exc
    return JobResult(job_id, uri, metrics, phases.timings, rows, parts.persisted, dashboard_link(client),
                     {"feature_importances": importances} if importances else {})


def _train(spec: JobSpec, client: Client, dataset: Dataset, family: Any, job_id: str, phases: _Phases,
           resources: tuple[int, int, int], progress: Progress, log: Log,
           checkpoints: Checkpoints | None = None, parent: Parent | None = None) -> tuple[Any, Any, Any]:
    from distml.blocks import persist
    from distml.features import plan_features
    from distml.models.base import TrainContext

    n_workers, threads, memory = resources
    params = spec.model.params
    with phases("stats"):
        plan = plan_features(dataset, client, job_id, family.task(params), progress,
                             encoding=family.ENCODING, log=log)
    if parent is not None:  # warm start: the parent's transformer and classes, once the data fits them
        from distml.warm import adopt

        adopt(parent, plan, dataset)
    parts = plan.parts
    # Measured by the statistics pass (rows kept x transformed width + targets); persisting holds the
    # holdout blocks too, so evaluation needs no further read.
    block_bytes = int(plan.train_bytes * (1 + parts.holdout_rows / max(1, parts.train_rows)))
    share = f"{block_bytes / 2**20:.0f} MiB of {memory * n_workers / 2**20:.0f} MiB cluster memory"
    if memory and block_bytes < PERSIST_FRACTION * memory * n_workers:
        log(f"training and holdout blocks take {share} (measured): persisting them in cluster memory")
        parts = persist(parts, client, job_id)
    else:
        log(f"training and holdout blocks take {share} (measured): re-reading Parquet at every pass")
    ctx = TrainContext.create(client=client, job_id=job_id, seed=spec.seed, plan=plan, resources=resources,
                              report=progress, log=log, checkpoints=checkpoints)
    if parent is not None and checkpoints is not None:
        from distml.warm import initial_state

        checkpoints.initial = initial_state(parent, ctx.data.y_mean, ctx.data.y_scale)
    with phases("train"):
        fitted = family.train(parts, params, ctx)
    if parts.persisted:
        client.cancel(parts.train)  # free cluster memory before evaluation
    return fitted, plan, parts


def check_finite(estimator: Any, job_id: str, params: Any = None) -> None:
    """Fail the job if a fitted numeric attribute (``coef_``, ``intercept_``, a loss…) is NaN or infinite.

    A diverged SGD run (e.g. ``eta0: 1e300``) otherwise saves a model that predicts nothing useful, or
    breaks evaluation with an unrelated-looking error; the user needs the cause and what to change.
    """
    import numpy as np

    for name, value in sorted(vars(estimator).items()):
        if not name.endswith("_") or name.startswith("_"):
            continue  # fitted attributes only, as scikit-learn names them
        if isinstance(value, (float, np.floating)) or (
                isinstance(value, np.ndarray) and value.dtype.kind in "fc" and value.size):
            if not np.all(np.isfinite(value)):
                raise JobFailed(f"job {job_id}: the fitted model's {name} is not finite (NaN/inf): "
                                f"training diverged; {_divergence_hint(params)}; nothing was saved")


def _divergence_hint(params: Any) -> str:
    """What to change when a family's training diverged, in its own parameter names."""
    names = set(getattr(type(params), "model_fields", {}) or {})
    if "eta0" in names:
        return "lower model.params.eta0 or raise model.params.alpha"
    if "alpha" in names:
        return "raise model.params.alpha"
    return "check the data for extreme values"


def feature_importances(transformer: Any, estimator: Any) -> dict[str, float] | None:
    """The estimator's ``feature_importances_`` (if it has them) summed back onto the input columns."""
    values = getattr(estimator, "feature_importances_", None)
    if values is None:
        return None
    owners: list[str] = []
    for _, step, columns in transformer.transformers_:
        if step == "drop" or not len(columns):
            continue
        columns = [str(c) for c in columns]
        names = columns if step == "passthrough" else [str(n) for n in step.get_feature_names_out(columns)]
        for name in names:  # an encoded column "<input>_<category>" belongs to the longest matching input
            matches = [c for c in columns if name == c or name.startswith(f"{c}_")]
            owners.append(max(matches, key=len) if matches else columns[0] if len(columns) == 1 else name)
    if len(owners) != len(values):  # an unusual transformer: keep its own output names
        owners = [str(n) for n in transformer.get_feature_names_out()]
    out: dict[str, float] = {}
    for owner, value in zip(owners, values):
        out[owner] = out.get(owner, 0.0) + float(value)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _start_report(client: Client) -> tuple[float, int] | None:
    """Mark the start of the job's Dask performance report."""
    try:
        count = client.run_on_scheduler(_monitor_count)
        client.get_task_stream(start=0, stop=0)  # makes sure the scheduler records a task stream
        return time.time(), count
    except Exception:  # a report is a courtesy; never fail a job for it
        return None


def _monitor_count(dask_scheduler: Any) -> int:
    return dask_scheduler.monitor.count


def _finish_report(client: Client, start: tuple[float, int] | None, job_id: str) -> str | None:
    if start is None:
        return None
    try:
        return client.sync(client.scheduler.performance_report, start=start[0], last_count=start[1],
                           code=f"distml job {job_id}", mode=None)
    except Exception:
        return None


def _manifest(spec: JobSpec, dataset: Dataset, job_id: str, plan: Any, metrics: dict[str, float],
              rows: dict[str, int], timings: dict[str, float], started: float, n_workers: int,
              persisted: bool) -> dict[str, Any]:
    """Everything needed to know what a model is and where it came from; secrets redacted."""
    from distml.store import redact

    return {
        "job_id": job_id,
        "created": datetime.now(timezone.utc).isoformat(),
        "job": redact(spec.model_dump(mode="json")),
        "data": {
            "url": dataset.url,
            "files": [{"path": f.key, "rows": f.num_rows, "bytes": f.size} for f in dataset.files],
            "schema": dataset.schema,
            "target": dataset.target,
            "features": dataset.features,
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
        "versions": _library_versions(),
    }


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("distml", "dask", "distributed", "scikit-learn", "numpy", "pandas", "pyarrow", "skops", "fsspec"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out
