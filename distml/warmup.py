"""Imports a job needs later, done while it waits for its cluster.

Once a job's footers are read (the command line) or its cluster is up (any other caller), its client
imports scikit-learn (for the feature plan) and then skops and matplotlib (for the save) in one
background thread, while the cluster starts and the workers run the first passes.
Code that needs a group first calls ``ready(group)``, so no other thread imports those packages at
the same time (concurrent imports of one package can deadlock). After the statistics pass, fresh
workers import what their later tasks need while the client waits for its own imports (the embedded
cluster's workers have them already: ``distml.fork_server``). On a worker,
``warm`` does its imports in a thread of their own, so no task thread's profiled stack gets that deep.
"""
from __future__ import annotations

import importlib
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distributed import Client, Future

# what the client needs, in the order it needs it: the feature plan and the model, then the save
CLIENT_GROUPS: dict[str, tuple[str, ...]] = {
    "features": ("sklearn.pipeline", "sklearn.compose", "sklearn.preprocessing", "sklearn.impute",
                 "sklearn.linear_model", "sklearn.metrics", "distml.encoding", "distml.evaluate"),
    "save": ("distml.skops_io:skops_io",),  # module:function, called (skops without its scikit-learn scan)
}
REPORT_MODULES = ("matplotlib.figure", "matplotlib.backends.backend_svg")  # evaluation.html's charts
# what a worker's tasks import after the statistics pass: the feature transformer and the models
WORKER_MODULES = ("sklearn.compose", "sklearn.preprocessing", "sklearn.impute", "sklearn.linear_model",
                  "distml.blocks", "distml.encoding")
# what every pass's reads import on a worker (pyarrow's to_numpy and to_pandas import pandas), and the
# fsspec filesystem of the data's protocol (``read_modules``)
READ_MODULES = ("pyarrow.parquet", "pyarrow.compute", "pandas")

_done: dict[str, threading.Event] = {}
_warming = threading.Lock()


def start_client_imports(report: bool = True) -> None:
    """Begin importing ``CLIENT_GROUPS`` in order in a daemon thread (once per process); ``ready`` waits for one.

    ``report``: the save also draws evaluation.html's charts, so matplotlib is part of its group.
    Not in a worker (a detached job's driver): its task threads import the same packages unannounced.
    """
    if _done or _in_worker():
        return
    groups = {**CLIENT_GROUPS, "save": CLIENT_GROUPS["save"] + (REPORT_MODULES if report else ())}
    _done.update({group: threading.Event() for group in groups})
    threading.Thread(target=_import_groups, args=(groups,), name="distml-imports", daemon=True).start()


def _in_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


def ready(group: str) -> float:
    """Wait until ``group``'s background imports are done, if they were started; the seconds waited."""
    event = _done.get(group)
    if event is None or event.is_set():
        return 0.0
    started = time.perf_counter()
    event.wait()
    return time.perf_counter() - started


def _import_groups(groups: dict[str, tuple[str, ...]]) -> None:
    try:
        for group, names in groups.items():
            _import_all(names)
            _done[group].set()
    finally:
        for event in _done.values():  # a failed import is left for its real use to raise
            event.set()


def _import_all(names: tuple[str, ...]) -> None:
    for name in names:
        module, _, function = name.partition(":")
        try:
            imported = importlib.import_module(module)
            if function:
                getattr(imported, function)()
        except Exception:  # noqa: BLE001 - the code that uses the module imports it again and says why
            return


def warm(names: tuple[str, ...]) -> None:
    """On a worker: import those of ``names`` not imported yet in a thread of their own, and wait for it.

    A cold pandas or scikit-learn import nests about 100 frames deep, and distributed's profiler keeps each
    sampled task-thread stack as a dict nested as deep (it cuts at 100 frames), which dask's ``sizeof`` cannot
    measure: each performance report or dashboard profile then made the worker log "Sizeof calculation for
    object of type 'dict' failed". The profiler samples task threads only; it sees this one wait, shallow.
    """
    if all(name in sys.modules for name in names):
        return
    with _warming:  # one import thread at a time; a second caller finds the modules imported
        thread = threading.Thread(target=_import_all, args=(names,), name="distml-imports", daemon=True)
        thread.start()
        thread.join()


def read_modules(protocol: str) -> tuple[str, ...]:
    """``READ_MODULES`` and the module of fsspec's filesystem for ``protocol`` (s3fs for ``s3``: as deep as pandas)."""
    from fsspec.registry import known_implementations

    module = known_implementations.get(protocol, {}).get("class", "").rpartition(".")[0]
    return (*READ_MODULES, module) if module else READ_MODULES


def _warm_part(names: tuple[str, ...]) -> None:
    """The warm-up task: ``warm`` on the worker it is pinned to."""
    warm(names)


def warm_workers(client: Client, job_id: str) -> list[Future]:
    """Have every worker import ``WORKER_MODULES`` now (a no-op on workers that have them already).

    The caller waits for the futures (``wait_for``) before its next pass, so no warm-up outlives its job.
    """
    from distml.tasks import task_key

    return [client.submit(_warm_part, WORKER_MODULES, key=task_key("warm", job_id, i), pure=False,
                          workers=[address], allow_other_workers=False)
            for i, address in enumerate(client.scheduler_info(n_workers=-1)["workers"])]


def wait_for(futures: list[Future]) -> None:
    """Wait for the warm-ups; one that failed only means a later task imports the module itself."""
    for future in futures:
        future.exception()  # waits; never raises the task's error
