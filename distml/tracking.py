"""Making a job's record and tracker on a cluster, for the runner (attached jobs) and the service (detached).

Apart from ``service`` so the runner can make its own tracker without calling
up into the module that starts runners.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distml.jobs import TOPIC, JobRecords, JobTracker, new_record

if TYPE_CHECKING:
    from distributed import Client

    from distml.jobfile import JobSpec


def records_of(spec: JobSpec) -> JobRecords:
    """The job records of the job file's store."""
    return JobRecords(spec.output.store, spec.output.storage_options)


def cluster_info(client: Client) -> dict[str, Any]:
    """Where the job runs: scheduler address, dashboard and the /distml page."""
    from distml.cluster import dashboard_link

    link = dashboard_link(client)
    page = link.rsplit("/status", 1)[0].rstrip("/") + "/distml" if link else None
    return {"scheduler": client.scheduler.address, "dashboard": link, "page": page}


def publisher(client: Client) -> Callable[[dict[str, Any]], None]:
    """Send a written record to the scheduler's event topic, where the ``/distml`` page reads it."""

    def publish(record: dict[str, Any]) -> None:
        client.log_event(TOPIC, record)

    return publish


def record_for(spec: JobSpec, client: Client, job_id: str, driver: dict[str, Any]) -> dict[str, Any]:
    """A queued job's first record: the redacted job file, where it runs and who drives it."""
    from distml.store import redact

    driver = {**driver, "scheduler": client.scheduler.address}
    record = new_record(redact(spec.model_dump(mode="json")), job_id, spec.output.store, cluster_info(client), driver)
    # What ``distml jobs resume`` re-validates: only the keys the job file set (some validators refuse a
    # default spelled out), redacted like the rest of the record.
    record["spec"] = redact(spec.model_dump(mode="json", exclude_unset=True))
    return record


def attached_tracker(spec: JobSpec, client: Client, job_id: str) -> JobTracker:
    """The record of a job whose driver is this process (``distml submit`` without ``--detach``)."""
    from distml.dashboard import register_page

    register_page(client)
    tracker = JobTracker(records_of(spec), record_for(spec, client, job_id, {"kind": "client", "id": client.id}),
                         publisher(client))
    tracker.flush()
    return tracker
