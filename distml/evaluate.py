"""Metrics on the holdout: per-partition sufficient statistics, summed in a tree on the cluster.

Classification: a confusion matrix, summed log loss and (binary) score
histograms per true class, from which accuracy, precision, recall, F1 (macro
for multiclass), log loss and ROC AUC follow. Regression: sums that give R²,
RMSE and MAE. Only the reduced statistics reach the client.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.tasks import task_key, tree_reduce

if TYPE_CHECKING:
    from distributed import Client, Future

    from distml.blocks import BlockSource

AUC_BINS = 4096

# --- runs on workers ---------------------------------------------------------


@dataclass
class ClassificationSums:
    confusion: np.ndarray  # [true, predicted]
    log_loss: float  # nan when the model gives no probabilities
    histograms: np.ndarray | None  # binary: [true class, score bin]


@dataclass
class RegressionSums:
    n: int
    sum_y: float
    sum_y2: float
    sse: float
    sae: float


def predictions(model: Any, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Predicted labels, class probabilities if the model has them, and a binary score in [0, 1] for the AUC.

    A kernel ``SVC`` without probabilities is evaluated from BLAS blocks
    (``distml.kernels``, faster than libsvm's row-by-row kernels — README.md's
    cascade SVM benchmark has the figures — and equal to its decision values
    within 1e-9); a binary one's labels are the sign of the decision values
    computed for the AUC, one pass over the support vectors.
    """
    from sklearn.svm import SVC

    proba = None
    if hasattr(model, "predict_proba"):
        try:
            proba = model.predict_proba(X)
        except AttributeError:  # e.g. SVC(probability=False), hinge-loss SGD
            proba = None
    if proba is not None:
        return model.predict(X), proba, proba[:, 1] if proba.shape[1] == 2 else None
    binary = len(getattr(model, "classes_", ())) == 2 and hasattr(model, "decision_function")
    if type(model) is SVC and isinstance(model.gamma, (int, float)) and isinstance(model.support_vectors_, np.ndarray):
        from distml import kernels

        if not binary:
            return kernels.predict(model, X), None, None
        decision = kernels.binary_decision(model, X)
        pred = model.classes_[(decision > 0).astype(np.int64)]
    elif binary:
        decision, pred = model.decision_function(X), model.predict(X)
    else:
        return model.predict(X), None, None  # no binary score: the AUC needs one
    return pred, None, 1.0 / (1.0 + np.exp(-np.clip(decision, -500, 500)))


def _metrics_part(source: BlockSource, model: Any, classes: np.ndarray | None) -> ClassificationSums | RegressionSums:
    """Sufficient statistics of one holdout partition."""
    block = source.load()
    X, y = block.X, block.y
    if classes is None:
        pred = model.predict(X) if len(y) else np.empty(0)
        err = pred - y.astype(np.float64)
        return RegressionSums(len(y), float(y.sum()), float((y.astype(np.float64) ** 2).sum()),
                              float((err**2).sum()), float(np.abs(err).sum()))
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    hist = np.zeros((2, AUC_BINS), dtype=np.int64) if k == 2 else None
    if not len(y):
        return ClassificationSums(confusion, 0.0, hist)
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
    return ClassificationSums(confusion, log_loss, hist)


def _add_metrics_part(a: Any, b: Any) -> Any:
    if isinstance(a, RegressionSums):
        return RegressionSums(a.n + b.n, a.sum_y + b.sum_y, a.sum_y2 + b.sum_y2, a.sse + b.sse, a.sae + b.sae)
    hist = None if a.histograms is None else a.histograms + b.histograms
    return ClassificationSums(a.confusion + b.confusion, a.log_loss + b.log_loss, hist)


# --- runs on the client ------------------------------------------------------


def binned_auc(histograms: np.ndarray) -> float:
    """ROC AUC from score histograms of negatives and positives (ties within a bin count half)."""
    neg, pos = histograms[0].astype(np.float64), histograms[1].astype(np.float64)
    if neg.sum() == 0 or pos.sum() == 0:
        return float("nan")
    neg_below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float((pos * (neg_below + 0.5 * neg)).sum() / (neg.sum() * pos.sum()))


def classification_metrics(sums: ClassificationSums) -> dict[str, float]:
    """Accuracy, precision, recall and F1 (binary, or macro averaged), log loss, ROC AUC."""
    c = sums.confusion.astype(np.float64)
    n = c.sum()
    tp = np.diag(c)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(c.sum(axis=0) > 0, tp / c.sum(axis=0), 0.0)
        recall = np.where(c.sum(axis=1) > 0, tp / c.sum(axis=1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
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


def evaluate(model: Any, sources: list[BlockSource | Future], client: Client, job_id: str,
             classes: np.ndarray | None) -> dict[str, float]:
    """Score a fitted estimator on the holdout partitions; only the reduced sums come back."""
    model_future = client.scatter(model, broadcast=False, hash=False)
    futures = [client.submit(_metrics_part, s, model_future, classes, key=task_key("eval", job_id, i))
               for i, s in enumerate(sources)]
    sums = tree_reduce(client, futures, _add_metrics_part,
                       key=lambda level, j: task_key("merge", job_id, "eval", level, j)).result()
    metrics = regression_metrics(sums) if classes is None else classification_metrics(sums)
    metrics["rows"] = int(sums.n if classes is None else sums.confusion.sum())
    return metrics
