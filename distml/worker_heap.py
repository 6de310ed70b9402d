"""How much freed heap an embedded worker keeps for its next task: glibc's top pad, set as the worker starts.

Dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` so that freed memory goes back to the OS and
the worker's memory figure stays true. Then every task's block arrays fault fresh zeroed pages in
again, and a pass over re-read data spends much of its time in the kernel. ``mallopt(M_TOP_PAD)`` lets
a worker keep a bounded amount of free heap (at most ``MAX_HEAP_PAD``, and never more than
1/``HEAP_PAD_SHARE`` of its memory limit); everything above it is still trimmed. glibc keeps the pad
per malloc arena, and each thread that allocates may have its own: a worker of several threads may
keep that much per thread. Measured in README (Speed). glibc only: elsewhere nothing changes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

MAX_HEAP_PAD = 64 * 2**20
HEAP_PAD_SHARE = 8
M_TOP_PAD = -2  # glibc's <malloc.h>


def heap_pad(memory_limit: int | None) -> int:
    """The free heap a worker of ``memory_limit`` bytes keeps (no limit: ``MAX_HEAP_PAD``)."""
    if not memory_limit:
        return MAX_HEAP_PAD
    return min(MAX_HEAP_PAD, memory_limit // HEAP_PAD_SHARE)


def set_top_pad(pad: int) -> bool:
    """``mallopt(M_TOP_PAD, pad)`` in this process; False where the C library is not glibc or refuses."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(ctypes.c_int(M_TOP_PAD), ctypes.c_int(pad)))


class HeapPad(WorkerPlugin):
    """Set the worker's top pad from its memory limit when it starts (a restarted worker too)."""

    name = "distml-heap-pad"

    def setup(self, worker: Any) -> None:
        set_top_pad(heap_pad(worker.memory_manager.memory_limit))
