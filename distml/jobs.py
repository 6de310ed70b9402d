"""Durable job records: ``<store>/_jobs/<job-id>.json``, written by the job's driver.

A record holds the job's state (``queued`` → ``running`` → ``succeeded`` /
``failed`` / ``cancelled``), timestamps, the redacted job file, the cluster
and driver, the current phase and its progress, the job's events, the error
or the model URI. Every write replaces the whole record in one step (a
single put on object stores, temp file + rename on a local disk), so a
reader never sees half a record. A cancel request is a separate file,
``<job-id>.cancel``, so the requester never races the driver's writes.

This module imports no Dask: ``distml jobs list`` must start fast.
"""
from __future__ import annotations

import json
import posixpath
import re
import secrets
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from distml.errors import JobCancelled, StoreError, io_reason

JOBS_DIR = "_jobs"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
PHASE_ORDER = ("start", "read", "stats", "train", "eval", "save")
HEARTBEAT_EVERY = 5.0  # seconds between the driver's record rewrites while nothing else happens
STALE_AFTER = 20.0  # a heartbeat older than this makes readers ask the scheduler about the driver
PROGRESS_EVERY = 1.0  # at most one progress write a second
MAX_EVENTS = 2000
TOPIC = "distml-jobs"  # scheduler event topic the dashboard page reads
LIVE_TASK_STATES = {"released", "waiting", "queued", "no-worker", "processing"}  # a driver task not yet ended
JOB_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")


def now_iso(t: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if t is None else t, timezone.utc).isoformat(timespec="milliseconds")


class JobRecords:
    """The job records of one store (any fsspec URL)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.storage_options = storage_options or {}
        self._fs_root: tuple[Any, str] | None = None

    def _fs(self) -> tuple[Any, str]:
        if self._fs_root is None:
            from distml.store import Store

            fs, root = Store(self.url, self.storage_options).filesystem()
            self._fs_root = fs, posixpath.join(root, JOBS_DIR)
        return self._fs_root

    def uri(self, job_id: str) -> str:
        return posixpath.join(self.url.rstrip("/"), JOBS_DIR, f"{job_id}.json")

    def _path(self, job_id: str, suffix: str = ".json") -> str:
        if not JOB_ID.match(job_id):
            raise StoreError(f"{job_id!r} is not a job id; expected one like 20260101-120000-1a2b3c "
                             "(see `distml jobs list`)")
        return posixpath.join(self._fs()[1], job_id + suffix)

    def write(self, record: dict[str, Any]) -> None:
        """Replace the record in one step: a single put, or temp file + rename on a local disk."""
        fs, root = self._fs()
        path = self._path(record["job_id"])
        body = json.dumps(record, indent=1, default=str).encode()
        try:
            if "file" in _protocols(fs):
                fs.makedirs(root, exist_ok=True)
                tmp = f"{path}.{secrets.token_hex(4)}.tmp"
                fs.pipe_file(tmp, body)
                fs.mv(tmp, path)
            else:
                fs.pipe_file(path, body)
        except Exception as exc:
            raise StoreError(f"{self.uri(record['job_id'])}: cannot write the job record "
                             f"({io_reason(exc)})") from None

    def read(self, job_id: str) -> dict[str, Any]:
        fs, _ = self._fs()
        path = self._path(job_id)
        try:
            fs.invalidate_cache(path)
            record = json.loads(fs.cat_file(path))
        except FileNotFoundError:
            raise StoreError(f"no job {job_id} in {self.url} (see `distml jobs list --store {self.url}`)") from None
        except ValueError:
            raise StoreError(f"{self.uri(job_id)}: not a valid job record (not JSON)") from None
        problem = record_problem(record)
        if problem:
            raise StoreError(f"{self.uri(job_id)}: not a valid job record ({problem})")
        return record

    def list(self, on_bad: Callable[[str, str], None] | None = None) -> list[dict[str, Any]]:
        """Every readable record, oldest first (job ids sort by creation time).

        A record that is not valid JSON or lacks a job id or state is skipped and handed to
        ``on_bad(uri, problem)``, so one damaged file never hides the other jobs.
        """
        fs, root = self._fs()
        try:
            fs.invalidate_cache(root)
            paths = sorted(p for p in fs.ls(root, detail=False) if p.endswith(".json"))
        except FileNotFoundError:
            return []
        records = []
        for path in paths:
            uri = posixpath.join(self.url.rstrip("/"), JOBS_DIR, posixpath.basename(path))
            try:
                record = json.loads(fs.cat_file(path))
            except FileNotFoundError:
                continue  # removed since the listing
            except ValueError:
                problem: str | None = "not JSON"
            else:
                problem = record_problem(record)
            if problem is None:
                records.append(record)
            elif on_bad is not None:
                on_bad(uri, problem)
        return records

    def request_cancel(self, job_id: str) -> None:
        self._fs()[0].pipe_file(self._path(job_id, ".cancel"), now_iso().encode())

    def clear_cancel(self, job_id: str) -> None:
        """Forget a cancel request, so a resumed job is not cancelled again by the one that stopped it."""
        fs, _ = self._fs()
        path = self._path(job_id, ".cancel")
        if fs.exists(path):
            fs.rm(path)

    def cancel_requested(self, job_id: str) -> bool:
        fs, _ = self._fs()
        path = self._path(job_id, ".cancel")
        fs.invalidate_cache(path)
        return bool(fs.exists(path))


def record_problem(record: Any) -> str | None:
    """What makes a parsed record unusable (not an object, no job id or state), or None if it is usable."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    if not isinstance(record.get("job_id"), str) or not JOB_ID.match(record["job_id"]):
        return "no valid job_id"
    if not isinstance(record.get("state"), str):
        return "no state"
    return None


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def phase_message(name: str, state: str, seconds: float) -> str:
    """The human line for a phase event, as the job's log and the console show it."""
    return f"phase {name} done in {seconds:.2f}s" if state == "done" else f"phase {name} {state}"


