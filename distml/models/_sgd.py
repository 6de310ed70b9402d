"""Shared engine: streamed, parameter-averaged SGD over partitions on all workers, for one fit or several.

Each epoch the partitions are shuffled (seeded) into groups of ``MIX`` and the
groups dealt to ``lanes``, one lane per worker thread. A lane is a chain of
tasks: each reads one group's partitions, shuffles their rows together and
calls ``partial_fit``, handing the model to the next task. With fewer groups
than threads (data that fits: two partitions a thread), each group is cut into
row slices by the rows' draw (``_slices``), a task per slice, so that every
thread has a lane and each lane still mixes the rows of a whole group. At the end of
the epoch the lane models are averaged on the client (Zinkevich et al., 2010) and the next epoch starts from the average. Rows are
shuffled across the partitions of a group, so files sorted by the label, or
each holding nearly one class, do not make a lane train on long runs of one
class (they drift the model as a sequential ``partial_fit`` over the files does).

With early stopping, each task also scores the epoch's starting model on the
partition's validation rows (those whose draw ``u`` is below
``validation_fraction``), so validation costs no extra pass. Training stops when
``n_iter_no_change`` epochs in a row did not beat the best loss by ``tol``
(scikit-learn's rule, ``_stopping``) and returns the best-scoring model.

Several fits (a search's candidates, ``train_sgd_many``) share every task: the
group order, lane count and shuffling seeds depend only on the job's seed and
the partitions, so one task reads its group once and advances each fit's lane
state on exactly the rows, in exactly the order, that fit's own task would; a fit
that has stopped or run its epochs leaves the later epochs.
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.checkpoints import fitted_state, with_state
from distml.models._lane_rows import ShuffledRows, in_slice
from distml.models._stopping import best_and_stale

if TYPE_CHECKING:
    from sklearn.linear_model._stochastic_gradient import BaseSGD

    from distml.blocks import Partitions
    from distml.models.base import TrainContext

LossFn = Callable[[Any, np.ndarray, np.ndarray], float]
MIX = 4  # partitions one lane step reads and shuffles together (it holds them and their shuffled copy)
MIN_SLICE_ROWS = 10_000  # a group is cut into row slices of no fewer training rows than this

# --- runs on workers ---------------------------------------------------------


@dataclass(frozen=True)
class LaneState:
    """What a lane hands from task to task for one fit: its model and running sums."""

    model: Any
    val_loss: float = 0.0
    n_val: int = 0
    n_trained: int = 0
    error: Exception | None = None  # the fit's own failure (say, a diverged step); later steps pass it on


@dataclass(frozen=True)
class StepInput:
    """One fit's part of an epoch's tasks: which rows it trains on and how it scores the epoch's start."""

    reference: Any  # the model to score on the validation rows, or None
    fraction: float  # rows whose draw is below it are validation rows (0: none)
    loss: LossFn | None
    fit_kwargs: dict[str, Any]
    y_shift: float = 0.0
    y_scale: float = 1.0
    labels: tuple[Any, ...] | None = None  # train and score on the rows of these classes only (None: all)

    @property
    def rows(self) -> tuple[float, float, float, tuple[Any, ...] | None]:
        """What fixes the rows this fit trains on: fits that agree on it share one shuffled copy."""
        return self.fraction, self.y_shift, self.y_scale, self.labels


