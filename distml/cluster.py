"""Getting a ``distributed.Client``: an embedded LocalCluster or a remote scheduler.

The embedded cluster and its dashboard listen on 127.0.0.1 only. The client is
never made the process-wide default: every caller passes it explicitly.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from distml.errors import ClusterError

if TYPE_CHECKING:
    from distributed import Client

    from distml.spec import ClusterSpec

CONNECT_TIMEOUT = 10  # seconds; an unreachable scheduler fails well inside 15 s


def default_workers() -> tuple[int, int]:
    """Embedded default: one single-threaded worker per core (up to 4), each with its share of memory."""
    cores = os.cpu_count() or 1
    return max(1, min(cores, 4)), 1


@contextlib.contextmanager
def connect(spec: ClusterSpec, meanwhile: Callable[[], None] | None = None) -> Iterator[Client]:
    """Yield a client for the cluster the spec names, closing what was started here.

    ``meanwhile`` is client-side work (reading footers, importing) that runs while an embedded
    cluster starts in the background, so the job does not wait for one and then the other.
    """
    from distributed import Client

    from distml.spec import check_scheduler

    address = spec.scheduler or os.environ.get("DISTML_SCHEDULER") or None
    if address:
        if not spec.scheduler:  # --scheduler and cluster.scheduler were checked where they were read
            check_scheduler(address, "DISTML_SCHEDULER")
        started = time.monotonic()
        _check_handshake(address)
        left = max(1.0, CONNECT_TIMEOUT - (time.monotonic() - started))
        try:
            client = Client(address, timeout=left, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {address} within "
                               f"{CONNECT_TIMEOUT}s ({type(exc).__name__})") from None
        with client:
            if meanwhile:
                meanwhile()
            yield client
        return
    with _local_cluster(spec, meanwhile) as cluster, Client(cluster, set_as_default=False) as client:
        yield client


def _check_handshake(address: str) -> None:
    """Ask ``address`` who it is, all within ``CONNECT_TIMEOUT``; raise ``ClusterError`` unless a scheduler answers.

    ``Client(address, timeout=…)`` bounds the TCP connect but not the Dask
    handshake that follows, so a listener that accepts and stays silent (or an
    HTTP server) would hang it for ever. The probe runs in its own thread and
    event loop (the caller may already be inside one) and closes its comm.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="distml-probe") as pool:
        found = pool.submit(asyncio.run, _identity(address)).result()
    if isinstance(found, BaseException):
        reason = ("something listens there but did not complete the Dask handshake"
                  if isinstance(found, asyncio.TimeoutError) else type(found).__name__)
        raise ClusterError(f"cannot reach the Dask scheduler at {address} within {CONNECT_TIMEOUT}s ({reason})")
    kind = found.get("type") if isinstance(found, dict) else None
    if kind != "Scheduler":
        raise ClusterError(f"{address} answers as {kind or 'something'}, not as a Dask scheduler; "
                           "expected the scheduler's address (tcp://host:8786)")


async def _identity(address: str) -> Any:
    """The ``identity`` reply of the server at ``address``, or the exception that stopped us getting it."""
    from distributed.comm import connect as comm_connect

    comm = None

    async def ask() -> Any:
        nonlocal comm
        comm = await comm_connect(address, timeout=0.8 * CONNECT_TIMEOUT)  # its OSError first, if nothing listens
        await comm.write({"op": "identity", "reply": True})
        return await comm.read()

    try:
        return await asyncio.wait_for(ask(), CONNECT_TIMEOUT)
    except (OSError, asyncio.TimeoutError, EOFError, ValueError, TypeError) as exc:
        return exc
    finally:
        if comm is not None:
            comm.abort()


