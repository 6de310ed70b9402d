"""Opening a Parquet dataset through fsspec: files, schema checks, partitions, the holdout split.

Everything on the client here reads Parquet footers only; rows are read inside
worker tasks by ``read_piece``.
"""
from __future__ import annotations

import hashlib
import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.errors import DataError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from distml.spec import DataSpec

NUMERIC, CATEGORICAL, BOOLEAN, OTHER = "numeric", "categorical", "boolean", "other"
_GLOB = set("*?[")


@dataclass(frozen=True)
class FileInfo:
    """One Parquet file as its footer describes it."""

    path: str  # full URL-less path for the filesystem
    key: str  # path relative to the dataset root: names the file in the holdout hash
    num_rows: int
    size: int
    row_group_rows: tuple[int, ...]


@dataclass(frozen=True)
class Piece:
    """One partition: a run of rows of one file, read by a single task."""

    path: str
    key: str
    row_groups: tuple[int, ...]
    skip: int  # rows to drop from the start of the first row group
    first_row: int  # row number in the file of the piece's first row
    num_rows: int


@dataclass(frozen=True)
class Reader:
    """Reads pieces on the workers and tags every row with its stable split draw."""

    protocol: str
    storage_options: dict[str, Any]
    columns: tuple[str, ...]
    seed: int

    def read(self, piece: Piece) -> tuple[pd.DataFrame, np.ndarray]:
        """Read a piece's columns and each row's uniform draw in [0, 1)."""
        import fsspec
        import pyarrow.parquet as pq

        fs = fsspec.filesystem(self.protocol, **self.storage_options)
        with fs.open(piece.path, "rb") as f:
            table = pq.ParquetFile(f).read_row_groups(list(piece.row_groups), columns=list(self.columns))
        table = table.slice(piece.skip, piece.num_rows)
        rows = np.arange(piece.first_row, piece.first_row + piece.num_rows, dtype=np.uint64)
        return table.to_pandas(), row_draws(self.seed, piece.key, rows)


def row_draws(seed: int, file_key: str, rows: np.ndarray) -> np.ndarray:
    """A uniform draw per row from (seed, file, row number): the split never depends on partitioning."""
    digest = hashlib.blake2b(f"{seed}:{file_key}".encode(), digest_size=8).digest()
    x = rows.astype(np.uint64) + np.uint64(int.from_bytes(digest, "little"))
    with np.errstate(over="ignore"):  # splitmix64: wrap-around is the point
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


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


