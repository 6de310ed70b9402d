"""Blockwise prediction over Dask collections: one task per partition or block, with the right ``meta``.

Nothing is computed here; the result is a lazy Dask Series/DataFrame (for a Dask DataFrame) or Array
(for a Dask Array) whose partitions line up with the input's.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

# --- runs on workers ---------------------------------------------------------


def _apply_part(part: pd.DataFrame, pipeline: Pipeline, method: str, columns: list[str],
                labels: list[str] | None) -> Any:
    """``method`` of the Pipeline on one partition of raw columns, indexed as the partition."""
    import pandas as pd

    values = getattr(pipeline, method)(part[columns]) if len(part) else _empty(pipeline, method, len(labels or ()))
    if labels is None:
        return pd.Series(values, index=part.index, name=method)
    return pd.DataFrame(np.asarray(values, dtype=np.float64), index=part.index, columns=labels)


def _apply_block_part(block: np.ndarray, pipeline: Pipeline, method: str, columns: list[str]) -> np.ndarray:
    """``method`` of the Pipeline on one block of a Dask Array (its columns named as at fit time)."""
    import pandas as pd

    if not len(block):
        return _empty(pipeline, method, 0)
    return np.asarray(getattr(pipeline, method)(pd.DataFrame(block, columns=columns)))


def _empty(pipeline: Pipeline, method: str, width: int) -> np.ndarray:
    classes = getattr(pipeline[-1], "classes_", None)
    if method == "predict":
        return np.empty(0, dtype=np.asarray(classes).dtype if classes is not None else np.float64)
    return np.empty((0, width) if width else 0)


# --- runs on the client ------------------------------------------------------


def apply_lazy(pipeline: Pipeline, X: Any, method: str, columns: list[str], meta: tuple[Any, int]) -> Any:
    """The lazy result of ``pipeline.<method>`` on every partition (DataFrame) or row block (Array) of ``X``."""
    import dask.array as da
    import pandas as pd

    dtype, width = meta
    if isinstance(X, da.Array):
        if X.ndim != 2 or X.shape[1] != len(columns):
            from distml.estimators._errors import InvalidData

            raise InvalidData(f"X: a Dask Array of shape {X.shape}; expected (rows, {len(columns)})")
        X = X.rechunk({1: -1})
        if width:
            return X.map_blocks(_apply_block_part, pipeline, method, columns, dtype=dtype,
                                chunks=(X.chunks[0], (width,)), meta=np.empty((0, width), dtype=dtype))
        return X.map_blocks(_apply_block_part, pipeline, method, columns, dtype=dtype, drop_axis=1,
                            meta=np.empty((0,), dtype=dtype))
    missing = [c for c in columns if c not in X.columns]
    if missing:
        from distml.estimators._errors import InvalidData

        raise InvalidData(f"X: feature column '{missing[0]}' not found; columns are {', '.join(map(str, X.columns))}")
    classes = getattr(pipeline[-1], "classes_", None)
    labels = [str(c) for c in classes] if width and classes is not None else None
    if labels is None:
        out_meta: Any = pd.Series(np.empty(0, dtype=dtype), name=method)
    else:
        out_meta = pd.DataFrame({c: np.empty(0, dtype=np.float64) for c in labels})
    return X.map_partitions(_apply_part, pipeline, method, columns, labels, meta=out_meta)
