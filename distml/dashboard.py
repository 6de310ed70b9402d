"""The scheduler's ``/distml`` page: the cluster's distml jobs with state, phase and progress.

Drivers send each record they write to the scheduler as an event on the
``distml-jobs`` topic (without its event log). Two ways to serve the page:

- ``register_page(client)`` (what ``distml submit`` does) registers
  ``JobsPage``, a scheduler plugin that keeps the latest record of every job
  and adds ``/distml`` and ``/distml/jobs/<id>.json`` to the scheduler's HTTP
  server (the dashboard port);
- or start the scheduler with this module in its HTTP routes config
  (``distributed.scheduler.http.routes: [..., distml.dashboard]``); the page
  then reads the scheduler's event log for the topic.
"""
from __future__ import annotations

import html
import json
import time
from typing import Any

from tornado import web

from distml.jobs import LIVE_TASK_STATES, TERMINAL, TOPIC

try:  # the scheduler imports this module; the plugin base lives in distributed
    from distributed.diagnostics.plugin import SchedulerPlugin
except ImportError:  # pragma: no cover
    SchedulerPlugin = object  # type: ignore[assignment,misc]

PLUGIN_NAME = "distml-jobs"


def jobs_on(scheduler: Any) -> dict[str, dict[str, Any]]:
    """The latest record of every job the scheduler has heard of, newest first."""
    plugin = scheduler.plugins.get(PLUGIN_NAME)
    if plugin is not None:
        latest = dict(plugin.jobs)
    else:
        latest = {}
        for _, msg in scheduler.get_events(TOPIC):
            if isinstance(msg, dict) and "job_id" in msg:
                latest[msg["job_id"]] = msg
    return {job_id: _with_driver_check(scheduler, record) for job_id, record in sorted(latest.items(), reverse=True)}


def _with_driver_check(scheduler: Any, record: dict[str, Any]) -> dict[str, Any]:
    """A record still open whose driver this scheduler no longer has is shown ``lost``, at once.

    The page hears only what drivers publish: a driver killed before it closed its record
    published nothing more, and the record it left was shown ``running`` until someone looked
    (for as long as the scheduler ran). The scheduler knows its clients and tasks, so it can tell.
    """
    if record.get("state") in TERMINAL:
        return record
    driver = record.get("driver") or {}
    if driver.get("kind") == "client":
        gone = driver.get("id") not in scheduler.clients
    elif driver.get("kind") == "task":
        task = scheduler.tasks.get(driver.get("key"))
        gone = task is None or task.state not in LIVE_TASK_STATES
    else:
        return record
    if not gone:
        return record
    return {**record, "state": "lost", "error": "its driver is gone from this scheduler; the next "
            "`distml jobs status|list` closes its record as failed"}


class JobsPage(SchedulerPlugin):
    """Keeps the latest record per job and serves the page; registered once per scheduler."""

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}

    async def start(self, scheduler: Any) -> None:
        for _, msg in scheduler.get_events(TOPIC):  # jobs announced before the plugin arrived
            self.log_event(TOPIC, msg)
        app = getattr(scheduler, "http_application", None)
        if app is not None:
            app.add_handlers(r".*$", [(pattern, handler, {"dask_server": scheduler}) for pattern, handler, _ in routes])

    def log_event(self, topic: str, msg: Any) -> None:
        if topic == TOPIC and isinstance(msg, dict) and "job_id" in msg:
            self.jobs[msg["job_id"]] = msg


class _Handler(web.RequestHandler):
    def initialize(self, dask_server: Any) -> None:
        self.server = dask_server


class JobsHandler(_Handler):
    """``/distml``: an HTML table of jobs, refreshed every 5 seconds."""

    def get(self) -> None:
        rows = "\n".join(_row(r) for r in jobs_on(self.server).values())
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")  # the page is live: never served from a cache
        self.write(_PAGE.format(rows=rows or '<tr><td colspan="7">no distml jobs yet</td></tr>'))


class JobRecordHandler(_Handler):
    """``/distml/jobs/<id>.json``: the job's latest record as its driver published it."""

    def get(self, job_id: str) -> None:
        record = jobs_on(self.server).get(job_id)
        if record is None:
            raise web.HTTPError(404, f"no distml job {job_id} on this scheduler")
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.write(json.dumps(record, indent=1, default=str))


def _row(record: dict[str, Any]) -> str:
    e = html.escape
    job_id, state = str(record.get("job_id")), str(record.get("state"))
    pct = int(round(100 * float(record.get("progress") or 0)))
    since = record.get("heartbeat")
    age = f"{time.time() - float(since):.0f}s ago" if since else ""
    where = record.get("model") or record.get("error") or ""
    return (f'<tr class="{e(state)}"><td>{e(str(record.get("name")))}</td>'
            f'<td><a href="distml/jobs/{e(job_id)}.json">{e(job_id)}</a></td>'
            f'<td class="state">{e(state)}</td><td>{e(str(record.get("phase")))}</td>'
            f'<td><progress max="100" value="{pct}"></progress> {pct}%</td>'
            f'<td>{e(age)}</td><td>{e(str(where))}</td></tr>')


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>distml jobs</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}
td,th{{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}}
.failed .state,.lost .state{{color:#b00}}.succeeded .state{{color:#070}}.cancelled .state{{color:#888}}</style>
</head><body><h1>distml jobs</h1>
<table><thead><tr><th>name</th><th>job id (record)</th><th>state</th><th>phase</th><th>progress</th>
<th>last heard</th><th>model / error</th></tr></thead>
<tbody>
{rows}
</tbody></table>
<p><a href="status">Dask dashboard</a></p></body></html>
"""

# For ``distributed.scheduler.http.routes``: distributed hands each handler the
# scheduler as ``dask_server``.
routes: list[tuple[str, type, dict[str, Any]]] = [
    (r"/distml", JobsHandler, {}),
    (r"/distml/jobs/([0-9a-f-]+)\.json", JobRecordHandler, {}),
]


def register_page(client: Any) -> None:
    """Add the page to the client's scheduler (once); a scheduler without distml installed just lacks it."""
    try:
        client.register_plugin(JobsPage())
    except Exception:
        pass
