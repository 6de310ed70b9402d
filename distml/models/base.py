"""The contract every model family plugs into: the ``Family`` protocol and the ``TrainContext`` it is given.

A family module declares ``Params`` (a ``FamilyParams`` subclass with a
default for every field), ``ENCODING`` (how its categories are encoded),
``task(params)`` (which kind of target it learns) and
``train(parts, params, ctx) -> fitted sklearn estimator``. The runner knows
nothing else about it. A family may also define ``train_many(parts,
params_list, ctx)``, fitting several configurations from shared data passes
(a search uses it; it returns None when these configurations cannot share, and
may put a candidate's exception in place of its model), and
``wants_cross_products(params)``, asking the statistics pass for the Gram matrix
its training would otherwise sum in a pass (``distml.gram``, ``DataSummary.gram``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from distributed import Client
    from sklearn.base import BaseEstimator

    from distml.blocks import Partitions
    from distml.features import FeaturePlan

TargetKind = Literal["regression", "binary", "multiclass"]
Task = Literal["regression", "classification"]
Encoding = Literal["onehot", "ordinal"]  # how the feature plan encodes categorical columns for a family


class FamilyParams(BaseModel):
    """Base of each family's hyper-parameters: frozen, unknown keys and non-finite numbers rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # inf/nan would hang or poison a solver


@runtime_checkable
class Family(Protocol):
    """What the registry maps a job file's ``model.kind`` to: a module with these four names.

    ``params`` is typed ``Any`` here because each family narrows it to its own ``Params``.
    """

    Params: type[FamilyParams]
    ENCODING: Encoding

    def task(self, params: Any) -> Task | None:
        """``regression``/``classification``, or None to infer from the target."""
        ...

    def train(self, parts: Partitions, params: Any, ctx: TrainContext) -> BaseEstimator:
        """Fit on the cluster and return a plain fitted scikit-learn estimator."""
        ...


def _no_report(phase: str, fraction: float) -> None:
    return None


def _no_log(message: str) -> None:
    return None


def _no_checkpoint(step: int, state: dict[str, Any]) -> None:
    return None


def _no_restore() -> tuple[int, dict[str, Any]] | None:
    return None


def _no_record(section: dict[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class TrainEnv:
    """Where a trainer runs: the cluster, the job's identity and seed, its limits and callbacks.

    ``report(phase, fraction)`` and ``log(message)`` may raise
    ``distml.errors.JobCancelled``: in a job they go through its tracker, which
    checks for ``distml jobs cancel``. A trainer lets that exception through;
    every other callback and method here never raises it.

    ``checkpoint(step, state)`` saves a trainer's state after step ``step`` (an epoch, a tree
    group, a cascade layer, a Newton step or L-BFGS iteration; numbered from 1) and ``restore()`` returns the last ``(step, state)``
    when the job is resumed, else None (see ``distml.checkpoints``); both default to doing nothing.

    ``record_training(section)`` hands the manifest its ``training`` section (the early-stopping
    curve, where it stopped); only the job's final fit is given one that keeps it.
    """

    client: Client
    job_id: str
    seed: int
    max_in_flight: int  # bound on partition tasks submitted at once
    n_workers: int
    worker_memory: int  # smallest worker memory limit, bytes (0: unknown)
    report: Callable[[str, float], None] = field(default=_no_report)
    log: Callable[[str], None] = field(default=_no_log)
    checkpoint: Callable[[int, dict[str, Any]], None] = field(default=_no_checkpoint)
    restore: Callable[[], tuple[int, dict[str, Any]] | None] = field(default=_no_restore)
    record_training: Callable[[dict[str, Any]], None] = field(default=_no_record)

    @property
    def checkpointing(self) -> bool:
        """Whether ``checkpoint`` keeps anything: a trainer need not gather state that would be dropped."""
        return self.checkpoint is not _no_checkpoint

    def key(self, phase: str, *index: int | str) -> str:
        """Task key ``distml-<phase>-<job>-<i>…`` (see ``distml.tasks.task_key``)."""
        from distml.tasks import task_key

        return task_key(phase, self.job_id, *index)

    def child_seeds(self, n: int, salt: int = 0) -> list[int]:
        """``n`` independent seeds drawn on the client, so results never depend on scheduling."""
        seq = np.random.SeedSequence([self.seed, salt])
        return [int(s.generate_state(1)[0]) for s in seq.spawn(n)]


@dataclass(frozen=True)
class DataSummary:
    """What the statistics pass learned about the training rows; the rows themselves come in ``parts``."""

    target_kind: TargetKind
    classes: np.ndarray | None  # sorted global classes (classification), else None
    class_counts: np.ndarray | None  # training rows per class, aligned with classes
    n_features: int  # columns after the feature transformer
    x_var: float  # variance of all transformed feature values (SVC's gamma="scale")
    y_mean: float  # regression target's mean over training rows (0 for classification)
    y_scale: float  # regression target's standard deviation (1 for classification)
    train_rows: int
    gram: np.ndarray | None = None  # [X 1 y]ᵀ[X 1 y] of the training rows, when the statistics pass measured it
    gram_sources: Any = None  # the training sources (``Partitions.train``) ``gram`` is for; no others

    @classmethod
    def from_plan(cls, plan: FeaturePlan) -> DataSummary:
        """The summary of a feature plan's training rows."""
        from distml.gram import transformed_gram

        y_moments = plan.stats.target_moments
        gram = transformed_gram(plan.stats.cross, plan.transformer)
        return cls(
            target_kind=plan.target_kind, classes=plan.classes, class_counts=plan.class_counts,
            n_features=plan.n_features, x_var=plan.x_var,
            y_mean=float(y_moments.mean[0]) if y_moments else 0.0,
            y_scale=float(max(y_moments.var[0], 1e-12) ** 0.5) if y_moments else 1.0,
            train_rows=plan.parts.train_rows,
            gram=gram, gram_sources=None if gram is None else plan.parts.train,
        )


@dataclass(frozen=True)
class TrainContext:
    """Everything a trainer is given besides its partitions and parameters: ``env`` and ``data``."""

    env: TrainEnv
    data: DataSummary

    @classmethod
    def create(cls, *, client: Client, job_id: str, seed: int, plan: FeaturePlan,
               resources: tuple[int, int, int], report: Callable[[str, float], None] = _no_report,
               log: Callable[[str], None] = _no_log,
               checkpoints: Any = None) -> TrainContext:
        """The one way to build a context, in the runner and in tests.

        ``resources`` is ``(workers, threads, smallest worker memory)`` as
        ``distml.cluster.worker_resources`` measures them; ``report`` and ``log``
        may raise ``JobCancelled`` (see ``TrainEnv``); ``checkpoints`` (a ``distml.checkpoints.Checkpoints``)
        gives ``checkpoint`` and ``restore``.
        """
        n_workers, threads, memory = resources
        saving = {"checkpoint": checkpoints.write, "restore": checkpoints.restore} if checkpoints else {}
        env = TrainEnv(client=client, job_id=job_id, seed=seed, max_in_flight=max(1, threads),
                       n_workers=n_workers, worker_memory=memory, report=report, log=log, **saving)
        return cls(env, DataSummary.from_plan(plan))
