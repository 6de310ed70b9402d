"""The whole job file: the model section (one per registered family), ``JobSpec`` and loading YAML.

Kept apart from ``distml.spec`` because the model section needs the family
registry (and so scikit-learn); validation errors become one sentence per key.
"""
from __future__ import annotations

import os
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from distml.errors import SpecError
from distml.models import FAMILIES
from distml.search_space import SearchSpec, check_search
from distml.spec import (
    NAME_PATTERN,
    ClusterSpec,
    DataSpec,
    EvaluationSpec,
    OutputSpec,
    Strict,
    check_scheduler,
)

MAX_BYTES = 1024 * 1024  # a job file is a few hundred bytes; anything past 1 MiB is a mistake
MAX_DEPTH = 100  # nesting levels (a job file uses about 5); deeper would exhaust Python's recursion
MAX_VALUES = 100_000  # values the document may hold once its aliases are expanded
MAX_ERRORS = 10  # validation problems listed; the rest are counted
_SHOWN = reprlib.Repr()  # bounded work and length whatever the value (an alias-expanded list is enormous)
_SHOWN.maxlevel, _SHOWN.maxdict, _SHOWN.maxlist, _SHOWN.maxtuple, _SHOWN.maxset = 2, 4, 4, 4, 4
_SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 60, 60, 40


def _model_union() -> Any:
    """One model section per family, discriminated by ``kind``: errors point at ``model.params.x``."""
    sections = [
        create_model(
            f"{kind.capitalize()}Model",
            __base__=Strict,
            kind=(Literal[kind], ...),
            params=(module.Params, Field(default_factory=module.Params)),
            warm_start=(str | None, Field(None, min_length=1, description="a saved model version to continue")),
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
    search: SearchSpec | None = None
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)

    @field_validator("evaluation")
    @classmethod
    def _needs_holdout(cls, value: EvaluationSpec, info: ValidationInfo) -> EvaluationSpec:
        data = info.data.get("data")
        if value.permutation_importance is not None and data is not None and data.holdout == 0:
            raise ValueError("permutation_importance is computed on the holdout; data.holdout is 0 "
                             "(set data.holdout > 0)")
        return value

    @model_validator(mode="after")
    def _warm_start_family(self) -> JobSpec:
        if self.model.warm_start is not None:
            from distml.warm import check_family

            check_family(self.model.kind, self.model.params)  # a SpecError: one line naming model.warm_start
        return self

    def with_overrides(self, **settings: Any) -> JobSpec:
        """Apply command-line flags (they win over the job file); ``None`` means not given."""
        output = {k: settings.pop(k) for k in ("store", "signing_key_file") if settings.get(k)}
        cluster = {k: v for k, v in settings.items() if k not in ("store", "signing_key_file") and v is not None}
        update: dict[str, Any] = {}
        if cluster.get("scheduler"):
            check_scheduler(cluster["scheduler"], "--scheduler")
        if cluster:
            update["cluster"] = ClusterSpec.model_validate({**self.cluster.model_dump(), **cluster})
        if output:
            update["output"] = self.output.model_copy(update=output)
        return self.model_copy(update=update)


def _shown(value: Any, limit: int = 80) -> str:
    """``repr`` of a value the user wrote, cut short: a huge (or alias-expanded) value never fills the message."""
    text = _SHOWN.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# how pydantic names the members of a union (``int | float``, ``Literal[...] | float``) in an error's location
_UNION_MEMBER = re.compile(r"^(literal\[.*\]|int|float|str|bool|none|(dict|list|function-\w+)\[.*\])$", re.DOTALL)


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p)[:60] for p in loc if not (isinstance(p, str) and _UNION_MEMBER.match(p))]
    if len(parts) > 1 and parts[0] == "model" and parts[1] in FAMILIES:
        del parts[1]  # the discriminator's tag, not a key the user wrote
    return ".".join(parts)


