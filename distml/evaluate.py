"""Metrics on the holdout: per-partition sufficient statistics, summed in a tree on the cluster.

Classification: a confusion matrix, summed log loss and (binary) score
histograms per true class, from which accuracy, precision, recall, F1 (macro
for multiclass), per-class precision/recall/F1/support, log loss, ROC AUC and
the ROC and precision-recall curves follow. Regression: sums that give R²,
RMSE and MAE, and quantile sketches of the residuals. With a
``PermutationPlan`` the same task also scores the model with each input
column's encoded columns permuted (within the partition). Only the reduced
statistics reach the client.

Binning error, stated in the manifest: a binary score falls in one of
``AUC_BINS`` equal bins of [0, 1]. Curve points sit at the bin edges and are
exact there (``score >= k / AUC_BINS``, a power of two, so the edge test is
exact in floating point); the ROC AUC counts a positive and a negative in the
same bin as half a pair, so it is within ``roc_auc_max_error`` (half the share
of such pairs, computed from the histograms) of the exact AUC. Residual
quantiles come from ``distml.stats.QuantileSketch``: within
``SKETCH_ACCURACY`` relative error of the value at that rank.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.stats import SKETCH_ACCURACY, QuantileSketch
from distml.tasks import MERGE_FAN_IN, task_key, tree_reduce

if TYPE_CHECKING:
    from distributed import Client, Future

    from distml.blocks import BlockSource

AUC_BINS = 4096  # a power of two: the bin of a score is exact in floating point
MAX_CURVE_POINTS = 512  # curve points kept in the manifest (each one exact at its threshold)
RESIDUAL_QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)

# --- runs on workers ---------------------------------------------------------


@dataclass
class ClassificationSums:
    confusion: np.ndarray  # [true, predicted]
    log_loss: float  # nan when the model gives no probabilities
    histograms: np.ndarray | None  # binary: [true class, score bin]
    permuted: np.ndarray | None = None  # correct predictions per [input column, repeat] once it is permuted


@dataclass
class RegressionSums:
    n: int
    sum_y: float
    sum_y2: float
    sse: float
    sae: float
    residuals: QuantileSketch | None = None  # of y - prediction
    abs_residuals: QuantileSketch | None = None
    permuted: np.ndarray | None = None  # squared error per [input column, repeat] once it is permuted


@dataclass(frozen=True)
class PermutationPlan:
    """Which encoded columns belong to each input column, and a seed per (column, repeat), drawn on the client.

    Partition ``part`` permutes its rows with ``default_rng([seeds[g, r], part])``: permutations are
    within a partition, so they do not depend on scheduling, only on the partitioning.
    """

    names: tuple[str, ...]
    groups: tuple[tuple[int, ...], ...]
    seeds: np.ndarray  # uint64 [input column, repeat]
    part: int = 0


def predictions(model: Any, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Predicted labels, class probabilities if the model has them, and a binary score in [0, 1] for the AUC.

    A kernel ``SVC`` without probabilities is evaluated from BLAS blocks
    (``distml.kernels``, faster than libsvm's row-by-row kernels — README.md's
    cascade SVM benchmark has the figures — and equal to its decision values
    within 1e-9); a binary one's labels are the sign of the decision values
    computed for the AUC, one pass over the support vectors.
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import SGDClassifier
    from sklearn.svm import SVC

    proba = None
    if hasattr(model, "predict_proba"):
        try:
            proba = model.predict_proba(X)
        except AttributeError:  # e.g. SVC(probability=False), hinge-loss SGD
            proba = None
    if proba is not None:
        # a forest's predict is the argmax of predict_proba: taken from it, not from every tree again
        labels = (model.classes_.take(np.argmax(proba, axis=1)) if isinstance(model, RandomForestClassifier)
                  else model.predict(X))
        return labels, proba, proba[:, 1] if proba.shape[1] == 2 else None
    binary = len(getattr(model, "classes_", ())) == 2 and hasattr(model, "decision_function")
    if type(model) is SVC and isinstance(model.gamma, (int, float)) and isinstance(model.support_vectors_, np.ndarray):
        from distml import kernels

        if not binary:
            return kernels.predict(model, X), None, None
        decision = kernels.binary_decision(model, X)
        pred = model.classes_[(decision > 0).astype(np.int64)]
    elif binary:
        from distml.kernels import folded_decision

        decision = folded_decision(model, X)  # a Nyström map's normalisation folded into the coefficients
        decision = model.decision_function(X) if decision is None else decision
        # a linear SGD classifier (alone, or last after a kernel map) predicts the sign of its decision values:
        # taken from them, not from a second pass through the kernel map
        final = model.steps[-1][1] if hasattr(model, "steps") else model
        pred = (model.classes_[(decision > 0).astype(np.int64)] if isinstance(final, SGDClassifier)
                else model.predict(X))
    else:
        from distml.kernels import folded_predict

        labels = folded_predict(model, X)  # one-vs-one on a Nyström map: its kernel only, no transform
        return model.predict(X) if labels is None else labels, None, None  # no binary score: the AUC needs one
    return pred, None, 1.0 / (1.0 + np.exp(-np.clip(decision, -500, 500)))


def _permuted_scores(model: Any, X: np.ndarray, y: np.ndarray, plan: PermutationPlan, regression: bool) -> np.ndarray:
    """Per [input column, repeat]: squared error (regression) or correct predictions with that column permuted."""
    out = np.zeros(plan.seeds.shape, dtype=np.float64 if regression else np.int64)
    if not len(y):
        return out
    work = X.copy()
    for g, columns in enumerate(plan.groups):
        cols = list(columns)
        for r in range(plan.seeds.shape[1]):
            order = np.random.default_rng([int(plan.seeds[g, r]), plan.part]).permutation(len(y))
            work[:, cols] = X[order][:, cols]
            pred = model.predict(work)
            out[g, r] = ((pred - y) ** 2).sum() if regression else (pred == y).sum()
        work[:, cols] = X[:, cols]
    return out


def _metrics_part(source: BlockSource, model: Any, classes: np.ndarray | None,
                  permutation: PermutationPlan | None = None) -> ClassificationSums | RegressionSums:
    """Sufficient statistics of one holdout partition (and its permutation scores, if asked)."""
    block = source.load()
    X, y = block.X, block.y
    if classes is None:
        pred = model.predict(X) if len(y) else np.empty(0)
        err = y.astype(np.float64) - pred
        permuted = None if permutation is None else _permuted_scores(model, X, y.astype(np.float64), permutation, True)
        return RegressionSums(len(y), float(y.sum()), float((y.astype(np.float64) ** 2).sum()),
                              float((err**2).sum()), float(np.abs(err).sum()),
                              QuantileSketch.of(err), QuantileSketch.of(np.abs(err)), permuted)
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    hist = np.zeros((2, AUC_BINS), dtype=np.int64) if k == 2 else None
    permuted = None if permutation is None else np.zeros(permutation.seeds.shape, dtype=np.int64)
    if not len(y):
        return ClassificationSums(confusion, 0.0, hist, permuted)
    true_idx = np.searchsorted(classes, y)
    unseen = (true_idx >= k) | (classes[np.minimum(true_idx, k - 1)] != y)
    if unseen.any():  # only new data can hold these: a holdout's labels come from the same statistics pass
        raise ValueError(f"target value {y[unseen][:1].tolist()[0]!r} is not one of the model's classes "
                         f"({', '.join(map(str, classes))})")
    pred, proba, score = predictions(model, X)
    np.add.at(confusion, (true_idx, np.searchsorted(classes, pred)), 1)
    log_loss = float("nan")
    if proba is not None:
        log_loss = float(-np.log(np.clip(proba[np.arange(len(y)), true_idx], 1e-15, 1.0)).sum())
    if hist is not None and score is not None:
        bins = np.minimum((score * AUC_BINS).astype(np.int64), AUC_BINS - 1)
        np.add.at(hist, (true_idx, bins), 1)
    if permutation is not None:
        permuted = _permuted_scores(model, X, y, permutation, False)
    return ClassificationSums(confusion, log_loss, hist, permuted)


def _added(a: Any, b: Any) -> Any:
    return None if a is None else a + b


def _merged(a: QuantileSketch | None, b: QuantileSketch | None) -> QuantileSketch | None:
    return None if a is None or b is None else a.merge(b)


def _add_metrics_part(a: Any, b: Any) -> Any:
    if isinstance(a, RegressionSums):
        return RegressionSums(a.n + b.n, a.sum_y + b.sum_y, a.sum_y2 + b.sum_y2, a.sse + b.sse, a.sae + b.sae,
                              _merged(a.residuals, b.residuals), _merged(a.abs_residuals, b.abs_residuals),
                              _added(a.permuted, b.permuted))
    return ClassificationSums(a.confusion + b.confusion, a.log_loss + b.log_loss, _added(a.histograms, b.histograms),
                              _added(a.permuted, b.permuted))


# --- runs on the client ------------------------------------------------------


def binned_auc(histograms: np.ndarray) -> float:
    """ROC AUC from score histograms of negatives and positives (ties within a bin count half)."""
    neg, pos = histograms[0].astype(np.float64), histograms[1].astype(np.float64)
    if neg.sum() == 0 or pos.sum() == 0:
        return float("nan")
    neg_below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float((pos * (neg_below + 0.5 * neg)).sum() / (neg.sum() * pos.sum()))


def _per_class(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 and support of each class from the confusion matrix (0 where undefined, as
    scikit-learn's ``zero_division=0``)."""
    tp, predicted, support = np.diag(c), c.sum(axis=0), c.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return precision, recall, f1, support


