"""Real tables: categories, booleans, nulls, string targets, schema drift, stable holdout, partitioning."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distml import load_model
from distml.data import FileInfo, _file_pieces, open_dataset
from distml.draws import row_draws
from distml.errors import DataError
from distml.features import plan_features
from distml.jobfile import parse_job
from distml.runner import run_job
from distml.spec import DataSpec
from distml.stats import QuantileSketch, hll_count, merge_counts, summarize_categories
from distml.synth import make_table

FEATURES = ["x0", "x1", "x2", "x3", "color", "city", "flag"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return make_table(tmp_path_factory.mktemp("tables") / "t", rows=150_000, files=4, null_targets=40)


def _spec(path, tmp_path, model=None, name="tables", **data):
    return parse_job({"name": name, "seed": 0, "data": {"path": str(path), "target": "label", **data},
                      "model": model or {"kind": "logistic"}, "output": {"store": str(tmp_path / "models")}}, "test")


def _split(folder: Path, holdout: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows distml trains and evaluates on, chosen exactly as distml chooses them."""
    train, test = [], []
    for path in sorted(folder.glob("*.parquet")):
        frame = pd.read_parquet(path)
        u = row_draws(0, path.name, np.arange(len(frame), dtype=np.uint64))
        keep = frame["label"].notna().to_numpy()
        train.append(frame[(u >= holdout) & keep])
        test.append(frame[(u < holdout) & keep])
    return pd.concat(train, ignore_index=True), pd.concat(test, ignore_index=True)


def _reference(estimator, encoder):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    numeric = make_pipeline(SimpleImputer(), StandardScaler())
    categorical = make_pipeline(SimpleImputer(strategy="most_frequent"), encoder)
    features = ColumnTransformer([("num", numeric, FEATURES[:4]), ("cat", categorical, FEATURES[4:])])
    return make_pipeline(features, estimator)


def _as_object(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for c in ("color", "city", "flag"):
        out[c] = out[c].astype(object).where(out[c].notna(), np.nan)
    return out


@pytest.mark.parametrize("kind", ["logistic", "forest"])
def test_table_with_categories_and_nulls_scores_within_a_point_of_sklearn(client, tmp_path, table, kind):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    model = {"kind": "logistic", "params": {"epochs": 10}} if kind == "logistic" else \
        {"kind": "forest", "params": {"n_estimators": 12, "max_depth": 10}}
    logs: list[str] = []
    result = run_job(_spec(table, tmp_path, model, missing="impute"), client, log=logs.append)
    assert any("dropped 40 rows with a null target 'label'" in line for line in logs)
    train, test = _split(table)
    assert result.rows == {"total": len(train) + len(test), "train": len(train), "holdout": len(test)}
    if kind == "logistic":
        reference = _reference(LogisticRegression(max_iter=1000), OneHotEncoder(handle_unknown="ignore"))
    else:
        reference = _reference(RandomForestClassifier(n_estimators=12, max_depth=10, random_state=0, n_jobs=1),
                               OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1))
    reference.fit(_as_object(train[FEATURES]), train["label"])
    theirs = float((reference.predict(_as_object(test[FEATURES])) == test["label"]).mean())
    ours = result.metrics["accuracy"]
    assert abs(ours - theirs) < 0.01, (kind, ours, theirs)
    saved = load_model(result.uri)
    np.testing.assert_allclose(float((saved.predict(test[FEATURES]) == test["label"]).mean()), ours, atol=1e-9)
    encoder = saved[0].named_transformers_["cat"][-1]
    assert type(encoder).__name__ == ("OneHotEncoder" if kind == "logistic" else "OrdinalEncoder")
    odd = pd.DataFrame({"x0": [np.nan, 1.0], "x1": [None, 2.0], "x2": [0.0, np.nan], "x3": [1.0, 1.0],
                        "color": ["purple", None], "city": [np.nan, "city-99"], "flag": [None, True]})
    assert set(saved.predict(odd)) <= {"label-a", "label-b"}  # unseen categories and nulls: no crash
    nullable = test[FEATURES].convert_dtypes()  # pd.NA in the text and boolean columns: README's two lines
    assert nullable[["color", "city", "flag"]].isna().any().all()
    text = nullable.select_dtypes(exclude="number").columns
    nullable[text] = nullable[text].astype(object).where(nullable[text].notna(), None)
    np.testing.assert_array_equal(saved.predict(nullable), saved.predict(test[FEATURES]))


def test_median_imputation_comes_from_the_cluster_sketch(client, tmp_path, table):
    spec = _spec(table, tmp_path, missing="impute", impute_strategy="median")
    dataset = open_dataset(spec.data, 0)
    dataset.partition(2**20)
    plan = plan_features(dataset, client, "median", "classification")
    train, _ = _split(table)
    imputer = plan.transformer.named_transformers_["num"].named_steps["impute"]
    exact = train[FEATURES[:4]].median().to_numpy()
    np.testing.assert_allclose(imputer.statistics_, exact, rtol=0.02, atol=0.05)
    assert imputer.strategy == "median"
    cat_fill = plan.transformer.named_transformers_["cat"].named_steps["impute"].statistics_
    assert list(cat_fill) == [train[c].mode()[0] for c in ("color", "city", "flag")]


