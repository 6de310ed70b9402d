"""The job service on a cluster: detached drivers, liveness checks, cancel and wait.

A detached job's driver is a task (``distml-job-<id>``) that runs ``run_job``
with the worker's client; ``worker_client`` secedes, so the driver holds no
worker thread while it waits, and ``fire_and_forget`` keeps it alive after
the submitting process has exited. The job's record in the store is the truth
about its state; the scheduler is asked only when a record's heartbeat went
stale, to tell a slow driver from a dead one.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from distml.checkpoints import Checkpoints
from distml.errors import DistmlError, SpecError
from distml.jobs import (
    LIVE_TASK_STATES,
    STALE_AFTER,
    TERMINAL,
    TOPIC,
    JobRecords,
    JobTracker,
    mark,
)
from distml.tracking import publisher, record_for, records_of

if TYPE_CHECKING:
    from distributed import Client

    from distml.jobfile import JobSpec

TLS_FILE_FIELDS = ("tls_ca_file", "tls_cert", "tls_key")  # cluster keys naming the submitting client's files
CANCEL_WAIT = 8.0  # seconds the driver gets to notice a cancel before the record is closed for it


def detach(spec: JobSpec, client: Client) -> str:
    """Start the job's driver on the cluster and return its id once the scheduler holds the task."""
    from distributed import fire_and_forget

    from distml.dashboard import register_page
    from distml.runner import new_job_id
    from distml.signing import fingerprint, resolve_key
    from distml.tasks import task_key

    job_id = new_job_id()
    key = task_key("job", job_id)
    record = record_for(spec, client, job_id, {"kind": "task", "key": key})
    records_of(spec).write(record)
    register_page(client)
    publisher(client)({k: v for k, v in record.items() if k != "events"})
    doc = driver_doc(spec)
    # The key itself stays where it is configured; the driver checks it reads the same one.
    signing = resolve_key(key_file=spec.output.signing_key_file)
    future = client.submit(_driver, doc, job_id, fingerprint(signing) if signing else None,
                           key=key)  # a fresh job id: two submits run two jobs
    fire_and_forget(future)
    deadline = time.monotonic() + 10
    while client.run_on_scheduler(_task_state, key=key) is None and time.monotonic() < deadline:
        time.sleep(0.05)  # closing the client before the scheduler has the task would lose it
    return job_id


def driver_doc(spec: JobSpec) -> dict[str, Any]:
    """The job file a detached driver validates on its worker.

    Only the fields the job file set: defaults are re-derived on the worker, and some validators
    refuse a default that was spelled out (e.g. an impute strategy without ``missing: impute``).
    Without the certificate files: they are the submitting client's, which a worker elsewhere does not
    have (validating them there would fail the job); the driver reaches the scheduler with its worker's own.
    """
    doc = spec.model_dump(mode="json", exclude_unset=True)
    for field in TLS_FILE_FIELDS:
        (doc.get("cluster") or {}).pop(field, None)
    return doc


def _driver(spec_doc: dict[str, Any], job_id: str, signing: str | None) -> str:
    """A detached job's driver; runs on a worker and returns the job's final state.

    ``signing`` is the fingerprint of the submitter's signing key: the driver must read the same key
    (``DISTML_SIGNING_KEY`` or ``output.signing_key_file`` on the worker) or the job fails unsaved.
    """
    from distml.jobfile import JobSpec
    from distml.signing import fingerprint, resolve_key

    output = spec_doc.get("output") or {}
    records = JobRecords(output.get("store", "./models"), output.get("storage_options") or {})
    try:
        spec = JobSpec.model_validate(spec_doc)
        key = resolve_key(key_file=spec.output.signing_key_file)
        if signing is not None and (key is None or fingerprint(key) != signing):
            found = "no signing key" if key is None else "another signing key"
            return mark(records, job_id, "failed", f"the job's driver found {found} on its worker; set "
                        "DISTML_SIGNING_KEY for the workers or output.signing_key_file to a file they can read, "
                        "so the model is signed as its submitter asked")["state"]
        return _drive(spec, records, job_id)
    except BaseException as exc:  # never leave the record behind: say why the driver stopped
        mark(records, job_id, "failed", f"the job's driver failed: {type(exc).__name__}: {str(exc).strip()[:300]}")
        raise


