"""Dask collections as a training source: a ``Dataset`` whose pieces are the partitions of a Dask
DataFrame/Series or Array, each computed inside the worker task that reads it.

A piece carries the culled task graph of its partition (of ``X`` and of ``y``) and the reading task
runs that graph on the worker with Dask's synchronous scheduler, so rows never travel to the client and
every pass recomputes its partitions from the graph, like ``Reader.read`` re-reads Parquet: a collection
larger than the cluster's memory trains as a Parquet dataset does (``blocks.persist`` still holds the
blocks in memory when the statistics pass measured that they fit).

Row draws (the holdout, the families' validation slices, the forest's bootstrap counts) come from
``(seed, row key)``: the row key is the collection's index, or the column named by ``row_key``. An
integer key is used as it is, any other key through pandas' fixed-key hash. The draws are therefore
independent of the number and order of the partitions as long as the key identifies rows: the index of
``dd.from_pandas``, ``dd.from_dask_array`` and ``set_index`` does; the index ``dd.read_parquet`` gives
restarts in every file, so name a column that identifies rows there (rows with equal keys get equal draws).
A job with ``data.row_key`` naming the same column draws through the same ``distml.draws.key_draws``, so
it holds out, validates, bootstraps and chunks the same rows as the collection.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.data import Dataset
from distml.draws import key_draws
from distml.errors import DataError
from distml.schemas import BOOLEAN, CATEGORICAL, NUMERIC, OTHER

if TYPE_CHECKING:
    import pandas as pd

# --- runs on workers ---------------------------------------------------------


@dataclass(frozen=True)
class FramePiece:
    """One partition of the collection: its culled graph and the keys of its ``X`` and ``y`` parts."""

    graph: dict[Any, Any]
    x_key: Any
    y_key: Any
    number: int  # the partition's position, for messages

    def frame(self, columns: tuple[str, ...]) -> pd.DataFrame:
        """Compute the partition here (synchronously, on the worker): ``X``'s columns and the target
        (named ``columns[-1]``)."""
        import dask
        import pandas as pd

        X, y = dask.get(self.graph, [self.x_key, self.y_key])
        X = pd.DataFrame(X) if not isinstance(X, pd.DataFrame) else X
        y = y.iloc[:, 0] if isinstance(y, pd.DataFrame) else pd.Series(np.asarray(y).ravel(), index=X.index) \
            if not isinstance(y, pd.Series) else y
        if len(X) != len(y):
            raise DataError(f"partition {self.number}: X has {len(X):,} rows but y has {len(y):,}; "
                            "expected X and y partitioned alike (y taken from the same collection as X)")
        frame = X.copy(deep=False)
        frame[columns[-1]] = y.to_numpy()
        return frame


@dataclass(frozen=True)
class FrameReader:
    """``Reader``'s counterpart for a Dask collection: computes a partition and draws each row's uniform."""

    columns: tuple[str, ...]  # features..., target
    seed: int
    row_key: str | None = None  # a column identifying rows; None: the index
    schema: Any = None  # kept for the ``Reader`` interface; dtypes come from the collection
    verify: bool = False  # kept for the ``Reader`` interface; there are no Parquet pages to check

    def read(self, piece: FramePiece) -> tuple[pd.DataFrame, np.ndarray]:
        """The partition's columns and each row's uniform draw in [0, 1)."""
        frame = piece.frame(self.columns)
        keys = frame.index if self.row_key is None else frame[self.row_key]
        nulls = int(keys.isna().sum())
        if nulls:
            where = "the index" if self.row_key is None else f"row_key column '{self.row_key}'"
            raise DataError(f"partition {piece.number}: {where} has {nulls:,} null values; "
                            "expected a key for every row")
        return frame[list(self.columns)], key_draws(self.seed, keys)


# --- runs on the client ------------------------------------------------------


def _kind(dtype: Any) -> tuple[str, str]:
    """(kind, Arrow-style type name) of a pandas dtype, as ``schemas.column_kind`` classifies Parquet's."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(dtype):
        return BOOLEAN, "bool"
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype):
        name = str(dtype).lower()
        return NUMERIC, "double" if name == "float64" else "float" if name == "float32" else name
    if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype) or dtype == object:  # noqa: E721 - a dtype, not a type
        return CATEGORICAL, "string"
    return OTHER, str(dtype)


