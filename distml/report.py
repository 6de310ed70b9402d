"""``evaluation.html``: the saved model's holdout evaluation as one self-contained page of charts.

Drawn from the manifest alone (metrics, confusion matrix, curves, residual
quantiles, coefficients, importances, the early-stopping training curve, cross-validation and search results) with matplotlib's object API and its
SVG backend, so the page holds inline ``<svg>`` and fetches nothing when
viewed. matplotlib is imported only here, when a report is written
(``output.evaluation_report: false`` skips it).
"""
from __future__ import annotations

import html
import io
import json
from typing import Any

TOP = 20  # bars per chart

# --- charts ------------------------------------------------------------------------------------


def _figure(width: float = 5.0, height: float = 3.6, left: float = 0.14) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))  # a fixed layout: "constrained" doubles the drawing time
    figure.subplots_adjust(left=left, right=0.96, bottom=0.16, top=0.9)
    return figure


def _svg(figure: Any) -> str:
    import matplotlib

    buffer = io.StringIO()
    # Text stays text (glyphs as paths triple the time and the size); ids are salted by a constant and the
    # date left out, so the same model draws the same bytes.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "distml"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: the page is HTML


def _curve(x: list[float], y: list[float], xlabel: str, ylabel: str, title: str, diagonal: bool) -> str:
    figure = _figure(4.2, 3.8)
    ax = figure.add_subplot()
    ax.plot(x, y, drawstyle="steps-post" if not diagonal else "default", color="#1f77b4")
    if diagonal:
        ax.plot([0, 1], [0, 1], linestyle="--", color="#999999", linewidth=1)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    return _svg(figure)


def _confusion(matrix: list[list[int]], labels: list[Any]) -> str:
    import numpy as np

    m = np.asarray(matrix)
    size = min(9.0, 2.5 + 0.45 * len(labels))
    figure = _figure(size + 1.0, size, left=0.2)
    ax = figure.add_subplot()
    image = ax.imshow(m, cmap="Blues")
    figure.colorbar(image, ax=ax, shrink=0.8)
    ticks = range(len(labels))
    ax.set_xticks(ticks, [str(v) for v in labels], rotation=45 if len(labels) > 4 else 0)
    ax.set_yticks(ticks, [str(v) for v in labels])
    ax.set(xlabel="predicted class", ylabel="true class", title="confusion matrix (holdout)")
    if len(labels) <= 20:
        threshold = m.max() / 2 if m.size else 0
        for (i, j), value in np.ndenumerate(m):
            ax.text(j, i, f"{value:,}", ha="center", va="center", fontsize=8,
                    color="white" if value > threshold else "black")
    return _svg(figure)


def _bars(values: dict[str, float], title: str, xlabel: str, errors: dict[str, float] | None = None) -> str:
    names = list(values)[:TOP][::-1]  # largest at the top
    figure = _figure(6.0, 1.2 + 0.28 * len(names), left=0.34)
    ax = figure.add_subplot()
    heights = [values[n] for n in names]
    ax.barh(range(len(names)), heights, xerr=[errors[n] for n in names] if errors else None,
            color=["#d62728" if v < 0 else "#1f77b4" for v in heights])
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.axvline(0, color="#555555", linewidth=0.8)
    ax.set(title=title, xlabel=xlabel)
    ax.grid(axis="x", alpha=0.3)
    return _svg(figure)


def _quantiles(quantiles: dict[str, float], title: str) -> str:
    figure = _figure(5.0, 3.4)
    ax = figure.add_subplot()
    qs = [float(q) for q in quantiles]
    ax.plot(qs, list(quantiles.values()), marker="o", color="#1f77b4")
    ax.axhline(0, color="#555555", linewidth=0.8)
    ax.set(xlabel="quantile", ylabel="residual (y - prediction)", title=title)
    ax.grid(alpha=0.3)
    return _svg(figure)


def _training(training: dict[str, Any]) -> str:
    """The early-stopping curve: validation loss per epoch or out-of-bag score per tree count, best marked."""
    by_trees = "trees" in (training["curve"][0] if training["curve"] else {})
    xkey, ykey = ("trees", "oob_score") if by_trees else ("epoch", "validation_loss")
    x = [p[xkey] for p in training["curve"]]
    y = [p[ykey] for p in training["curve"]]
    figure = _figure(5.0, 3.6, left=0.16)
    ax = figure.add_subplot()
    ax.plot(x, y, marker="o", markersize=3, color="#1f77b4", label=training["metric"])
    best = training.get("best")
    if best:
        ax.plot([best[xkey]], [best[ykey]], marker="*", markersize=12, color="#d62728", linestyle="none",
                label=f"best: {best[xkey]} {xkey if by_trees else 'epochs'}")
    if training.get("stopped_at"):
        ax.axvline(x[-1], color="#999999", linestyle="--", linewidth=1, label="stopped")
    ax.set(xlabel="trees" if by_trees else "epochs trained", ylabel=training["metric"], title="training curve")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _svg(figure)