def _drive(spec: JobSpec, records: JobRecords, job_id: str) -> str:
    from distributed import get_worker, worker_client

    from distml.runner import run_job

    record = records.read(job_id)
    if record["state"] in TERMINAL:
        return record["state"]
    if records.cancel_requested(job_id):
        return mark(records, job_id, "cancelled", "cancelled before it started")["state"]
    checkpoints = None
    if record["state"] != "queued":  # this task ran before, on a worker that died
        if record.get("resumed", {}).get("by") == "driver":
            return mark(records, job_id, "failed", "the job's driver was lost when its worker died, again after "
                        "resuming once; resume it with `distml jobs resume` or submit it again")["state"]
        checkpoints = Checkpoints(records, job_id, resume=True)
        note_resume(record, checkpoints.latest(), "driver")
    record["driver"]["worker"] = get_worker().address
    with worker_client(separate_thread=True) as client:  # secedes: no worker thread held while waiting
        tracker = JobTracker(records, record, publisher(client))
        try:
            run_job(spec, client, tracker=tracker, checkpoints=checkpoints)
        except DistmlError:
            pass  # written to the record by run_job
    return tracker.record["state"]


def resumable(records: JobRecords, job_id: str, job_file: JobSpec | None = None) -> tuple[JobSpec, dict[str, Any]]:
    """The spec and record of a job ``distml jobs resume`` may continue; a ``SpecError`` says why not.

    A job that succeeded, is still running, predates resumable records, or whose job file differs
    from the one recorded, is refused. The record's job file has its secrets redacted; ``job_file``
    (the same job file, given again) supplies them. The ``cluster`` section is where the job ran, not
    what it computes: it is not compared, the recorded one is kept but for its redacted values (a
    ``tls_key`` path), and the resume command's ``--scheduler`` and ``--tls-*`` flags win over both.
    """
    from distml.jobfile import JobSpec
    from distml.spec import ClusterSpec
    from distml.store import redact

    record = records.read(job_id)
    if record["state"] == "succeeded":
        raise SpecError(f"job {job_id} already succeeded ({record.get('model')}); there is nothing to resume")
    if record["state"] not in TERMINAL:
        alive, reason = driver_alive(record)
        if alive:
            where = (record.get("driver") or {}).get("scheduler")
            raise SpecError(f"job {job_id} is still {record['state']} (its driver is alive on {where}); "
                            f"cancel it (`distml jobs cancel {job_id}`) or wait for it before resuming")
        record = mark(records, job_id, "failed", f"the job's driver is gone: {reason} (last phase {record.get('phase')})")
    recorded = record.get("spec")
    if not isinstance(recorded, dict):
        raise SpecError(f"{records.uri(job_id)}: the record holds no job file to resume from (written by an older "
                        "distml); submit the job again")
    recorded = dict(recorded)
    ran_on = {k: v for k, v in (recorded.pop("cluster", None) or {}).items() if v != "***"}
    if job_file is not None:
        given = redact(job_file.model_dump(mode="json", exclude_unset=True, exclude={"cluster"}))
        if given != recorded:
            key = _first_difference(given, recorded)
            raise SpecError(f"the job file differs from job {job_id}'s at {key}: a resumed job must run the same "
                            "job file; submit it as a new job instead")
        cluster = ClusterSpec.model_validate({**job_file.cluster.model_dump(exclude_unset=True), **ran_on})
        return job_file.model_copy(update={"cluster": cluster}), record
    hidden = _redacted(recorded)
    if hidden:
        raise SpecError(f"job {job_id}'s recorded job file has its secret {hidden} redacted; pass the same job "
                        "file with --job-file so the resumed job can read its data and store")
    return JobSpec.model_validate({**recorded, "cluster": ran_on}), record


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """The dotted key where two parsed job files first differ, or None if they are equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    return None if a == b else (path or "the top level")


def _redacted(doc: Any, path: str = "") -> str | None:
    """The dotted key of the first value ``distml.store.redact`` replaced, or None."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            found = _redacted(value, f"{path}.{key}" if path else str(key))
            if found:
                return found
    return path if doc == "***" else None


