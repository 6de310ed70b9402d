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
    from distributed import Client, Security

    from distml.spec import ClusterSpec

CONNECT_TIMEOUT = 10  # seconds; an unreachable scheduler fails well inside 15 s


def default_workers() -> tuple[int, int]:
    """Embedded default: one single-threaded worker per core (up to 4), each with its share of memory."""
    cores = os.cpu_count() or 1
    return max(1, min(cores, 4)), 1


@contextlib.contextmanager
def connect(spec: ClusterSpec) -> Iterator[Client]:
    """Yield a client for the cluster the spec names, closing what was started here.

    The job's later imports run meanwhile in a background thread (``distml.warmup``). Distributed's log
    lines stay off the terminal until the client and any embedded cluster are closed
    (``_quiet_distributed_logs``).
    """
    from distributed import Client

    from distml.spec import check_scheduler
    from distml.tls import client_security

    with _quiet_distributed_logs():
        address = spec.scheduler or os.environ.get("DISTML_SCHEDULER") or None
        if address:
            if not spec.scheduler:  # --scheduler and cluster.scheduler were checked where they were read
                check_scheduler(address, "DISTML_SCHEDULER")
            security = client_security(spec, address)
            started = time.monotonic()
            _check_handshake(address, security)
            left = max(1.0, CONNECT_TIMEOUT - (time.monotonic() - started))
            try:
                client = Client(address, timeout=left, set_as_default=False, security=security)
            except (OSError, TimeoutError) as exc:
                raise ClusterError(f"cannot reach the Dask scheduler at {address} within "
                                   f"{CONNECT_TIMEOUT}s ({type(exc).__name__})") from None
            with client:
                yield client
            return
        with _local_cluster(spec) as cluster, Client(cluster, set_as_default=False) as client:
            yield client


def _silence_level() -> int:
    """The level below which distributed's log lines stay off the terminal: WARNING with ``DISTML_DEBUG``, else CRITICAL."""
    return logging.WARNING if os.environ.get("DISTML_DEBUG") else logging.CRITICAL


@contextlib.contextmanager
def _quiet_distributed_logs() -> Iterator[None]:
    """Hold distributed's terminal handler (and bokeh's) at ``_silence_level()`` until the client and cluster are closed.

    ``LocalCluster(silence_logs=...)`` holds it only until the cluster's own close returns, and the
    cluster's event loop then runs once more as it stops: a scheduler write to a worker that
    ``_close_quickly`` had killed logged distributed's "Batched Comm Closed" traceback (INFO) on the
    terminal then. ``console.quiet_cluster_logs`` is entered before distributed is imported, and
    distributed's import adds this handler and sets its loggers' levels, so that does not reach it.
    ``DISTML_DEBUG`` leaves distributed's own settings (and the embedded cluster's WARNING).
    """
    if os.environ.get("DISTML_DEBUG"):
        yield
        return
    from distributed.utils import silence_logging_cmgr

    with silence_logging_cmgr(_silence_level()), silence_logging_cmgr(_silence_level(), root="bokeh"):
        yield


def _check_handshake(address: str, security: Security | None = None) -> None:
    """Ask ``address`` who it is, all within ``CONNECT_TIMEOUT``; raise ``ClusterError`` unless a scheduler answers.

    ``Client(address, timeout=…)`` bounds the TCP connect but not the Dask
    handshake that follows, so a listener that accepts and stays silent (or an
    HTTP server) would hang it for ever. The probe runs in its own thread and
    event loop (the caller may already be inside one) and closes its comm.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="distml-probe") as pool:
        found = pool.submit(asyncio.run, _identity(address, security)).result()
    if isinstance(found, BaseException):
        reason = _probe_failure(address, found)
        raise ClusterError(f"cannot reach the Dask scheduler at {address} within {CONNECT_TIMEOUT}s ({reason})")
    kind = found.get("type") if isinstance(found, dict) else None
    if kind != "Scheduler":
        raise ClusterError(f"{address} answers as {kind or 'something'}, not as a Dask scheduler; "
                           "expected the scheduler's address (tcp://host:8786)")


def _probe_failure(address: str, found: BaseException) -> str:
    """Why the identity probe failed, in words: a silent listener, a TLS refusal, or the error's name."""
    import ssl

    from distributed.comm import CommClosedError

    from distml.errors import first_line

    if isinstance(found, asyncio.TimeoutError):
        return "something listens there but did not complete the Dask handshake"
    text = first_line(found)
    if address.startswith("tls://") and isinstance(found, (CommClosedError, ConnectionResetError)):
        return ("the scheduler ended the TLS handshake: it does not accept this client certificate "
                "(is it signed by the cluster's CA?)")
    if isinstance(found, ssl.SSLError) or "SSL" in text or "certificate" in text.lower():
        return f"the TLS handshake failed: {text[:200]}"
    if isinstance(found, CommClosedError) and not address.startswith("tls://"):
        return ("the connection was closed during the Dask handshake; if the scheduler requires TLS, "
                "use tls://host:port with --tls-ca-file, --tls-cert and --tls-key")
    return type(found).__name__


