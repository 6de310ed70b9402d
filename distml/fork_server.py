"""Where the embedded cluster's workers come from: forks of one process that has imported what they need.

A spawned worker starts a fresh Python and imports distributed, pyarrow, pandas and scikit-learn itself,
each worker again, while the job's first tasks wait for it. The embedded cluster's workers are forked
instead from multiprocessing's fork server: one clean single-threaded process (no scheduler, no client
threads, so forking it is safe) that imports those modules once, started as soon as the job's input
is checked, so the imports run beside the submitting process's own start-up. A worker the
nanny restarts later is spawned as usual (the start method is set for the cluster's start only).
"""
from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.forkserver
import os
import sys
from collections.abc import Iterator

from distml.warmup import READ_MODULES, WORKER_MODULES

# what every embedded worker imports sooner or later; the last one makes the server's own exit quick
PRELOAD = ("distributed", "distributed.worker", *READ_MODULES, "fsspec.implementations.local", *WORKER_MODULES,
           "distml.data", "distml.stats")
LAST_PRELOAD = "distml._fork_server_exit"
# distributed.yaml's ``distributed.nanny.pre-spawn-environ``: what a spawned worker's environment gets
PRE_SPAWN_ENVIRON = {"MALLOC_TRIM_THRESHOLD_": 65536, "OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1,
                     "OPENBLAS_NUM_THREADS": 1}


def start_fork_server(modules: tuple[str, ...] = ()) -> bool:
    """Start the fork server with ``PRELOAD`` and ``modules`` (once per process); False where there is none.

    Returns at once: the server imports in the background, and the first fork waits for it. Dask's
    ``distributed.nanny.pre-spawn-environ`` (single-threaded BLAS, malloc trimming) and the nanny's
    fixed hash seed go into the environment first, as a fork never starts a new interpreter. Call it
    with SIGINT ignored (``distml.cluster``): the workers keep the handlers the server started with.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    import dask.config

    # distributed's defaults join dask's config when distributed is imported: not yet, so they are here too
    asked = dask.config.get("distributed.nanny.pre-spawn-environ", None) or {}
    environ = {k: str(v) for k, v in {**PRE_SPAWN_ENVIRON, **asked}.items() if v is not None}
    if environ.get("PYTHONHASHSEED") in (None, "0"):
        environ["PYTHONHASHSEED"] = "6640"  # as the nanny sets it, for the same hashing on every worker
    os.environ.update(environ)  # as the nanny does before it spawns a worker
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(dict.fromkeys((*PRELOAD, *modules, LAST_PRELOAD))))
    try:
        with _import_path_of_this_process():
            multiprocessing.forkserver.ensure_running()
    except OSError:
        return False
    import distributed.utils  # after the server's start: this import is most of distributed

    # distributed's first forkserver context would import its optional packages (pandas…) here, in the
    # submitting process, to preload them: this server already has its own.
    distributed.utils._forkserver_preload_set = True
    return True


@contextlib.contextmanager
def _import_path_of_this_process() -> Iterator[None]:
    """While the server starts: its ``sys.path`` is this process's, so it preloads the modules this process imports.

    Python 3.11's fork server ignores the ``sys_path`` it is handed and starts as ``python -c``, whose path
    begins with the current folder: a ``distml/`` folder (or a ``pandas.py``) there is what it would preload,
    and its forks keep what it preloaded. So the server starts with this process's path as ``PYTHONPATH``
    and ``PYTHONSAFEPATH`` set (nothing prepended); both are restored at once.
    """
    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", "PYTHONSAFEPATH")}
    os.environ["PYTHONPATH"] = os.pathsep.join(entry or os.getcwd() for entry in sys.path)
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