def classification_metrics(sums: ClassificationSums) -> dict[str, float]:
    """Accuracy, precision, recall and F1 (binary, or macro averaged), log loss, ROC AUC."""
    c = sums.confusion.astype(np.float64)
    n = c.sum()
    tp = np.diag(c)
    precision, recall, f1, _ = _per_class(c)
    binary = len(c) == 2
    pick = (lambda v: float(v[1])) if binary else (lambda v: float(v.mean()))
    metrics = {"accuracy": float(tp.sum() / n), "precision": pick(precision),
               "recall": pick(recall), "f1": pick(f1)}
    if not np.isnan(sums.log_loss):
        metrics["log_loss"] = sums.log_loss / n
    if sums.histograms is not None and sums.histograms.sum() > 0:
        metrics["roc_auc"] = binned_auc(sums.histograms)
    return metrics


def regression_metrics(s: RegressionSums) -> dict[str, float]:
    """R², RMSE and MAE from the reduced sums."""
    sst = s.sum_y2 - s.sum_y**2 / s.n
    return {"r2": float(1.0 - s.sse / sst) if sst > 0 else float("nan"),
            "rmse": float(np.sqrt(s.sse / s.n)), "mae": float(s.sae / s.n)}


def curves(histograms: np.ndarray) -> dict[str, Any]:
    """ROC and precision-recall points at the score-bin edges where the counts change, highest threshold first.

    A point at threshold ``t`` counts the rows whose score is ``>= t``, as ``sklearn.metrics.roc_curve``
    does; at most ``MAX_CURVE_POINTS`` are kept (evenly spaced, both ends always), each exact at its threshold.
    """
    neg, pos = histograms[0].astype(np.float64), histograms[1].astype(np.float64)
    edges = np.flatnonzero((neg + pos) > 0)[::-1]  # thresholds k / AUC_BINS, highest first
    tp = np.cumsum(pos[::-1])[::-1][edges]  # rows with a score in bin >= k
    fp = np.cumsum(neg[::-1])[::-1][edges]
    if len(edges) > MAX_CURVE_POINTS:
        keep = np.unique(np.linspace(0, len(edges) - 1, MAX_CURVE_POINTS).round().astype(np.int64))
        edges, tp, fp = edges[keep], tp[keep], fp[keep]
    P, N = pos.sum(), neg.sum()
    thresholds = (edges / AUC_BINS).tolist()
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
    return {"roc": {"fpr": [0.0, *(fp / N).tolist()] if N else [], "tpr": [0.0, *(tp / P).tolist()] if P else [],
                    "thresholds": [float("inf"), *thresholds]},
            "pr": {"precision": precision.tolist(), "recall": (tp / P).tolist() if P else [],
                   "thresholds": thresholds}}


