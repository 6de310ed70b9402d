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


def _page_faults_of_a_reused_block(rows: int) -> int:
    """Run in a task: the minor page faults of allocating (and filling) a block of ``rows`` × 28 floats again."""
    import resource

    import numpy as np

    np.ones((rows, 28))  # the first one may grow the heap
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(5):
        block = np.ones((rows, 28))
        del block
    return (resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before) // 5


def test_an_embedded_worker_keeps_the_freed_heap_of_a_block_smaller_than_its_pad_for_its_next_task():
    """Dask's malloc trimming alone hands a freed block back to the OS, so the next task faults its pages in again."""
    import platform

    import pytest

    from distml.worker_heap import HEAP_PAD_SHARE, MAX_HEAP_PAD, heap_pad

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("the top pad is glibc's")
    with connect(ClusterSpec(n_workers=1, threads_per_worker=1, memory_limit="256MiB")) as client:
        faults = client.submit(_page_faults_of_a_reused_block, 100_000, pure=False).result()  # 22 MB
    assert heap_pad(256 * 2**20) == 256 * 2**20 // HEAP_PAD_SHARE == 32 * 2**20  # the block fits in the pad
    assert faults < 50  # trimmed at once, the block's 22 MB fault in again: hundreds of faults
    assert heap_pad(None) == heap_pad(64 * 2**30) == MAX_HEAP_PAD


PROBE_JOB = """
import probe_mod

from distml.cluster import connect
from distml.fork_server import start_fork_server
from distml.spec import ClusterSpec


def where_a_task_imports_it():
    import probe_mod

    return probe_mod.WHERE


if __name__ == "__main__":
    start_fork_server(("probe_mod",))  # preloaded by the server, as distml's own modules are
    with connect(ClusterSpec(n_workers=1, threads_per_worker=1)) as client:
        print(probe_mod.WHERE, client.submit(where_a_task_imports_it).result())
"""


def test_workers_import_what_the_submitting_process_imports_not_the_modules_of_its_current_folder(tmp_path):
    """Python 3.11's fork server starts with the current folder first on its path, and a worker forked from it
    keeps the modules the server preloaded from there (distml's own, say) whatever path it then gets."""
    import subprocess
    import sys

    script, elsewhere = tmp_path / "script", tmp_path / "elsewhere"
    for folder in (script, elsewhere):
        folder.mkdir()
        (folder / "probe_mod.py").write_text(f"WHERE = {folder.name!r}\n")
    (script / "probe_job.py").write_text(PROBE_JOB)
    done = subprocess.run([sys.executable, str(script / "probe_job.py")], cwd=elsewhere, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["script", "script"]
