"""Opening a Parquet dataset through fsspec: files, schema checks, partitions, the holdout split.

Rows draw their uniform from (seed, file, row number), or from (seed, key) when ``data.row_key`` names
a column: then exactly as a Dask collection keyed by that column does (``distml.frames``).

Everything on the client here reads Parquet footers only; rows are read inside
worker tasks by ``Reader.read``.
"""
from __future__ import annotations

import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.draws import key_draws, row_draws
from distml.errors import DataError, first_line
from distml.remote import filesystem, open_url
from distml.schemas import CATEGORICAL, OTHER, column_kind, data_columns, reconcile

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from distml.spec import DataSpec

_GLOB = set("*?[")
ROW_GROUP_SLACK = 1.25  # a row group up to this many times a partition's rows is read whole, not cut


@dataclass(frozen=True)
class FileInfo:
    """One Parquet file as its footer describes it."""

    path: str  # full URL-less path for the filesystem
    key: str  # path relative to the dataset root: names the file in the holdout hash
    num_rows: int
    size: int
    row_group_rows: tuple[int, ...]
    column_bytes: tuple[tuple[str, int], ...] = ()  # uncompressed bytes per column, from the footer
    modified: str | None = None  # the file's modification time (ISO 8601, UTC), as its filesystem lists it
    etag: str | None = None  # an object store's ETag, if it has one
    footer_sha256: str = ""  # digest of the footer's metadata: what the model was trained on, row groups and all


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
class PieceGroup:
    """Several small pieces (usually whole small files) read by one task, so tiny files do not make tiny tasks."""

    members: tuple[Piece, ...]

    @property
    def num_rows(self) -> int:
        return sum(p.num_rows for p in self.members)


@dataclass(frozen=True)
class Reader:
    """Reads pieces on the workers and tags every row with its stable split draw.

    A failure to read a file (a damaged page, a file deleted or rewritten since its footer was read)
    is a ``DataError`` naming the file, not a failed task. With ``verify`` (the statistics pass) page
    checksums are checked and values compared with the footer (``distml.integrity.check_footer_bounds``).
    With ``row_key`` that column is read too, for the draws only: it is not in the frame returned.
    """

    protocol: str
    storage_options: dict[str, Any]
    columns: tuple[str, ...]
    seed: int
    schema: Any = None  # a pyarrow schema every file is cast to (int/float and all-null columns reconciled)
    verify: bool = False
    row_key: str | None = None  # data.row_key: the column the draws come from (None: file and row number)

    def read(self, piece: Piece | PieceGroup) -> tuple[pd.DataFrame, np.ndarray]:
        """Read a piece's columns and each row's uniform draw in [0, 1)."""
        import pyarrow as pa

        from distml.warmup import read_modules, warm

        warm(read_modules(self.protocol))  # a first read on a fresh worker imports them outside its task thread

        fs = filesystem(self.protocol, self.storage_options)
        members = piece.members if isinstance(piece, PieceGroup) else (piece,)
        tables = [self._checked_table(fs, m) for m in members]
        if self.row_key is None:
            draws = [row_draws(self.seed, m.key, np.arange(m.first_row, m.first_row + m.num_rows, dtype=np.uint64))
                     for m in members]
        else:
            for member, table in zip(members, tables):
                self._check_keys(member, table)
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        frame = table.to_pandas()
        del table, tables
        # Arrow's allocator keeps freed pages; Dask counts them as the worker's memory and pauses a
        # small worker that is only holding garbage. Hand them back after every read.
        pa.default_memory_pool().release_unused()
        if self.row_key is not None:
            keys = frame.pop(self.row_key)  # out of the frame: the key is never a feature
            return frame, key_draws(self.seed, keys)
        return frame, np.concatenate(draws)

    def _check_keys(self, piece: Piece, table: pa.Table) -> None:
        """Every row of a piece needs its ``data.row_key``: a null has no draw (the collection path refuses it too)."""
        nulls = table.column(self.row_key).null_count
        if nulls:
            raise DataError(f"{_url(self.protocol, piece.path)}: data.row_key column '{self.row_key}' has "
                            f"{nulls:,} null values in {_groups(piece)}; expected a key for every row")

    @property
    def read_columns(self) -> tuple[str, ...]:
        """The columns read from each file: the job's, and the row key's."""
        return self.columns if self.row_key is None else (*self.columns, self.row_key)

    def _checked_table(self, fs: Any, piece: Piece) -> pa.Table:
        """``_table``, with any reading error turned into one line naming the file and its row groups."""
        try:
            return self._table(fs, piece)
        except (DataError, MemoryError):
            raise
        except Exception as exc:  # fsspec, the OS and pyarrow raise many types for a file that changed
            raise DataError(f"{_url(self.protocol, piece.path)}: cannot read {_groups(piece)} "
                            f"({type(exc).__name__}: {first_line(exc)}); expected the Parquet file its footer "
                            "described when the job started") from None

    def _table(self, fs: Any, piece: Piece) -> pa.Table:
        import pyarrow.parquet as pq

        with fs.open(piece.path, "rb") as f:
            parquet = pq.ParquetFile(f, page_checksum_verification=self.verify)
            table = parquet.read_row_groups(list(piece.row_groups), columns=list(self.read_columns))
            if self.verify:
                from distml.integrity import check_footer_bounds

                check_footer_bounds(_url(self.protocol, piece.path), parquet.metadata, piece.row_groups, table)
        if table.num_rows < piece.skip + piece.num_rows:
            verb = "holds" if len(piece.row_groups) == 1 else "hold"
            raise DataError(f"{_url(self.protocol, piece.path)}: {_groups(piece)} {verb} {table.num_rows:,} rows, "
                            f"expected {piece.skip + piece.num_rows:,} as the footer said when the job started; "
                            "the file changed during the job")
        table = table.slice(piece.skip, piece.num_rows)
        if self.schema is not None:
            import pyarrow as pa

            wanted = pa.schema([self.schema.field(c) for c in self.read_columns])
            if not table.schema.equals(wanted):
                table = table.select(list(self.read_columns)).cast(wanted)
        return table


