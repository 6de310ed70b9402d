"""The job file's data, cluster and output sections (pydantic, unknown keys rejected) and sizes.

Every check of these sections that needs neither data nor a cluster happens
here. This module imports neither the model families nor scikit-learn nor
Dask, so anything that only reads a section (``data``, ``cluster``) stays
light; the whole job file, with its model section, is ``distml.jobfile``.
"""
from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from distml.errors import SpecError

NAME_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"
_SIZE = re.compile(r"^\s*(\d+(\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
# scheme://host:port with a host name, an IPv4 address or a bracketed IPv6 address, and nothing after the port
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_ADDRESS = re.compile(r"^(tcp|ws|tls)://(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[^/]*))?$")
_LIKE = "like tcp://host:8786"


def parse_size(value: str | int) -> int:
    """Parse ``2GiB``, ``500MB`` or a byte count into bytes."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"expected a size like 2GiB or 500MB; got {value!r}")
    number, unit = float(match.group(1)), (match.group(3) or "b").lower()
    base = 1024 if "i" in unit else 1000
    power = {"b": 0, "k": 1, "m": 2, "g": 3, "t": 4}[unit[0]]
    return int(number * base**power)


def scheduler_problem(address: str) -> str | None:
    """Why ``address`` cannot name a remote Dask scheduler distml can reach, or ``None`` if it can.

    One check for ``--scheduler``, ``cluster.scheduler`` and ``DISTML_SCHEDULER``,
    made before any connection, so that a typo is one line rather than a
    timeout. ``tcp://``, ``ws://`` and ``tls://`` are taken (``tls://`` with the
    certificates of ``--tls-*``, ``cluster.tls_*`` or Dask's configuration):
    ``inproc://`` reaches only a scheduler in this same process.
    """
    scheme = _SCHEME.match(address)
    if not scheme:
        return f"must be a Dask scheduler address {_LIKE}"
    if scheme.group(1) == "wss":
        return "wss:// is not supported; use tls://host:port for an encrypted connection"
    if scheme.group(1) == "inproc":
        return "inproc:// only reaches a scheduler inside this same process; use tcp://host:port"
    if scheme.group(1) not in ("tcp", "ws", "tls"):
        return f"must use tcp://, tls:// or ws:// ({scheme.group(1)}:// is not a Dask scheduler protocol), {_LIKE}"
    match = _ADDRESS.match(address)
    if not match:
        return f"must be a Dask scheduler address {_LIKE}"
    port = match.group("port")
    if not port:
        return f"must name the scheduler's port, {_LIKE}"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return "port must be a number from 1 to 65535"
    return None


def check_scheduler(address: str, where: str) -> str:
    """``address`` unchanged if it is usable; otherwise a ``SpecError`` naming ``where`` it came from."""
    problem = scheduler_problem(address)
    if problem:
        raise SpecError(f"{where}: {problem}; got {address[:200]!r}")
    return address


def tls_file_problem(path: str) -> str | None:
    """Why ``path`` cannot be read as a certificate or key file, or ``None`` if it can."""
    if not os.path.exists(path):
        return "no such file"
    if os.path.isdir(path):
        return "is a folder, expected a PEM file"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None


TLS_FLAGS = {"tls_ca_file": "--tls-ca-file", "tls_cert": "--tls-cert", "tls_key": "--tls-key"}


class Strict(BaseModel):
    """A section of the job file: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid")


class DataSpec(Strict):
    path: str = Field(min_length=1)
    storage_options: dict[str, Any] = Field(default_factory=dict)
    target: str = Field(min_length=1)
    features: list[str] | None = None
    row_key: str | None = Field(None, min_length=1, description="a column identifying rows: draws come from its "
                                "values, not from file and row number (as an estimator's row_key)")
    holdout: float = Field(0.2, ge=0.0, lt=1.0)
    cv: int | None = Field(None, ge=2, le=20, description="K-fold cross-validation of the training rows")
    partition_size: str | None = None
    missing: Literal["error", "drop", "impute"] = "error"
    impute_strategy: Literal["mean", "median"] = "mean"
    max_categories: int = Field(1000, ge=1, le=100_000)
    rare_categories: Literal["error", "other"] = "error"

    @field_validator("impute_strategy")
    @classmethod
    def _strategy_needs_impute(cls, value: str, info: ValidationInfo) -> str:
        missing = info.data.get("missing", "error")
        if missing != "impute" and value != "mean":  # the default may appear in a dumped job file
            raise ValueError(f"is only used with missing: impute (missing is {missing!r})")
        return value

    @field_validator("features")
    @classmethod
    def _features_unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("must list at least one column (or be left out for all but the target)")
            dupes = sorted({v for v in value if value.count(v) > 1})
            if dupes:
                raise ValueError(f"lists {', '.join(dupes)} more than once")
        return value

    @field_validator("row_key")
    @classmethod
    def _key_not_a_feature(cls, value: str | None, info: ValidationInfo) -> str | None:
        """The row key only keys the draws: it is neither the target nor a feature."""
        if value is not None and value == info.data.get("target"):
            raise ValueError("is the target column; expected a column identifying rows")
        if value is not None and value in (info.data.get("features") or ()):
            raise ValueError("is listed in data.features; the row key is not a feature")
        return value

    @field_validator("partition_size")
    @classmethod
    def _size_ok(cls, value: str | None) -> str | None:
        if value is not None and parse_size(value) < 1024 * 1024:
            raise ValueError("must be at least 1MiB")
        return value


class ClusterSpec(Strict):
    scheduler: str | None = None
    n_workers: int | None = Field(None, ge=1, le=256)
    threads_per_worker: int | None = Field(None, ge=1, le=256)
    memory_limit: str | None = None
    tls: bool = False  # the embedded cluster talks TLS (with the tls_* files, or a temporary certificate)
    tls_ca_file: str | None = Field(None, min_length=1)
    tls_cert: str | None = Field(None, min_length=1)
    tls_key: str | None = Field(None, min_length=1)

    @field_validator("tls_ca_file", "tls_cert", "tls_key")
    @classmethod
    def _tls_file_ok(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A certificate or key file must exist and be readable: named by its key path in a job file, else by its flag."""
        problem = tls_file_problem(value) if value is not None else None
        if problem and not (info.context or {}).get("job_file"):
            raise SpecError(f"{TLS_FLAGS[info.field_name]}: {value[:200]!r} {problem}")
        if problem:
            raise ValueError(problem)  # the job file's message adds the value
        return value

    @field_validator("scheduler")
    @classmethod
    def _address_ok(cls, value: str | None, info: ValidationInfo) -> str | None:
        """In a job file (validated with a ``job_file`` context) a field error named by its key path;
        built directly, as ``predict``/``evaluate`` do from their flags, a ``SpecError`` naming ``--scheduler``."""
        problem = scheduler_problem(value) if value is not None else None
        if problem and not (info.context or {}).get("job_file"):
            raise SpecError(f"--scheduler: {problem}; got {value[:200]!r}")
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("memory_limit")
    @classmethod
    def _memory_ok(cls, value: str | None) -> str | None:
        if value is not None and parse_size(value) < 64 * 1024 * 1024:
            raise ValueError("must be at least 64MiB")
        return value


class OutputSpec(Strict):
    store: str = "./models"
    storage_options: dict[str, Any] = Field(default_factory=dict)
    signing_key_file: str | None = Field(None, min_length=1, description="file holding the manifest signing key")
    evaluation_report: bool = Field(True, description="write evaluation.html (charts) beside the model")
    onnx: bool = Field(False, description="also write model.onnx (needs the onnx extra: skl2onnx)")

    report: bool = Field(True, description="save the job's Dask performance report (report.html) with the model")


class PermutationSpec(Strict):
    repeats: int = Field(5, ge=1, le=100, description="permutations of each input column")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="default: the job's seed")


class EvaluationSpec(Strict):
    permutation_importance: PermutationSpec | None = None

    @field_validator("permutation_importance", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> Any:
        """``true`` means the default repeats and seed; ``false`` means none."""
        if value is True:
            return {}
        return None if value is False else value