def _cv(cv: dict[str, Any]) -> str:
    """Each fold's score as a bar, the mean as a line with a band of ± one standard deviation."""
    scoring = cv["scoring"]
    scores = [fold.get(scoring, float("nan")) for fold in cv["folds"]]
    mean, std = cv["mean"][scoring], cv["std"][scoring]
    figure = _figure(max(4.0, 1.6 + 0.5 * len(scores)), 3.4)
    ax = figure.add_subplot()
    ax.bar(range(1, len(scores) + 1), scores, color="#1f77b4")
    ax.axhline(mean, color="#d62728", linewidth=1.2, label=f"mean {mean:.4f} ± {std:.4f}")
    ax.axhspan(mean - std, mean + std, color="#d62728", alpha=0.15)
    low, high = min(scores + [mean - std]), max(scores + [mean + std])
    pad = max(1e-3, 0.25 * (high - low))
    ax.set(xlabel="fold", ylabel=scoring, title=f"{cv['k']}-fold cross-validation", ylim=(low - pad, high + pad))
    ax.set_xticks(range(1, len(scores) + 1))
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _svg(figure)


def _search(search: dict[str, Any]) -> str:
    """Each candidate's mean score ± std (its last round), best first; the chosen one marked."""
    rows = [r for r in search["candidates"] if r.get("mean") is not None and not r.get("error")]
    from distml.search_space import HIGHER_IS_BETTER

    best = next((r for r in rows if r["params"] == search["best"] and r["round"] == max(x["round"] for x in rows)),
                None)
    higher = HIGHER_IS_BETTER.get(search["scoring"], True)
    rows = sorted(rows, key=lambda r: (-r["round"], -r["mean"] if higher else r["mean"]))[:TOP]
    names = [", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items())
             for r in rows][::-1]
    rows = rows[::-1]
    figure = _figure(6.0, max(2.6, 1.4 + 0.3 * len(rows)), left=0.4)
    ax = figure.add_subplot()
    colors = ["#d62728" if r is best else "#1f77b4" for r in rows]
    ax.barh(range(len(rows)), [r["mean"] for r in rows], xerr=[r["std"] or 0.0 for r in rows], color=colors)
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    low = min(r["mean"] - (r["std"] or 0.0) for r in rows)
    high = max(r["mean"] + (r["std"] or 0.0) for r in rows)
    pad = max(1e-3, 0.1 * (high - low))
    ax.set(xlabel=f"{search['scoring']} (mean ± std; chosen in red)", title=f"{search['method']} search",
           xlim=(low - pad, high + pad))
    ax.grid(axis="x", alpha=0.3)
    return _svg(figure)