@dataclass
class FrameDataset(Dataset):
    """A ``Dataset`` over a Dask collection's partitions (see the module docstring for the row key)."""

    n_columns: int = 0

    @property
    def reader(self) -> FrameReader:  # type: ignore[override]
        return FrameReader((*self.features, self.target), self.seed, self.row_key)

    def partition(self, target_bytes: int, width: int = 0) -> list[Any]:
        """The collection's own partitions are the pieces; the size asked for is not applied."""
        return self.pieces

    def cut(self, target_bytes: int, width: int = 0) -> list[Any]:
        return self.pieces


def as_collections(X: Any, y: Any) -> tuple[Any, Any, list[str]]:
    """(Dask DataFrame, Dask Series, column names) from Dask, pandas or numpy ``X`` and ``y``.

    In-memory inputs become one partition; a Dask Array gets columns ``x0, x1, …`` and the index
    ``dd.from_dask_array`` gives it (global row numbers).
    """
    import dask.array as da
    import dask.dataframe as dd
    import pandas as pd

    if isinstance(X, np.ndarray) or (not isinstance(X, (dd.DataFrame, da.Array, pd.DataFrame)) and X is not None):
        X = np.asarray(X)
        X = pd.DataFrame(X, columns=[f"x{j}" for j in range(X.shape[1])])
    if isinstance(X, pd.DataFrame):
        y = pd.Series(np.asarray(y), index=X.index, name="y") if not isinstance(y, pd.Series) else y
        X, y = dd.from_pandas(X, npartitions=1, sort=False), dd.from_pandas(y, npartitions=1, sort=False)
    elif isinstance(X, da.Array):
        if X.ndim != 2:
            raise DataError(f"X: a Dask Array of {X.ndim} dimensions; expected 2 (rows, features)")
        if np.isnan(X.shape[0]):
            X = X.compute_chunk_sizes()  # the chunks' lengths only
        if isinstance(y, da.Array):
            y = dd.from_dask_array(y.ravel().rechunk((X.chunks[0],)))
        X = dd.from_dask_array(X.rechunk({1: -1}), columns=[f"x{j}" for j in range(X.shape[1])])
    if isinstance(y, da.Array):
        raise DataError("y: a Dask Array with a Dask DataFrame X; expected a Dask Series from the same collection")
    if isinstance(y, (np.ndarray, list, pd.Series)):
        raise DataError("y: in memory with a Dask X; expected a Dask Series (or Array) partitioned like X")
    if X.npartitions != y.npartitions:
        raise DataError(f"X has {X.npartitions} partitions but y has {y.npartitions}; "
                        "expected y taken from the same collection as X")
    return X, y, [str(c) for c in X.columns]


def open_collection(X: Any, y: Any, *, target: str, seed: int, row_key: str | None = None,
                    missing: str = "error", holdout: float = 0.0) -> FrameDataset:
    """A ``FrameDataset`` over ``X`` (features) and ``y`` (target): the schema from the collection's
    ``meta``, one piece per partition with its culled graph; nothing is computed."""
    X, y, columns = as_collections(X, y)
    from distributed import futures_of

    if futures_of(X) or futures_of(y):
        raise DataError("X or y is persisted in cluster memory (.persist()); pass the collection as it was "
                        "before persist: each task computes its partition on a worker, and the blocks are "
                        "kept in cluster memory when they fit")
    meta = X._meta
    kinds, schema = {}, {}
    for name, dtype in zip(columns, meta.dtypes):
        kinds[name], schema[name] = _kind(dtype)
    y_meta = y._meta.iloc[:, 0] if hasattr(y._meta, "columns") else y._meta
    kinds[target], schema[target] = _kind(y_meta.dtype)
    bad = [c for c in columns if kinds[c] == OTHER]
    if bad:
        raise DataError(f"X: columns {', '.join(repr(c) for c in bad)} have an unsupported dtype "
                        f"({schema[bad[0]]}); expected numbers, strings, categories or booleans")
    if row_key is not None and row_key not in columns:
        raise DataError(f"row_key: column '{row_key}' not found; columns are {', '.join(columns)}")
    features = [c for c in columns if c != row_key]
    if target in features:
        raise DataError(f"X: has a column named '{target}', the name the target is given; rename it")
    pieces = []
    for i in range(X.npartitions):
        xi, yi = X.partitions[i].optimize(), y.partitions[i].optimize()
        graph = {**dict(xi.__dask_graph__()), **dict(yi.__dask_graph__())}
        pieces.append(FramePiece(graph, xi.__dask_keys__()[0], yi.__dask_keys__()[0], i))
    label = f"dask {type(X).__name__} ({X.npartitions} partitions)"
    return FrameDataset(label, "dask", {}, [], schema, kinds, target, features, holdout, seed, pieces,
                        missing=missing, row_key=row_key, n_columns=len(columns))