def check_same_data(meta: dict[str, Any], dataset: Any, job_id: str) -> None:
    """Refuse to resume on data other than the checkpoint's (a file added, removed or changed)."""
    from distml.checkpoints import data_files
    from distml.errors import DataError

    then = {f["path"]: f for f in meta.get("data_files") or []}
    now = {f["path"]: f for f in data_files(dataset)}
    for path in sorted(set(then) | set(now)):
        if then.get(path) != now.get(path):
            what = ("is new" if path not in then else "is gone" if path not in now else
                    f"changed ({then[path]['rows']} rows, {then[path]['bytes']} bytes then; "
                    f"{now[path]['rows']} rows, {now[path]['bytes']} bytes now)")
            raise DataError(f"{dataset.url.rstrip('/')}/{path}: {what} since job {job_id}'s checkpoint {meta['step']}; a resumed job must "
                            "read the same data; submit it as a new job instead")


def note_resume(record: dict[str, Any], meta: dict[str, Any] | None, by: str) -> str:
    """Write into the record that the job resumes, from which checkpoint, and how much work is redone."""
    from distml.jobs import now_iso

    lost = float((record.get("phases") or {}).get("train", 0.0))
    if meta is None:
        line = "resumed from the start: no checkpoint was written before the interruption"
        step, saved = 0, 0.0
    else:
        step, saved = meta["step"], float(meta.get("progress") or 0.0)
        line = (f"resumed from checkpoint {step}: redoing the read and statistics passes and "
                f"{max(0.0, lost - saved):.0%} of training (train progress {lost:.0%} at the interruption, "
                f"{saved:.0%} at the checkpoint)")
    record["resumed"] = {"by": by, "checkpoint": step, "train_progress_at_checkpoint": saved,
                         "train_progress_at_interruption": lost, "train_progress_redone": max(0.0, lost - saved),
                         "times": int((record.get("resumed") or {}).get("times", 0)) + 1}
    record.update(state="queued", phase="start", progress=0.0, phases={}, error=None, finished=None, model=None, report=None)
    record["events"].append([now_iso(), line])
    return line


# --- run on the scheduler (via run_on_scheduler) ----------------------------

def _task_state(dask_scheduler: Any, key: str) -> str | None:
    ts = dask_scheduler.tasks.get(key)
    return ts.state if ts is not None else None


def _has_client(dask_scheduler: Any, client_id: str) -> bool:
    return client_id in dask_scheduler.clients


def _cancel_tasks(dask_scheduler: Any, job_id: str, client_id: str, with_driver: bool) -> int:
    """Force-cancel every task of the job (all clients' wants), optionally its driver too."""
    driver = f"distml-job-{job_id}"
    keys = [k for k, ts in list(dask_scheduler.tasks.items())
            if isinstance(k, str) and k.startswith("distml-") and f"-{job_id}" in k and ts.who_wants
            and (with_driver or k != driver)]
    for key in keys:
        try:
            dask_scheduler.stimulus_cancel([key], client=client_id, force=True, reason="distml jobs cancel",
                                           msg=f"job {job_id} was cancelled")
        except Exception:  # the key went away meanwhile
            continue
    return len(keys)


# --- run on the client -------------------------------------------------------

def _connect(address: str) -> Client | None:
    from distributed import Client

    try:
        return Client(address, timeout=3, set_as_default=False)
    except (OSError, TimeoutError, TypeError, ValueError):  # TypeError: a tls:// address without certificates
        return None


