"""The job's Dask performance report (``report.html``): marked at the start, rendered at the end.

A courtesy to the user: any failure here gives no report, never a failed job.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Client


def start_report(client: Client) -> tuple[float, int] | None:
    """Mark the start of the job's Dask performance report."""
    try:
        count = client.run_on_scheduler(_monitor_count)
        client.get_task_stream(start=0, stop=0)  # makes sure the scheduler records a task stream
        return time.time(), count
    except Exception:  # noqa: BLE001 - a report is a courtesy; never fail a job for it
        return None


def _monitor_count(dask_scheduler: Any) -> int:
    return dask_scheduler.monitor.count


def finish_report(client: Client, start: tuple[float, int] | None, job_id: str) -> str | None:
    if start is None:
        return None
    try:
        return client.sync(client.scheduler.performance_report, start=start[0], last_count=start[1],
                           code=f"distml job {job_id}", mode=None)
    except Exception:  # noqa: BLE001 - as above
        return None
