"""The errors the estimators raise for bad input: distml's own, and the ``ValueError`` scikit-learn expects."""
from __future__ import annotations

from distml.errors import DataError, SpecError


class InvalidData(DataError, ValueError):
    """Bad data given to ``fit``/``predict``: a ``DataError`` that is also the ``ValueError`` scikit-learn expects."""


class InvalidParams(SpecError, ValueError):
    """A parameter the family's ``Params`` refuses (named, with what was expected)."""
