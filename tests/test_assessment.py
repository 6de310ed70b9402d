"""`distml evaluate`: a saved model's metrics on new labelled data equal scikit-learn's on the same rows."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn import metrics as skm

from distml import load_model
from distml.assessment import evaluate_dataset
from distml.cli import main
from distml.jobfile import parse_job
from distml.runner import run_job
from distml.synth import make_table


def _train(client, tmp_path, data, target, model, **extra):
    spec = parse_job({"name": "assessed", "seed": 0, "data": {"path": str(data), "target": target, **extra},
                      "model": model, "output": {"store": str(tmp_path / "models")}}, "test")
    return run_job(spec, client).uri


def _rows(path, target):
    frame = pd.read_parquet(path)
    return frame[frame[target].notna()]


def test_classification_metrics_equal_sklearns_on_a_table_with_nulls(client, tmp_path):
    train = make_table(tmp_path / "train", rows=20_000, files=2, null_targets=10)
    fresh = make_table(tmp_path / "fresh", rows=12_000, files=3, null_targets=25, seed=1)
    model = _train(client, tmp_path, train, "label", {"kind": "logistic", "params": {"epochs": 2}},
                   missing="impute", rare_categories="other")
    summary = evaluate_dataset(model, str(fresh), client)
    rows = _rows(fresh, "label")
    pipeline = load_model(model)
    y, X = rows["label"].to_numpy(), rows.drop(columns=["label"])
    predicted, proba = pipeline.predict(X), pipeline.predict_proba(X)
    positive = pipeline.classes_[1]
    assert summary["rows"] == len(rows) and summary["skipped_rows"] == 12_000 - len(rows) > 0 and summary["target"] == "label"
    m = summary["metrics"]
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted), abs=1e-9)
    assert m["precision"] == pytest.approx(skm.precision_score(y, predicted, pos_label=positive), abs=1e-9)
    assert m["recall"] == pytest.approx(skm.recall_score(y, predicted, pos_label=positive), abs=1e-9)
    assert m["f1"] == pytest.approx(skm.f1_score(y, predicted, pos_label=positive), abs=1e-9)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba, labels=pipeline.classes_), abs=1e-9)
    # 4096 score bins: pairs within one bin count half, so the AUC is within a bin's share of pairs
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y == positive, proba[:, 1]), abs=1e-3)


def test_multiclass_and_regression_metrics_equal_sklearns(client, tmp_path, make_data):
    folder, test_file = make_data("classification", rows=12_000, features=5, files=2, classes=3)
    model = _train(client, tmp_path, folder, "target", {"kind": "forest", "params": {"n_estimators": 5}})
    m = evaluate_dataset(model, str(test_file), client)["metrics"]
    rows = _rows(test_file, "target")
    pipeline = load_model(model)
    y, X = rows["target"].to_numpy(), rows.drop(columns=["target"])
    predicted = pipeline.predict(X)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted), abs=1e-9)
    assert m["f1"] == pytest.approx(skm.f1_score(y, predicted, average="macro"), abs=1e-9)
    assert m["precision"] == pytest.approx(skm.precision_score(y, predicted, average="macro"), abs=1e-9)
    assert "roc_auc" not in m

    folder, test_file = make_data("regression", rows=8_000, features=4, files=2)
    model = _train(client, tmp_path, folder, "target", {"kind": "linear"})
    m = evaluate_dataset(model, str(test_file), client)["metrics"]
    rows = _rows(test_file, "target")
    y, predicted = rows["target"].to_numpy(), load_model(model).predict(rows.drop(columns=["target"]))
    assert m["r2"] == pytest.approx(skm.r2_score(y, predicted), abs=1e-9)
    assert m["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, predicted)), abs=1e-9)
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, predicted), abs=1e-9)


def test_bad_evaluation_data_gets_one_line_and_exit_2(client, tmp_path, make_data):
    folder, test_file = make_data("classification", rows=6_000, features=3, files=2)
    model = _train(client, tmp_path, folder, "target", {"kind": "logistic", "params": {"epochs": 1}})
    frame = pd.read_parquet(test_file)
    scheduler = ["--scheduler", client.scheduler.address]

    no_target = tmp_path / "no-target.parquet"
    frame.drop(columns=["target"]).to_parquet(no_target)
    out = CliRunner().invoke(main, ["evaluate", model, str(no_target), *scheduler])
    assert out.exit_code == 2
    assert out.stderr == f"Error: {no_target}: target column 'target' not found; columns are x0, x1, x2\n"

    new_label = tmp_path / "new-label.parquet"
    frame.assign(target=np.where(frame.index == 5, 7, frame["target"])).to_parquet(new_label)
    out = CliRunner().invoke(main, ["evaluate", model, str(new_label), *scheduler])
    assert out.exit_code == 2
    assert out.stderr == (f"Error: {new_label}: column 'target': target value 7 is not one of the model's "
                          "classes (0, 1)\n")

    texts = tmp_path / "texts.parquet"
    frame.assign(x1=frame["x1"].astype(str)).to_parquet(texts)
    out = CliRunner().invoke(main, ["evaluate", model, str(texts), *scheduler])
    assert out.exit_code == 2 and out.stderr.startswith(f"Error: {texts}: column 'x1' is ")
    assert out.stderr.endswith("(categorical), expected numeric as in training (double)\n")

    good = CliRunner().invoke(main, ["evaluate", model, str(test_file), *scheduler, "--json"])
    assert good.exit_code == 0, good.output
    assert json.loads(good.stdout)["rows"] == len(frame)
