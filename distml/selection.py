"""Choosing a configuration on the cluster: K-fold cross-validation and grid/random search with halving.

Every candidate trains through its family's own ``train`` (or ``train_many``,
which shares data passes between candidates: one Gram matrix for every ridge
``alpha``, one task per partition and pass for every exact logistic candidate,
one task per group of partitions and epoch for every SGD candidate, the exact and SGD groups of a mixed
search side by side, ``models._by_kind``) on a row subset of the job's partitions, and is scored by
``distml.evaluate`` on the rows held out from it. Folds come from each row's
stable draw (``distml.folds``). Candidates of one fold train concurrently, in
client threads that each drive their own tasks; the folds run one after the
other, so at most one fold's filtered copy of persisted blocks is in memory.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.errors import DistmlError, JobCancelled, JobFailed, first_line
from distml.folds import (
    Folds,
    draw_histogram,
    folds_from_histogram,
    fraction_filter,
    subset_sources,
)
from distml.search_space import HIGHER_IS_BETTER, candidates, default_scoring

if TYPE_CHECKING:
    from distml.blocks import Partitions
    from distml.jobfile import JobSpec
    from distml.models.base import TrainContext

Check = Callable[[Any], None]  # raises when a fitted model is unusable (e.g. not finite)
# a candidate's fits neither write the job's checkpoints nor resume from them: only the refit does
_NO_CHECKPOINTS: dict[str, Any] = {"checkpoint": lambda step, state: None, "restore": lambda: None}


@dataclass
class Trial:
    """One candidate configuration and what its fits scored, fold by fold."""

    index: int
    searched: dict[str, Any]  # only the searched keys, as validated
    params: Any  # the family's full Params
    metrics: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    train_rows: int = 0
    round: int = 0
    error: str | None = None

    def score(self, scoring: str) -> float:
        """Mean of the fold scores, oriented so that higher is better; -inf if a fit failed."""
        values = [m.get(scoring, float("nan")) for m in self.metrics]
        if self.error or not values or not np.all(np.isfinite(values)):
            return float("-inf")
        mean = float(np.mean(values))
        return mean if HIGHER_IS_BETTER[scoring] else -mean

    def row(self, scoring: str) -> dict[str, Any]:
        values = [m.get(scoring, float("nan")) for m in self.metrics]
        return {"candidate": self.index, "params": self.searched, "round": self.round,
                "train_rows": self.train_rows, "scores": values,
                "mean": float(np.mean(values)) if values else None,
                "std": float(np.std(values)) if values else None,
                "seconds": round(self.seconds, 3), **({"error": self.error} if self.error else {})}


@dataclass(frozen=True)
class Selection:
    """What the job keeps: the configuration to refit, and the manifest's ``cv``/``search`` sections."""

    params: Any
    cv: dict[str, Any] | None
    search: dict[str, Any] | None


