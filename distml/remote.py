"""Filesystems for data and stores with bounded waits: every object-store call times out and retries a few times.

botocore's defaults (a 60 s read timeout, up to five attempts) times s3fs's own
five retries let a store that stops answering hold a job for many minutes; these
bounds make such a store fail with its error in about two minutes at
most. A user's own ``config_kwargs`` win over them.
"""
from __future__ import annotations

from typing import Any

S3_PROTOCOLS = ("s3", "s3a")
S3_CONFIG = {"connect_timeout": 5, "read_timeout": 20, "retries": {"max_attempts": 2, "mode": "standard"}}
S3_RETRIES = 2  # s3fs's own retries of a failed call (its default is 5)


def bounded_options(protocol: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with timeouts and bounded retries added for an object store (others unchanged)."""
    if protocol not in S3_PROTOCOLS:
        return options
    config = {**S3_CONFIG, **(options.get("config_kwargs") or {})}
    return {**options, "config_kwargs": config}


def url_protocol(url: str) -> str:
    """The fsspec protocol a URL names (``file`` for a plain path)."""
    return url.split("://", 1)[0] if "://" in url else "file"


def open_url(url: str, options: dict[str, Any]) -> tuple[Any, str]:
    """``fsspec.core.url_to_fs`` with bounded waits: the filesystem and the path in it."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **bounded_options(url_protocol(url), options))
    _bound_retries(fs)
    return fs, path


def filesystem(protocol: str, options: dict[str, Any]) -> Any:
    """``fsspec.filesystem`` with bounded waits (as the workers open the data)."""
    import fsspec

    fs = fsspec.filesystem(protocol, **bounded_options(protocol, options))
    _bound_retries(fs)
    return fs


def _bound_retries(fs: Any) -> None:
    if set((fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol) & set(S3_PROTOCOLS):
        fs.retries = S3_RETRIES  # a class attribute in s3fs; no constructor argument sets it