def _one_per_key(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One error per key: a union field's members each fail, but the user wrote one value.

    A non-finite number is the reason when one member says so; otherwise the
    members' expectations are joined (``must be 'sqrt' or 'log2' or …``). A
    literal alternative is dropped when the value was a mapping whose entries
    have their own errors.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for error in errors:
        groups.setdefault(_location(error["loc"]), []).append(error)
    chosen = []
    for path, group in groups.items():
        if all(e["type"] == "literal_error" for e in group) and any(q.startswith(path + ".") for q in groups):
            continue  # e.g. class_weight: {0: .inf} is not meant as the word 'balanced'; its entry's error says why
        finite = [e for e in group if e["type"] == "finite_number"]
        if finite or len(group) == 1:
            chosen.append((finite or group)[0])
            continue
        msgs = dict.fromkeys(e["msg"].split(",")[0].replace("Input should be ", "") for e in group)
        chosen.append({**group[0], "type": "union", "msg": "Input should be " + " or ".join(msgs)})
    return chosen


def _sentence(error: dict[str, Any]) -> str:
    kind, path = error["type"], _location(error["loc"])
    if kind == "extra_forbidden":
        return f"unknown key '{path}'"
    if kind == "missing":
        return f"{path} is required"
    if kind == "union_tag_invalid":
        return f"{path}.kind must be one of {', '.join(FAMILIES)}; got {_shown(error['input'].get('kind'))}"
    if kind == "union_tag_not_found":
        return f"{path}.kind is required (one of {', '.join(FAMILIES)})"
    msg = error["msg"].removeprefix("Value error, ")
    msg = msg.replace("Input should be", "must be").replace("String should", "must")
    return f"{path}: {msg}; got {_shown(error['input'])}"


def parse_job(raw: Any, source: str) -> JobSpec:
    """Validate a parsed job document; every mistake is named by its key path."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: expected a mapping of job settings; got {type(raw).__name__}")
    try:
        spec = JobSpec.model_validate(raw, context={"job_file": source})
    except ValidationError as exc:
        errors = _one_per_key(exc.errors())
        lines = [f"{source}: {_sentence(e)}" for e in errors[:MAX_ERRORS]]
        if len(errors) > MAX_ERRORS:
            lines.append(f"{source}: ... and {len(errors) - MAX_ERRORS} more problems")
        raise SpecError("\n".join(lines)) from None
    if spec.search is not None:
        check_search(spec.search, spec.model.kind, spec.model.params, FAMILIES[spec.model.kind].Params,
                     spec.seed, source)
    return spec


class _Refused(Exception):
    """A job file the loader will not build: duplicate keys, too deep, or aliases that expand too far."""


class _JobLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing what a job file never needs and an attacker might send.

    Duplicate keys are refused (YAML would silently keep the last), nesting is
    bounded (the composer recurses, so 20,000 brackets would be a
    RecursionError) and so is the number of values the aliases expand to
    (a billion-laughs document is small on disk but enormous once expanded).
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels at line {self.peek_event().start_mark.line + 1}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                line = key.start_mark.line + 1
                if (key.tag, key.value) in seen:
                    raise _Refused(f"duplicate key {_shown(key.value)} at line {line} "
                                   f"(first at line {seen[key.tag, key.value]})")
                seen[key.tag, key.value] = line
        return node

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            _expanded(node, 1, {}, set())
        return node


def _expanded(node: Any, depth: int, sizes: dict[int, tuple[int, int]], active: set[int]) -> tuple[int, int]:
    """(values, height) of ``node`` with every alias expanded; refuses cycles and too many or too deep values."""
    if id(node) in sizes:
        count, height = sizes[id(node)]
    elif id(node) in active:
        raise _Refused(f"a YAML alias refers to itself at line {node.start_mark.line + 1}")
    else:
        active.add(id(node))
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        count, height = 1, 1
        for child in children:
            c, h = _expanded(child, depth + 1, sizes, active)
            count, height = count + c, max(height, h + 1)
            if count > MAX_VALUES:
                raise _Refused(f"YAML aliases expand it to more than {MAX_VALUES:,} values "
                               f"(at line {node.start_mark.line + 1}); expected a plain job file")
        active.discard(id(node))
        sizes[id(node)] = count, height
    if depth + height - 1 > MAX_DEPTH:
        raise _Refused(f"nested deeper than {MAX_DEPTH} levels once its aliases are expanded "
                       f"(at line {node.start_mark.line + 1})")
    return count, height


def _read_text(path: Path) -> str:
    """The job file's text: at most ``MAX_BYTES``, UTF-8 (the offending byte and its offset named)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the job file ({exc.strerror})") from None
    if len(data) > MAX_BYTES:
        raise SpecError(f"{path}: the job file is larger than 1 MiB; expected a small YAML file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def load_job(path: str | os.PathLike[str]) -> JobSpec:
    """Read and validate a YAML job file (bounded in size, depth and alias expansion; duplicate keys refused)."""
    path = Path(path)
    text = _read_text(path)
    try:
        raw = yaml.load(text, Loader=_JobLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as exc:
        raise SpecError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise SpecError(f"{path}: invalid YAML{where}: {problem}") from None
    return parse_job(raw, str(path))