def _check_certificates(record: dict[str, Any], address: str) -> None:
    """A ``tls://`` scheduler cannot be asked without certificates: say so in one line, rather than
    take the driver for gone (and close a live job's record) for want of them."""
    from distml.tls import client_security
    from distml.spec import ClusterSpec

    try:
        client_security(ClusterSpec(), address)  # the --tls-* flags are in Dask's configuration by now
    except SpecError:
        raise SpecError(f"job {record.get('job_id')}: whether its driver is alive is asked of its scheduler "
                        f"{address}, which needs --tls-ca-file and --tls-cert (or distributed.comm.tls.* in "
                        "Dask's configuration)") from None


def driver_alive(record: dict[str, Any]) -> tuple[bool, str]:
    """Ask the job's scheduler whether its driver (task or client) still exists."""
    driver = record.get("driver") or {}
    address = driver.get("scheduler")
    if address and address.startswith("tls://"):
        _check_certificates(record, address)
    client = _connect(address) if address else None
    if client is None:
        return False, f"the scheduler at {address} cannot be reached"
    with client:
        if driver.get("kind") == "task":
            state = client.run_on_scheduler(_task_state, key=driver["key"])
            return state in LIVE_TASK_STATES, f"its driver task is {state or 'gone'} on {address}"
        alive = client.run_on_scheduler(_has_client, client_id=driver.get("id"))
        return alive, f"the submitting process disconnected from {address}"


def reconcile(records: JobRecords, record: dict[str, Any]) -> dict[str, Any]:
    """Close a record whose driver is gone, so no record stays ``running`` forever."""
    if record["state"] in TERMINAL or time.time() - float(record.get("heartbeat") or 0) < STALE_AFTER:
        return record
    alive, reason = driver_alive(record)
    if alive:
        return record
    state = "cancelled" if records.cancel_requested(record["job_id"]) else "failed"
    closed = mark(records, record["job_id"], state, f"the job's driver is gone: {reason} "
                  f"(last phase {record.get('phase')})")
    if not reason.startswith("the scheduler at"):  # it answered: let its /distml page show the closed record
        announce((record.get("driver") or {}).get("scheduler"), closed)
    return closed


def announce(address: str | None, record: dict[str, Any], client: Client | None = None) -> None:
    """Publish a record closed on a driver's behalf to its scheduler's ``/distml`` page (best effort)."""
    own = client is None and address is not None
    client = _connect(address) if own else client
    if client is None:
        return
    import contextlib

    try:
        with contextlib.suppress(Exception):  # the page is a courtesy; the record in the store is the truth
            client.log_event(TOPIC, {k: v for k, v in record.items() if k != "events"})
    finally:
        if own:
            client.close()


def cancel(records: JobRecords, job_id: str) -> dict[str, Any]:
    """Ask the driver to stop, cancel the job's tasks on the cluster, and wait for the record to say so."""
    record = records.read(job_id)
    if record["state"] in TERMINAL:
        raise SpecError(f"job {job_id} already {record['state']}; there is nothing to cancel")
    records.request_cancel(job_id)
    address = (record.get("driver") or {}).get("scheduler")
    client = _connect(address) if address else None
    deadline = time.monotonic() + CANCEL_WAIT
    try:
        while time.monotonic() < deadline:
            if client is not None:
                client.run_on_scheduler(_cancel_tasks, job_id=job_id, client_id=client.id, with_driver=False)
            record = records.read(job_id)
            if record["state"] in TERMINAL:
                return record
            time.sleep(0.25)
        if client is not None:
            client.run_on_scheduler(_cancel_tasks, job_id=job_id, client_id=client.id, with_driver=True)
        closed = mark(records, job_id, "cancelled", f"cancelled; the driver did not confirm within {CANCEL_WAIT:.0f}s")
        if client is not None:
            announce(address, closed, client)
        return closed
    finally:
        if client is not None:
            client.close()


def wait(records: JobRecords, job_id: str, timeout: float | None = None, poll: float = 0.5) -> dict[str, Any]:
    """Block until the job's record is final (or ``timeout`` seconds pass); returns the record."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        record = reconcile(records, records.read(job_id))
        if record["state"] in TERMINAL or (deadline is not None and time.monotonic() >= deadline):
            return record
        time.sleep(poll)