def auc_error_bound(histograms: np.ndarray) -> float:
    """Largest possible difference between ``binned_auc`` and the exact ROC AUC: half the share of
    (positive, negative) pairs whose scores share a bin."""
    neg, pos = histograms[0].astype(np.float64), histograms[1].astype(np.float64)
    pairs = neg.sum() * pos.sum()
    return float(0.5 * (neg * pos).sum() / pairs) if pairs else float("nan")


def classification_details(sums: ClassificationSums, classes: np.ndarray) -> dict[str, Any]:
    """Confusion matrix with its labels, per-class scores, the positive class and (binary) the curves."""
    labels = [v.item() if hasattr(v, "item") else v for v in classes]
    precision, recall, f1, support = _per_class(sums.confusion.astype(np.float64))
    out: dict[str, Any] = {
        "average": "binary" if len(labels) == 2 else "macro",
        "positive_class": labels[1] if len(labels) == 2 else None,
        "confusion_matrix": {"labels": labels, "rows": "true class", "columns": "predicted class",
                             "matrix": sums.confusion.tolist()},
        "per_class": [{"class": label, "precision": float(p), "recall": float(r), "f1": float(f),
                       "support": int(n)} for label, p, r, f, n in zip(labels, precision, recall, f1, support)],
    }
    if sums.histograms is not None and sums.histograms.sum() > 0:
        out["curves"] = {**curves(sums.histograms), "score_bins": AUC_BINS,
                         "roc_auc_max_error": auc_error_bound(sums.histograms),
                         "binning": f"scores in {AUC_BINS} equal bins of [0, 1]; points exact at the bin edges, "
                                    "ROC AUC within roc_auc_max_error of the exact value"}
    return out


