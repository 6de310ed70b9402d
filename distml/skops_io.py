"""skops.io, imported without the scan of every scikit-learn module that its default trust list makes.

At import, skops lists every scikit-learn estimator (``all_estimators``, which imports all of
scikit-learn) to build the types it trusts by default. distml never relies on those defaults: a
load trusts exactly what ``distml.trust`` allows, after its own audit. So the list is left empty,
which only makes skops' own audit report more types as untrusted (each then checked against
distml's allow-list), and a job's save no longer pays for importing all of scikit-learn.
"""
from __future__ import annotations

import sys
import threading
from types import ModuleType

_lock = threading.Lock()


def skops_io() -> ModuleType:
    """``skops.io``, imported on first use with an empty default list of trusted scikit-learn estimators."""
    with _lock:
        if "skops.io" not in sys.modules:
            import sklearn.utils

            real = sklearn.utils.all_estimators
            sklearn.utils.all_estimators = _no_estimators
            try:
                import skops.io
            finally:
                sklearn.utils.all_estimators = real
    import skops.io

    return skops.io

def _no_estimators(*args: object, **kwargs: object) -> list:
    return []
