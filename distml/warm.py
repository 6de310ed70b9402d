"""Warm start (``model.warm_start: URI``, and an estimator's ``partial_fit``): continue an SGD model on new data.

The parent is loaded with the store's verified ``open_model`` (checksums, trust
list, signing key). Its feature plan (the fitted ColumnTransformer) replaces
the one the statistics pass built, after the new data is checked against it:
the same feature columns, no category and no class the parent has not seen.
SGD then starts from the parent's coefficients, handed to the lane engine as
its epoch-0 state (the format of ``distml.models._sgd``'s checkpoints). An
estimator's ``partial_fit`` makes its fitted model the parent (``Parent`` with
no URI) and takes that state from ``Start`` instead of a job's checkpoints.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.errors import DataError, SpecError

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from distml.data import Dataset
    from distml.features import FeaturePlan

KEY = "model.warm_start"


def can_warm_start(kind: str, params: Any) -> bool:
    """Only the SGD families continue from coefficients: logistic (softmax, sgd) and linear sgd."""
    solver = getattr(params, "solver", None)
    return (kind == "logistic" and solver in ("softmax", "sgd")) or (kind == "linear" and solver == "sgd")


def check_family(kind: str, params: Any) -> None:
    """Refuse ``model.warm_start`` for a family or solver that cannot continue a model."""
    if not can_warm_start(kind, params):
        what = f"{kind}" + (f" with solver {params.solver}" if getattr(params, "solver", None) else "")
        raise SpecError(f"{KEY}: {what} cannot warm start; expected logistic (solver softmax or sgd) or "
                        "linear with solver sgd")


@dataclass(frozen=True)
class Parent:
    """The saved model a job continues."""

    pipeline: Pipeline
    manifest: dict[str, Any]
    uri: str | None  # None: a fitted estimator's model, continued by its ``partial_fit``
    label: str | None = None  # how messages name the parent; None: by ``model.warm_start`` and its URI

    def record(self) -> dict[str, Any]:
        """What the child's manifest says about its parent."""
        return {"uri": self.uri, "job_id": self.manifest.get("job_id")}

    def names(self) -> tuple[str, str]:
        """How messages name the parent: as the key's value, and as "the ... parent"."""
        if self.label:
            return self.label, self.label
        return f"{KEY} {self.uri}", f"the {KEY} parent {self.uri}"


class Start:
    """The trainer's checkpoints for a continuation that has nowhere to save any (an estimator's
    ``partial_fit``): ``restore`` gives the parent's state (``initial``, which the runner sets), and
    ``write`` keeps nothing, as a fit in memory cannot be resumed."""

    def __init__(self) -> None:
        self.initial: dict[str, Any] | None = None
        self.data_files: list[dict[str, Any]] | None = None  # set by the runner, as on ``Checkpoints``

    def write(self, step: int, state: dict[str, Any]) -> None:
        """Nothing to save to."""

    def restore(self) -> tuple[int, dict[str, Any]] | None:
        return None if self.initial is None else (0, self.initial)


def load_parent(spec: Any) -> Parent:
    """The parent version, verified as ``distml.load_model`` does, and of the job's own family and solver.

    ``spec`` is the job's ``JobSpec`` (not imported here: the job file's validation imports this module).
    """
    from distml.store import open_model

    uri = spec.model.warm_start
    pipeline, manifest, where = open_model(uri, spec.output.storage_options,
                                           signing_key_file=spec.output.signing_key_file)
    model = (manifest.get("job") or {}).get("model") or {}
    was = (model.get("kind"), (model.get("params") or {}).get("solver"))
    now = (spec.model.kind, spec.model.params.solver)
    if was != now:
        raise SpecError(f"{KEY}: {where} is a {was[0]} model with solver {was[1]}; this job trains {now[0]} "
                        f"with solver {now[1]}; expected the same family and solver")
    return Parent(pipeline, manifest, where)