@dataclass
class Dataset:
    """A Parquet dataset known from its footers: files, schema, rows, and how to read it."""

    url: str
    protocol: str
    storage_options: dict[str, Any]
    files: list[FileInfo]
    schema: dict[str, str]  # column -> Arrow type name, as in the first file
    kinds: dict[str, str]  # column -> numeric | boolean | categorical | other
    target: str
    features: list[str]
    holdout: float
    seed: int
    pieces: list[Piece] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return sum(f.num_rows for f in self.files)

    @property
    def reader(self) -> Reader:
        return Reader(self.protocol, self.storage_options, (*self.features, self.target), self.seed)

    def partition(self, target_bytes: int) -> list[Piece]:
        """Cut the files into pieces of about ``target_bytes`` in memory (8 bytes a value)."""
        row_bytes = 8 * (len(self.features) + 1)
        max_rows = max(1000, target_bytes // row_bytes)
        self.pieces = [p for f in self.files for p in _file_pieces(f, max_rows)]
        return self.pieces

    def frame(self) -> Any:
        """The dataset as a lazy Dask dataframe, one partition per piece."""
        import dask.dataframe as dd

        if not self.pieces:
            raise ValueError("call partition() first")
        return dd.from_map(_frame_part, self.pieces, reader=self.reader, label="distml-read")


def _frame_part(piece: Piece, reader: Reader) -> pd.DataFrame:
    frame, _ = reader.read(piece)
    return frame


def _file_pieces(info: FileInfo, max_rows: int) -> list[Piece]:
    """Group small row groups together and cut large ones, keeping file order."""
    pieces: list[Piece] = []
    group: list[int] = []
    group_rows = start = 0
    offset = 0
    for i, n in enumerate(info.row_group_rows):
        if n > max_rows:
            if group:
                pieces.append(Piece(info.path, info.key, tuple(group), 0, start, group_rows))
                group, group_rows = [], 0
            for skip in range(0, n, max_rows):
                pieces.append(Piece(info.path, info.key, (i,), skip, offset + skip, min(max_rows, n - skip)))
        else:
            if group and group_rows + n > max_rows:
                pieces.append(Piece(info.path, info.key, tuple(group), 0, start, group_rows))
                group, group_rows = [], 0
            if not group:
                start = offset
            group.append(i)
            group_rows += n
        offset += n
    if group:
        pieces.append(Piece(info.path, info.key, tuple(group), 0, start, group_rows))
    return [p for p in pieces if p.num_rows > 0]


def _list_files(fs: Any, root: str, url: str) -> list[str]:
    if _GLOB & set(root):
        paths = sorted(p for p in fs.glob(root) if not fs.isdir(p))
    elif fs.isdir(root):
        paths = sorted(
            p for p in fs.find(root)
            if not any(part.startswith(("_", ".")) for part in posixpath.relpath(p, root).split("/"))
        )
    elif fs.isfile(root):
        paths = [root]
    else:
        raise DataError(f"{url}: no such file or folder")
    if not paths:
        raise DataError(f"{url}: no Parquet files found")
    return paths


def _read_footer(fs: Any, path: str, key: str, protocol: str) -> tuple[FileInfo, Any]:
    import pyarrow.parquet as pq

    try:
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
    except Exception as exc:  # pyarrow and fsspec raise many types for a bad file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{_url(protocol, path)}: not a readable Parquet file ({reason})") from None
    rg_rows = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    size = int(fs.size(path) or 0)
    return FileInfo(path, key, meta.num_rows, size, rg_rows), meta.schema.to_arrow_schema()


def _root_folder(fs: Any, root: str) -> str:
    """The folder file keys are relative to, so a copied dataset keeps its holdout."""
    if _GLOB & set(root):
        return posixpath.dirname(re.split(r"[*?\[]", root, maxsplit=1)[0])
    return root if fs.isdir(root) else posixpath.dirname(root)


def _url(protocol: str, path: str) -> str:
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def open_dataset(spec: DataSpec, seed: int) -> Dataset:
    """Find the files, read their footers, and check the schema against the job's columns."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(spec.path, **spec.storage_options)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        paths = _list_files(fs, root, spec.path)
    except DataError:
        raise
    except Exception as exc:  # credentials, endpoint, permissions: name the URL, not the secret
        raise DataError(f"{spec.path}: cannot list the dataset ({type(exc).__name__}: {_short(exc)})") from None
    base = _root_folder(fs, root)
    keys = [posixpath.relpath(p, base) for p in paths]
    with ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
        footers = list(pool.map(lambda pk: _read_footer(fs, pk[0], pk[1], protocol), zip(paths, keys)))
    files = [info for info, _ in footers]
    first_schema = footers[0][1]
    schema = {name: str(first_schema.field(name).type) for name in first_schema.names}
    kinds = {name: column_kind(first_schema.field(name).type) for name in first_schema.names}
    first_url = _url(protocol, paths[0])
    for (info, arrow_schema) in footers[1:]:
        _check_drift(_url(protocol, info.path), arrow_schema, kinds, first_url)
    features = _check_columns(spec, kinds, first_url)
    if sum(f.num_rows for f in files) == 0:
        raise DataError(f"{spec.path}: the dataset has no rows")
    return Dataset(spec.path, protocol, dict(spec.storage_options), files, schema, kinds,
                   spec.target, features, spec.holdout, seed)


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:200]


def _check_drift(url: str, arrow_schema: Any, kinds: dict[str, str], first_url: str) -> None:
    names = set(arrow_schema.names)
    missing = [c for c in kinds if c not in names]
    if missing:
        raise DataError(f"{url}: column '{missing[0]}' is missing (present in {first_url})")
    extra = [c for c in arrow_schema.names if c not in kinds]
    if extra:
        raise DataError(f"{url}: column '{extra[0]}' is not in {first_url}")
    for name in arrow_schema.names:
        kind = column_kind(arrow_schema.field(name).type)
        if kind != kinds[name]:
            raise DataError(
                f"{url}: column '{name}' is {arrow_schema.field(name).type} ({kind}), "
                f"expected {kinds[name]} (as in {first_url})"
            )


def _check_columns(spec: DataSpec, kinds: dict[str, str], first_url: str) -> list[str]:
    if spec.target not in kinds:
        raise DataError(f"{spec.path}: target column '{spec.target}' not found; columns are {', '.join(kinds)}")
    features = spec.features if spec.features is not None else [c for c in kinds if c != spec.target]
    missing = [c for c in features if c not in kinds]
    if missing:
        raise DataError(f"{spec.path}: feature column '{missing[0]}' not found; columns are {', '.join(kinds)}")
    if spec.target in features:
        raise DataError(f"{spec.path}: data.features lists the target column '{spec.target}'")
    if not features:
        raise DataError(f"{spec.path}: no feature columns besides the target '{spec.target}'")
    bad = [c for c in features if kinds[c] not in (NUMERIC, BOOLEAN)]
    if bad:
        listed = ", ".join(f"'{c}' ({kinds[c]})" for c in bad)
        raise DataError(f"{first_url}: feature columns {listed} are not numeric; expected numeric or boolean columns")
    if kinds[spec.target] == OTHER:
        raise DataError(f"{first_url}: target column '{spec.target}' has an unsupported type")
    return list(features)
