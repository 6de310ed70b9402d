"""Data lineage: what the manifest records of each input file, and whether those files changed since.

At training the client already stats each file and reads its footer
(``distml.data._read_footer``); the manifest keeps the size, modification time,
ETag and a footer digest from that, at no extra read. ``distml models show``
stats the files again and reads a footer only where the size is unchanged but
the time or ETag is not, to say whether the content the model saw is still there.
"""
from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from distml.errors import first_line
from distml.remote import open_url

if TYPE_CHECKING:
    from distml.data import Dataset, FileInfo

MAX_LINES = 10  # changed files listed one a line; the rest are counted


def file_lineage(dataset: Dataset, info: FileInfo) -> dict[str, Any]:
    """One input file as the manifest records it."""
    from distml.data import _url

    return {"path": info.key, "uri": _url(dataset.protocol, info.path), "rows": info.num_rows, "bytes": info.size,
            "modified": info.modified, "etag": info.etag, "footer_sha256": info.footer_sha256}


def data_changes(manifest: dict[str, Any], options: dict[str, Any]) -> list[str]:
    """Lines saying whether the model's training files changed since: one summary line first, then at most
    ``MAX_LINES`` lines naming a changed, missing or new file."""
    data = manifest.get("data") if isinstance(manifest.get("data"), dict) else {}
    files = [f for f in data.get("files") or [] if isinstance(f, dict)]
    if not files or not all(f.get("uri") and f.get("footer_sha256") for f in files):
        return ["data: this manifest records no file stats (saved before distml recorded lineage); cannot tell"]
    with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
        problems = [p for p in pool.map(lambda f: _file_change(f, options), files) if p]
    problems += _new_files(str(data.get("url") or ""), files, options)
    if not problems:
        return [f"data: unchanged since training ({len(files)} files: same size, time and footer)"]
    counts = {kind: sum(p.endswith(kind) or f": {kind}" in p for p in problems)
              for kind in ("changed", "missing", "new", "cannot check")}
    told = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    shown = problems[:MAX_LINES]
    more = [f"  ({len(problems) - MAX_LINES} more)"] if len(problems) > MAX_LINES else []
    return [f"data: changed since training ({told}; {len(files)} files trained on)",
            *(f"  {line}" for line in shown), *more]


def _file_change(recorded: dict[str, Any], options: dict[str, Any]) -> str | None:
    """How one file differs from its record, or ``None`` if it does not."""
    from distml.data import file_etag, file_modified, footer_digest

    uri = recorded["uri"]
    try:
        fs, path = open_url(uri, options)
        stat = fs.info(path)
    except FileNotFoundError:
        return f"{uri}: missing"
    except Exception as exc:  # credentials, an unreachable store: say so for this file, check the others
        return f"{uri}: cannot check ({type(exc).__name__}: {first_line(exc)})"
    size, modified, etag = int(stat.get("size") or 0), file_modified(stat), file_etag(stat)
    if size != recorded.get("bytes"):
        return f"{uri}: changed (size {recorded.get('bytes')} -> {size} bytes)"
    if etag == recorded.get("etag") and modified == recorded.get("modified"):
        return None
    what = f"ETag {recorded.get('etag')} -> {etag}" if etag != recorded.get("etag") else \
        f"modified {recorded.get('modified')} -> {modified}"
    try:
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as f:
            same = footer_digest(pq.ParquetFile(f).metadata) == recorded.get("footer_sha256")
    except Exception:  # no longer a readable Parquet file: changed, whatever it holds
        same = False
    return f"{uri}: changed ({what}; footer {'unchanged' if same else 'differs'})"


def _new_files(url: str, files: list[dict[str, Any]], options: dict[str, Any]) -> list[str]:
    """Parquet files under the dataset's URL that the model was not trained on."""
    from distml.data import _url, list_parquet_files, root_folder

    try:
        fs, root = open_url(url, options)
        listed = list_parquet_files(fs, root, url)
        base = root_folder(fs, root)
    except Exception:  # the whole dataset gone: each file is reported missing already
        return []
    known = {f.get("path") for f in files}
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return [f"{_url(protocol, p)}: new (not in the training data)" for p in listed
            if posixpath.relpath(p, base) not in known]
