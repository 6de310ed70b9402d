"""The embedded cluster's workers are forks of one fork server that imported what their tasks need."""
from __future__ import annotations

import os

from distml.cluster import connect
from distml.spec import ClusterSpec

NEEDED = ("pyarrow.parquet", "pandas", "sklearn.compose", "sklearn.preprocessing", "distml.stats")


def _worker_facts() -> tuple[int, list[str]]:
    """Run on a worker outside any task: its parent process, and which of ``NEEDED`` it has not imported."""
    import sys

    return os.getppid(), [name for name in NEEDED if name not in sys.modules]


def test_embedded_workers_are_forks_of_one_server_and_start_with_their_imports_done():
    with connect(ClusterSpec(n_workers=2, threads_per_worker=1)) as client:
        facts = client.run(_worker_facts)  # before any task: a spawned worker has imported none of them
    parents = {parent for parent, _ in facts.values()}
    assert len(facts) == 2
    assert len(parents) == 1 and parents != {os.getpid()}  # the fork server, not this process (the nannies')
    assert {worker: missing for worker, (_, missing) in facts.items()} == {worker: [] for worker in facts}


def test_the_fork_servers_environment_defaults_are_distributeds_own():
    """The server starts before distributed is imported, so it carries a copy of distributed.yaml's defaults."""
    import dask
    import distributed  # noqa: F401 - its import adds its defaults to dask's config

    from distml.fork_server import PRE_SPAWN_ENVIRON

    assert dask.config.get("distributed.nanny.pre-spawn-environ") == PRE_SPAWN_ENVIRON