@contextlib.contextmanager
def _local_cluster(spec: ClusterSpec, meanwhile: Callable[[], None] | None = None) -> Iterator[Any]:
    """Start the embedded cluster in a thread while ``meanwhile`` runs here; close it quickly at the end.

    The workers are spawned with SIGINT ignored, as before; only the client handles Ctrl-C.
    """
    restore = _workers_ignore_sigint()
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="distml-cluster-start") as pool:
            starting = pool.submit(_start_local_cluster, spec)
            try:
                if meanwhile:
                    meanwhile()
            except BaseException:
                with contextlib.suppress(Exception):
                    _close_quickly(starting.result())
                raise
            cluster = starting.result()
    finally:
        restore()
    try:
        yield cluster
    finally:
        _close_quickly(cluster)


def _start_local_cluster(spec: ClusterSpec) -> Any:
    from distributed import LocalCluster

    from distml.spec import parse_size

    n_workers, threads = default_workers()
    memory = parse_size(spec.memory_limit) if spec.memory_limit else "auto"
    try:
        return LocalCluster(
            n_workers=spec.n_workers or n_workers,
            threads_per_worker=spec.threads_per_worker or threads,
            memory_limit=memory,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:8787",
            # worker tracebacks and ERROR lines stay off the user's terminal unless DISTML_DEBUG asks for them
            silence_logs=logging.WARNING if os.environ.get("DISTML_DEBUG") else logging.CRITICAL,
        )
    except Exception as exc:
        raise ClusterError(f"cannot start the embedded Dask cluster ({type(exc).__name__}: {exc})") from None


def _close_quickly(cluster: Any) -> None:
    """Close the embedded cluster without waiting for each worker to retire and tear its Python down.

    Called once the job's record and artifacts are final (or the job failed and wrote nothing), so
    nothing a worker holds matters any more: each nanny is told not to restart its worker, the worker
    process is killed, and the nanny removes its scratch folder as it sees the process exit; the
    scheduler then closes as usual.
    """
    import signal

    for nanny in list(getattr(cluster, "workers", {}).values()):
        process = getattr(getattr(nanny, "process", None), "process", None)  # the worker's AsyncProcess
        if process is None or not hasattr(nanny, "close_gracefully"):
            continue
        nanny.close_gracefully(reason="distml-job-done")  # no restart when the process goes
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if process.pid:
                os.kill(process.pid, signal.SIGKILL)
    cluster.close()


def _workers_ignore_sigint() -> Callable[[], None]:
    """Ignore SIGINT while the embedded workers are spawned (they inherit it); returns the undo.

    Ctrl-C at a terminal reaches the whole process group: workers that heard it printed
    KeyboardInterrupt tracebacks of their own. The submitting process alone handles it and closes
    the workers.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    return lambda: signal.signal(signal.SIGINT, previous)


def dashboard_link(client: Client) -> str | None:
    """The dashboard URL, if the scheduler serves one."""
    try:
        return client.dashboard_link
    except Exception:  # no bokeh on the scheduler, or no dashboard configured
        return None


def worker_resources(client: Client) -> tuple[int, int, int]:
    """(workers, total threads, smallest worker memory limit in bytes) of the running cluster."""
    workers = client.scheduler_info(n_workers=-1)["workers"] if _takes_n_workers(client) else \
        client.scheduler_info()["workers"]
    if not workers:
        raise ClusterError("the Dask cluster has no workers; start at least one `dask worker`")
    threads = sum(w.get("nthreads", 1) for w in workers.values())
    limits = [w.get("memory_limit") or 0 for w in workers.values()]
    return len(workers), threads, min(limits)


def memory_headroom(client: Client) -> int:
    """Bytes the busiest worker can still use before Dask pauses it (60% of its limit), measured now.

    A worker's imports alone (pandas, pyarrow, scikit-learn) take a few hundred
    MB, so partition sizes come from what is left, not from the limit.
    """
    workers = client.scheduler_info(n_workers=-1)["workers"] if _takes_n_workers(client) else \
        client.scheduler_info()["workers"]
    room = [int(0.6 * w["memory_limit"]) - int(w.get("metrics", {}).get("memory", 0))
            for w in workers.values() if w.get("memory_limit")]
    return max(0, min(room)) if room else 0


def _takes_n_workers(client: Client) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters
