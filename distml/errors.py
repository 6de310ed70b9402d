"""One error family for everything a user can get wrong or a job can hit.

Each error carries its exit status and a one-line message; only ``cli.py``
turns it into output.
"""
from __future__ import annotations


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, cut to ``limit``: enough for a one-line error."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else ""


def io_reason(exc: BaseException) -> str:
    """Why a read or write failed, in words a user can act on (a full disk says so)."""
    import errno

    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "the disk is full"
    return f"{type(exc).__name__}: {first_line(exc)}"


class DistmlError(Exception):
    """Base error: a one-line message and the exit status the CLI uses."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class SpecError(DistmlError):
    """The job file or a command-line setting is invalid (found before training)."""

    exit_code = 2


class DataError(DistmlError):
    """The dataset cannot be used as the job file describes it."""

    exit_code = 2


class ClusterError(DistmlError):
    """The Dask cluster cannot be reached or started."""

    exit_code = 2


class StoreError(DistmlError):
    """The artifact store cannot be read or written, or an artifact fails its checks."""

    exit_code = 2


class JobFailed(DistmlError):
    """A job started and then failed on the cluster."""

    exit_code = 1


class JobCancelled(JobFailed):
    """A job was cancelled (``distml jobs cancel`` or an interrupt) before it finished."""

    exit_code = 1
