"""Kernel SVM arithmetic with BLAS: K(X, S) in blocks, and margins and decision values of a fitted SVC.

libsvm evaluates a kernel entry by entry; one matrix product per block of rows
is about 4x faster in float64 and 13x in float32 (measured: 40k rows against 9k
support vectors). The cascade checks margins in float32; evaluation uses float64.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sklearn.svm import SVC

KERNEL_BLOCK = 2**20  # kernel entries computed at once (4 MiB of float32: the fastest measured)


def kernel_matrix(X: np.ndarray, S: np.ndarray, model: SVC, dtype: type = np.float32) -> np.ndarray:
    """K(X, S) for the model's kernel, one BLAS product per block.

    For rbf, ``-gamma |x - s|^2`` comes out of a single product of augmented rows
    ``[x, 1, |x|^2] . [2 gamma s, -gamma |s|^2, -gamma]``. float32 is 3x faster and
    keeps margins within ~1e-4 of libsvm's; float64 agrees with libsvm within 1e-9.
    """
    gamma = dtype(model.gamma)  # a number: distml computes gamma "scale" itself, from the whole dataset
    if model.kernel == "rbf":
        A = np.empty((len(X), X.shape[1] + 2), dtype)
        A[:, :-2], A[:, -2], A[:, -1] = X, 1.0, (X**2).sum(axis=1)
        B = np.empty((len(S), S.shape[1] + 2), dtype)
        B[:, :-2], B[:, -2], B[:, -1] = 2.0 * gamma * S, -gamma * (S**2).sum(axis=1), -gamma
        K = A @ B.T
        np.minimum(K, 0.0, out=K)
        return np.exp(K, out=K)
    K = X.astype(dtype) @ S.astype(dtype).T
    if model.kernel == "linear":
        return K
    K *= gamma
    K += dtype(model.coef0)
    return np.tanh(K, out=K) if model.kernel == "sigmoid" else np.power(K, model.degree, out=K)


def _step(model: SVC) -> int:
    """Rows per block, so that a block's kernel against all support vectors holds ~``KERNEL_BLOCK`` entries."""
    return max(1, KERNEL_BLOCK // max(1, len(model.support_vectors_)))


def _decisions(model: SVC, X: np.ndarray, dtype: type) -> Iterator[tuple[slice, list[tuple[int, int, np.ndarray]]]]:
    """Per block of rows, each class pair's decision values ``(i, j, f)``; ``f > 0`` votes for class ``i``.

    The pairs come in libsvm's order (0-1, 0-2, …, 1-2, …), the binary case as
    sklearn signs it: one pair (0, 1) whose positive side is class 1, i.e. ``f``
    is ``decision_function`` and ``-f`` votes for class 0.
    """
    k = len(model.classes_)
    starts = np.concatenate([[0], np.cumsum(model.n_support_)])
    coef = model.dual_coef_.astype(dtype)
    step = _step(model)
    for lo in range(0, len(X), step):
        K = kernel_matrix(X[lo:lo + step], model.support_vectors_, model, dtype)
        if k == 2:
            yield slice(lo, lo + step), [(1, 0, K @ coef[0] + model.intercept_[0])]
            continue
        pairs, p = [], 0
        for i in range(k):
            for j in range(i + 1, k):
                si, sj = slice(starts[i], starts[i + 1]), slice(starts[j], starts[j + 1])
                pairs.append((i, j, K[:, si] @ coef[j - 1, si] + K[:, sj] @ coef[i, sj] + model.intercept_[p]))
                p += 1
        yield slice(lo, lo + step), pairs


def binary_decision(model: SVC, X: np.ndarray) -> np.ndarray:
    """``model.decision_function(X)`` of a binary SVC, in float64 BLAS blocks (~4x faster than libsvm)."""
    out = np.empty(len(X))
    for rows, [(_, _, f)] in _decisions(model, X, np.float64):
        out[rows] = f
    return out


def predict(model: SVC, X: np.ndarray) -> np.ndarray:
    """``model.predict(X)`` from float64 BLAS blocks: libsvm's one-vs-one vote, ties to the first class."""
    votes = np.zeros((len(X), len(model.classes_)), np.int64)
    for rows, pairs in _decisions(model, X, np.float64):
        block = votes[rows]
        for i, j, f in pairs:
            block[:, i] += f > 0
            block[:, j] += f <= 0
    return model.classes_[np.argmax(votes, axis=1)]


def margins(model: SVC, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each row's functional margin ``y f(x)`` in float32, the smallest over the one-vs-one pairs of its class.

    A row whose class the model never saw gets ``-inf``: it violates any margin.
    """
    classes = model.classes_
    out = np.full(len(y), np.inf)
    for rows, pairs in _decisions(model, X, np.float32):
        yb, block = y[rows], out[rows]
        for i, j, f in pairs:  # f > 0 votes for class i
            for c, signed in ((i, f), (j, -f)):
                mine = yb == classes[c]
                block[mine] = np.minimum(block[mine], signed[mine])
    out[~np.isin(y, classes)] = -np.inf
    return out
