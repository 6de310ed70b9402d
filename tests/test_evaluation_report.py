"""evaluation.html (drawn in headless Chromium), linear coefficients by column, and the new job-file keys."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from browser import chromium_dom
from click.testing import CliRunner
from reference import split_frames

from distml import load_model
from distml.cli import main
from distml.errors import SpecError
from distml.jobfile import parse_job
from distml.runner import run_job
from distml.synth import make_table

CHARTS_SCRIPT = """
<script>window.addEventListener('load', () => {
  const sizes = [...document.querySelectorAll('figure.chart svg')].map(s => {
    const r = s.getBoundingClientRect(); return Math.round(r.width) + 'x' + Math.round(r.height)
      + ':' + s.querySelectorAll('path,rect,use').length; });
  document.body.setAttribute('data-charts', sizes.join(' '));
});</script>
"""


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return make_table(tmp_path_factory.mktemp("report") / "t", rows=4000, files=2)


@pytest.fixture(scope="module")
def binary_model(cluster, table, tmp_path_factory):
    from distributed import Client

    store = tmp_path_factory.mktemp("report-store")
    spec = parse_job({"name": "report", "seed": 0, "data": {"path": str(table), "target": "label", "missing": "impute"},
                      "model": {"kind": "logistic"}, "evaluation": {"permutation_importance": True},
                      "output": {"store": str(store), "evaluation_report": True}}, "test")
    with Client(cluster, set_as_default=False) as client:
        return run_job(spec, client), store


def test_evaluation_html_is_listed_checksummed_and_its_charts_are_drawn_in_chromium(binary_model, searched_model,
                                                                                    tmp_path):
    result, _ = binary_model
    folder = Path(result.uri)
    manifest = json.loads((folder / "manifest.json").read_text())
    payload = (folder / "evaluation.html").read_bytes()
    assert manifest["files"]["evaluation.html"]["sha256"] == hashlib.sha256(payload).hexdigest()
    assert manifest["evaluation_report"] == "evaluation.html"
    load_model(result.uri)  # the store verifies and accepts the version with its new file
    text = payload.decode()
    # Self-contained: no script, stylesheet, image or font fetched (only in-page "#id" references).
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\((?!#)", text)
    assert [ref for ref in re.findall(r'(?:href|src)="([^"]*)"', text) if not ref.startswith(("#", "data:"))] == []
    # The saved page, then (to draw them in the same browser start) the charts of the search job's saved
    # page, and a script that measures each chart once drawn.
    searched = (Path(searched_model.uri) / "evaluation.html").read_text()
    extra = "".join(re.findall(r'<figure class="chart">.*?</figure>', searched, flags=re.DOTALL)[-3:])
    page = tmp_path / "page.html"
    page.write_text(text.replace("</body>", extra + CHARTS_SCRIPT + "</body>"))
    dom = chromium_dom(page.as_uri(), tmp_path / "chrome", "--window-size=1400,5000")
    charts = re.search(r'data-charts="([^"]*)"', dom).group(1).split()
    captions = re.findall(r"<figcaption>([^<]*)</figcaption>", dom)
    assert [c.split(" ")[0] for c in captions][:5] == ["ROC", "precision-recall", "confusion", "coefficients",
                                                        "permutation"]
    assert [c.split(":")[0] for c in captions][5:] == ["training curve", "cross-validation", "search results"]
    for chart in charts:  # each is drawn at a real size, with many marks (axes, ticks, lines, bars)
        size, marks = chart.split(":")
        width, height = map(int, size.split("x"))
        assert width >= 250 and height >= 200 and int(marks) >= 20, chart
    assert len(charts) == 8
    assert f"{manifest['metrics']['accuracy']:.6g}" in dom
    assert "No training curve" in text  # newton does not early-stop: the page says where the curve would come from
    _check_search_page(json.loads((Path(searched_model.uri) / "manifest.json").read_text()), searched, captions[5:])


def _check_search_page(manifest, text, captions):
    """The search job's page draws its manifest's numbers: the curve's stop and kept model, cv, the chosen one."""
    training, cv, search = manifest["training"], manifest["cv"], manifest["search"]
    assert training["curve"] and cv["k"] == 2 and len(search["candidates"]) == 2
    assert "No training curve" not in text
    assert captions[0].startswith(f"training curve: validation log loss (stopped at {training['stopped_at']};")
    assert f"best: {training['best']['epoch']} epochs" in text
    assert f"mean {cv['mean'][cv['scoring']]:.4f} ± {cv['std'][cv['scoring']]:.4f}" in text
    for row in search["candidates"]:
        assert f"alpha={row['params']['alpha']:.3g}" in text


def test_models_show_and_submit_print_where_the_report_is(binary_model):
    result, _ = binary_model
    shown = CliRunner().invoke(main, ["models", "show", result.uri])
    assert shown.exit_code == 0, shown.output
    assert f"evaluation report: {result.uri}/evaluation.html" in shown.stderr
    assert result.summary["evaluation_report"] == f"{result.uri}/evaluation.html"
    from distml.console import summary_lines

    lines = summary_lines(result.summary)
    assert lines[0] == f"  evaluation {result.uri}/evaluation.html"
    assert any(line.startswith("  coefficients (standardized, for 'label-b')") for line in lines)
    assert any(line.startswith("  permutation importance (accuracy lost)") for line in lines)


