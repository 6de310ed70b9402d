"""Bounded waiting for tests: poll a condition, fail with a message when time runs out."""
from __future__ import annotations

import time


def poll(fn, timeout: float, every: float = 0.1):
    """Call ``fn`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")
