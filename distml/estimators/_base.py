"""The shared half of every distml estimator: resolving the client, fitting through the runner's own
phases (``distml.runner.fit_pipeline``), blockwise prediction, ``to_sklearn`` and ``save``.

A fitted estimator holds the plain scikit-learn Pipeline the CLI saves (``pipeline_``); its fitted
attributes (``coef_``, ``classes_``, ``feature_importances_``, ``n_support_``…) are the Pipeline's final
estimator's, so they refer to the transformed features (``pipeline_[:-1].get_feature_names_out()``):
scaled numbers and encoded categories.
"""
from __future__ import annotations

import atexit
import contextlib
import os
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator, clone

from distml.errors import DataError
from distml.estimators._errors import InvalidData, InvalidParams

if TYPE_CHECKING:
    from distributed import Client
    from sklearn.pipeline import Pipeline

_EMBEDDED: dict[str, Any] = {}  # the one embedded cluster this process made, shared by estimators
ESTIMATOR_JOB = "estimator"  # the job name an estimator's fits run under (``save`` names the artifact)


def embedded_client() -> Client:
    """The embedded cluster made as the CLI makes it (127.0.0.1 only), started once and closed at exit.

    Never made the default client.
    """
    if "client" not in _EMBEDDED:
        from distributed import Client

        from distml.cluster import _local_cluster
        from distml.spec import ClusterSpec

        stack = contextlib.ExitStack()
        cluster = stack.enter_context(_local_cluster(ClusterSpec()))
        _EMBEDDED["client"] = stack.enter_context(Client(cluster, set_as_default=False))
        _EMBEDDED["stack"] = stack
        atexit.register(stack.close)
    return _EMBEDDED["client"]


def resolve_client(client: Client | None) -> Client:
    """``client`` if given, else the current client (``distributed.default_client``), else the embedded cluster."""
    if client is not None:
        return client
    from distributed import default_client

    try:
        return default_client()
    except ValueError:  # no current client
        return embedded_client()


def _is_dask(X: Any) -> bool:
    import dask

    return dask.is_dask_collection(X)