def test_missing_drop_drops_and_counts_incomplete_rows(client, tmp_path, table):
    logs: list[str] = []
    dataset = open_dataset(_spec(table, tmp_path, missing="drop").data, 0)
    dataset.partition(4 * 2**20)
    plan = plan_features(dataset, client, "drop", "classification", log=logs.append)
    train, test = _split(table)
    assert plan.parts.train_rows == len(train.dropna()) and plan.parts.holdout_rows == len(test.dropna())
    dropped = len(train) + len(test) - len(train.dropna()) - len(test.dropna())
    assert any(f"dropped {dropped:,} rows with null values" in line for line in logs)


def test_rare_categories_other_keeps_the_most_frequent(client, tmp_path, table):
    dataset = open_dataset(_spec(table, tmp_path, missing="impute", max_categories=5, rare_categories="other").data, 0)
    dataset.partition(4 * 2**20)
    plan = plan_features(dataset, client, "rare", "classification")
    encoder = plan.transformer.named_transformers_["cat"][-1]
    train, _ = _split(table)
    assert set(encoder.categories_[1]) == set(train["city"].value_counts().index[:5])
    rare = pd.DataFrame({c: [train[c].iloc[0]] * 2 for c in FEATURES}).assign(city=["city-30", "city-31"])
    out = plan.transformer.transform(rare)
    assert (out[0] == out[1]).all()  # every rare city falls in one group


def _write(path: Path, **columns) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def _bad(tmp_path, client, **data):
    """Run a job expected to fail; returns its one-line message after checking no artifact was written."""
    spec = _spec(data.pop("path"), tmp_path, **data)
    with pytest.raises(DataError) as info:
        run_job(spec, client)
    assert "\n" not in info.value.message
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("manifest.json"))
    return info.value.message


def test_bad_tables_get_one_line_naming_the_column(client, tmp_path, table):
    message = _bad(tmp_path, client, path=table, missing="impute", max_categories=10)
    assert re.search(r"column 'city' has about (3[6-9]|4[0-4]) distinct values, more than data.max_categories \(10\)",
                     message)
    message = _bad(tmp_path, client, path=table)
    assert "null values in 'city' (" in message and "'x0' (" in message and "data.missing" in message
    one = tmp_path / "one"
    _write(one / "a.parquet", x=np.arange(100.0), label=np.array(["yes"] * 100, dtype=object))
    assert "single class ('yes')" in _bad(tmp_path, client, path=one)


def test_files_whose_schema_differs_are_named_by_file_and_column(tmp_path):
    mixed = tmp_path / "mixed"
    _write(mixed / "a.parquet", x=np.arange(10), c=np.array(["u"] * 10, dtype=object), label=np.arange(10) % 2)
    _write(mixed / "b.parquet", x=np.arange(10), c=np.arange(10), label=np.arange(10) % 2)
    with pytest.raises(DataError) as info:
        open_dataset(_spec(mixed, tmp_path).data, 0)
    assert "b.parquet: column 'c' is int64 (numeric), expected categorical" in info.value.message
    assert info.value.exit_code == 2
    missing = tmp_path / "missing"
    _write(missing / "a.parquet", x=np.arange(10), y=np.arange(10.0), label=np.arange(10) % 2)
    _write(missing / "b.parquet", x=np.arange(10), label=np.arange(10) % 2)
    with pytest.raises(DataError, match=r"b\.parquet: column 'y' is missing \(present in .*a\.parquet\)"):
        open_dataset(_spec(missing, tmp_path).data, 0)


def test_int_float_and_all_null_versions_of_a_column_are_reconciled(client, tmp_path):
    folder = tmp_path / "drift"
    rng = np.random.default_rng(0)
    for i in range(3):
        x = rng.normal(size=2000)
        label = np.where(x + rng.normal(scale=0.5, size=2000) > 0, "up", "down").astype(object)
        count = pa.array(rng.integers(0, 5, 2000)) if i == 0 else pa.array(rng.random(2000) * 5)
        kind = pa.array(np.where(x > 1, "hi", "lo").astype(object)) if i else pa.nulls(2000, pa.null())
        _write(folder / f"p{i}.parquet", x=x, count=count, kind=kind, label=label)
    dataset = open_dataset(_spec(folder, tmp_path).data, 0)
    assert dataset.schema["count"] == "double" and dataset.schema["kind"] == "string"
    result = run_job(_spec(folder, tmp_path, missing="impute"), client)
    assert result.metrics["accuracy"] > 0.8


