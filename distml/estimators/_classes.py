"""The six estimators: each a family of ``distml.models`` with its job-file parameters as ``__init__``'s.

The parameters and defaults are read from the family's ``Params`` (never copied here), plus
``random_state`` (the job's seed), ``client``, ``missing`` (data.missing), ``row_key`` (see
``distml.frames``) and ``progress``. ``__init__`` stores them and does nothing else, as scikit-learn asks.
"""
from __future__ import annotations

import inspect
from typing import Any

import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.utils.metaestimators import available_if

from distml.estimators._base import DistmlEstimator, _is_dask

_EXTRA_DEFAULTS = {"random_state": 0, "client": None, "missing": "error", "row_key": None, "progress": False}


def _estimator(cls: type[DistmlEstimator]) -> type[DistmlEstimator]:
    """Give ``cls`` an ``__init__`` whose keyword parameters are its family's ``Params`` fields (minus
    those the class fixes) and the extra ones, with the family's defaults."""
    from distml.models import FAMILIES

    fields = FAMILIES[cls._kind].Params.model_fields
    names = tuple(n for n in fields if n not in cls._fixed and n not in cls._excluded)
    defaults = {n: fields[n].get_default(call_default_factory=True) for n in names}
    defaults.update(cls._defaults)
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    all_defaults = {**defaults, **_EXTRA_DEFAULTS}
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=all_defaults[n])
               for n in (*names, *_EXTRA_DEFAULTS)]
    signature = inspect.Signature(params)

    def __init__(self: DistmlEstimator, **kwargs: Any) -> None:
        bound = signature.bind(self, **kwargs)
        for name in (*names, *_EXTRA_DEFAULTS):
            setattr(self, name, bound.arguments.get(name, all_defaults[name]))

    __init__.__signature__ = signature  # type: ignore[attr-defined]  # what get_params reads
    __init__.__doc__ = f"Parameters as ``model.params`` of kind {cls._kind} in a job file."
    cls.__init__ = __init__  # type: ignore[method-assign]
    cls._family_params = names
    return cls


class _Classifier(ClassifierMixin, DistmlEstimator):
    def score(self, X: Any, y: Any, sample_weight: Any = None) -> Any:
        """Accuracy; a lazy Dask scalar for Dask ``X`` and ``y``."""
        if _is_dask(X):
            return _lazy_accuracy(self.predict(X), y)
        return super().score(X, y, sample_weight)


def _has_proba(self: Any) -> bool:
    return bool(getattr(self, "probability", True))


class _ProbaClassifier(_Classifier):
    @available_if(_has_proba)
    def predict_proba(self, X: Any) -> Any:
        """Class probabilities (columns in ``classes_`` order): numpy for in-memory ``X``, lazy for Dask ``X``."""
        return self._apply(X, "predict_proba")

    @available_if(_has_proba)
    def predict_log_proba(self, X: Any) -> Any:
        """The log of ``predict_proba``."""
        return np.log(self.predict_proba(X))


class _Margins:
    """``decision_function`` for the linear and kernel families."""

    def decision_function(self: Any, X: Any) -> Any:
        """Signed scores: numpy for in-memory ``X``, lazy for Dask ``X``."""
        return self._apply(X, "decision_function")


def _continues(self: Any) -> bool:
    """``partial_fit`` is there only for parameters that train by SGD; else say which would."""
    if not self._can_continue():
        raise AttributeError(f"{type(self).__name__} has no partial_fit with solver={self.solver!r}: partial_fit "
                             f"continues the model by SGD, so it needs {self._sgd_solvers}")
    return True


class _ContinuedClassifier:
    """``partial_fit`` for the classifiers trained by SGD (see ``DistmlEstimator._continue``)."""

    @available_if(_continues)
    def partial_fit(self: Any, X: Any, y: Any, classes: Any = None) -> Any:
        """Continue the fitted model on new rows: one SGD pass from its coefficients, as a job with
        ``model.warm_start`` does; unfitted, fit with one pass. ``classes`` is accepted for scikit-learn's
        signature: the classes are those of the first fit, and a class it did not see is refused."""
        return self._continue(X, y)


class _Regressor(RegressorMixin, DistmlEstimator):
    def score(self, X: Any, y: Any, sample_weight: Any = None) -> Any:
        """R²; a lazy Dask scalar for Dask ``X`` and ``y``."""
        if _is_dask(X):
            return _lazy_r2(self.predict(X), y)
        return super().score(X, y, sample_weight)


def _sums_part(predicted: Any, truth: Any) -> Any:
    """Per-partition sums a score needs: rows, correct predictions, Σy, Σy², Σ(y - ŷ)²."""
    import pandas as pd

    p, t = np.asarray(predicted), np.asarray(truth).ravel()
    tf = t.astype(np.float64) if t.dtype.kind in "fiub" else np.zeros(len(t))
    pf = p.astype(np.float64) if p.dtype.kind in "fiub" else np.zeros(len(p))
    return pd.DataFrame({"n": [len(t)], "correct": [int(np.sum(p == t))], "y": [tf.sum()], "y2": [(tf ** 2).sum()],
                         "residual": [((tf - pf) ** 2).sum()]})


