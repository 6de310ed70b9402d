"""``model.onnx``: the saved Pipeline converted with skl2onnx, one ONNX input per raw column.

Numeric columns are ``float`` inputs of shape ``[N, 1]`` (NaN is a missing
value, imputed as the Pipeline does); every other column (strings, booleans)
is a ``string`` input whose missing value is the empty string. The converted
copy differs from the saved Pipeline only where ONNX needs it: categories are
compared as text (``True``, not the boolean), and the categorical imputers
(one for NaN, one for None, neither expressible on ONNX strings) become one
that fills ``""`` with the same most frequent value. skl2onnx is imported
only when ``output.onnx: true`` asks for it (it takes seconds to import).
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np

TARGET_OPSET = 17  # onnxruntime 1.16+ runs it; the ai.onnx.ml domain follows skl2onnx's default


class OnnxUnsupported(Exception):
    """The Pipeline has a step ONNX (or skl2onnx) cannot express; the message says which, in one line."""


def _onnx_ready(pipeline: Any) -> Any:
    """A copy of ``pipeline`` whose categorical branch takes text, with ``""`` as its missing value."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline

    ready = copy.deepcopy(pipeline)
    features = ready.steps[0][1]
    branch = features.named_transformers_.get("cat")
    if isinstance(branch, Pipeline) and "encode" in branch.named_steps:
        encoder = branch.named_steps["encode"]
        encoder.categories_ = [np.array([str(v) for v in c], dtype=object) for c in encoder.categories_]
        if hasattr(encoder, "_missing_indices"):
            encoder._missing_indices = {}
        fills = branch.named_steps["impute"].statistics_
        imputer = SimpleImputer(missing_values="", strategy="most_frequent")
        imputer.fit(np.array([[str(v) for v in fills]], dtype=object))
        branch.steps = [("impute", imputer), ("encode", encoder)]
    return ready


def input_types(pipeline: Any, kinds: dict[str, str]) -> list[tuple[str, Any]]:
    """One ONNX input per raw column the Pipeline reads: float for numeric columns, string for the rest."""
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    return [(str(c), FloatTensorType([None, 1]) if kinds.get(str(c)) == "numeric" else StringTensorType([None, 1]))
            for c in pipeline.feature_names_in_]


def to_onnx(pipeline: Any, kinds: dict[str, str]) -> bytes:
    """The serialized ONNX model of ``pipeline`` (labels and, for a classifier, a plain probability tensor)."""
    try:
        from skl2onnx import convert_sklearn
    except ImportError:
        raise OnnxUnsupported("skl2onnx is not installed (pip install 'distml[onnx]')") from None
    estimator = pipeline.steps[-1][1]
    options = {id(estimator): {"zipmap": False}} if hasattr(estimator, "classes_") else None
    try:
        ready = _onnx_ready(pipeline)
        if options:  # the option is keyed by the object: point it at the copy's estimator
            options = {id(ready.steps[-1][1]): options[id(estimator)]}
        model = convert_sklearn(ready, initial_types=input_types(pipeline, kinds), options=options,
                                target_opset=TARGET_OPSET)
    except Exception as exc:  # noqa: BLE001 - skl2onnx raises many kinds; the job reports the reason and goes on
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise OnnxUnsupported(f"skl2onnx cannot convert {_describe(pipeline)}: {type(exc).__name__}: {first}") from None
    return model.SerializeToString()


def _describe(pipeline: Any) -> str:
    estimator = pipeline.steps[-1][1]
    if hasattr(estimator, "steps"):
        return " + ".join(type(s).__name__ for _, s in estimator.steps)
    return type(estimator).__name__


def onnx_inputs(frame: Any, kinds: dict[str, str], columns: list[str]) -> dict[str, np.ndarray]:
    """The ONNX inputs for a pandas DataFrame of raw rows: float32 columns (NaN for missing) and text
    columns (``""`` for missing) of shape ``[N, 1]``."""
    import pandas as pd

    feeds = {}
    for column in columns:
        values = frame[column]
        if kinds.get(column) == "numeric":
            feeds[column] = values.to_numpy(dtype=np.float32, na_value=np.nan).reshape(-1, 1)
        else:
            text = values.astype(object).where(pd.notna(values), "").map(str)
            feeds[column] = text.to_numpy(dtype=object).reshape(-1, 1)
    return feeds