def test_linear_coefficients_by_column_reproduce_the_model_in_raw_units(cluster, table, tmp_path):
    """Raw-unit coefficients times the raw numbers (one-hot columns as 0/1) plus the raw intercept give the
    saved Pipeline's prediction; the standardized ones are the estimator's own."""
    from distributed import Client

    spec = parse_job({"name": "coef", "seed": 0, "data": {"path": str(table), "target": "x3", "missing": "drop",
                                                         "features": ["x0", "x1", "x2", "color", "flag"]},
                      "model": {"kind": "linear"}, "output": {"store": str(tmp_path), "evaluation_report": False}},
                     "test")
    with Client(cluster, set_as_default=False) as client:
        result = run_job(spec, client)
    manifest = json.loads((Path(result.uri) / "manifest.json").read_text())
    coef = manifest["evaluation"]["coefficients"]
    pipeline = load_model(result.uri)
    assert coef["rows"] == ["target"]
    assert coef["features"][:3] == ["x0", "x1", "x2"]
    categories = pipeline[0].named_transformers_["cat"][-1].categories_
    assert coef["features"][3:] == [f"color={c}" for c in categories[0]] + [f"flag={c}" for c in categories[1]]
    np.testing.assert_array_equal(coef["standardized"][0], pipeline[-1].coef_)
    _, holdout = split_frames(table, 0, 0.2)
    rows = holdout.dropna(subset=["x0", "x1", "x2", "x3", "color", "flag"]).head(200)
    design = np.column_stack([rows[["x0", "x1", "x2"]].to_numpy()]
                             + [(rows["color"].to_numpy()[:, None] == categories[0]).astype(float),
                                (rows["flag"].to_numpy()[:, None] == categories[1]).astype(float)])
    by_hand = design @ np.asarray(coef["raw"][0]) + coef["intercept_raw"][0]
    np.testing.assert_allclose(by_hand, pipeline.predict(rows[spec.data.features]), rtol=1e-9, atol=1e-9)


def test_evaluation_keys_are_validated_by_name():
    base = {"name": "j", "data": {"path": "x", "target": "y"}, "model": {"kind": "forest"}}
    spec = parse_job({**base, "evaluation": {"permutation_importance": True}}, "job.yaml")
    assert spec.evaluation.permutation_importance.repeats == 5 and spec.evaluation.permutation_importance.seed is None
    spec = parse_job({**base, "evaluation": {"permutation_importance": {"repeats": 3, "seed": 9}}}, "job.yaml")
    assert (spec.evaluation.permutation_importance.repeats, spec.evaluation.permutation_importance.seed) == (3, 9)
    assert parse_job({**base, "evaluation": {"permutation_importance": False}}, "j").evaluation.permutation_importance \
        is None
    for evaluation, message in [
        ({"permutation_importance": {"repeat": 3}}, "job.yaml: unknown key 'evaluation.permutation_importance.repeat'"),
        ({"permutation_importance": {"repeats": 0}}, ("job.yaml: evaluation.permutation_importance.repeats: must be "
                                                      "greater than or equal to 1; got 0")),
        ({"importance": True}, "job.yaml: unknown key 'evaluation.importance'"),
    ]:
        with pytest.raises(SpecError) as info:
            parse_job({**base, "evaluation": evaluation}, "job.yaml")
        assert info.value.message == message and info.value.exit_code == 2
    with pytest.raises(SpecError) as info:
        parse_job({**base, "data": {"path": "x", "target": "y", "holdout": 0},
                   "evaluation": {"permutation_importance": True}}, "job.yaml")
    assert info.value.message.startswith("job.yaml: evaluation: permutation_importance is computed on the holdout; "
                                         "data.holdout is 0 (set data.holdout > 0)")
    with pytest.raises(SpecError) as info:
        parse_job({**base, "output": {"onnx": "yes please"}}, "job.yaml")
    assert info.value.message == "job.yaml: output.onnx: must be a valid boolean, unable to interpret input; got 'yes please'"


@pytest.fixture(scope="module")
def searched_model(cluster, table, tmp_path_factory):
    """A search (2-fold cv) over an early-stopping SGD logistic regression: the manifest has training, cv, search."""
    from distributed import Client

    store = tmp_path_factory.mktemp("report-search-store")
    spec = parse_job({"name": "report-search", "seed": 0,
                      "data": {"path": str(table), "target": "label", "missing": "impute"},
                      "model": {"kind": "logistic", "params": {"solver": "sgd", "alpha": 1e-3, "epochs": 12,
                                                               "early_stopping": True, "n_iter_no_change": 1}},
                      "search": {"params": {"alpha": [1e-3, 1e-2]}, "cv": 2},
                      "output": {"store": str(store), "report": False}}, "test")
    with Client(cluster, set_as_default=False) as client:
        return run_job(spec, client)