def _lazy_sums(predicted: Any, y: Any) -> Any:
    """The sums over all partitions, lazily (reduced on the cluster); ``y`` partitioned like ``X``."""
    import dask.array as da
    import dask.dataframe as dd
    import pandas as pd

    meta = pd.DataFrame({"n": [0], "correct": [0], "y": [0.0], "y2": [0.0], "residual": [0.0]}).iloc[:0]
    if isinstance(predicted, da.Array):  # the same row blocks as X: as Dask Series, partition by partition
        y = y.ravel().rechunk((predicted.chunks[0],)) if isinstance(y, da.Array) else y.to_dask_array(lengths=True)
        predicted, y = dd.from_dask_array(predicted), dd.from_dask_array(y)
    return dd.map_partitions(_sums_part, predicted, y, align_dataframes=False, meta=meta).sum()


def _lazy_accuracy(predicted: Any, y: Any) -> Any:
    sums = _lazy_sums(predicted, y)
    return sums["correct"] / sums["n"]


def _lazy_r2(predicted: Any, y: Any) -> Any:
    sums = _lazy_sums(predicted, y)
    return 1 - sums["residual"] / (sums["y2"] - sums["y"] ** 2 / sums["n"])


@_estimator
class LogisticRegression(_Margins, _ContinuedClassifier, _ProbaClassifier):
    """Logistic regression trained on the cluster (family ``logistic``); the fitted model is scikit-learn's.

    ``partial_fit`` needs an SGD solver (``softmax`` or ``sgd``): scikit-learn's LogisticRegression has
    none, and the default ``auto`` may pick an exact one (``newton``), which fits all rows at once.
    """

    _kind = "logistic"
    _fixed: dict[str, Any] = {}  # noqa: RUF012
    _defaults: dict[str, Any] = {}  # noqa: RUF012
    _sgd_solvers = "solver='softmax' or 'sgd' (scikit-learn's LogisticRegression has no partial_fit; the exact " \
                   "solvers newton and lbfgs, which 'auto' picks unless an SGD parameter is set, fit all rows at once)"


@_estimator
class LinearRegression(_Regressor):
    """Least squares (ridge with ``alpha``) on the cluster (family ``linear``); ``partial_fit`` with solver sgd."""

    _kind = "linear"
    _fixed: dict[str, Any] = {}  # noqa: RUF012
    _defaults: dict[str, Any] = {}  # noqa: RUF012
    _sgd_solvers = "solver='sgd' (solver 'exact' solves the normal equations of all rows at once)"

    @available_if(_continues)
    def partial_fit(self, X: Any, y: Any) -> LinearRegression:
        """Continue the fitted model on new rows: one SGD pass from its coefficients, as a job with
        ``model.warm_start`` does; unfitted, fit with one pass."""
        return self._continue(X, y)


@_estimator
class LinearSVC(_Margins, _ContinuedClassifier, _Classifier):
    """A linear SVM streamed over the partitions (family ``svm`` with ``kernel: linear``)."""

    _kind = "svm"
    _fixed: dict[str, Any] = {"kernel": "linear"}  # noqa: RUF012
    _defaults: dict[str, Any] = {}  # noqa: RUF012

    def _can_continue(self) -> bool:
        return True  # always averaged SGD (the CLI's model.warm_start does not take svm)

    _excluded = ("approximation", "n_components", "gamma", "degree", "coef0", "tol", "probability",
                 "chunk_rows", "max_passes", "feedback_tol", "max_support_vectors",
                 "switch_sv_fraction")  # the cascade's and kernels'


@_estimator
class SVC(_Margins, _ProbaClassifier):
    """A kernel SVM from the cascade (family ``svm``; ``kernel`` rbf, poly or sigmoid, or linear)."""

    _kind = "svm"
    _fixed: dict[str, Any] = {}  # noqa: RUF012
    _defaults: dict[str, Any] = {}  # noqa: RUF012
    _lenient = True  # like scikit-learn's SVC, parameters the chosen kernel does not use are ignored


@_estimator
class RandomForestClassifier(_ProbaClassifier):
    """A random forest whose trees are grown in parallel on the workers (family ``forest``)."""

    _kind = "forest"
    _fixed: dict[str, Any] = {"task": "classification"}  # noqa: RUF012
    _defaults: dict[str, Any] = {}  # noqa: RUF012


@_estimator
class RandomForestRegressor(_Regressor):
    """A random forest regressor (family ``forest`` with ``task: regression``)."""

    _kind = "forest"
    _fixed: dict[str, Any] = {"task": "regression"}  # noqa: RUF012
    _defaults: dict[str, Any] = {"criterion": "squared_error", "max_features": 1.0}  # noqa: RUF012