async def _identity(address: str, security: Security | None = None) -> Any:
    """The ``identity`` reply of the server at ``address``, or the exception that stopped us getting it."""
    from distributed.comm import connect as comm_connect

    comm = None

    async def ask() -> Any:
        nonlocal comm
        args = security.get_connection_args("client") if security is not None else {}
        comm = await comm_connect(address, timeout=0.8 * CONNECT_TIMEOUT, **args)  # its OSError first, if nothing listens
        await comm.write({"op": "identity", "reply": True})
        return await comm.read()

    try:
        return await asyncio.wait_for(ask(), CONNECT_TIMEOUT)
    except (OSError, asyncio.TimeoutError, EOFError, ValueError, TypeError) as exc:  # ssl.SSLError is an OSError
        return exc
    finally:
        if comm is not None:
            comm.abort()


def begin_job(spec: ClusterSpec, data_url: str, report: bool | None) -> None:
    """Begin what a job's start waits for, once its input is checked: the embedded workers' fork server
    (``distml.fork_server``, with ``data_url``'s filesystem module) if ``spec`` is the embedded cluster,
    and the client's own imports (``distml.warmup``; ``report``: with evaluation.html's, None: none).

    Both run while this process starts the scheduler; a job that fails before leaves no process behind.
    """
    from distml.warmup import start_client_imports

    if not (spec.scheduler or os.environ.get("DISTML_SCHEDULER")):
        from distml.fork_server import start_fork_server
        from distml.remote import url_protocol
        from distml.warmup import read_modules

        restore = _workers_ignore_sigint()
        try:
            start_fork_server(read_modules(url_protocol(data_url)))
        finally:
            restore()
    if report is not None:
        start_client_imports(report=report)


@contextlib.contextmanager
def _local_cluster(spec: ClusterSpec) -> Iterator[Any]:
    """Start the embedded cluster (its workers spawned with SIGINT ignored: only the client handles Ctrl-C); close it quickly at the end."""
    restore = _workers_ignore_sigint()
    try:
        cluster = _start_local_cluster(spec)
    finally:
        restore()
    try:
        yield cluster
    finally:
        _close_quickly(cluster)


