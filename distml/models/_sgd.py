"""Shared engine: streamed, parameter-averaged SGD over partitions on all workers.

Each epoch the partitions are shuffled (seeded) into groups of ``MIX`` and the
groups dealt to ``lanes``, one lane per worker thread. A lane is a chain of
tasks: each reads one group's partitions, shuffles their rows together and
calls ``partial_fit``, handing the model to the next task. At the end of
the epoch the lane models are averaged on the client (Zinkevich et al., 2010) and the next epoch starts from the average. Rows are
shuffled across the partitions of a group, so files sorted by the label, or
each holding nearly one class, do not make a lane train on long runs of one
class (they drift the model as a sequential ``partial_fit`` over the files does).

With early stopping, each task also scores the epoch's starting model on the
partition's validation rows (those whose draw ``u`` is below
``validation_fraction``), so validation costs no extra pass. Training stops when
``n_iter_no_change`` epochs in a row did not beat the best loss by ``tol``
(scikit-learn's rule, ``_stopping``) and returns the best-scoring model.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.checkpoints import fitted_state, with_state
from distml.models._stopping import best_and_stale

if TYPE_CHECKING:
    from sklearn.linear_model._stochastic_gradient import BaseSGD

    from distml.blocks import Partitions
    from distml.models.base import TrainContext

LossFn = Callable[[Any, np.ndarray, np.ndarray], float]
MIX = 4  # partitions one lane step reads and shuffles together (it holds them and their shuffled copy)

# --- runs on workers ---------------------------------------------------------


@dataclass(frozen=True)
class LaneState:
    """What a lane hands from task to task: its model and running sums."""

    model: Any
    val_loss: float = 0.0
    n_val: int = 0
    n_trained: int = 0


def _sgd_epoch_part(
    state: LaneState, sources: list[Any], reference: BaseSGD | None, seed: int, validation_fraction: float,
    loss: LossFn | None, fit_kwargs: dict[str, Any], y_shift: float, y_scale: float,
) -> LaneState:
    """One step of one lane: score ``reference`` on validation rows, then ``partial_fit`` on the
    training rows of all ``sources`` shuffled together."""
    blocks = [source.load() for source in sources]
    val_loss, n_val, train = 0.0, 0, []
    for block in blocks:
        y = block.y if y_scale == 1.0 and y_shift == 0.0 else (block.y - y_shift) / y_scale
        val = block.u < validation_fraction
        if loss is not None and reference is not None and val.any():
            val_loss += loss(reference, block.X[val], y[val])
        n_val += int(val.sum())
        train.append((block.X, y, np.flatnonzero(~val)))
    X, y = _shuffled_together(train, seed)
    model = copy.deepcopy(state.model)  # never mutate a task's input: it may be another task's result
    if len(y):
        model.partial_fit(X, y, **fit_kwargs)
    return LaneState(model, state.val_loss + val_loss, state.n_val + n_val, state.n_trained + len(y))


def _shuffled_together(pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]], seed: int,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The chosen rows of several blocks in one random order, written once into a single array."""
    total = sum(len(rows) for _, _, rows in pieces)
    position = np.random.default_rng(seed).permutation(total)
    X = np.empty((total, pieces[0][0].shape[1]), dtype=pieces[0][0].dtype)  # float32 for mapped kernel features
    y = np.empty(total, dtype=np.result_type(*(yb.dtype for _, yb, _ in pieces)))
    start = 0
    for Xb, yb, rows in pieces:
        where = position[start:start + len(rows)]
        X[where], y[where] = Xb[rows], yb[rows]
        start += len(rows)
    return X, y


# --- runs on the client ------------------------------------------------------


@dataclass(frozen=True)
class SGDSchedule:
    """How long to train and when to stop early."""

    epochs: int
    early_stopping: bool = False
    validation_fraction: float = 0.1
    tol: float | None = 1e-3
    n_iter_no_change: int = 2


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