def test_constant_feature_is_a_warning_and_constant_target_an_error(client, tmp_path):
    folder = tmp_path / "const"
    x = np.random.default_rng(1).normal(size=3000)
    _write(folder / "a.parquet", x=x, same=np.ones(3000), tag=np.array(["k"] * 3000, dtype=object),
           label=(x > 0).astype(np.int64), level=np.full(3000, 2.5))
    logs: list[str] = []
    run_job(_spec(folder, tmp_path, features=["x", "same", "tag"]), client, log=logs.append)
    assert any("feature 'same' is constant" in line for line in logs)
    assert any("feature 'tag' is constant" in line for line in logs)
    spec = parse_job({"name": "const", "data": {"path": str(folder), "target": "level", "features": ["x"]},
                      "model": {"kind": "linear"}, "output": {"store": str(tmp_path / "m2")}}, "test")
    with pytest.raises(DataError, match=r"target 'level' is constant \(2\.5 in every training row\)"):
        run_job(spec, client)


def test_holdout_rows_are_the_same_whatever_the_partitioning_and_workers(client, tmp_path):
    from distributed import Client, LocalCluster

    from distml.blocks import _load_part

    table = make_table(tmp_path / "t", rows=20_000, files=3, row_group_rows=2_000)

    def holdout_rows(c, size):
        dataset = open_dataset(_spec(table, tmp_path, missing="impute").data, 0)
        pieces = dataset.partition(size)
        plan = plan_features(dataset, c, "holdout", "classification")
        assert dataset.pieces == pieces  # the plan cuts its own pieces; the dataset it was handed is unchanged
        blocks = c.gather([c.submit(_load_part, s, pure=False) for s in plan.parts.holdout])
        u = np.concatenate([b.u for b in blocks])
        order = np.argsort(u)
        return plan.parts.n_parts, u[order], np.concatenate([b.X for b in blocks])[order]

    n_small, u_small, x_small = holdout_rows(client, 2**20 // 8)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit="1GiB", silence_logs=40) as other, \
            Client(other, set_as_default=False) as one_worker:
        n_large, u_large, x_large = holdout_rows(one_worker, 64 * 2**20)
    assert n_small > n_large
    np.testing.assert_array_equal(u_small, u_large)  # the same rows (each row's draw is unique)...
    np.testing.assert_allclose(x_small, x_large, rtol=1e-9, atol=1e-9)  # ...with the same values


def test_pieces_split_large_row_groups_evenly_and_combine_small_files(tmp_path):
    info = FileInfo("f", "f", 25_000, 0, (10_000, 500, 500, 14_000))
    pieces = _file_pieces(info, 4_000)
    assert [(p.row_groups, p.skip, p.first_row, p.num_rows) for p in pieces] == [
        ((0,), 0, 0, 3333), ((0,), 3333, 3333, 3333), ((0,), 6666, 6666, 3334), ((1, 2), 0, 10_000, 1000),
        ((3,), 0, 11_000, 3500), ((3,), 3500, 14_500, 3500), ((3,), 7000, 18_000, 3500), ((3,), 10_500, 21_500, 3500)]
    # a row group a little over the size asked for stays whole: cut, it would be read twice a pass
    info = FileInfo("g", "g", 9_500, 0, (4_900, 4_600))
    assert [(p.row_groups, p.skip, p.num_rows) for p in _file_pieces(info, 4_000)] == [((0,), 0, 4_900), ((1,), 0, 4_600)]
    assert [(p.row_groups, p.num_rows) for p in _file_pieces(info, 3_900)] == [((0,), 2_450), ((0,), 2_450),
                                                                               ((1,), 4_600)]
    folder = tmp_path / "small"
    for i in range(12):
        _write(folder / f"f{i:02d}.parquet", x=np.arange(i * 100, (i + 1) * 100, dtype=np.float64),
               label=np.arange(100) % 2)
    dataset = open_dataset(_spec(folder, tmp_path).data, 0)
    pieces = dataset.partition(2**20)  # far more than 12 small files: one task reads them all
    assert len(pieces) == 1 and len(pieces[0].members) == 12
    frame, draws = dataset.reader.read(pieces[0])
    assert frame["x"].tolist() == list(range(1200)) and len(draws) == 1200


def test_category_summaries_stay_bounded_and_count_distinct_values():
    ids = pd.Series([f"id-{i}" for i in range(20_000)])
    a, ha = summarize_categories(ids[:12_000], cap=11)
    b, hb = summarize_categories(ids[8_000:], cap=11)
    assert len(a) == len(b) == len(merge_counts(a, b, 11)) == 11
    assert abs(hll_count(np.maximum(ha, hb)) - 20_000) < 20_000 * 0.05
    values = np.random.default_rng(0).lognormal(size=50_000) - 1.0
    sketch = QuantileSketch.of(values[:20_000]).merge(QuantileSketch.of(values[20_000:]))
    assert sketch.quantile(0.5) == pytest.approx(np.median(values), rel=0.03)


def test_the_statistics_pass_reads_every_row_of_every_piece_once(make_data, client):
    folder, _ = make_data("classification", rows=20_000, features=6, files=3)
    dataset = open_dataset(DataSpec(path=str(folder), target="target", holdout=0.0), seed=0)
    pieces = dataset.partition(2**18)
    plan = plan_features(dataset, client, "pieces", "classification")
    assert len(pieces) > 3 and plan.parts.n_parts == len(pieces)
    assert plan.stats.rows == plan.stats.train_rows == 20_000  # only the counts come back
    assert dataset.reader.columns == (*dataset.features, "target")
