"""The trainer signature every model family plugs into.

A family module exports ``Params`` (a ``FamilyParams`` subclass with a default
for every field), ``task(params)`` (which kind of target it learns) and
``train(parts, params, ctx) -> fitted sklearn estimator``. The runner knows
nothing else about it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from distributed import Client
    from sklearn.base import BaseEstimator

    from distml.blocks import Partitions

TargetKind = Literal["regression", "binary", "multiclass"]
Task = Literal["regression", "classification"]


class FamilyParams(BaseModel):
    """Base of each family's hyper-parameters: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _no_report(phase: str, fraction: float) -> None:
    return None


def _no_log(message: str) -> None:
    return None


@dataclass(frozen=True)
class TrainContext:
    """Everything about the environment a trainer needs; data comes in ``parts``."""

    client: Client
    job_id: str
    seed: int
    target_kind: TargetKind
    classes: np.ndarray | None  # sorted global classes (classification), else None
    class_counts: np.ndarray | None  # training rows per class, aligned with classes
    n_features: int  # columns after the feature transformer
    x_var: float  # variance of all transformed feature values (SVC's gamma="scale")
    y_mean: float  # regression target's mean over training rows (0 for classification)
    y_scale: float  # regression target's standard deviation (1 for classification)
    train_rows: int
    max_in_flight: int  # bound on partition tasks submitted at once
    n_workers: int
    worker_memory: int  # smallest worker memory limit, bytes (0: unknown)
    report: Callable[[str, float], None] = field(default=_no_report)
    log: Callable[[str], None] = field(default=_no_log)

    def key(self, phase: str, *index: int | str) -> str:
        """Task key ``distml-<phase>-<job>-<i>…`` (see ``distml.tasks.task_key``)."""
        from distml.tasks import task_key

        return task_key(phase, self.job_id, *index)

    def child_seeds(self, n: int, salt: int = 0) -> list[int]:
        """``n`` independent seeds drawn on the client, so results never depend on scheduling."""
        seq = np.random.SeedSequence([self.seed, salt])
        return [int(s.generate_state(1)[0]) for s in seq.spawn(n)]


class Family(Protocol):
    """What the registry maps a job file's ``model.kind`` to."""

    Params: type[FamilyParams]

    def task(self, params: FamilyParams) -> Task | None:
        """``regression``/``classification``, or None to infer from the target."""
        ...

    def train(self, parts: Partitions, params: FamilyParams, ctx: TrainContext) -> BaseEstimator:
        """Fit on the cluster and return a plain fitted scikit-learn estimator."""
        ...