def new_record(spec_doc: dict[str, Any], job_id: str, store_url: str, cluster: dict[str, Any],
               driver: dict[str, Any], state: str = "queued") -> dict[str, Any]:
    """A fresh record; ``spec_doc`` must already be redacted."""
    t = time.time()
    return {
        "job_id": job_id, "name": spec_doc.get("name"), "state": state, "created": now_iso(t),
        "started": None, "finished": None, "updated": now_iso(t), "heartbeat": t,
        "store": store_url, "job": spec_doc, "cluster": cluster, "driver": driver,
        "phase": "start", "progress": 0.0, "phases": {}, "error": None, "model": None,
        "report": None, "events": [[now_iso(t), f"job {job_id} {state}"]],
    }


class JobTracker:
    """The driver's handle on its record: state changes, progress, events, heartbeat, cancel checks.

    Progress per phase only grows and phases only move forward, so a reader
    never sees progress go backwards. ``publish`` (if given) also sends each
    written record to the scheduler, where the ``/distml`` page reads it.
    """

    def __init__(self, records: JobRecords, record: dict[str, Any],
                 publish: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.records = records
        self.record = record
        self.publish = publish
        self._lock = threading.RLock()
        self._last_write = 0.0
        self._last_cancel_check = 0.0
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.written_state: str | None = None  # the state the store holds: the last write that succeeded

    @property
    def job_id(self) -> str:
        return self.record["job_id"]

    def flush(self) -> None:
        with self._lock:
            t = time.time()
            self.record["heartbeat"] = t
            self.record["updated"] = now_iso(t)
            self.records.write(self.record)
            self._last_write = t
            self.written_state = self.record["state"]
            if self.publish is not None:
                try:
                    self.publish({k: v for k, v in self.record.items() if k != "events"})
                except Exception:  # the dashboard is a courtesy; the record in the store is the truth
                    self.publish = None

    def start(self) -> None:
        """Mark the job running and keep its heartbeat fresh until ``finish``."""
        with self._lock:
            self.record["state"] = "running"
            self.record["started"] = now_iso()
            self._event("job running")
            self.flush()
        self._beat = threading.Thread(target=self._heartbeat, name=f"distml-heartbeat-{self.job_id}", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_EVERY):
            try:
                if time.time() - self._last_write >= HEARTBEAT_EVERY:
                    self.flush()
            except Exception:
                continue  # a store hiccup must not kill the heartbeat; the next beat retries

    def _event(self, message: str) -> None:
        events = self.record["events"]
        events.append([now_iso(), message])
        if len(events) > MAX_EVENTS:
            del events[1:len(events) - MAX_EVENTS + 1]

    def log(self, message: str) -> None:
        """An event line for the job's log; raises ``JobCancelled`` if a cancel was asked for."""
        with self._lock:
            self._event(message)
        self.check_cancel()
        self._maybe_flush()

    def phase(self, name: str, state: str, seconds: float) -> None:
        """A phase started or ended: its line in the log and, once started, the record's current phase.

        A failed phase writes nothing here (``finish`` records the error); the
        others may raise ``JobCancelled`` like ``log``.
        """
        if state == "failed":
            return
        with self._lock:
            self._event(phase_message(name, state, seconds))
            if state == "started":
                self._advance(name, 0.0)
        self.check_cancel()
        self._maybe_flush()

    def progress(self, phase: str, fraction: float) -> None:
        with self._lock:
            self._advance(phase, min(1.0, max(0.0, float(fraction))))
        self.check_cancel()
        self._maybe_flush()

    def _advance(self, phase: str, fraction: float) -> None:
        rank = PHASE_ORDER.index(phase) if phase in PHASE_ORDER else None
        current = PHASE_ORDER.index(self.record["phase"]) if self.record["phase"] in PHASE_ORDER else 0
        if rank is not None and rank < current:
            return  # a late report from an earlier phase never moves the job backwards
        self.record["phases"][phase] = max(self.record["phases"].get(phase, 0.0), fraction)
        if rank is None or rank >= current:
            self.record["phase"] = phase
            self.record["progress"] = self.record["phases"][phase]

    def _maybe_flush(self) -> None:
        if time.time() - self._last_write >= PROGRESS_EVERY:
            try:
                self.flush()
            except StoreError:
                pass  # a store hiccup must not fail the job; state changes and the heartbeat write again

    def check_cancel(self, force: bool = False) -> None:
        """Raise ``JobCancelled`` if someone asked to cancel the job (checked at most twice a second)."""
        t = time.time()
        if not force and t - self._last_cancel_check < 0.5:
            return
        self._last_cancel_check = t
        if self.records.cancel_requested(self.job_id):
            raise JobCancelled(f"job {self.job_id} was cancelled")

    def cancel_requested(self) -> bool:
        try:
            return self.records.cancel_requested(self.job_id)
        except Exception:
            return False

    def finish(self, state: str, *, error: str | None = None, model: str | None = None, report: bool = True) -> None:
        self._stop.set()
        with self._lock:
            self.record.update(state=state, finished=now_iso(), error=error)
            if model:
                self.record.update(model=model, report=posixpath.join(model, "report.html") if report else None,
                                   progress=1.0)
            self._event(f"job {state}" + (f": {error}" if error else ""))
            self.flush()


def elapsed(record: dict[str, Any]) -> float:
    """Seconds from start (or creation) to finish (or now)."""
    start = record.get("started") or record.get("created")
    end = record.get("finished")
    t0 = datetime.fromisoformat(start).timestamp()
    t1 = datetime.fromisoformat(end).timestamp() if end else time.time()
    return max(0.0, t1 - t0)


def mark(records: JobRecords, job_id: str, state: str, reason: str) -> dict[str, Any]:
    """Finish a record on behalf of a driver that is gone (re-read first: it may just have finished)."""
    record = records.read(job_id)
    if record["state"] in TERMINAL:
        return record
    record.update(state=state, finished=now_iso(), updated=now_iso(), error=reason)
    record["events"].append([now_iso(), f"job {state}: {reason}"])
    records.write(record)
    return record
