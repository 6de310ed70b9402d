"""The job file: its schema (pydantic, unknown keys rejected) and loading it.

Every check that needs neither data nor a cluster happens here, so a bad job
file is refused before anything starts.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, create_model, field_validator

from distml.errors import SpecError
from distml.models import FAMILIES

NAME_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"
_SIZE = re.compile(r"^\s*(\d+(\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)


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


class Strict(BaseModel):
    """A section of the job file: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid")


class DataSpec(Strict):
    path: str = Field(min_length=1)
    storage_options: dict[str, Any] = Field(default_factory=dict)
    target: str = Field(min_length=1)
    features: list[str] | None = None
    holdout: float = Field(0.2, ge=0.0, lt=1.0)
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

    @field_validator("scheduler")
    @classmethod
    def _address_ok(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(tcp|tls|inproc|ws|wss)://[^\s/]+(:\d+)?$", value):
            raise ValueError("must be a scheduler address like tcp://host:8786")
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


def _model_union() -> Any:
    """One model section per family, discriminated by ``kind``: errors point at ``model.params.x``."""
    sections = [
        create_model(
            f"{kind.capitalize()}Model",
            __base__=Strict,
            kind=(Literal[kind], ...),
            params=(module.Params, Field(default_factory=module.Params)),
        )
        for kind, module in FAMILIES.items()
    ]
    return Annotated[Union[tuple(sections)], Field(discriminator="kind")]  # noqa: UP007


class JobSpec(Strict):
    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    data: DataSpec
    model: _model_union()  # type: ignore[valid-type]
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)

    def with_overrides(self, **settings: Any) -> JobSpec:
        """Apply command-line flags (they win over the job file); ``None`` means not given."""
        output = {k: settings.pop(k) for k in ("store", "signing_key_file") if settings.get(k)}
        cluster = {k: v for k, v in settings.items() if k not in ("store", "signing_key_file") and v is not None}
        update: dict[str, Any] = {}
        if cluster:
            update["cluster"] = ClusterSpec.model_validate({**self.cluster.model_dump(), **cluster})
        if output:
            update["output"] = self.output.model_copy(update=output)
        return self.model_copy(update=update)


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] == "model" and parts[1] in FAMILIES:
        del parts[1]  # the discriminator's tag, not a key the user wrote
    return ".".join(parts)


def _sentence(error: dict[str, Any]) -> str:
    kind, path = error["type"], _location(error["loc"])
    if kind == "extra_forbidden":
        return f"unknown key '{path}'"
    if kind == "missing":
        return f"{path} is required"
    if kind == "union_tag_invalid":
        return f"{path}.kind must be one of {', '.join(FAMILIES)}; got {error['input'].get('kind')!r}"
    if kind == "union_tag_not_found":
        return f"{path}.kind is required (one of {', '.join(FAMILIES)})"
    msg = error["msg"].removeprefix("Value error, ")
    msg = msg.replace("Input should be", "must be").replace("String should", "must")
    return f"{path}: {msg}; got {error['input']!r}"


def parse_job(raw: Any, source: str) -> JobSpec:
    """Validate a parsed job document; every mistake is named by its key path."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: expected a mapping of job settings; got {type(raw).__name__}")
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError("\n".join(f"{source}: {_sentence(e)}" for e in exc.errors())) from None


def load_job(path: str | os.PathLike[str]) -> JobSpec:
    """Read and validate a YAML job file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the job file ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise SpecError(f"{path}: invalid YAML{where}: {problem}") from None
    return parse_job(raw, str(path))