def _sgd_epoch_part(states: list[LaneState], sources: list[Any], inputs: list[StepInput], seed: int,
                    transforms: list[Any] | None = None, row_slice: tuple[int, int] = (0, 1)) -> list[LaneState]:
    """One step of one lane for every fit: read the group once; per fit, score its ``reference`` on the
    validation rows, then ``partial_fit`` a copy of its model on the training rows of all ``sources`` shuffled
    together. Fits with the same ``rows`` share the shuffled (and mapped) copy, made one at a time.
    ``transforms[i]`` is fit i's map (``SGDFit.transform``), attached while it scores and trains.
    ``row_slice`` = (k, n): the step takes only the rows of the group's slice k of n (``in_slice``)."""
    transforms = transforms or [None] * len(inputs)
    blocks = [source.load() for source in sources]
    slices = [in_slice(block.u, *row_slice) for block in blocks]
    out: list[LaneState] = list(states)
    sharing: dict[tuple[float, float, float, tuple[Any, ...] | None], list[int]] = {}
    for i, step in enumerate(inputs):
        sharing.setdefault(step.rows, []).append(i)
    for (fraction, shift, scale, labels), members in sharing.items():
        members = [i for i in members if states[i].error is None]
        scoring = [i for i in members if inputs[i].loss is not None and inputs[i].reference is not None]
        val_loss, n_val, train = dict.fromkeys(members, 0.0), 0, []
        for block, sliced in zip(blocks, slices):
            y = block.y if scale == 1.0 and shift == 0.0 else (block.y - shift) / scale
            val = block.u < fraction
            mine = sliced if labels is None else sliced & np.isin(block.y, labels)
            val &= mine
            if scoring and val.any():
                X_val = block.X[val]
                for i in (i for i in scoring if out[i].error is None):
                    try:
                        val_loss[i] += inputs[i].loss(_attached(inputs[i].reference, transforms[i]), X_val, y[val])
                    except Exception as exc:  # noqa: BLE001 - one fit's failure is its own; the others go on
                        out[i] = replace(out[i], error=exc)
            n_val += int(val.sum())
            train.append((block.X, y, np.flatnonzero(mine & ~val)))
        rows = ShuffledRows(train, seed)
        # one copy for every fit that takes the rows whole; none when each gathers its batches (BATCHED)
        y, X = rows.y, rows if all(getattr(states[i].model, "BATCHED", False) for i in members) else rows.whole()
        for i in members:
            state = out[i]
            if state.error is not None:  # its scoring failed
                continue
            model = copy.deepcopy(state.model)  # never mutate a task's input: it may be another task's result
            try:
                if len(y):
                    with _in_given_order(model):
                        _attached(model, transforms[i], copy_first=False).partial_fit(X, y, **inputs[i].fit_kwargs)
            except Exception as exc:  # noqa: BLE001 - one fit's failure is its own; the others go on
                out[i] = replace(state, error=exc)
                continue
            finally:
                if transforms[i] is not None:
                    model.approx_ = None  # the map stays out of the state that leaves the task
            out[i] = LaneState(model, state.val_loss + val_loss[i], state.n_val + n_val, state.n_trained + len(y))
    return out


def _attached(model: Any, transform: Any, copy_first: bool = True) -> Any:
    """``model`` with ``transform`` as its ``approx_`` (a shallow copy unless ``copy_first`` is False)."""
    if transform is None:
        return model
    model = copy.copy(model) if copy_first else model
    model.approx_ = transform
    return model


@contextlib.contextmanager
def _in_given_order(model: Any) -> Iterator[None]:
    """``model.partial_fit`` visits the rows in the order given: they come uniformly shuffled across the
    group (``ShuffledRows``), so scikit-learn's own shuffle (``shuffle=True``, its default) would
    only add its random access into the rows. The parameter is restored: the saved model keeps it."""
    shuffles = getattr(model, "shuffle", False) is True
    if shuffles:
        model.shuffle = False
    try:
        yield
    finally:
        if shuffles:
            model.shuffle = True


# --- runs on the client ------------------------------------------------------


@dataclass(frozen=True)
class SGDSchedule:
    """How long to train and when to stop early."""

    epochs: int
    early_stopping: bool = False
    validation_fraction: float = 0.1
    tol: float | None = 1e-3
    n_iter_no_change: int = 2


@dataclass(frozen=True)
class SGDFit:
    """One fit for the engine: an unfitted SGD estimator, its schedule and its loss.

    ``scale_target`` trains on the standardised regression target. ``transform`` is a fitted map the
    estimator puts its rows through (``_ApproxSGD.approx_``): sent to each worker once and attached to the
    model only while a task runs, so it travels in no lane's state, average or checkpoint.
    """

    template: Any
    schedule: SGDSchedule
    loss: LossFn
    fit_kwargs: dict[str, Any]
    scale_target: bool = False
    metric: str = "validation loss"
    transform: Any = None
    labels: tuple[Any, ...] | None = None  # the classes whose rows it trains on (a one-vs-one pair); None: all