def _start_local_cluster(spec: ClusterSpec) -> Any:
    """The embedded LocalCluster: forked workers (``distml.fork_server``), loopback only, the nanny's memory limit.

    A single-threaded worker is never paused for memory. Pausing stops the next task from starting until
    Dask's memory monitor (every 100 ms) sees the process below 80% of its limit; it cannot shrink the task that
    raised the memory, which has ended by then. On data larger than memory, a lane step's peak crossed 80%
    at nearly every step and each next task waited for the monitor's tick. Spilling and the nanny's restart
    at 95% still apply.
    """
    import dask
    from distributed import LocalCluster

    from distml.fork_server import start_fork_server
    from distml.spec import parse_size
    from distml.tls import embedded_security
    from distml.worker_heap import HeapPad

    n_workers, threads = default_workers()
    threads = spec.threads_per_worker or threads
    memory = parse_size(spec.memory_limit) if spec.memory_limit else "auto"
    security = embedded_security(spec)
    _ignore_busy_port_warning()
    method = "forkserver" if start_fork_server() else "spawn"  # started already, if the caller began early
    settings = {"distributed.worker.multiprocessing-method": method,
                **({"distributed.worker.memory.pause": False} if threads == 1 else {})}
    try:
        with dask.config.set(settings):  # the nannies hand their config to the workers they start
            return LocalCluster(
                n_workers=spec.n_workers or n_workers,
                threads_per_worker=threads,
                memory_limit=memory,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:8787",
                # worker tracebacks and ERROR lines stay off the user's terminal unless DISTML_DEBUG asks for them
                silence_logs=_silence_level(),
                **({"security": security} if security is not None else {}),
                scheduler_kwargs={"worker_ttl": embedded_worker_ttl()},  # a frozen worker is dropped, its tasks rerun
                plugins=(HeapPad(),),  # each worker keeps some freed heap for its next task
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


def _ignore_busy_port_warning() -> None:
    """Keep distributed's four-line "Port 8787 is already in use" warning off the terminal: the dashboard then
    takes another port, and the job's first line prints the link it got."""
    import warnings

    warnings.filterwarnings("ignore", message=r"Port \d+ is already in use", category=UserWarning)


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


WORKERS_WAIT = 10.0  # seconds a job waits for a worker when it finds none (one may be restarting)


def worker_resources(client: Client) -> tuple[int, int, int]:
    """(workers, total threads, smallest worker memory limit in bytes) of the running cluster.

    With no worker at all the job waits a bounded time for one (a nanny may be restarting them), then fails.
    """
    workers = _workers(client)
    if not workers:
        try:
            client.wait_for_workers(1, timeout=WORKERS_WAIT)
        except TimeoutError:
            raise ClusterError(f"the Dask cluster has no workers (none joined within {WORKERS_WAIT:g} s); "
                               "start at least one `dask worker`") from None
        workers = _workers(client)
    threads = sum(w.get("nthreads", 1) for w in workers.values())
    limits = [w.get("memory_limit") or 0 for w in workers.values()]
    return len(workers), threads, min(limits)


def _workers(client: Client) -> dict[str, Any]:
    return client.scheduler_info(n_workers=-1)["workers"] if _takes_n_workers(client) else \
        client.scheduler_info()["workers"]


def memory_headroom(client: Client) -> int:
    """Bytes the busiest worker can still use before Dask pauses it (60% of its limit), measured now.

    A worker's imports alone (pandas, pyarrow, scikit-learn) take a few hundred
    MB, so partition sizes come from what is left, not from the limit.
    """
    workers = _workers(client)
    room = [int(0.6 * w["memory_limit"]) - int(w.get("metrics", {}).get("memory", 0))
            for w in workers.values() if w.get("memory_limit")]
    return max(0, min(room)) if room else 0


def _takes_n_workers(client: Client) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


# --- stalled workers ------------------------------------------------------------

EMBEDDED_WORKER_TTL = "60s"  # Dask's own default (5 minutes) let a frozen worker hold a job for minutes
STALL_AFTER = 15.0  # seconds without a worker heartbeat before the job's log names it (heartbeats come every ~1 s)
WATCH_EVERY = 2.0  # seconds between looks at the scheduler's workers


def embedded_worker_ttl() -> str:
    """``distributed.scheduler.worker-ttl`` for the embedded scheduler: a user's setting, else ``EMBEDDED_WORKER_TTL``.

    A worker that sends no heartbeat for this long (SIGSTOPped, frozen, its host gone) is
    removed by the scheduler, which reruns its tasks on the others: the library's mechanism.
    """
    import dask.config
    import distributed  # noqa: F401 - loads distributed's configuration defaults
    from dask.utils import parse_timedelta

    configured = dask.config.get("distributed.scheduler.worker-ttl", None)
    shipped = "5 minutes"  # distributed's distributed.yaml
    if configured is None or parse_timedelta(configured) != parse_timedelta(shipped):
        return configured
    return EMBEDDED_WORKER_TTL


@contextlib.contextmanager
def watch_workers(client: Client, log: Callable[[str], None]) -> Iterator[None]:
    """While inside, name in ``log`` any worker the scheduler has not heard from for ``STALL_AFTER`` seconds.

    The scheduler removes such a worker after its ``worker-ttl`` and reruns its tasks; until then
    a job only waits, silently. Runs in a daemon thread on the client and reads the workers'
    ``last_seen`` (the scheduler's clock, compared only with itself, so clock skew does not matter).
    """
    import threading

    stop = threading.Event()
    thread = threading.Thread(target=_watch, args=(client, log, stop), name="distml-worker-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=WATCH_EVERY + 5)


def _watch(client: Client, log: Callable[[str], None], stop: Any) -> None:
    from datetime import datetime, timezone

    heard: dict[str, tuple[float, float]] = {}  # worker -> (its last_seen, our clock when that changed)
    reported: set[str] = set()
    ttl = None
    while not stop.wait(WATCH_EVERY):
        try:
            info = client.scheduler_info(n_workers=-1) if _takes_n_workers(client) else client.scheduler_info()
            workers = info["workers"]
        except Exception:  # the client is closing, or the scheduler is gone: the job says so itself
            return
        now = time.time()
        for address, worker in workers.items():
            seen = float(worker.get("last_seen") or 0)
            if heard.get(address, (None,))[0] != seen:
                heard[address] = (seen, now)
                reported.discard(address)
                continue
            silent = now - heard[address][1]
            if silent >= STALL_AFTER and address not in reported:
                reported.add(address)
                ttl = ttl or _scheduler_ttl(client)
                since = datetime.fromtimestamp(heard[address][1], timezone.utc).strftime("%H:%M:%S UTC")
                _say(log, f"warning: worker {address} seems stalled: no heartbeat since {since} ({silent:.0f}s); "
                          + (f"the scheduler removes it after {ttl} (distributed.scheduler.worker-ttl) "
                             "and reruns its tasks on the other workers" if ttl else
                             "the scheduler has no worker-ttl, so the job waits for it"))
        for address in sorted(reported - set(workers)):
            reported.discard(address)
            _say(log, f"worker {address} was removed from the cluster; its tasks run on the other workers")
        heard = {a: v for a, v in heard.items() if a in workers}


def _say(log: Callable[[str], None], message: str) -> None:
    with contextlib.suppress(Exception):  # e.g. JobCancelled from the record's cancel check: the job handles it
        log(message)


def _scheduler_ttl(client: Client) -> str | None:
    """The scheduler's ``worker_ttl`` in words, or ``None`` if it never removes silent workers."""
    try:
        seconds = client.run_on_scheduler(_worker_ttl_of)
    except Exception:  # a scheduler without distml importable
        return "its worker-ttl"
    return f"{seconds:.0f}s" if seconds else None


# --- runs on the scheduler (via run_on_scheduler) ---

def _worker_ttl_of(dask_scheduler: Any) -> float | None:
    return dask_scheduler.worker_ttl