def _groups(piece: Piece) -> str:
    """``row group 3`` or ``row groups 0, 1``: where in its file a piece's rows are."""
    return ("row group " if len(piece.row_groups) == 1 else "row groups ") + ", ".join(map(str, piece.row_groups))


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
    pieces: list[Piece | PieceGroup] = field(default_factory=list)
    missing: str = "error"  # error | drop | impute
    impute_strategy: str = "mean"
    max_categories: int = 1000
    rare_categories: str = "error"  # error | other
    arrow_schema: Any = None  # the reconciled pyarrow schema the reader casts every file to
    target_bytes: int = 0  # the partition size last asked for
    row_key: str | None = None  # the column row draws come from (data.row_key); None: file and row number

    @property
    def num_rows(self) -> int:
        return sum(f.num_rows for f in self.files)

    @property
    def reader(self) -> Reader:
        return Reader(self.protocol, self.storage_options, (*self.features, self.target), self.seed,
                      self.arrow_schema, row_key=self.row_key)

    def row_bytes(self, width: int = 0) -> int:
        """Bytes a row takes in memory: the larger of its Parquet (uncompressed) size, 8 bytes a column
        with about 64 for a string, and 8 bytes per value of a transformed row ``width`` values wide."""
        used = {*self.features, self.target, *([self.row_key] if self.row_key else [])}
        per_column = sum(64 if self.kinds.get(c) == CATEGORICAL else 8 for c in used)
        rows = max(1, self.num_rows)
        parquet = sum(b for f in self.files for c, b in f.column_bytes if c in used) // rows
        return max(per_column, parquet, 8 * (width + 2))

    def partition(self, target_bytes: int, width: int = 0) -> list[Piece | PieceGroup]:
        """Cut the dataset into its pieces (``cut``) and keep them, with the size asked for, as its partitions."""
        self.target_bytes = target_bytes
        self.pieces = self.cut(target_bytes, width)
        return self.pieces

    def cut(self, target_bytes: int, width: int = 0) -> list[Piece | PieceGroup]:
        """Pieces of about ``target_bytes`` in memory (a whole row group up to ``ROW_GROUP_SLACK`` times
        more): large row groups are split, small row groups and small files combined (``width``: values
        per row after the transformer). Changes nothing."""
        max_rows = max(1000, target_bytes // self.row_bytes(width))
        return _combine([p for f in self.files for p in _file_pieces(f, max_rows)], max_rows)


def _file_pieces(info: FileInfo, max_rows: int) -> list[Piece]:
    """Group small row groups together and cut large ones into equal pieces, keeping file order.

    A row group up to ``ROW_GROUP_SLACK`` times ``max_rows`` stays whole: Parquet decodes a row group
    from its start, so every piece cut from one reads all of it, and a row group a little over the
    size asked for would be read twice a pass (and its tail would be a task of its own).
    """
    pieces: list[Piece] = []
    group: list[int] = []
    group_rows = start = 0
    offset = 0
    for i, n in enumerate(info.row_group_rows):
        if n > max_rows * ROW_GROUP_SLACK:
            if group:
                pieces.append(Piece(info.path, info.key, tuple(group), 0, start, group_rows))
                group, group_rows = [], 0
            cuts = -(-n // max_rows)
            bounds = [n * k // cuts for k in range(cuts + 1)]
            pieces.extend(Piece(info.path, info.key, (i,), a, offset + a, b - a) for a, b in zip(bounds, bounds[1:]))
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


def _combine(pieces: list[Piece], max_rows: int) -> list[Piece | PieceGroup]:
    """Group consecutive pieces whose rows together stay under ``max_rows`` (small files, file tails)."""
    out: list[Piece | PieceGroup] = []
    group: list[Piece] = []
    rows = 0
    for piece in pieces:
        if group and rows + piece.num_rows > max_rows:
            out.append(group[0] if len(group) == 1 else PieceGroup(tuple(group)))
            group, rows = [], 0
        group.append(piece)
        rows += piece.num_rows
    if group:
        out.append(group[0] if len(group) == 1 else PieceGroup(tuple(group)))
    return out


def list_parquet_files(fs: Any, root: str, url: str) -> list[str]:
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
        reason = first_line(exc) or type(exc).__name__
        raise DataError(f"{_url(protocol, path)}: not a readable Parquet file ({reason})") from None
    schema = data_columns(_url(protocol, path), meta.schema.to_arrow_schema())
    rg_rows = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    stat = fs.info(path)  # the one stat fs.size would have made; it also has the time and ETag
    size = int(stat.get("size") or 0)
    column_bytes: dict[str, int] = {}
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        for j in range(group.num_columns):
            name = group.column(j).path_in_schema
            column_bytes[name] = column_bytes.get(name, 0) + int(group.column(j).total_uncompressed_size)
    info = FileInfo(path, key, meta.num_rows, size, rg_rows, tuple(column_bytes.items()),
                    modified=file_modified(stat), etag=file_etag(stat), footer_sha256=footer_digest(meta))
    return info, schema


def file_modified(stat: dict[str, Any]) -> str | None:
    """A file's modification time from ``fs.info`` (local ``mtime``, S3 ``LastModified``), as ISO 8601 UTC."""
    from datetime import datetime, timezone

    value = stat.get("mtime", stat.get("LastModified", stat.get("last_modified")))
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc).isoformat()
    return str(value) if value else None


def file_etag(stat: dict[str, Any]) -> str | None:
    value = stat.get("ETag") or stat.get("etag")
    return str(value).strip('"') if value else None


def footer_digest(meta: Any) -> str:
    """SHA-256 of the footer as pyarrow serialises the metadata it already read: no read of the file."""
    import hashlib

    import pyarrow as pa

    sink = pa.BufferOutputStream()
    meta.write_metadata_file(sink)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def root_folder(fs: Any, root: str) -> str:
    """The folder file keys are relative to, so a copied dataset keeps its holdout."""
    if _GLOB & set(root):
        return posixpath.dirname(re.split(r"[*?\[]", root, maxsplit=1)[0])
    return root if fs.isdir(root) else posixpath.dirname(root)


def _url(protocol: str, path: str) -> str:
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def open_dataset(spec: DataSpec, seed: int) -> Dataset:
    """Find the files, read their footers, and check the schema against the job's columns."""
    try:
        fs, root = open_url(spec.path, spec.storage_options)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        paths = list_parquet_files(fs, root, spec.path)
    except DataError:
        raise
    except Exception as exc:  # credentials, endpoint, permissions: name the URL, not the secret
        raise DataError(f"{spec.path}: cannot list the dataset ({type(exc).__name__}: {first_line(exc)})") from None
    base = root_folder(fs, root)
    keys = [posixpath.relpath(p, base) for p in paths]
    with ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
        footers = list(pool.map(lambda pk: _read_footer(fs, pk[0], pk[1], protocol), zip(paths, keys)))
    files = [info for info, _ in footers]
    urls = [_url(protocol, info.path) for info in files]
    arrow_schema = reconcile(urls, [schema for _, schema in footers])
    schema = {f.name: str(f.type) for f in arrow_schema}
    kinds = {f.name: column_kind(f.type) for f in arrow_schema}
    features = _check_columns(spec, kinds, urls[0])
    if sum(f.num_rows for f in files) == 0:
        raise DataError(f"{spec.path}: the dataset has no rows")
    return Dataset(spec.path, protocol, dict(spec.storage_options), files, schema, kinds,
                   spec.target, features, spec.holdout, seed, missing=spec.missing,
                   impute_strategy=spec.impute_strategy, max_categories=spec.max_categories,
                   rare_categories=spec.rare_categories, arrow_schema=arrow_schema, row_key=spec.row_key)


def _check_columns(spec: DataSpec, kinds: dict[str, str], first_url: str) -> list[str]:
    if spec.target not in kinds:
        raise DataError(f"{spec.path}: target column '{spec.target}' not found; columns are {', '.join(kinds)}")
    if spec.row_key is not None and spec.row_key not in kinds:
        raise DataError(f"{spec.path}: data.row_key column '{spec.row_key}' not found; columns are {', '.join(kinds)}")
    features = spec.features if spec.features is not None else [c for c in kinds if c not in (spec.target,
                                                                                               spec.row_key)]
    missing = [c for c in features if c not in kinds]
    if missing:
        raise DataError(f"{spec.path}: feature column '{missing[0]}' not found; columns are {', '.join(kinds)}")
    if spec.target in features:
        raise DataError(f"{spec.path}: data.features lists the target column '{spec.target}'")
    if not features:
        raise DataError(f"{spec.path}: no feature columns besides the target '{spec.target}'")
    bad = [c for c in features if kinds[c] == OTHER]
    if bad:
        listed = ", ".join(f"'{c}'" for c in bad)
        raise DataError(f"{first_url}: feature columns {listed} have an unsupported type (or hold only nulls); "
                        "expected numbers, strings, categories or booleans")
    if kinds[spec.target] == OTHER:
        raise DataError(f"{first_url}: target column '{spec.target}' has an unsupported type")
    return list(features)