def train_sgd(
    parts: Partitions, template: BaseSGD, ctx: TrainContext, schedule: SGDSchedule, *,
    loss: LossFn, fit_kwargs: dict[str, Any], scale_target: bool = False, metric: str = "validation loss",
) -> BaseSGD:
    """Train ``template`` (an unfitted SGD estimator) for ``schedule.epochs`` averaged epochs.

    With early stopping, ``metric`` names the mean of ``loss`` per validation row in the manifest's
    ``training`` section (``ctx.env.record_training``), with the curve and where training stopped.
    """
    client = ctx.env.client
    n_parts = parts.n_parts
    # A lane must see rows of many partitions: lane models trained on disjoint files (say, disjoint
    # classes) average badly, so with few partitions there are fewer lanes, each mixing more.
    lanes = max(1, min(n_parts // MIX, ctx.env.max_in_flight))
    y_shift, y_scale = (ctx.data.y_mean, ctx.data.y_scale) if scale_target else (0.0, 1.0)
    val_fraction = schedule.validation_fraction if schedule.early_stopping else 0.0
    model, curve, start, lanes = _restored(template, ctx, lanes)
    mix = max(1, min(MIX, n_parts))
    epochs_run, trained_epochs, stopped = start, start, False
    for epoch in range(start, schedule.epochs):
        order = np.random.default_rng(ctx.env.child_seeds(1, salt=epoch)[0]).permutation(n_parts)
        groups = [order[i:i + mix] for i in range(0, n_parts, mix)]
        seeds = ctx.env.child_seeds(len(groups), salt=epoch + 1_000_000)
        reference = model if epoch > 0 and schedule.early_stopping else None
        ends = []
        for lane in range(lanes):
            state: Any = LaneState(model)
            for step, g in enumerate(range(lane, len(groups), lanes)):
                state = client.submit(
                    _sgd_epoch_part, state, [parts.train[i] for i in groups[g]], reference, seeds[g], val_fraction,
                    loss, fit_kwargs, y_shift, y_scale, key=ctx.env.key("train", epoch, lane, step),
                )
            ends.append(state)
        # Only each lane's final state (a model and three sums) comes back to the client.
        lane_states: list[LaneState] = [s for s in client.gather(ends) if s.n_trained > 0]
        trained = [s.n_trained for s in lane_states]
        val_loss, n_val = sum(s.val_loss for s in lane_states), sum(s.n_val for s in lane_states)
        model, epochs_run, trained_epochs = _average([s.model for s in lane_states], trained), epoch + 1, epoch + 1
        ctx.env.report("train", (epoch + 1) / schedule.epochs)
        if reference is not None and n_val:
            mean_loss = val_loss / n_val
            ctx.env.log(f"epoch {epoch}: {metric} {mean_loss:.5f} of the model after {epoch} epoch(s)")
            curve.points.append({"epoch": epoch, "validation_loss": mean_loss})
            best, curve.stale = best_and_stale([-p["validation_loss"] for p in curve.points], schedule.tol or 0.0)
            if best == len(curve.points) - 1:
                curve.best = (mean_loss, reference, epoch)
            if curve.stale >= schedule.n_iter_no_change:
                ctx.env.log(f"early stop after epoch {epoch}: no improvement of {schedule.tol} for {curve.stale} "
                            f"epochs; keeping the model after {curve.best[2]} epoch(s)")
                model, trained_epochs, stopped = curve.best[1], curve.best[2], True
                break
        else:
            ctx.env.log(f"epoch {epoch}: trained on {sum(trained)} rows in {lanes} lanes")
        ctx.env.checkpoint(epoch + 1, {"model": fitted_state(model), "lanes": lanes, **curve.state()})
    if schedule.early_stopping:
        ctx.env.record_training(_section(curve, schedule, metric, epochs_run, trained_epochs, stopped))
    if scale_target:
        model.coef_ = model.coef_ * y_scale
        model.intercept_ = model.intercept_ * y_scale + y_shift
    model.n_iter_ = trained_epochs  # as scikit-learn's SGD estimators: the epochs the returned model saw
    return model


def _section(curve: _Curve, schedule: SGDSchedule, metric: str, epochs_run: int, kept: int,
             stopped: bool) -> dict[str, Any]:
    """The manifest's ``training`` section: JSON-plain numbers only."""
    return {"early_stopping": True, "metric": metric, "validation_fraction": schedule.validation_fraction,
            "tol": schedule.tol, "n_iter_no_change": schedule.n_iter_no_change, "max_epochs": schedule.epochs,
            "epochs_run": epochs_run, "stopped_at": epochs_run if stopped else None, "epochs_kept": kept,
            "best": None if curve.best is None else {"epoch": curve.best[2], "validation_loss": curve.best[0]},
            "curve": [{"epoch": int(p["epoch"]), "validation_loss": float(p["validation_loss"])}
                      for p in curve.points]}
