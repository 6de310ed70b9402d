"""The job file's ``search:`` section and the candidate configurations it describes.

A grid is the product of every parameter's values in the order written; a
random search draws ``n_iter`` configurations with its own seed (log-uniform
for ``log: true`` ranges, integers for integer parameters). Every candidate is
validated against the family's ``Params`` before any data is read, so a wrong
name, type or value is one line naming ``search.params.<name>``.
"""
from __future__ import annotations

import itertools
import math
import types
import typing
from typing import Any, Literal, Union

import numpy as np
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from distml.errors import SpecError
from distml.spec import Strict

MAX_CANDIDATES = 1000  # a search is for tens of candidates; thousands of full fits are a mistake

HIGHER_IS_BETTER = {"accuracy": True, "precision": True, "recall": True, "f1": True, "roc_auc": True,
                    "log_loss": False, "r2": True, "rmse": False, "mae": False}


class Range(Strict):
    """``{low, high, log, num}``: a grid takes ``num`` points, a random search draws inside."""

    low: float
    high: float
    log: bool = False
    num: int | None = Field(None, ge=1, le=MAX_CANDIDATES)

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low must be below high (low {self.low}, high {self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (low {self.low})")
        return self


class Halving(Strict):
    """Successive halving: each round keeps the best 1/``factor`` on ``factor`` times more rows."""

    factor: int = Field(3, ge=2, le=10)
    min_rows: int = Field(500, ge=10, description="training rows the first round gets at least")


class SearchSpec(Strict):
    method: Literal["grid", "random"] = "grid"
    params: dict[str, Union[list[Any], Range]]  # noqa: UP007 - checked by _values
    n_iter: int | None = Field(None, ge=1, le=MAX_CANDIDATES, description="random search: candidates drawn")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="random search: default the job's seed")
    cv: int | None = Field(None, ge=2, le=20, description="folds; default data.cv, else a validation split")
    validation: float = Field(0.2, gt=0.0, lt=1.0, description="share of training rows scored without cv")
    scoring: str | None = None
    halving: Halving | None = None
    max_concurrent: int = Field(4, ge=1, le=64, description="candidates trained at once")

    @field_validator("params", mode="before")
    @classmethod
    def _values(cls, value: Any, info: ValidationInfo) -> dict[str, list[Any] | Range]:
        """Each parameter: a non-empty list of values, or a range (a grid's range needs ``num``)."""
        if not isinstance(value, dict) or not value:
            raise ValueError("must map at least one model parameter to a list of values or a range "
                             "{low, high, log, num}")
        out: dict[str, list[Any] | Range] = {}
        for name, values in value.items():
            if isinstance(values, list):
                if not values:
                    raise ValueError(f"{name} has an empty list of values")
                out[name] = values
            elif isinstance(values, dict):
                try:
                    out[name] = Range.model_validate(values)
                except ValidationError as exc:
                    error = exc.errors()[0]
                    where = ".".join(str(p) for p in error["loc"])
                    raise ValueError(f"{name}{'.' + where if where else ''}: "
                                     f"{error['msg'].removeprefix('Value error, ')}") from None
                if info.data.get("method", "grid") == "grid" and out[name].num is None:
                    raise ValueError(f"{name}: a grid needs num (how many values) in a range")
            else:
                raise ValueError(f"{name} must be a list of values or a range {{low, high, log, num}}")
        return out

    @field_validator("scoring")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        if value is not None and value not in HIGHER_IS_BETTER:
            raise ValueError(f"must be one of {', '.join(HIGHER_IS_BETTER)}")
        return value

    @model_validator(mode="after")
    def _fits_method(self) -> SearchSpec:
        if self.method == "grid" and self.n_iter is not None:
            raise ValueError("n_iter is for method: random (a grid tries every combination)")
        return self


def default_scoring(target_kind: str) -> str:
    return "r2" if target_kind == "regression" else "accuracy"


def _is_integer(params_type: Any, name: str) -> bool:
    """Whether the family's field takes integers only (e.g. ``max_depth: int | None``)."""
    annotation = params_type.model_fields[name].annotation
    members = typing.get_args(annotation) if typing.get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    return int in members and float not in members


def _grid_values(rng: Range, integer: bool) -> list[Any]:
    values = (np.geomspace if rng.log else np.linspace)(rng.low, rng.high, rng.num)
    if integer:
        return list(dict.fromkeys(round(v) for v in values))
    return [float(v) for v in values]


def _draw(rng_spec: list[Any] | Range, integer: bool, rng: np.random.Generator) -> Any:
    if isinstance(rng_spec, list):
        return rng_spec[int(rng.integers(len(rng_spec)))]
    if rng_spec.log:
        value = math.exp(rng.uniform(math.log(rng_spec.low), math.log(rng_spec.high)))
    else:
        value = rng.uniform(rng_spec.low, rng_spec.high)
    return round(value) if integer else float(value)


def candidates(search: SearchSpec, params_type: Any, seed: int) -> list[dict[str, Any]]:
    """The configurations to try (only the searched keys), in a deterministic order."""
    names = list(search.params)
    integer = {n: n in params_type.model_fields and _is_integer(params_type, n) for n in names}
    if search.method == "grid":
        axes = [v if isinstance(v, list) else _grid_values(v, integer[n]) for n, v in search.params.items()]
        size = math.prod(len(a) for a in axes)
        if size > MAX_CANDIDATES:
            raise SpecError(f"search: the grid has {size:,} combinations; at most {MAX_CANDIDATES:,} are allowed")
        return [dict(zip(names, combo)) for combo in itertools.product(*axes)]
    rng = np.random.default_rng(search.seed if search.seed is not None else seed)
    n_iter = search.n_iter or 10
    if all(isinstance(v, list) for v in search.params.values()):
        grid = [dict(zip(names, c)) for c in itertools.product(*search.params.values())]
        if len(grid) <= n_iter:  # every combination fits the budget: try each once
            return grid
        order = rng.permutation(len(grid))[:n_iter]
        return [grid[i] for i in sorted(order)]
    return [{n: _draw(search.params[n], integer[n], rng) for n in names} for _ in range(n_iter)]


def check_search(search: SearchSpec, kind: str, params: Any, params_type: Any, seed: int, source: str) -> None:
    """Refuse, before any work, a parameter the family does not have or a value it would refuse."""
    for name in search.params:
        if name not in params_type.model_fields:
            raise SpecError(f"{source}: search.params.{name}: model kind {kind!r} has no parameter {name!r} "
                            f"(it has {', '.join(params_type.model_fields)})")
    probes: list[dict[str, Any]] = []
    for name, values in search.params.items():  # every listed value and both ends of every range
        for value in values if isinstance(values, list) else [values.low, values.high]:
            probes.append({name: round(value) if isinstance(values, Range) and _is_integer(params_type, name)
                           else value})
    for probe in probes + candidates(search, params_type, seed):
        try:
            params_type.model_validate({**params.model_dump(exclude_unset=True), **probe})
        except ValidationError as exc:
            error = exc.errors()[0]
            name = ".".join(str(p) for p in error["loc"][:1]) or next(iter(probe))
            message = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
            raise SpecError(f"{source}: search.params.{name}: {message}; got {error['input']!r}") from None


def check_rows(spec: Any, rows: int) -> None:
    """Refuse, from the footers' row count, cross-validation or a search with too few training rows."""
    folds = (spec.search.cv if spec.search else None) or spec.data.cv or (2 if spec.search else 0)
    if not folds:
        return
    train = int(rows * (1.0 - spec.data.holdout))
    if train < 2 * folds:
        what = f"data.cv: {folds}" if spec.data.cv or (spec.search and spec.search.cv) else "search"
        raise SpecError(f"{what} needs at least {2 * folds} training rows; {spec.data.path} has {rows:,} rows and "
                        f"data.holdout {spec.data.holdout} leaves about {train:,}")