def _categories(transformer: Any) -> dict[str, list[Any]]:
    """Each categorical input column's categories, as the transformer's encoder holds them."""
    out: dict[str, list[Any]] = {}
    for _, step, columns in transformer.transformers_:
        encoder = step[-1] if hasattr(step, "steps") else step
        if hasattr(encoder, "categories_"):
            out.update({str(c): list(cats) for c, cats in zip(columns, encoder.categories_)})
    return out


def adopt(parent: Parent, plan: FeaturePlan, dataset: Dataset) -> None:
    """Check the new data against the parent's plan, then train on the parent's transformer and classes."""
    named, the_parent = parent.names()
    had = list((parent.manifest.get("data") or {}).get("features") or [])
    missing = [c for c in had if c not in dataset.features]
    extra = [c for c in dataset.features if c not in had]
    if missing or extra:
        keyed = (parent.manifest.get("data") or {}).get("row_key")
        hint = f"set data.row_key: {keyed} as the parent did" if keyed in extra else "list data.features"
        problem = (f"lacks the parent's feature column(s) {', '.join(missing)}" if missing
                   else f"has column(s) {', '.join(extra)} the parent was not trained on ({hint})")
        raise DataError(f"{dataset.url}: {problem}; {named} expects {', '.join(had)}")
    known = _categories(parent.pipeline[0])
    for column, categories in _categories(plan.transformer).items():
        new = [c for c in categories if c not in set(known.get(column, []))]
        if new:
            raise DataError(f"{dataset.url}: column '{column}' has categories {', '.join(map(str, new[:5]))} "
                            f"that {the_parent} has never seen; expected only "
                            f"{', '.join(map(str, known.get(column, [])[:10]))}")
    estimator = parent.pipeline[-1]
    if plan.classes is not None:
        classes = np.asarray(estimator.classes_)
        unseen = [c for c in plan.classes.tolist() if c not in set(classes.tolist())]
        if unseen:
            raise DataError(f"{dataset.url}: target '{dataset.target}' has class(es) {', '.join(map(str, unseen))} "
                            f"that {the_parent} does not know; expected only "
                            f"{', '.join(map(str, classes.tolist()))}")
        counts = dict(zip(plan.classes.tolist(), plan.class_counts.tolist()))
        plan.class_counts = np.array([counts.get(c, 0) for c in classes.tolist()], dtype=np.int64)
        plan.classes = classes
    transformer = parent.pipeline[0]
    plan.transformer = transformer
    plan.parts = dataclasses.replace(
        plan.parts, train=[dataclasses.replace(s, transformer=transformer) for s in plan.parts.train],
        holdout=[dataclasses.replace(s, transformer=transformer) for s in plan.parts.holdout])
    plan.n_features = int(estimator.n_features_in_)


def initial_state(parent: Parent, y_mean: float, y_scale: float) -> dict[str, Any]:
    """The lane engine's epoch-0 state holding the parent's coefficients (see ``_sgd.train_sgd``)."""
    from distml.checkpoints import fitted_state

    estimator = parent.pipeline[-1]
    if type(estimator).__name__ == "LogisticRegression":  # softmax: SoftmaxSGD's weights, bias in the last row
        coef, intercept = np.asarray(estimator.coef_), np.asarray(estimator.intercept_)
        if len(estimator.classes_) == 2:  # one row of logit differences: class 0 at zero
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
        w = np.vstack([coef.T, intercept[None, :]]).astype(np.float64)
        model = {"_w": w, "_avg": w.copy(), "_seen": 0, "t_": 0.0, "classes_": np.asarray(estimator.classes_)}
    else:
        model = fitted_state(estimator)
        if type(estimator).__name__ == "SGDRegressor":  # the engine trains on the standardised target
            model["coef_"] = np.asarray(estimator.coef_) / y_scale
            model["intercept_"] = (np.asarray(estimator.intercept_) - y_mean) / y_scale
    return {"model": model, "stale": 0, "best_loss": None, "best": None}
