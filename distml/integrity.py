"""What a worker checks of the bytes it reads: values within the footer's statistics.

A writer computes a row group's min/max from the values it wrote, so a value
outside them means a data page was damaged after writing.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distml.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa


def check_footer_bounds(url: str, metadata: Any, row_groups: tuple[int, ...], table: pa.Table) -> None:
    """Refuse values outside the [min, max] a file's footer records for their row group and column.

    ``table`` holds ``row_groups`` read whole, in order. A writer computes the
    footer's statistics from the values it wrote, so a value outside them means
    the page was damaged after writing (its bytes decode to other numbers). Only
    integer and float columns are compared (exact statistics, no truncation); a
    row group whose floats hold NaN is skipped, as some older writers computed
    its statistics wrongly (PARQUET-1222). Runs on the workers, on the footer
    the read already opened; numpy's min/max cost a few percent of the read.
    """
    import pyarrow as pa

    names = {metadata.schema.column(j).path: j for j in range(metadata.num_columns)}
    checked = [c for c in table.column_names if c in names and (
        pa.types.is_integer(table.schema.field(c).type) or pa.types.is_floating(table.schema.field(c).type))
        and not pa.types.is_float16(table.schema.field(c).type)]
    start = 0
    for group in row_groups:
        meta = metadata.row_group(group)
        for name in checked:
            stats = meta.column(names[name]).statistics
            if stats is None or not stats.has_min_max or meta.num_rows == 0:
                continue
            found = _min_max(table.column(name).slice(start, meta.num_rows))
            if found is not None and (found[0] < stats.min or found[1] > stats.max):
                raise DataError(f"{url}: row group {group}, column '{name}' holds values from {found[0]:.6g} to "
                                f"{found[1]:.6g}, outside the footer's {stats.min:.6g} to {stats.max:.6g}; "
                                "a data page is corrupt (expected values within the footer's statistics)")
        start += meta.num_rows


def _min_max(column: pa.ChunkedArray) -> tuple[Any, Any] | None:
    """The smallest and largest value of a numeric column (None when it holds only nulls, or a NaN)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.null_count:
        found = pc.min_max(column)  # skips nulls (and NaN, unless only NaN)
        low, high = found["min"].as_py(), found["max"].as_py()
        if low is None or (pa.types.is_floating(column.type) and pc.any(pc.is_nan(column)).as_py()):
            return None
        return low, high
    values = [chunk.to_numpy(zero_copy_only=False) for chunk in column.chunks if len(chunk)]
    if not values:
        return None
    low, high = min(v.min() for v in values).item(), max(v.max() for v in values).item()
    return None if low != low or high != high else (low, high)  # numpy's min/max propagate NaN
