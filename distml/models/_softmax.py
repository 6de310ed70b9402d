"""Multinomial logistic regression by averaged mini-batch SGD, shaped like an sklearn partial_fit learner.

Why not ``SGDClassifier(loss="log_loss")``: it is one-vs-rest, which for 5
classes scores about a point below the multinomial ``LogisticRegression``,
and no amount of training closes that gap.
Constant-step SGD with Polyak averaging (Bach & Moulines, 2013) reaches the
lbfgs optimum's accuracy in a few epochs, and plugs into the same lane engine
(``_sgd.train_sgd``) through ``partial_fit``, ``coef_``, ``intercept_`` and ``t_``.
The learner itself is never saved: ``to_estimator`` turns it into a plain
``LogisticRegression``.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np


class SoftmaxSGD:
    """Averaged mini-batch SGD on the multinomial log loss with an L2 penalty."""

    def __init__(self, alpha: float = 1e-5, eta0: float = 0.2, batch_size: int = 256,
                 class_weight: dict[object, float] | None = None) -> None:
        self.alpha, self.eta0, self.batch_size, self.class_weight = alpha, eta0, batch_size, class_weight
        self.t_ = 0.0
        self._w: np.ndarray | None = None  # current iterate, (n_features + 1, n_classes); last row: bias
        self._avg: np.ndarray | None = None  # Polyak average since the last reset
        self._seen = 0

    # The lane engine averages lanes through coef_/intercept_; setting them restarts the average.
    @property
    def coef_(self) -> np.ndarray:
        return self._avg[:-1].T.copy()

    @coef_.setter
    def coef_(self, value: np.ndarray) -> None:
        self._reset(np.vstack([np.asarray(value).T, self._avg[-1:]]))

    @property
    def intercept_(self) -> np.ndarray:
        return self._avg[-1].copy()

    @intercept_.setter
    def intercept_(self, value: np.ndarray) -> None:
        self._reset(np.vstack([self._avg[:-1], np.asarray(value)[None, :]]))

    def _reset(self, w: np.ndarray) -> None:
        self._w, self._avg, self._seen = w.copy(), w.copy(), 0

    def partial_fit(self, X: np.ndarray, y: np.ndarray, classes: np.ndarray) -> SoftmaxSGD:
        """One pass over (X, y) in mini-batches, in the given row order."""
        k = len(classes)
        if self._w is None:
            self.classes_ = np.asarray(classes)
            self._reset(np.zeros((X.shape[1] + 1, k)))
        index = np.searchsorted(self.classes_, y)
        weights = None
        if self.class_weight:
            per_class = np.array([self.class_weight.get(c, 1.0) for c in self.classes_.tolist()])
            weights = per_class[index]
        if weights is None:
            weights = np.ones(len(y))
        seen = _epoch_kernel()(np.ascontiguousarray(X, dtype=np.float64), index.astype(np.int64),
                               weights.astype(np.float64), self._w, self._avg, self._seen,
                               float(self.eta0), float(self.alpha), int(self.batch_size))
        self._seen = seen
        self.t_ += len(y)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        z = X @ self._avg[:-1] + self._avg[-1]
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)


@functools.cache
def _epoch_kernel() -> Callable[..., int]:
    """The compiled inner loop (numba, cached on disk): one pass of mini-batch steps over the rows in order.

    Numba rather than numpy: each 256-row step is a dozen small array operations whose Python
    overhead dominates; compiled, a step costs its arithmetic (see tests/benchmarks/bench_logistic.py).
    A diverging run (inf/nan weights) is refused after training, in one line.
    """
    import numba

    # Weights are worked on transposed, (classes, features + 1), so every inner loop runs over
    # contiguous features and vectorises. No fastmath: a reassociated sum could depend on alignment.
    @numba.njit(cache=True, nogil=True, error_model="numpy")
    def kernel(X, index, weights, w_out, avg_out, seen, eta0, alpha, batch_size):
        n, d = X.shape
        w, avg = w_out.T.copy(), avg_out.T.copy()
        k = w.shape[0]
        grad = np.zeros((k, d + 1))
        z = np.empty(k)
        decay = eta0 * alpha
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            grad[:] = 0.0
            for i in range(start, stop):
                x = X[i]
                for c in range(k):
                    acc = w[c, d]
                    for j in range(d):
                        acc += x[j] * w[c, j]
                    z[c] = acc
                top = z.max()
                total = 0.0
                for c in range(k):
                    z[c] = np.exp(z[c] - top)
                    total += z[c]
                for c in range(k):  # gradient of the weighted log loss w.r.t. the logits
                    z[c] *= weights[i] / total
                z[index[i]] -= weights[i]
                for c in range(k):
                    r = z[c]
                    for j in range(d):
                        grad[c, j] += r * x[j]
                    grad[c, d] += r
            step = eta0 / (stop - start)
            seen += 1
            for c in range(k):
                for j in range(d):
                    w[c, j] -= step * grad[c, j] + decay * w[c, j]
                w[c, d] -= step * grad[c, d]
                for j in range(d + 1):  # Polyak average of the iterates
                    avg[c, j] += (w[c, j] - avg[c, j]) / seen
        w_out[:] = w.T
        avg_out[:] = avg.T
        return seen

    return kernel


def to_estimator(model: SoftmaxSGD, n_features: int, n_rows: int, epochs: int) -> object:
    """The learned weights as a fitted ``LogisticRegression`` (binary: one row of logit differences).

    ``C`` is set to the penalty SGD optimised, ``1 / (alpha * n_rows)``.
    """
    from sklearn.linear_model import LogisticRegression

    est = LogisticRegression(C=1.0 / max(model.alpha * n_rows, 1e-12) if model.alpha > 0 else np.inf)
    coef, intercept = model.coef_, model.intercept_
    if len(model.classes_) == 2:
        coef, intercept = coef[1:] - coef[:1], intercept[1:] - intercept[:1]
    est.coef_, est.intercept_ = coef, intercept
    est.classes_ = model.classes_
    est.n_features_in_ = n_features
    est.n_iter_ = np.array([epochs], dtype=np.int32)
    return est
