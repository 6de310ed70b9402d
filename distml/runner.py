"""One job from spec to saved artifact: job id, phases and timings, the record's lifecycle.

No algorithm code lives here; every step is a call into the module that owns it.
"""
from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

from distml.errors import DistmlError, JobCancelled, JobFailed, StoreError, first_line, io_reason

if TYPE_CHECKING:
    from distributed import Client

    from distml.checkpoints import Checkpoints
    from distml.data import Dataset
    from distml.jobfile import JobSpec
    from distml.jobs import JobTracker
    from distml.warm import Parent, Start

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
    report: str | None = None  # the saved performance report's URI (none with ``output.report: false``)


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
    partition gets a sixth of the measured headroom per worker thread (a row
    group up to ``data.ROW_GROUP_SLACK`` times that is kept whole, as reading
    part of one decodes all of it). The share for every thread is counted in the row size the cut itself uses
    (``Dataset.row_bytes``): counted in fewer bytes a row, a file of exactly a
    thread's share was cut in two, and small jobs paid for twice the tasks.
    """
    from distml.spec import parse_size

    if setting:
        return parse_size(setting)
    total = dataset.num_rows * dataset.row_bytes()
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
    from distml.cluster import watch_workers
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
        with watch_workers(client, tracked_log):  # a frozen worker is named in the log, not waited on silently
            result = _run(spec, client, dataset, tracker, tracked_progress, tracked_log, tracked_phase, checkpoints)
    except BaseException as exc:
        unrecorded = _record_failure(tracker, exc)
        if unrecorded:  # e.g. a full disk: the checkpoints give way to the record that says how the job ended
            checkpoints.discard()
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
    try:
        tracker.finish("succeeded", model=result.uri, report=result.report is not None)
    except StoreError as exc:  # the model is saved and complete: say so, and that the record lags
        raise JobFailed(f"job {tracker.job_id} saved its model {result.uri}, but its record "
                        f"{tracker.records.uri(tracker.job_id)} could not be updated "
                        f"({io_reason(exc.__context__ or exc)}): it still says "
                        f"{tracker.written_state or 'nothing'}") from None
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
    from distml.artifact import companion_files
    from distml.cluster import dashboard_link
    from distml.interpret import summary_of
    from distml.perf_report import finish_report, start_report
    from distml.signing import resolve_key
    from distml.store import Store
    from distml.warmup import ready, start_client_imports

    job_id = tracker.job_id
    phases = _Phases(on_phase)
    started = time.time()
    start_client_imports(report=spec.output.evaluation_report)  # while the workers run the first passes
    report = start_report(client) if spec.output.report else None
    try:
        fit = fit_pipeline(spec, client, dataset, job_id, phases, progress, log, checkpoints)
        with phases("save"):
            ready("save")  # skops, imported in the background since the cluster was up (distml.warmup)
            manifest = fit.manifest(spec, job_id, phases.timings, started)
            files = companion_files(spec, fit.pipeline, manifest, fit.dataset, log)
            html = finish_report(client, report, job_id)
            if html:
                files["report.html"] = html.encode()
            store = Store(spec.output.store, spec.output.storage_options)
            tracker.check_cancel(force=True)  # last look before anything is written
            uri = store.save(spec.name, fit.pipeline, manifest, files,
                             key=resolve_key(key_file=spec.output.signing_key_file))
    except DistmlError:
        raise
    except Exception as exc:
        message = first_line(exc, 300)
        raise JobFailed(f"job {job_id} failed in phase {phases.current}: {type(exc).__name__}: {message}") from exc
    return JobResult(job_id, uri, fit.metrics, phases.timings, fit.rows, fit.persisted, dashboard_link(client),
                     {**summary_of(manifest, uri), **fit.chosen}, f"{uri}/report.html" if html else None)


@dataclass
class FittedJob:
    """What the read, statistics, training and evaluation phases give: the Pipeline and its facts.

    The CLI's job saves it at once; a ``distml`` estimator keeps it (``to_sklearn``, ``save``).
    """

    pipeline: Any  # sklearn Pipeline([("features", transformer), ("model", estimator)])
    dataset: Dataset
    plan: Any  # the FeaturePlan
    metrics: dict[str, float]
    details: dict[str, Any]  # the evaluation's confusion matrix, curves, quantiles, permutation importance
    rows: dict[str, int]
    persisted: bool
    n_workers: int
    chosen: dict[str, Any]  # the manifest's "cv", "search", "training" and (warm start) "parent" sections

    def manifest(self, spec: JobSpec, job_id: str, timings: dict[str, float], started: float) -> dict[str, Any]:
        """The artifact's manifest (see ``artifact.build_manifest``), with importances, evaluation details, cv and search."""
        from distml.artifact import build_manifest
        from distml.interpret import explained, impurity_importances

        manifest = build_manifest(spec, self.dataset, job_id, self.plan, self.metrics, self.rows, timings, started,
                             self.n_workers, self.persisted)
        transformer, fitted = self.pipeline.steps[0][1], self.pipeline.steps[-1][1]
        importances = impurity_importances(transformer, fitted)
        if importances:
            manifest["feature_importances"] = importances
        manifest.update(self.chosen)
        manifest["evaluation"] = explained(self.details, transformer, fitted, self.plan.classes)
        return manifest


