"""The whole job file: the model section (one per registered family), ``JobSpec`` and loading YAML.

Kept apart from ``distml.spec`` because the model section needs the family
registry (and so scikit-learn); validation errors become one sentence per key.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, create_model

from distml.errors import SpecError
from distml.models import FAMILIES
from distml.spec import NAME_PATTERN, ClusterSpec, DataSpec, OutputSpec, Strict


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