class DistmlEstimator(BaseEstimator):
    """Base of the six estimators; a subclass sets ``_kind`` (the job file's ``model.kind``), ``_fixed``
    (family parameters the class decides, such as ``task``) and gets ``__init__`` from ``_estimator``."""

    _kind: str = ""
    _fixed: dict[str, Any] = {}  # noqa: RUF012 - class-level constants, never mutated
    _defaults: dict[str, Any] = {}  # noqa: RUF012 - defaults that differ from the family's
    _excluded: tuple[str, ...] = ()  # family parameters the class does not offer
    _lenient = False  # True: drop a parameter the family says its chosen route does not use
    _family_params: tuple[str, ...] = ()
    _extra_params: tuple[str, ...] = ("random_state", "client", "missing", "row_key", "progress")

    def __sklearn_clone__(self) -> DistmlEstimator:
        """scikit-learn's clone, except that the client is shared, not copied (a Client cannot be copied)."""
        params = self.get_params(deep=False)
        return type(self)(**{k: v if k == "client" else clone(v, safe=False) for k, v in params.items()})

    # --- fitting ---------------------------------------------------------

    def _params(self) -> Any:
        """The family's validated ``Params`` from this estimator's parameters."""
        from pydantic import ValidationError

        from distml.models import FAMILIES

        family = FAMILIES[self._kind]
        given = {name: getattr(self, name) for name in self._family_params}
        defaults = family.Params()
        set_here = {k: v for k, v in given.items() if v != getattr(defaults, k)}  # the family checks what is set
        while True:
            try:
                return family.Params(**set_here, **self._fixed)
            except ValidationError as exc:
                error = exc.errors()[0]
                unused = str(error["msg"]).split("does not apply to")[0].split()[-1:] if self._lenient else []
                if unused and unused[0] in set_here:  # the family names a parameter its route ignores
                    del set_here[unused[0]]
                    continue
                name = ".".join(str(p) for p in error["loc"]) or "parameters"
                raise InvalidParams(f"{type(self).__name__}: {name}: {error['msg']}; "
                                    f"got {error.get('input')!r}") from None

    def _spec(self, dataset: Any, params: Any = None, name: str = ESTIMATOR_JOB) -> Any:
        from distml.jobfile import JobSpec

        return JobSpec(name=name, seed=int(self.random_state or 0),
                       data={"path": dataset.url, "target": dataset.target, "holdout": dataset.holdout,
                             "features": list(dataset.features), "row_key": dataset.row_key,
                             "missing": dataset.missing},
                       model={"kind": self._kind, "params": params or self._params()})

    def fit(self, X: Any, y: Any = None, *, target: str | None = None,
            features: list[str] | None = None, storage_options: dict[str, Any] | None = None) -> DistmlEstimator:
        """Fit on the cluster: ``X`` a Dask DataFrame/Array (``y`` the matching Series/Array), pandas or
        numpy for small data, or a Parquet URL/folder with ``target`` naming the label column (and
        ``features`` the feature columns, default all others; ``storage_options`` for fsspec).

        Every row is used for training (scikit-learn's ``fit`` holds nothing out).
        """
        params = self._params()  # parameters first, before any data is touched
        if isinstance(X, (str, os.PathLike)):
            dataset = self._open_parquet(str(X), y, target, features, storage_options)
        else:
            dataset = self._open_collection(X, y)
        self._fit_dataset(dataset, params)
        return self

    def _fit_dataset(self, dataset: Any, params: Any, parent: Any = None) -> None:
        """Run the runner's phases on ``dataset``; ``parent`` (a ``distml.warm.Parent``): continue it."""
        import time

        from distml.estimators._progress import phase_bars
        from distml.runner import _Phases, fit_pipeline, new_job_id

        client = resolve_client(self.client)
        job_id = new_job_id()
        phases = _Phases(lambda name, state, seconds: None)
        started = time.time()
        spec = self._spec(dataset, params)
        bars = phase_bars(bool(self.progress))
        start = None
        if parent is not None:
            from distml.warm import Start

            start = Start()  # the trainer starts from the parent's state (warm.initial_state)
        try:
            fit = fit_pipeline(spec, client, dataset, job_id, phases, bars or (lambda phase, fraction: None),
                               lambda message: None, start, parent)
        except DataError as exc:
            raise InvalidData(exc.message) from None
        finally:
            if bars is not None:
                bars.close()
        self.pipeline_ = fit.pipeline
        self.manifest_ = fit.manifest(spec, job_id, phases.timings, started)
        self._after_fit()

    def _open_parquet(self, url: str, y: Any, target: str | None, features: list[str] | None,
                      storage_options: dict[str, Any] | None) -> Any:
        from distml.data import open_dataset
        from distml.spec import DataSpec

        if y is not None or not target:
            raise InvalidData(f"{url}: fit on a Parquet URL takes target='column' and no y")
        if self.row_key is not None and (self.row_key == target or self.row_key in (features or ())):
            role = "the target column" if self.row_key == target else "listed in features"
            raise InvalidData(f"row_key: '{self.row_key}' is {role}; expected a column identifying rows, "
                              "not a feature")
        spec = DataSpec(path=url, target=target, features=features, holdout=0.0, storage_options=storage_options or {},
                        missing=self.missing, row_key=self.row_key)
        try:
            dataset = open_dataset(spec, int(self.random_state or 0))
        except DataError as exc:
            raise InvalidData(exc.message) from None
        self.n_features_in_ = len(dataset.features)
        self.feature_names_in_ = np.array(dataset.features, dtype=object)
        return dataset

    def _open_collection(self, X: Any, y: Any, reset: bool = True) -> Any:
        from distml.frames import open_collection

        if y is None:
            raise InvalidData(f"{type(self).__name__} requires y to be passed, but the target y is None "
                              "(or pass a Parquet URL with target=)")
        if _is_dask(X) or _is_dask(y):
            names = [str(c) for c in X.columns] if hasattr(X, "columns") else None
            target = getattr(y, "name", None)
        else:
            X, y, names = self._check_in_memory(X, y, reset)
            target = None
        try:
            dataset = open_collection(X, y, target=self._target_name(target, names), seed=int(self.random_state or 0),
                                      row_key=self.row_key, missing=self.missing)
        except DataError as exc:
            raise InvalidData(exc.message) from None
        if _is_dask(X) and reset:  # in-memory input had validate_data set these
            self.n_features_in_ = len(dataset.features)
            if hasattr(X, "columns"):
                self.feature_names_in_ = np.array(dataset.features, dtype=object)
            else:
                self.__dict__.pop("feature_names_in_", None)
        return dataset

    @staticmethod
    def _target_name(name: Any, features: list[str] | None) -> str:
        """The target's column name inside the engine: y's own name unless it is missing or taken."""
        name = str(name) if name is not None else "target"
        taken = set(features or ())
        while name in taken:
            name = f"_{name}"
        return name

    def _check_in_memory(self, X: Any, y: Any, reset: bool = True) -> tuple[Any, Any, list[str] | None]:
        """scikit-learn's input validation for in-memory data; returns a pandas X with its column names."""
        import pandas as pd
        from sklearn.base import is_regressor
        from sklearn.utils.multiclass import check_classification_targets
        from sklearn.utils.validation import validate_data

        regressor = is_regressor(self)
        if isinstance(X, pd.DataFrame) and any(not pd.api.types.is_numeric_dtype(t) for t in X.dtypes):
            validate_data(self, X, y, skip_check_array=True, reset=reset)
            names = [str(c) for c in X.columns]
            frame = X.reset_index(drop=True)
            y = np.asarray(y)
        else:
            Xv, y = validate_data(self, X, y, y_numeric=regressor, multi_output=False, reset=reset)
            names = list(getattr(self, "feature_names_in_", [f"x{j}" for j in range(Xv.shape[1])]))
            frame = pd.DataFrame(Xv, columns=[str(n) for n in names])
        if len(frame) < 2:
            raise InvalidData(f"n_samples = {len(frame)}: expected at least 2 rows to fit")
        if not regressor:
            check_classification_targets(y)
        return frame, pd.Series(np.asarray(y), index=frame.index), names

    # --- partial_fit ----------------------------------------------------------

    def _can_continue(self) -> bool:
        """Whether this estimator's parameters train by SGD, which can continue from coefficients."""
        from distml.warm import can_warm_start

        return can_warm_start(self._kind, self._params())

    def _continue(self, X: Any, y: Any) -> DistmlEstimator:
        """``partial_fit``: one SGD pass over the new rows, starting from the fitted model, exactly as a job
        with ``model.warm_start`` (and ``epochs: 1``) continues a saved one: a statistics pass checks the
        rows (nulls, infinities, and no feature column, category or class the model has not seen), the
        fitted feature transformer is kept, and SGD starts from the fitted coefficients. Unfitted: fits,
        with one pass."""
        params = self._one_pass(self._params())
        if "pipeline_" not in self.__dict__:
            self._fit_dataset(self._open_collection(X, y), params)
            return self
        from distml.warm import Parent

        solver = getattr(params, "solver", None)
        was = (((self.manifest_.get("job") or {}).get("model") or {}).get("params") or {}).get("solver", solver)
        if was != solver:  # as warm.load_parent asks of a job: the parent's family and solver
            raise InvalidParams(f"{type(self).__name__}.partial_fit: the model was fitted with solver '{was}', "
                                f"not '{solver}'; expected the solver it was fitted with (or fit anew)")
        dataset = self._open_collection(X, y, reset=False)
        raw = self._raw_columns()
        missing = [c for c in raw if c not in dataset.features]
        if missing:
            raise InvalidData(f"X: feature column '{missing[0]}' not found; expected the columns of the first fit: "
                              f"{', '.join(raw)}")
        dataset.features = raw
        parent = Parent(self.pipeline_, self.manifest_, None, label=f"the fitted {type(self).__name__}")
        self._fit_dataset(dataset, params, parent)
        return self

    @staticmethod
    def _one_pass(params: Any) -> Any:
        """The family's parameters for one ``partial_fit`` pass: one epoch, no early stopping (as
        scikit-learn's ``partial_fit``, which ignores ``max_iter`` and ``early_stopping``)."""
        update = {"epochs": 1, **({"early_stopping": False} if "early_stopping" in type(params).model_fields else {})}
        return params.model_copy(update=update)

    def _after_fit(self) -> None:
        """Hook for subclasses: attributes scikit-learn names that the final estimator lacks."""

    # --- fitted attributes -------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        """Fitted attributes (``coef_``, ``classes_``…) of the Pipeline's final estimator."""
        if name.endswith("_") and not name.startswith("_") and "pipeline_" in self.__dict__:
            model = self.__dict__["pipeline_"][-1]
            if name in ("n_features_in_", "feature_names_in_"):
                raise AttributeError(name)
            return getattr(model, name)
        import inspect

        unavailable = inspect.getattr_static(type(self), name, None)
        if hasattr(unavailable, "check") and hasattr(unavailable, "attribute_name"):  # behind available_if
            try:
                unavailable.__get__(self, type(self))
            except AttributeError as exc:  # the check's own reason (available_if puts it in the cause)
                raise AttributeError(str(exc.__cause__ or exc)) from None
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to_sklearn(self) -> Pipeline:
        """The plain fitted scikit-learn Pipeline (transformer + estimator), as the CLI saves it."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "pipeline_")
        return self.pipeline_

    def save(self, store: str, name: str, *, storage_options: dict[str, Any] | None = None,
             signing_key_file: str | None = None) -> str:
        """Store the Pipeline as a new version of ``name`` exactly as a job does; returns its URI."""
        from datetime import datetime, timezone

        from distml.signing import resolve_key
        from distml.store import Store, redact

        pipeline = self.to_sklearn()
        manifest = dict(self.manifest_)
        manifest["created"] = datetime.now(timezone.utc).isoformat()
        job = dict(manifest["job"])
        job["name"] = name
        job["output"] = redact({**job.get("output", {}), "store": store, "storage_options": storage_options or {}})
        manifest["job"] = job
        return Store(store, storage_options or {}).save(name, pipeline, manifest, None,
                                                       key=resolve_key(key_file=signing_key_file))

    # --- prediction ----------------------------------------------------------

    def _frame(self, X: Any) -> Any:
        """An in-memory ``X`` as the pandas frame of raw columns the Pipeline takes."""
        import pandas as pd
        from sklearn.utils.validation import check_is_fitted, validate_data

        check_is_fitted(self, "pipeline_")
        names = self._raw_columns()
        if isinstance(X, pd.DataFrame) and any(not pd.api.types.is_numeric_dtype(t) for t in X.dtypes):
            validate_data(self, X, reset=False, skip_check_array=True)
            return X
        Xv = validate_data(self, X, reset=False)
        return pd.DataFrame(Xv, columns=names)

    def _raw_columns(self) -> list[str]:
        return [str(c) for c in self.pipeline_[0].feature_names_in_]

    def _apply(self, X: Any, method: str) -> Any:
        """``method`` of the Pipeline on ``X``: numpy for in-memory input, a lazy collection for Dask input."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "pipeline_")
        if not _is_dask(X):
            return getattr(self.pipeline_, method)(self._frame(X))
        from distml.estimators._lazy import apply_lazy

        return apply_lazy(self.pipeline_, X, method, self._raw_columns(), self._output_meta(method))

    def _output_meta(self, method: str) -> tuple[Any, int]:
        """(dtype, width) of ``method``'s result: width 0 for one value per row."""
        classes = getattr(self.pipeline_[-1], "classes_", None)
        if method == "predict":
            return (np.asarray(classes).dtype if classes is not None else np.dtype(np.float64)), 0
        width = len(classes) if classes is not None else 0
        if method == "decision_function" and width == 2:
            width = 0
        return np.dtype(np.float64), width

    def predict(self, X: Any) -> Any:
        """Predictions: numpy for in-memory ``X``, a lazy Dask Series/Array for Dask ``X``."""
        return self._apply(X, "predict")
