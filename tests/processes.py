"""Real `dask scheduler` and `dask worker` processes on 127.0.0.1, started and stopped with bounded time."""
from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


@contextlib.contextmanager
def dask_processes(folder: Path, *, n_workers: int = 2, nthreads: int = 1,
                   scheduler_args: tuple[str, ...] = ("--no-dashboard",), env: dict | None = None) -> Iterator[str]:
    """Start a scheduler and ``n_workers`` workers; yield the scheduler's address; terminate them all."""
    from distributed import Client

    sched_file = folder / "scheduler.json"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               *scheduler_args, "--scheduler-file", str(sched_file)], **quiet)]
    try:
        deadline = time.monotonic() + 30
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        for _ in range(n_workers):
            procs.append(subprocess.Popen(
                [str(BIN / "dask"), "worker", "--scheduler-file", str(sched_file), "--host", "127.0.0.1",
                 "--nthreads", str(nthreads), "--memory-limit", "1GiB", "--no-dashboard"], **quiet))
        with Client(scheduler_file=str(sched_file), set_as_default=False, timeout=30) as client:
            client.wait_for_workers(n_workers, timeout=60)
            address = client.scheduler.address
        yield address
    finally:
        # Workers first, while their scheduler still answers (a worker whose scheduler is gone first spends
        # seconds trying to reach it before it exits), then the scheduler.
        for group in (procs[1:], procs[:1]):
            for p in group:
                p.terminate()
            for p in group:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
