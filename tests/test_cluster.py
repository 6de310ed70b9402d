"""The ways in: an embedded LocalCluster, or `dask scheduler` + `dask worker` processes; keys for the dashboard."""
from __future__ import annotations

import json
import re
import sys

import cloudpickle
import pytest
import yaml
from click.testing import CliRunner
from dask.utils import key_split

from distributed import Client

from distml.cli import main
from distml.tasks import PHASES, task_key


def _job(tmp_path, folder, **cluster):
    path = tmp_path / "job.yaml"
    doc = {"name": "cluster-test", "data": {"path": str(folder), "target": "target"},
           "model": {"kind": "logistic", "params": {"epochs": 2}},
           "output": {"store": str(tmp_path / "models")}}
    if cluster:
        doc["cluster"] = cluster
    path.write_text(yaml.safe_dump(doc))
    return path


def _submit(*args, env=None):
    result = CliRunner(env=env).invoke(main, ["submit", *map(str, args), "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_job_runs_on_dask_scheduler_and_worker_processes_by_flag_job_file_or_environment(
        tmp_path, make_data, dask_processes):
    folder, _ = make_data("classification", rows=20_000, features=6, files=3)
    runs = [
        _submit(_job(tmp_path, folder), "--scheduler", dask_processes),
        _submit(_job(tmp_path, folder, scheduler=dask_processes)),
        _submit(_job(tmp_path, folder), env={"DISTML_SCHEDULER": dask_processes}),
    ]
    for summary in runs:
        assert summary["metrics"]["accuracy"] > 0.8
    assert len({summary["job_id"] for summary in runs}) == 3
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the scheduler cannot import tests
    with Client(dask_processes, set_as_default=False) as client:
        groups = client.run_on_scheduler(_task_groups)
    assert {"distml-stats", "distml-train", "distml-eval"} <= set(groups), groups


def _task_groups(dask_scheduler):
    """Task prefixes (what the dashboard groups by) seen by a scheduler started for this test alone."""
    return list(dask_scheduler.task_prefixes)


# A scheduler preload (plain Dask configuration) that writes down every worker as it joins the embedded
# cluster, so the test reads the cluster the command really started rather than the flags it parsed.
_RECORD_WORKERS = """
import json
from distributed.diagnostics.plugin import SchedulerPlugin


class _Record(SchedulerPlugin):
    def add_worker(self, scheduler, worker):
        ws = scheduler.workers[worker]
        with open({path!r}, "a") as out:
            out.write(json.dumps({{"scheduler": scheduler.address, "address": ws.address,
                                  "nthreads": ws.nthreads, "memory_limit": ws.memory_limit}}) + "\\n")


def dask_setup(scheduler):
    scheduler.add_plugin(_Record(), name="distml-test-record-workers")
"""


def test_embedded_cluster_binds_to_loopback_and_uses_the_flags(tmp_path, make_data):
    import dask

    folder, _ = make_data("classification", rows=20_000, features=6, files=3)
    seen, preload = tmp_path / "workers.jsonl", tmp_path / "record_workers.py"
    preload.write_text(_RECORD_WORKERS.format(path=str(seen)))
    job = _job(tmp_path, folder, n_workers=2, threads_per_worker=1, memory_limit="1GiB")  # the flags win
    with dask.config.set({"distributed.scheduler.preload": [str(preload)]}):
        result = CliRunner().invoke(main, ["submit", str(job), "--workers", "1", "--threads", "2",
                                           "--memory-limit", "512MiB"])
    assert result.exit_code == 0, result.stderr
    assert re.search(r"dashboard:? http://127\.0\.0\.1:\d+/status", result.stderr), result.stderr
    assert "job " in result.stdout and "succeeded" in result.stdout
    workers = [json.loads(line) for line in seen.read_text().splitlines()]
    assert [(w["nthreads"], w["memory_limit"]) for w in workers] == [(2, 512 * 2**20)], workers
    assert all(w["scheduler"].startswith("tcp://127.0.0.1:") and w["address"].startswith("tcp://127.0.0.1:")
               for w in workers), workers
    manifest = json.loads(next((tmp_path / "models" / "cluster-test").glob("*/manifest.json")).read_text())
    assert manifest["cluster"] == {"workers": 1}


@pytest.mark.parametrize("phase", list(PHASES))
def test_task_keys_group_by_phase_on_the_dashboard(phase):
    for job_id in ("20261124-053236-a1b2c3", "20261124-053236-ffffff"):
        for index in ((), (3,), (3, 7), ("train", 2), ("tree", 1, 0)):
            assert key_split(task_key(phase, job_id, *index)) == f"distml-{phase}"


def test_a_task_key_with_an_undeclared_phase_word_is_refused():
    with pytest.raises(ValueError, match="'evaluate' is not declared"):
        task_key("evaluate", "20261124-053236-a1b2c3", 0)



def test_a_cluster_without_workers_is_waited_for_a_bounded_time_then_named(monkeypatch):
    from distributed import Client, LocalCluster

    from distml import cluster as cluster_module
    from distml.errors import ClusterError

    monkeypatch.setattr(cluster_module, "WORKERS_WAIT", 0.5)
    with LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as empty, \
            Client(empty, set_as_default=False) as client:
        with pytest.raises(ClusterError) as info:
            cluster_module.worker_resources(client)
        assert str(info.value) == ("the Dask cluster has no workers (none joined within 0.5 s); "
                                   "start at least one `dask worker`")
        empty.scale(1)
        assert cluster_module.worker_resources(client)[0] == 1


def _after(value: str, delay: float) -> str:
    import time

    time.sleep(delay)
    return value


def _concat(a: str, b: str) -> str:
    return a + b


class _CountingClient:
    """Passes ``submit`` through, noting how many futures each merge combines."""

    def __init__(self, client):
        self.client, self.sizes = client, []

    def submit(self, fn, *args, **kwargs):
        self.sizes.append(len(args) - 1)  # the first argument is the combine function
        return self.client.submit(fn, *args, **kwargs)


@pytest.mark.parametrize("fan_in", [2, 3, 8])
def test_tree_sums_combine_by_position_whatever_order_the_parts_finish_in(client, fan_in):
    """A sum that is not commutative (strings) comes out in position order although the parts finish in
    reverse order; every merge combines 2 to ``fan_in`` parts, ``ceil(log_fan_in(n))`` levels deep."""
    from distml.tasks import TreeSum

    for n in (1, 2, 7, 8, 9, 17, 64):
        values = [chr(ord("A") + i % 26) + str(i) for i in range(n)]
        counting, levels = _CountingClient(client), set()

        def key(level, j):
            levels.add(level)
            return f"distml-merge-treesum{fan_in}x{n}-{level}-{j}"

        reduction = TreeSum(counting, _concat, key=key, fan_in=fan_in)
        for i, value in enumerate(values):
            reduction.push(client.submit(_after, value, 0.002 * (n - i), key=f"distml-train-treesum-{fan_in}-{n}-{i}"))
        assert reduction.total().result() == "".join(values)
        assert all(2 <= size <= fan_in for size in counting.sizes), counting.sizes
        assert sum(size - 1 for size in counting.sizes) == n - 1  # every merge of s parts leaves s - 1 fewer
        depth, reach = 0, 1
        while reach < n:
            depth, reach = depth + 1, reach * fan_in
        assert len(levels) == depth and levels == set(range(depth)), (levels, n)


def _pause_fraction(dask_worker) -> float | bool:
    return dask_worker.memory_manager.memory_pause_fraction


def test_single_threaded_embedded_workers_are_never_paused_for_memory_and_threaded_ones_keep_dasks_pause():
    """Pausing cannot shrink a lone thread's task, only delay the next one by a monitor tick; spilling and the
    nanny's restart still guard the worker. With several threads the pause keeps new tasks from piling up."""
    from distml.cluster import connect
    from distml.spec import ClusterSpec

    for threads, pause in ((1, False), (2, 0.8)):
        with connect(ClusterSpec(n_workers=1, threads_per_worker=threads, memory_limit="400MiB")) as client:
            assert list(client.run(_pause_fraction).values()) == [pause]
            memory = client.run(lambda dask_worker: (dask_worker.memory_manager.memory_limit,
                                                     dask_worker.memory_manager.memory_spill_fraction))
            assert list(memory.values()) == [(400 * 2**20, 0.7)]
