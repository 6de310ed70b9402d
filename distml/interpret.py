"""What a model relies on, by input column: linear coefficients, impurity importances, permutation plans.

The fitted feature transformer (``distml.encoding.build_transformer``) names
every encoded column's input column; one-hot columns read ``column=value``.
Coefficients are given as fitted (on standardized numeric columns) and in raw
units: a numeric column's coefficient divided by the scaler's scale, the
intercept moved by the scaler's means, so ``raw @ x + raw_intercept`` is the
model's decision value on raw rows (imputation aside).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distml.evaluate import PermutationPlan


def encoded_columns(transformer: Any) -> list[tuple[str, str]]:
    """(input column, encoded column name) for each output column of the fitted transformer, in order."""
    out: list[tuple[str, str]] = []
    for _, step, columns in transformer.transformers_:
        if step == "drop" or not len(columns):
            continue
        columns = [str(c) for c in columns]
        encoder = step.named_steps.get("encode") if hasattr(step, "named_steps") else None
        if encoder is not None and hasattr(encoder, "sparse_output"):  # one-hot: a column per category
            for column, categories in zip(columns, encoder.categories_):
                out.extend((column, f"{column}={value}") for value in categories)
        else:
            out.extend((column, column) for column in columns)
    return out


def _scaler(transformer: Any) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    step = transformer.named_transformers_.get("num")
    if step is None or not hasattr(step, "named_steps") or "scale" not in step.named_steps:
        return None
    scale = step.named_steps["scale"]
    return [str(c) for c in transformer.transformers_[0][2]], scale.mean_, scale.scale_


def coefficients(transformer: Any, estimator: Any, classes: np.ndarray | None) -> dict[str, Any] | None:
    """A linear estimator's coefficients by encoded column, standardized and raw; None for other estimators.

    ``rows`` names what each coefficient row scores: the target (regression), the positive class
    (binary) or each class (multiclass).
    """
    coef = getattr(estimator, "coef_", None)
    if coef is None or not isinstance(coef, np.ndarray):
        return None
    names = encoded_columns(transformer)
    coef = np.atleast_2d(np.asarray(coef, dtype=np.float64))
    if coef.shape[1] != len(names):
        return None  # e.g. a kernel approximation's features: not input columns
    intercept = np.atleast_1d(np.asarray(estimator.intercept_, dtype=np.float64)) * np.ones(len(coef))
    raw, raw_intercept = coef.copy(), intercept.copy()
    scaler = _scaler(transformer)
    if scaler is not None:
        numeric, mean, scale = scaler
        index = [i for i, (owner, name) in enumerate(names) if owner == name and owner in numeric]
        raw[:, index] = coef[:, index] / scale
        raw_intercept = intercept - raw[:, index] @ mean
    labels = None if classes is None else [v.item() if hasattr(v, "item") else v for v in classes]
    rows = ["target"] if labels is None else [labels[1]] if len(coef) == 1 else labels
    return {"features": [name for _, name in names], "inputs": [owner for owner, _ in names], "rows": rows,
            "standardized": coef.tolist(), "raw": raw.tolist(),
            "intercept_standardized": intercept.tolist(), "intercept_raw": raw_intercept.tolist(),
            "units": "standardized: per standard deviation of a numeric column (as fitted); raw: per unit of "
                     "the column as stored; one-hot columns are 0/1 in both"}


def impurity_importances(transformer: Any, estimator: Any) -> dict[str, float] | None:
    """The estimator's ``feature_importances_`` (if it has them) summed back onto the input columns."""
    values = getattr(estimator, "feature_importances_", None)
    if values is None:
        return None
    owners = [owner for owner, _ in encoded_columns(transformer)]
    if len(owners) != len(values):  # an unusual transformer: keep its own output names
        owners = [str(n) for n in transformer.get_feature_names_out()]
    out: dict[str, float] = {}
    for owner, value in zip(owners, values):
        out[owner] = out.get(owner, 0.0) + float(value)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def permutation_plan(transformer: Any, repeats: int, seed: int) -> PermutationPlan:
    """One group of encoded columns per input column, and a seed per (column, repeat) drawn here, on the client."""
    groups: dict[str, list[int]] = {}
    for i, (owner, _) in enumerate(encoded_columns(transformer)):
        groups.setdefault(owner, []).append(i)
    sequence = np.random.SeedSequence([seed, 0x5045524D])  # "PERM": apart from the training seeds
    seeds = sequence.generate_state(len(groups) * repeats, dtype=np.uint64).reshape(len(groups), repeats)
    return PermutationPlan(tuple(groups), tuple(tuple(g) for g in groups.values()), seeds)


def top(values: dict[str, float], n: int = 10) -> list[tuple[str, float]]:
    """The ``n`` entries of largest magnitude, largest first."""
    return sorted(values.items(), key=lambda kv: -abs(kv[1]))[:n]


def explained(details: dict[str, Any], transformer: Any, estimator: Any, classes: np.ndarray | None) -> dict[str, Any]:
    """The manifest's ``evaluation`` section: the holdout's details plus the linear coefficients, if any."""
    out = dict(details)
    coef = coefficients(transformer, estimator, classes)
    if coef is not None:
        out["coefficients"] = coef
    return out


def summary_of(manifest: dict[str, Any], uri: str) -> dict[str, Any]:
    """What ``distml submit`` prints (and ``--json`` gives) beyond the metrics: short, top 10 of each."""
    evaluation = manifest.get("evaluation", {})
    out: dict[str, Any] = {}
    if evaluation.get("positive_class") is not None:
        out["positive_class"] = evaluation["positive_class"]
    if manifest.get("feature_importances"):
        out["feature_importances"] = manifest["feature_importances"]
    coef = evaluation.get("coefficients")
    if coef:  # the first row: the target, or the positive class; a multiclass model's first class
        out["coefficients"] = {"row": coef["rows"][0], "standardized": dict(
            top(dict(zip(coef["features"], coef["standardized"][0]))))}
    permuted = evaluation.get("permutation_importance")
    if permuted:
        out["permutation_importance"] = {"score": permuted["score"], "importances": {
            name: v["mean"] for name, v in list(permuted["importances"].items())[:10]}}
    if manifest.get("evaluation_report"):
        out["evaluation_report"] = f"{uri}/{manifest['evaluation_report']}"
    if "onnx" in manifest:
        out["onnx"] = f"{uri}/model.onnx" if manifest["onnx"]["file"] else f"not written: {manifest['onnx']['reason']}"
    return out
