"""A job leaves its workers' profiles small enough for dask's ``sizeof`` (``distml.warmup.warm``)."""
from __future__ import annotations

import logging
import logging.handlers

HANDLER = "distml-test-sizeof"


def _listen_part() -> None:
    """Keep the worker's ``distributed.sizeof`` records (its 'Sizeof calculation ... failed' warnings)."""
    handler = logging.handlers.BufferingHandler(capacity=1000)
    handler.name = HANDLER
    logging.getLogger("distributed.sizeof").addHandler(handler)


def _heard_part() -> list[str]:
    """The messages the handler of ``_listen_part`` kept; removes it."""
    logger = logging.getLogger("distributed.sizeof")
    handler = next(h for h in logger.handlers if h.name == HANDLER)
    logger.removeHandler(handler)
    return [record.getMessage() for record in handler.buffer]


def test_a_job_on_a_fresh_worker_leaves_a_profile_dask_can_size(tmp_path, make_data):
    """A fresh worker's first read imports pandas and its warm-up scikit-learn, each about 100 frames deep; in a
    task thread that became a 100-level dict in the worker's profile, and sending it (the job's performance
    report, the dashboard) made the worker log distributed's "Sizeof calculation for object of type 'dict'
    failed"."""
    from distributed import Client, LocalCluster

    from distml.jobfile import parse_job
    from distml.runner import run_job

    folder, _ = make_data("classification", rows=4_000, features=5, files=2)  # as other tests: written once
    spec = parse_job({"name": "fresh", "seed": 0, "data": {"path": str(folder), "target": "target"},
                      "model": {"kind": "logistic"}, "output": {"store": str(tmp_path)}}, "job")
    # a worker of its own: the session cluster's workers imported pandas and scikit-learn long ago
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=40) as cluster, \
            Client(cluster, set_as_default=False) as client:
        client.run(_listen_part)
        run_job(spec, client)
        profile = client.profile()  # what the job's report.html (output.report) and the dashboard ask for
        heard = client.run(_heard_part)
    assert profile["count"] > 0, "the worker's profiler saw no task"
    assert list(heard.values()) == [[]]
