"""The workers' numpy transform of numeric features gives scikit-learn's own bits, or steps aside."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from distml.encoding import ColumnPlan, build_transformer, scaled_numeric


def _transformer(numeric: list[str], categorical: tuple[str, ...] = ()) -> object:
    rng = np.random.default_rng(0)
    plan = ColumnPlan(numeric=numeric, categorical=list(categorical),
                      fill={**{c: float(rng.normal()) for c in numeric}, **{c: "a" for c in categorical}},
                      center=rng.normal(size=len(numeric)), var=rng.uniform(0.5, 3.0, size=len(numeric)),
                      n=np.full(len(numeric), 100.0), categories={c: ["a", "b"] for c in categorical},
                      strategy="mean", encoding="onehot")
    return build_transformer(plan, numeric + list(categorical))


def _frame(rows: int = 1000) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    floats = rng.normal(size=(rows, 3)) * [1.0, 1e6, 1e-6]
    floats[rng.random((rows, 3)) < 0.1] = np.nan  # imputed with the plan's fill values
    ints = pd.array(rng.integers(-50, 50, rows), dtype="Int64")
    ints[rng.random(rows) < 0.1] = pd.NA
    return pd.DataFrame({"f0": floats[:, 0], "f1": floats[:, 1], "f2": floats[:, 2],
                         "i": rng.integers(0, 1000, rows), "nullable": ints})


def test_numeric_features_scale_with_numpy_to_the_bits_of_scikit_learns_transform():
    frame = _frame()
    transformer = _transformer(list(frame.columns))
    fast, reference = scaled_numeric(transformer, frame), transformer.transform(frame)
    assert fast.dtype == np.float64 and fast.flags.c_contiguous
    assert fast.tobytes() == np.ascontiguousarray(reference, dtype=np.float64).tobytes()
    assert not np.shares_memory(fast, frame["f0"].to_numpy())  # the frame is left as it was read


@pytest.mark.parametrize("case", ["float32 column", "categorical column", "no fill value", "other column order"])
def test_anything_else_is_left_to_scikit_learn(case):
    frame = _frame()
    numeric = list(frame.columns)
    transformer = _transformer(numeric)
    if case == "float32 column":  # scikit-learn scales float32 in float32
        frame["f0"] = frame["f0"].astype(np.float32)
    elif case == "categorical column":
        frame["c"] = np.where(np.arange(len(frame)) % 2, "a", "b")
        transformer = _transformer(numeric, ("c",))
    elif case == "no fill value":  # an all-null column: scikit-learn's imputer drops it
        transformer.named_transformers_["num"].named_steps["impute"].statistics_[0] = np.nan
    else:
        frame = frame[numeric[::-1]]
    assert scaled_numeric(transformer, frame) is None


def test_a_transformer_of_another_kind_is_left_to_scikit_learn():
    from sklearn.pipeline import Pipeline

    transformer = _transformer(["f0"])
    assert scaled_numeric(Pipeline([("features", transformer)]), _frame()[["f0"]]) is None