def _average(models: list[BaseSGD], weights: list[int]) -> BaseSGD:
    """Row-weighted average of the lanes' coefficients, in lane order (deterministic)."""
    w = np.array(weights, dtype=np.float64) / sum(weights)

    def mix(name: str) -> Any:
        return sum(wi * getattr(m, name) for m, wi in zip(models, w))

    out = copy.deepcopy(models[0])
    out.coef_, out.intercept_, out.t_ = mix("coef_"), mix("intercept_"), float(mix("t_"))
    for name in ("_standard_coef", "_standard_intercept", "_average_coef", "_average_intercept"):
        if getattr(out, name, None) is not None:  # average=True (ASGD): partial_fit resumes from these
            setattr(out, name, mix(name))
    return out


@dataclass
class _Curve:
    """Early stopping's record: each scored epoch's validation loss, the best so far and the stale count."""

    points: list[dict[str, float]]
    best: tuple[float, Any, int] | None = None  # (loss, model, epochs it had trained)
    stale: int = 0

    def state(self) -> dict[str, Any]:
        """The checkpointed part (plain values and the best model's fitted state)."""
        best = self.best
        return {"stale": self.stale, "best_loss": best and best[0], "best": best and fitted_state(best[1]),
                "best_epoch": best and best[2], "curve": self.points}


def _no_log(message: str) -> None:
    return None


@dataclass
class _Run:
    """One fit's progress through the epochs: its averaged model, curve and where it stands."""

    fit: SGDFit
    model: Any
    scale: tuple[float, float]  # (shift, scale) of the target it trains on
    curve: _Curve = field(default_factory=lambda: _Curve([]))
    epochs_run: int = 0
    trained_epochs: int = 0
    stopped: bool = False
    log: Callable[[str], None] = _no_log
    reference: Any = None
    error: Exception | None = None  # what ended the fit when one of its steps raised

    @property
    def running(self) -> bool:
        return not self.stopped and self.error is None and self.epochs_run < self.fit.schedule.epochs

    def step_input(self, epoch: int) -> StepInput:
        """This epoch's part of every task; the epoch's starting model is scored from the second epoch on."""
        schedule = self.fit.schedule
        self.reference = self.model if epoch > 0 and schedule.early_stopping else None
        fraction = schedule.validation_fraction if schedule.early_stopping else 0.0
        return StepInput(self.reference, fraction, self.fit.loss, self.fit.fit_kwargs, *self.scale, self.fit.labels)

    def average(self, epoch: int, lane_states: list[LaneState]) -> tuple[float, int, int]:
        """The lanes' average becomes the model; returns the validation sums and the rows trained on."""
        self.error = next((s.error for s in lane_states if s.error is not None), None)
        if self.error is not None:
            return 0.0, 0, 0
        kept = [s for s in lane_states if s.n_trained > 0]
        trained = [s.n_trained for s in kept]
        self.model, self.epochs_run, self.trained_epochs = _average([s.model for s in kept], trained), epoch + 1, \
            epoch + 1
        return sum(s.val_loss for s in kept), sum(s.n_val for s in kept), sum(trained)

    def score(self, epoch: int, val_loss: float, n_val: int, rows: int, lanes: int) -> None:
        """Early stopping's bookkeeping for the epoch's starting model (scikit-learn's rule)."""
        schedule, curve, reference = self.fit.schedule, self.curve, self.reference
        if self.error is not None:
            return
        if reference is None or not n_val:
            self.log(f"epoch {epoch}: trained on {rows} rows in {lanes} lanes")
            return
        mean_loss = val_loss / n_val
        self.log(f"epoch {epoch}: {self.fit.metric} {mean_loss:.5f} of the model after {epoch} epoch(s)")
        curve.points.append({"epoch": epoch, "validation_loss": mean_loss})
        best, curve.stale = best_and_stale([-p["validation_loss"] for p in curve.points], schedule.tol or 0.0)
        if best == len(curve.points) - 1:
            curve.best = (mean_loss, reference, epoch)
        if curve.stale >= schedule.n_iter_no_change:
            self.log(f"early stop after epoch {epoch}: no improvement of {schedule.tol} for {curve.stale} "
                     f"epochs; keeping the model after {curve.best[2]} epoch(s)")
            self.model, self.trained_epochs, self.stopped = curve.best[1], curve.best[2], True

    def section(self) -> dict[str, Any]:
        """The manifest's ``training`` section: JSON-plain numbers only."""
        curve, schedule = self.curve, self.fit.schedule
        return {"early_stopping": True, "metric": self.fit.metric,
                "validation_fraction": schedule.validation_fraction, "tol": schedule.tol,
                "n_iter_no_change": schedule.n_iter_no_change, "max_epochs": schedule.epochs,
                "epochs_run": self.epochs_run, "stopped_at": self.epochs_run if self.stopped else None,
                "epochs_kept": self.trained_epochs,
                "best": None if curve.best is None else {"epoch": curve.best[2], "validation_loss": curve.best[0]},
                "curve": [{"epoch": int(p["epoch"]), "validation_loss": float(p["validation_loss"])}
                          for p in curve.points]}

    def result(self) -> Any:
        """The fitted model, its coefficients back in the target's units; or the exception that ended it."""
        if self.error is not None:
            return self.error
        model = self.model
        if self.fit.scale_target:
            shift, scale = self.scale
            model.coef_ = model.coef_ * scale
            model.intercept_ = model.intercept_ * scale + shift
        model.n_iter_ = self.trained_epochs  # as scikit-learn's SGD estimators: the epochs the returned model saw
        return model