def select(spec: JobSpec, family: Any, parts: Partitions, ctx: TrainContext, check: Check,
           phase: str = "search") -> Selection:
    """Cross-validate the job's configuration, or search the configurations of ``search:``.

    ``check`` is called on every fitted candidate (a failure makes that candidate's row an error);
    progress is reported as ``phase``.
    """
    search = spec.search
    params_type = type(spec.model.params)
    scoring = (search.scoring if search else None) or default_scoring(ctx.data.target_kind)
    k = (search.cv if search else None) or spec.data.cv
    if search:
        trials = [Trial(i, _validated(params_type, spec.model.params, c)[0], _validated(params_type,
                        spec.model.params, c)[1]) for i, c in enumerate(candidates(search, params_type, spec.seed))]
    else:
        trials = [Trial(0, {}, spec.model.params)]
    shares = np.full(k, 1.0 / k) if k else np.array([search.validation, 1.0 - search.validation])
    hist = draw_histogram(parts, ctx.data.classes, ctx.env.client, ctx.env.job_id, ctx.env.max_in_flight)
    folds = folds_from_histogram(hist, shares, ctx.data.classes)
    splits = list(range(k)) if k else [0]  # without cv, fold 0 is the validation share and is scored
    runner = _Runner(family, parts, ctx, folds, check, (search.max_concurrent if search else 1), phase)
    started = time.perf_counter()
    rounds = _halving_rounds(len(trials), search.halving, folds, splits) if search and search.halving else [1.0]
    alive = trials
    for number, fraction in enumerate(rounds):
        for trial in alive:
            trial.metrics, trial.round, trial.seconds = [], number, 0.0
        for fold in splits:
            runner.run(alive, fold, fraction, f"r{number}f{fold}", len(trials) * len(splits) * len(rounds))
        ranked = sorted(alive, key=lambda t: -t.score(scoring))
        if search:
            ctx.env.log(f"search round {number + 1}/{len(rounds)}: {len(alive)} candidates on "
                        f"{fraction:.0%} of the training rows; best {scoring} "
                        f"{_shown_score(ranked[0], scoring)} with {ranked[0].searched}")
        if number < len(rounds) - 1:
            keep = max(1, -(-len(alive) // search.halving.factor))
            alive = ranked[:keep]
    best = max(alive, key=lambda t: t.score(scoring))
    if best.score(scoring) == float("-inf"):
        raise JobFailed(f"job {ctx.env.job_id}: no candidate could be scored; "
                        f"the first failure: {best.error or 'its ' + scoring + ' is not finite'}")
    cv_section = _cv_section(best, k, scoring) if k else None
    search_section = None
    if search:
        search_section = {
            "method": search.method, "scoring": scoring,
            "scored_by": f"{k}-fold cv" if k else f"validation share {search.validation}",
            "halving": search.halving.model_dump() if search.halving else None,
            "rounds": [{"round": i, "fraction": f} for i, f in enumerate(rounds)],
            "best": best.searched, "best_score": best.row(scoring)["mean"],
            "seconds": round(time.perf_counter() - started, 3),
            "candidates": [t.row(scoring) for t in trials],
        }
    return Selection(best.params, cv_section, search_section)


def _validated(params_type: Any, base: Any, searched: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    params = params_type.model_validate({**base.model_dump(exclude_unset=True), **searched})
    return {name: getattr(params, name) for name in searched}, params


def _shown_score(trial: Trial, scoring: str) -> str:
    row = trial.row(scoring)
    return "failed" if row["mean"] is None or trial.error else f"{row['mean']:.4f} ± {row['std']:.4f}"


def _cv_section(trial: Trial, k: int, scoring: str) -> dict[str, Any]:
    names = sorted({name for m in trial.metrics for name in m if name != "rows"})
    table = {n: [m.get(n, float("nan")) for m in trial.metrics] for n in names}
    return {"k": k, "scoring": scoring, "folds": trial.metrics,
            "mean": {n: float(np.mean(v)) for n, v in table.items()},
            "std": {n: float(np.std(v)) for n, v in table.items()}}


def _halving_rounds(n: int, halving: Any, folds: Folds, splits: list[int]) -> list[float]:
    """Shares of the training rows per round: the last round uses all, each earlier one ``factor`` times fewer."""
    count = 1 + int(np.floor(np.log(max(n, 1)) / np.log(halving.factor) + 1e-9))
    train_rows = int(min(folds.train_counts(f).sum() for f in splits))
    floor = min(1.0, halving.min_rows / max(1, train_rows))
    shares = [max(floor, float(halving.factor) ** (i - count + 1)) for i in range(count)]
    return [s for i, s in enumerate(shares) if i == len(shares) - 1 or s < shares[i + 1]] or [1.0]


def _error_text(exc: Exception) -> str:
    """A failed candidate's row: a distml error's message, else the exception's type and first line."""
    return exc.message if isinstance(exc, DistmlError) else f"{type(exc).__name__}: {first_line(exc, 200)}"


class _Runner:
    """Trains trials on one fold's rows, concurrently, and scores each on the fold's held-out rows."""

    def __init__(self, family: Any, parts: Partitions, ctx: TrainContext, folds: Folds, check: Check,
                 max_concurrent: int, phase: str) -> None:
        self.family, self.parts, self.ctx, self.folds, self.check = family, parts, ctx, folds, check
        self.max_concurrent, self.phase = max_concurrent, phase
        self.lock = threading.Lock()
        self.stop: BaseException | None = None
        self.done = 0

    def run(self, trials: list[Trial], fold: int, fraction: float, name: str, total: int) -> None:
        """Fit every trial on the rows outside ``fold`` (``fraction`` of them) and score it on ``fold``."""
        from distml.evaluate import evaluate
        from distml.models.base import TrainContext

        env = self.ctx.env
        train_filters = (self.folds.train_filter(fold),) + ((fraction_filter(fraction),) if fraction < 1 else ())
        train = subset_sources(self.parts.train, train_filters, env.client, env.job_id, f"{name}train")
        test = subset_sources(self.parts.train, (self.folds.test_filter(fold),), env.client, env.job_id,
                              f"{name}test")
        counts = self.folds.train_counts(fold) * fraction
        data = replace(self.ctx.data, train_rows=int(counts.sum().round()),
                       class_counts=np.round(counts).astype(np.int64) if self.ctx.data.classes is not None else None)
        parts = replace(self.parts, train=train, holdout=test, train_rows=data.train_rows, holdout_rows=0)

        def trial_env(trial: Trial) -> Any:
            return replace(env, job_id=f"{env.job_id}-{name}c{trial.index}", report=self._report(total),
                           log=lambda message: None, **_NO_CHECKPOINTS)

        def score(trial: Trial, fitted: Any, seconds: float) -> None:
            self.check(fitted)
            metrics = evaluate(fitted, test, env.client, f"{env.job_id}-{name}c{trial.index}", data.classes).metrics
            trial.metrics.append(metrics)
            trial.seconds += seconds
            trial.train_rows = data.train_rows

        def one(trial: Trial) -> None:
            if trial.error:
                return
            started = time.perf_counter()
            try:
                fitted = self.family.train(parts, trial.params, TrainContext(trial_env(trial), data))
                score(trial, fitted, time.perf_counter() - started)
            except (JobCancelled, KeyboardInterrupt) as exc:
                self.stop = self.stop or exc
                raise
            except Exception as exc:  # noqa: BLE001 - one candidate's failure is its row in the table
                trial.error = _error_text(exc)
            finally:
                with self.lock:
                    self.done += 1

        try:
            shared = getattr(self.family, "train_many", None)
            fitted_all = None
            if shared is not None:
                started = time.perf_counter()
                shared_env = replace(env, job_id=f"{env.job_id}-{name}all", report=self._report(total),
                                     **_NO_CHECKPOINTS)
                fitted_all = shared(parts, [t.params for t in trials], TrainContext(shared_env, data))
            if fitted_all is not None:
                seconds = (time.perf_counter() - started) / len(trials)

                def score_shared(trial: Trial, fitted: Any) -> None:
                    try:
                        if isinstance(fitted, BaseException):  # that candidate's own fit failed
                            raise fitted
                        score(trial, fitted, seconds)
                    except (JobCancelled, KeyboardInterrupt):
                        raise
                    except Exception as exc:  # noqa: BLE001 - one candidate's failure is its row in the table
                        trial.error = _error_text(exc)

                # the candidates' scoring passes overlap, as their separate fits' do (each is a few short rounds)
                with ThreadPoolExecutor(max_workers=min(len(trials), self.max_concurrent),
                                        thread_name_prefix="distml-score") as pool:
                    for future in [pool.submit(score_shared, t, f) for t, f in zip(trials, fitted_all)]:
                        future.result()
                self.done += len(trials)
                self._report(total)(self.phase, 0.0)
                return
            with ThreadPoolExecutor(max_workers=min(len(trials), self.max_concurrent),
                                    thread_name_prefix="distml-candidate") as pool:
                for future in [pool.submit(one, t) for t in trials]:
                    future.exception()  # wait for all; the first cancellation is raised below
            if self.stop is not None:
                raise self.stop
        finally:
            from distributed import Future

            env.client.cancel([s for s in train + test if isinstance(s, Future)])

    def _report(self, total: int) -> Callable[[str, float], None]:
        """A candidate's progress callback: the search's share done, and the job's cancel check."""

        def report(phase: str, fraction: float) -> None:
            if self.stop is not None:
                raise JobCancelled("cancelled")
            with self.lock:
                self.ctx.env.report(self.phase, min(1.0, self.done / max(1, total)))

        return report