def _selection_charts(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """The training curve, cross-validation and search charts, where the manifest has those sections."""
    out = []
    training = manifest.get("training")
    if training and training.get("curve"):
        where = (f"stopped at {training['stopped_at']}" if training.get("stopped_at")
                 else "ran to the maximum")
        caption = (f"training curve: {training['metric']} ({where}; the star is the best-scoring model, "
                   "the one kept when training stopped early)")
        out.append((caption, _training(training)))
    cv = manifest.get("cv")
    if cv and cv.get("folds"):
        out.append((f"cross-validation: {cv['scoring']} per fold (bars), mean ± std (line and band)", _cv(cv)))
    search = manifest.get("search")
    if search and any(r.get("mean") is not None and not r.get("error") for r in search.get("candidates", [])):
        caption = (f"search results: {search['scoring']} of each candidate ({search['scored_by']}), "
                   "the chosen one in red")
        out.append((caption, _search(search)))
    return out


# --- the page ----------------------------------------------------------------------------------


def charts(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """(caption, inline svg) for every chart the manifest has data for."""
    evaluation = manifest.get("evaluation") or {}
    out: list[tuple[str, str]] = []
    curves = evaluation.get("curves")
    if curves:
        auc = manifest.get("metrics", {}).get("roc_auc")
        out.append((f"ROC curve (positive class {evaluation.get('positive_class')!r}); {curves['binning']}",
                    _curve(curves["roc"]["fpr"], curves["roc"]["tpr"], "false positive rate", "true positive rate",
                           f"ROC, AUC {auc:.4f}" if auc is not None else "ROC", True)))
        out.append(("precision-recall curve", _curve(curves["pr"]["recall"], curves["pr"]["precision"],
                                                     "recall", "precision", "precision-recall", False)))
    confusion = evaluation.get("confusion_matrix")
    if confusion:
        out.append(("confusion matrix: rows are the true class, columns the predicted class",
                    _confusion(confusion["matrix"], confusion["labels"])))
    if evaluation.get("residual_quantiles"):
        out.append((f"residual quantiles, within {evaluation['quantile_relative_error']:.0%} relative error",
                    _quantiles(evaluation["residual_quantiles"], "residual quantiles (holdout)")))
    coef = evaluation.get("coefficients")
    if coef:
        row = dict(zip(coef["features"], coef["standardized"][0]))
        ordered = dict(sorted(row.items(), key=lambda kv: -abs(kv[1])))
        out.append((f"coefficients for {coef['rows'][0]!r}, standardized units (largest {TOP} by magnitude)",
                    _bars(ordered, "coefficients", "per standard deviation")))
    if manifest.get("feature_importances"):
        out.append(("impurity importances of the forest, by input column",
                    _bars(manifest["feature_importances"], "impurity importance", "share of impurity decrease")))
    permuted = evaluation.get("permutation_importance")
    if permuted:
        table = permuted["importances"]
        caption = (f"permutation importance: {permuted['score']} lost when a column is permuted "
                   f"({permuted['repeats']} repeats, {permuted['permuted']}); bars show ±1 std")
        out.append((caption,
                    _bars({k: v["mean"] for k, v in table.items()}, "permutation importance",
                          f"{permuted['score']} lost", {k: v["std"] for k, v in table.items()})))
    return out + _selection_charts(manifest)


def _metrics_table(manifest: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{v:.6g}</td></tr>" if isinstance(v, float)
                   else f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in (manifest.get("metrics") or {}).items())
    per_class = (manifest.get("evaluation") or {}).get("per_class") or []
    if per_class:
        rows += "</table><h2>per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>" \
                "<th>support</th></tr>" + "".join(
                    f"<tr><td>{html.escape(str(c['class']))}</td><td>{c['precision']:.4f}</td>"
                    f"<td>{c['recall']:.4f}</td><td>{c['f1']:.4f}</td><td>{c['support']:,}</td></tr>"
                    for c in per_class)
    return f"<table>{rows}</table>"


_NO_CURVE = ("<p>No training curve: it is recorded with early stopping (model.params.early_stopping: true); "
             "the job log has the epochs.</p>")
STYLE = ("body{font-family:sans-serif;margin:2em;color:#222}figure{display:inline-block;margin:1em;"
         "vertical-align:top}figcaption{max-width:32em;font-size:.85em;color:#555}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}")


def evaluation_html(manifest: dict[str, Any], name: str) -> bytes:
    """The page: what was trained, the holdout metrics, and the charts; UTF-8 HTML with inline SVG."""
    job = manifest.get("job") or {}
    model = job.get("model") or {}
    figures = "".join(f'<figure class="chart">{svg}<figcaption>{html.escape(caption)}</figcaption></figure>'
                      for caption, svg in charts(manifest))
    rows = manifest.get("rows") or {}
    note = ("" if manifest.get("metrics") else "<p>No holdout rows (data.holdout: 0): nothing was evaluated.</p>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(name)}: evaluation</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(name)}: evaluation on the holdout</h1>
<p>job {html.escape(str(manifest.get('job_id')))}, model <code>{html.escape(str(model.get('kind')))}</code>
<code>{html.escape(json.dumps(model.get('params', {})))}</code>, target
<code>{html.escape(str((manifest.get('data') or {}).get('target')))}</code>; rows
{html.escape(', '.join(f'{k} {v:,}' for k, v in rows.items()))}.</p>
{note}<h2>metrics</h2>{_metrics_table(manifest)}
<h2>charts</h2>{figures or '<p>No charts: nothing to draw.</p>'}
{'' if manifest.get('training') else _NO_CURVE}
</body></html>
"""
    return page.encode("utf-8")
