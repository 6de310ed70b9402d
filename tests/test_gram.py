"""``linear`` exact takes its Gram matrix from the statistics pass (``distml.gram``) where the columns allow it.

The merged cross moments give the Gram matrix of the standardised rows, whatever the grouping of the merges;
a job on numeric columns then makes no training pass and persists nothing, and its model equals the one the
Gram pass gives; where a column is categorical or has nulls, the pass is made as before.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from distml import load_model
from distml.gram import CrossMoments
from distml.jobfile import parse_job
from distml.models import linear
from distml.runner import run_job


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(Z=arrays(np.float64, st.tuples(st.integers(1, 40), st.integers(2, 4)), elements=st.floats(-1e3, 1e3)),
       cuts=st.lists(st.integers(0, 40), max_size=5), center_shift=st.floats(-5, 5), scale=st.floats(0.1, 10))
def test_merged_cross_moments_give_the_gram_matrix_of_the_standardised_rows(Z, cuts, center_shift, scale):
    bounds = [0, *sorted(min(c, len(Z)) for c in cuts), len(Z)]
    parts = [CrossMoments.of(Z[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge(part)
    p = Z.shape[1] - 1
    center, scales = Z[:, :p].mean(axis=0) + center_shift, np.full(p, scale)
    X = (Z[:, :p] - center) / scales
    augmented = np.column_stack([X, np.ones(len(Z)), Z[:, p]])
    expected = augmented.T @ augmented
    np.testing.assert_allclose(merged.gram(center, scales), expected, rtol=1e-8, atol=1e-8 * max(1.0, np.abs(expected).max()))


def _job(client, tmp_path, folder, params, name, **data):
    spec = parse_job({"name": name, "data": {"path": str(folder), "target": "target", **data},
                      "model": {"kind": "linear", "params": params},
                      "output": {"store": str(tmp_path / "models")}}, "test")
    lines: list[str] = []
    client.get_task_stream(start=0, stop=0)  # starts the scheduler's task stream if it is not recording yet
    result = run_job(spec, client, log=lines.append)
    phases = {str(r["key"]).split("-")[1] for r in client.get_task_stream()
              if f"-{result.job_id}-" in str(r["key"])}
    return load_model(result.uri)[-1], lines, phases


@pytest.mark.parametrize("alpha", [0.0, 3.0])
def test_exact_linear_on_numeric_columns_makes_no_training_pass_and_equals_the_gram_pass(
        client, tmp_path, make_data, monkeypatch, alpha):
    folder, _ = make_data("regression", rows=20_000, features=6, files=4)
    fused, lines, phases = _job(client, tmp_path, folder, {"alpha": alpha}, "gram-fused")
    assert "exact: the Gram matrix came with the statistics pass; no training pass" in lines
    assert {"stats", "eval"} <= phases and not phases & {"train", "load"}, phases

    monkeypatch.setattr(linear, "wants_cross_products", lambda params: False)
    summed, lines, phases = _job(client, tmp_path, folder, {"alpha": alpha}, "gram-pass")
    assert "train" in phases and not any("came with the statistics pass" in line for line in lines)
    np.testing.assert_allclose(fused.coef_, summed.coef_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fused.intercept_, summed.intercept_, rtol=1e-9, atol=1e-12)
    assert type(fused) is type(summed)


def test_a_categorical_column_or_nulls_make_the_gram_pass(client, tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(2):
        x = rng.normal(size=(3000, 2))
        frame = pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "target": 2 * x[:, 0] - x[:, 1] + rng.normal(size=3000)})
        if i:
            frame.loc[::7, "x1"] = np.nan
        frame.to_parquet(folder / f"part-{i}.parquet")
    _, lines, phases = _job(client, tmp_path, folder, {}, "gram-nulls", missing="impute")
    assert "train" in phases and not any("came with the statistics pass" in line for line in lines)
    frame["city"] = rng.choice(["a", "b"], size=3000)
    for path in folder.iterdir():
        path.unlink()
    frame.dropna().to_parquet(folder / "part-0.parquet")
    _, lines, phases = _job(client, tmp_path, folder, {}, "gram-category")
    assert "train" in phases and not any("came with the statistics pass" in line for line in lines)
