"""A dataset's schema: each column's kind, and one schema for files whose versions of a column differ."""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from distml.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

NUMERIC, CATEGORICAL, BOOLEAN, OTHER = "numeric", "categorical", "boolean", "other"


def column_kind(arrow_type: pa.DataType) -> str:
    """Classify an Arrow type as numeric, boolean, categorical (strings) or other."""
    import pyarrow as pa

    if pa.types.is_boolean(arrow_type):
        return BOOLEAN
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return NUMERIC
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_dictionary(arrow_type):
        return CATEGORICAL
    return OTHER


def reconcile(urls: list[str], schemas: list[pa.Schema]) -> pa.Schema:
    """One schema for all files: integer and float versions of a column become float64, string and
    dictionary versions strings, all-null versions take the others' type; anything else is reported
    by file and column."""
    import pyarrow as pa

    first = schemas[0]
    problems = []
    for url, schema in zip(urls[1:], schemas[1:]):
        problems += [f"{url}: column '{c}' is missing (present in {urls[0]})" for c in first.names
                     if c not in schema.names]
        problems += [f"{url}: column '{c}' is not in {urls[0]}" for c in schema.names if c not in first.names]
    fields = []
    for name in first.names:
        seen = [(url, s.field(name).type) for url, s in zip(urls, schemas) if name in s.names]
        typed = [(url, t) for url, t in seen if not pa.types.is_null(t)] or seen[:1]
        base_url, base = typed[0]
        for url, t in typed[1:]:
            if column_kind(t) != column_kind(base):
                problems.append(f"{url}: column '{name}' is {t} ({column_kind(t)}), "
                                f"expected {column_kind(base)} like {base} (as in {base_url})")
                break
        fields.append(pa.field(name, _common_type([t for _, t in typed])))
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise DataError("; ".join(problems[:3]) + more)
    return pa.schema(fields)


def _common_type(types: list[pa.DataType]) -> pa.DataType:
    """The type every version of a column is read as (the versions are of one kind)."""
    import pyarrow as pa

    if all(t == types[0] for t in types) and not pa.types.is_decimal(types[0]):
        return types[0]
    if column_kind(types[0]) == NUMERIC:
        if all(pa.types.is_integer(t) for t in types):
            return pa.int64()
        return pa.float64()
    if column_kind(types[0]) == CATEGORICAL:
        return pa.string()
    return types[0]


def data_columns(url: str, schema: pa.Schema) -> pa.Schema:
    """A file's data columns: names must be unique, and the columns pandas stored for a DataFrame's
    index (``__index_level_0__`` from ``df[mask].to_parquet()``, listed in the pandas metadata) are
    left out, as ``pandas.read_parquet`` makes them the index rather than data."""
    import pyarrow as pa

    repeated = [(name, n) for name, n in Counter(schema.names).items() if n > 1]
    if repeated:
        name, n = repeated[0]
        raise DataError(f"{url}: column '{name}' appears {n} times; column names must be unique")
    try:
        index = {c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)}
    except (ValueError, TypeError, AttributeError):  # unreadable pandas metadata: no index columns known
        index = set()
    if not index & set(schema.names):
        return schema
    return pa.schema([f for f in schema if f.name not in index], metadata=schema.metadata)