def fit_pipeline(spec: JobSpec, client: Client, dataset: Dataset | None, job_id: str, phases: _Phases,
                 progress: Progress, log: Log, checkpoints: Checkpoints | Start | None = None,
                 parent: Parent | None = None) -> FittedJob:
    """Read, plan features, train and evaluate on ``client``; the one path both front doors take.

    ``dataset`` is a Parquet ``Dataset`` (opened here from ``spec.data`` if None) or any source with its
    interface, such as ``distml.frames.FrameDataset`` over a Dask collection. ``parent`` is the model to
    continue (an estimator's ``partial_fit``); absent, it is ``spec.model.warm_start``'s, if set.
    """
    from distml.cluster import memory_headroom, worker_resources
    from distml.data import open_dataset
    from distml.models import FAMILIES
    from distml.search_space import check_rows

    family = FAMILIES[spec.model.kind]
    if parent is None and spec.model.warm_start:
        from distml.warm import load_parent

        parent = load_parent(spec)  # model.warm_start: verified, same family
    with phases("read"):
        dataset = dataset or open_dataset(spec.data, spec.seed)
        n_workers, threads, memory = worker_resources(client)
        per_thread = memory_headroom(client) * n_workers // max(1, threads)
        dataset.partition(partition_bytes(spec.data.partition_size, dataset, threads, per_thread))
        check_rows(spec, dataset.num_rows)
    if checkpoints is not None:
        from distml.checkpoints import data_files

        checkpoints.data_files = data_files(dataset)
    fitted, plan, parts, selection, training = _train(spec, client, dataset, family, job_id, phases,
                                            (n_workers, threads, memory), progress, log, checkpoints, parent)
    check_finite(fitted, job_id, spec.model.params)  # before evaluation, which a NaN model breaks
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    if parts.holdout:
        from distml.evaluate import evaluate
        from distml.interpret import permutation_plan

        asked = spec.evaluation.permutation_importance
        permutation = None if asked is None else permutation_plan(
            plan.transformer, asked.repeats, spec.seed if asked.seed is None else asked.seed)
        with phases("eval"):
            evaluation = evaluate(fitted, parts.holdout, client, job_id, plan.classes, permutation)
        metrics, details = evaluation.metrics, evaluation.details
        if parts.persisted:
            client.cancel(parts.holdout)
    from sklearn.pipeline import Pipeline

    pipeline = Pipeline([("features", plan.transformer), ("model", fitted)])
    rows = {"total": plan.stats.rows, "train": plan.stats.train_rows,
            "holdout": plan.stats.rows - plan.stats.train_rows}
    chosen = {name: section for name, section in
              (("cv", selection and selection.cv), ("search", selection and selection.search)) if section}
    if parent is not None:
        chosen["parent"] = parent.record()
    if training:
        chosen["training"] = training
    return FittedJob(pipeline, dataset, plan, metrics, details, rows, parts.persisted, n_workers, chosen)