def _groups(n_parts: int) -> int:
    return -(-n_parts // MIX)


def _slices(parts: Partitions, lanes: int) -> int:
    """Row slices a group is cut into so that ``lanes`` lanes have work: 1 while there are as many groups as
    lanes; else enough slices for every lane, each of at least ``MIN_SLICE_ROWS`` training rows.

    A lane must see rows of many partitions: lane models trained on disjoint files (say, disjoint classes)
    average badly. A slice of a whole group keeps that, where lanes of fewer partitions each would not."""
    groups = _groups(parts.n_parts)
    if groups >= lanes:
        return 1
    return max(1, min(-(-lanes // groups), parts.train_rows // (groups * MIN_SLICE_ROWS)))


def _lanes(parts: Partitions, ctx: TrainContext) -> int:
    """One lane per worker thread, as far as the groups and their slices give each one a task."""
    threads = ctx.env.max_in_flight
    return max(1, min(threads, _groups(parts.n_parts) * _slices(parts, threads)))


def _epochs(parts: Partitions, ctx: TrainContext, runs: list[_Run], lanes: int, start: int,
            after_epoch: Callable[[int], None] | None = None) -> int:
    """Advance every run from epoch ``start`` until each has stopped or run its epochs; returns the epochs made.

    Each epoch is one chain of tasks per lane, each task serving every running fit; only each lane's
    final states (a model and three sums per fit) come back to the client.
    """
    client, n_parts = ctx.env.client, parts.n_parts
    mix, n_slices = max(1, min(MIX, n_parts)), _slices(parts, lanes)
    total = max((r.fit.schedule.epochs for r in runs), default=1)
    live, epoch = [r for r in runs if r.running], start
    transforms = {id(r.fit.transform): r.fit.transform for r in live if r.fit.transform is not None}
    shipped = {key: client.scatter(t, broadcast=True) for key, t in transforms.items()}  # one copy per worker
    while live:
        order = np.random.default_rng(ctx.env.child_seeds(1, salt=epoch)[0]).permutation(n_parts)
        groups = [order[i:i + mix] for i in range(0, n_parts, mix)]
        tasks = [(g, k) for g in range(len(groups)) for k in range(n_slices)]
        seeds = ctx.env.child_seeds(len(tasks), salt=epoch + 1_000_000)
        inputs = [r.step_input(epoch) for r in live]
        maps = [shipped.get(id(r.fit.transform)) for r in live] if shipped else None
        ends = []
        for lane in range(lanes):
            states: Any = [LaneState(r.model) for r in live]
            for step, t in enumerate(range(lane, len(tasks), lanes)):
                g, k = tasks[t]
                states = client.submit(_sgd_epoch_part, states, [parts.train[i] for i in groups[g]], inputs,
                                       seeds[t], maps, (k, n_slices), key=ctx.env.key("train", epoch, lane, step))
            ends.append(states)
        by_lane: list[list[LaneState]] = client.gather(ends)
        sums = [r.average(epoch, [lane[j] for lane in by_lane]) for j, r in enumerate(live)]
        ctx.env.report("train", (epoch + 1) / total)
        for r, (val_loss, n_val, rows) in zip(live, sums):
            r.score(epoch, val_loss, n_val, rows, lanes)
        if after_epoch is not None:
            after_epoch(epoch)
        live, epoch = [r for r in live if r.running], epoch + 1
    return epoch - start


def _scale(fit: SGDFit, ctx: TrainContext) -> tuple[float, float]:
    return (ctx.data.y_mean, ctx.data.y_scale) if fit.scale_target else (0.0, 1.0)


def _restored(template: BaseSGD, ctx: TrainContext, lanes: int) -> tuple[BaseSGD, _Curve, int, int]:
    """(model, curve, first epoch, lanes): the template at epoch 0, or the job's last checkpoint,
    whose lane count is kept so a resume on a cluster of another size still gives the same model."""
    restored = ctx.env.restore()
    if restored is None:
        return template, _Curve([]), 0, lanes
    epochs, state = restored
    best = None if state["best"] is None else (state["best_loss"], with_state(template, state["best"]),
                                               state.get("best_epoch") or 0)
    curve = _Curve(list(state.get("curve") or []), best, state["stale"])
    return with_state(template, state["model"]), curve, epochs, state.get("lanes") or lanes


def train_sgd(parts: Partitions, fit: SGDFit, ctx: TrainContext) -> BaseSGD:
    """Train ``fit.template`` (an unfitted SGD estimator) for ``fit.schedule.epochs`` averaged epochs.

    With early stopping, ``fit.metric`` names the mean of ``fit.loss`` per validation row in the manifest's
    ``training`` section (``ctx.env.record_training``), with the curve and where training stopped.
    """
    model, curve, start, lanes = _restored(fit.template, ctx, _lanes(parts, ctx))
    run = _Run(fit, model, _scale(fit, ctx), curve, start, start, log=ctx.env.log)

    def checkpoint(epoch: int) -> None:
        if not run.stopped and run.error is None:
            ctx.env.checkpoint(epoch + 1, {"model": fitted_state(run.model), "lanes": lanes, **curve.state()})

    _epochs(parts, ctx, [run], lanes, start, after_epoch=checkpoint)
    if run.error is not None:
        raise run.error
    if fit.schedule.early_stopping:
        ctx.env.record_training(run.section())
    return run.result()


def train_sgd_together(parts: Partitions, fits: list[SGDFit], ctx: TrainContext, what: str) -> list[Any]:
    """Every fit of ``fits`` (none stopping early) from shared epochs, checkpointed and resumed together: the
    binary fits of one model (``_pairs``). Each equals the model ``train_sgd`` gives that fit alone.

    ``what`` names the fits in the log's line per epoch. A fit whose step raised ends the job with its error.
    """
    lanes, start = _lanes(parts, ctx), 0
    models = [fit.template for fit in fits]
    restored = ctx.env.restore()
    if restored is not None:
        start, state = restored
        models = [with_state(fit.template, saved) for fit, saved in zip(fits, state["models"], strict=True)]
        lanes = state.get("lanes") or lanes
    runs = [_Run(fit, model, _scale(fit, ctx), epochs_run=start, trained_epochs=start)
            for fit, model in zip(fits, models)]

    def after(epoch: int) -> None:
        failed = next((r.error for r in runs if r.error is not None), None)
        if failed is not None:
            raise failed
        ctx.env.log(f"epoch {epoch}: {len(runs)} {what} trained in {lanes} lanes")
        ctx.env.checkpoint(epoch + 1, {"models": [fitted_state(r.model) for r in runs], "lanes": lanes})

    _epochs(parts, ctx, runs, lanes, start, after_epoch=after)
    return [r.result() for r in runs]


def train_sgd_many(parts: Partitions, fits: list[SGDFit], ctx: TrainContext) -> list[Any]:
    """Every fit of ``fits`` from shared epochs, each model equal to the one ``train_sgd`` gives that fit alone
    (or, for a fit whose step raised, its exception).

    For a search's candidates, which neither checkpoint nor resume.
    """
    runs = [_Run(fit, fit.template, _scale(fit, ctx)) for fit in fits]

    def progress(epoch: int) -> None:
        ran = sum(r.epochs_run == epoch + 1 for r in runs)
        ctx.env.log(f"epoch {epoch}: {ran} of {len(runs)} SGD fits trained; {sum(r.running for r in runs)} go on")

    epochs = _epochs(parts, ctx, runs, _lanes(parts, ctx), 0, progress)
    ctx.env.log(f"{len(fits)} SGD fits from {epochs} shared epochs over the data "
                f"(alone: {sum(r.epochs_run for r in runs)})")
    return [r.result() for r in runs]