def regression_details(sums: RegressionSums) -> dict[str, Any]:
    """Quantiles of the residuals (y - prediction) and of their magnitudes, from the merged sketches."""
    if sums.residuals is None or sums.abs_residuals is None or not sums.n:
        return {}
    return {"residual_quantiles": {str(q): sums.residuals.quantile(q) for q in RESIDUAL_QUANTILES},
            "abs_residual_quantiles": {str(q): sums.abs_residuals.quantile(q) for q in RESIDUAL_QUANTILES},
            "quantile_relative_error": SKETCH_ACCURACY,
            "quantile_rank": "the value of rank floor(q * (n - 1)) in sorted order, within the relative error"}


def permutation_importances(sums: ClassificationSums | RegressionSums, plan: PermutationPlan) -> dict[str, Any]:
    """Mean and std (over repeats) of the score lost when each input column is permuted, largest first.

    The score is accuracy for classification and R² for regression (what ``estimator.score`` gives, as in
    ``sklearn.inspection.permutation_importance``).
    """
    if sums.permuted is None:
        return {}
    if isinstance(sums, RegressionSums):
        sst = sums.sum_y2 - sums.sum_y**2 / sums.n if sums.n else 0.0
        drops = (sums.permuted - sums.sse) / sst if sst > 0 else np.full(sums.permuted.shape, np.nan)
        score = "r2"
    else:
        n = max(1, int(sums.confusion.sum()))
        drops = (np.trace(sums.confusion) - sums.permuted) / n
        score = "accuracy"
    table = sorted(((name, float(d.mean()), float(d.std())) for name, d in zip(plan.names, drops)),
                   key=lambda row: -row[1])
    return {"score": score, "repeats": int(plan.seeds.shape[1]), "permuted": "within each holdout partition",
            "importances": {name: {"mean": mean, "std": std} for name, mean, std in table}}


@dataclass
class Evaluation:
    """What an evaluation pass gives the client: flat metrics (``rows`` included) and the details."""

    metrics: dict[str, float]
    details: dict[str, Any]


def evaluate(model: Any, sources: list[BlockSource | Future], client: Client, job_id: str,
             classes: np.ndarray | None, permutation: PermutationPlan | None = None) -> Evaluation:
    """Score a fitted estimator on the holdout partitions; only the reduced sums come back."""
    from dataclasses import replace

    model_future = client.scatter(model, broadcast=False, hash=False)
    futures = [client.submit(_metrics_part, s, model_future, classes,
                             None if permutation is None else replace(permutation, part=i),
                             key=task_key("eval", job_id, i))
               for i, s in enumerate(sources)]
    sums = tree_reduce(client, futures, _add_metrics_part,
                       key=lambda level, j: task_key("merge", job_id, "eval", level, j),
                       fan_in=MERGE_FAN_IN).result()
    if classes is None:
        metrics, details = regression_metrics(sums), regression_details(sums)
    else:
        metrics, details = classification_metrics(sums), classification_details(sums, classes)
    metrics["rows"] = int(sums.n if classes is None else sums.confusion.sum())
    if permutation is not None:
        details["permutation_importance"] = permutation_importances(sums, permutation)
    return Evaluation(metrics, details)