def _train(spec: JobSpec, client: Client, dataset: Dataset, family: Any, job_id: str, phases: _Phases,
           resources: tuple[int, int, int], progress: Progress, log: Log,
           checkpoints: Checkpoints | None = None, parent: Parent | None = None) -> tuple[Any, Any, Any, Any, Any]:
    from distml.blocks import persist
    from distml.features import plan_features
    from distml.models.base import TrainContext

    n_workers, _threads, memory = resources
    params = spec.model.params
    # A search or cross-validation trains on subsets of the rows, each needing its own passes anyway.
    cross = getattr(family, "wants_cross_products", _no)(params) and not (spec.search or spec.data.cv)
    with phases("stats"):
        plan = plan_features(dataset, client, job_id, family.task(params), progress,
                             encoding=family.ENCODING, log=log, cross_products=cross)
    if parent is not None:  # warm start: the parent's transformer and classes, once the data fits them
        from distml.warm import adopt

        adopt(parent, plan, dataset)
        plan.stats.cross = None  # moments of this job's columns, not necessarily in the parent transformer's order
    parts = plan.parts
    # Measured by the statistics pass (rows kept x transformed width + targets); persisting holds the
    # holdout blocks too, so evaluation needs no further read.
    block_bytes = int(plan.train_bytes * (1 + parts.holdout_rows / max(1, parts.train_rows)))
    share = f"{block_bytes / 2**20:.0f} MiB of {memory * n_workers / 2**20:.0f} MiB cluster memory"
    ctx = TrainContext.create(client=client, job_id=job_id, seed=spec.seed, plan=plan, resources=resources,
                              report=progress, log=log, checkpoints=checkpoints)
    if ctx.data.gram is not None:
        log(f"training and holdout blocks take {share} (measured): the statistics pass measured what training "
            "needs, so only the evaluation reads Parquet again")
    elif memory and block_bytes < PERSIST_FRACTION * memory * n_workers:
        log(f"training and holdout blocks take {share} (measured): persisting them in cluster memory")
        parts = persist(parts, client, job_id)
    else:
        log(f"training and holdout blocks take {share} (measured): re-reading Parquet at every pass")
    if parent is not None and checkpoints is not None:
        from distml.warm import initial_state

        checkpoints.initial = initial_state(parent, ctx.data.y_mean, ctx.data.y_scale)
    selection = None
    if spec.search or spec.data.cv:
        from distml.selection import select

        word = "search" if spec.search else "cv"
        with phases(word):
            selection = select(spec, family, parts, ctx, lambda model: check_finite(model, job_id, params), word)
        params = selection.params
        if spec.search:
            log(f"search chose {spec.search and selection.search['best']}: "
                f"{selection.search['scoring']} {selection.search['best_score']:.4f}; refitting on all training rows")
    training: dict[str, Any] = {}
    final = replace(ctx, env=replace(ctx.env, record_training=training.update))  # not the candidates' fits
    with phases("train"):
        fitted = family.train(parts, params, final)
    if parts.persisted:
        client.cancel(parts.train)  # free cluster memory before evaluation
    return fitted, plan, parts, selection, training


def _no(params: Any) -> bool:
    return False


def check_finite(estimator: Any, job_id: str, params: Any = None) -> None:
    """Fail the job if a fitted numeric attribute (``coef_``, ``intercept_``, a loss…) is NaN or infinite.

    A diverged SGD run (e.g. ``eta0: 1e300``) otherwise saves a model that predicts nothing useful, or
    breaks evaluation with an unrelated-looking error; the user needs the cause and what to change.
    """
    import numpy as np

    parts = [step for _, step in getattr(estimator, "steps", ())] + list(getattr(estimator, "estimators_", ()))
    for part in parts:  # a Pipeline's steps, a one-vs-one model's binary models (a forest's trees hold no arrays)
        check_finite(part, job_id, params)
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
