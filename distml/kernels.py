"""Kernel SVM arithmetic with BLAS: K(X, S) in blocks, and margins and decision values of a fitted SVC.

libsvm evaluates a kernel entry by entry; one matrix product per block of rows
is about 4x faster in float64 and 13x in float32 (measured: 40k rows against 9k
support vectors). The cascade checks margins in float32; evaluation uses float64.
"""
from __future__ import annotations

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


def binary_decision(model: SVC, X: np.ndarray) -> np.ndarray:
    """``model.decision_function(X)`` of a binary SVC, in float64 BLAS blocks (~4x faster than libsvm)."""
    out = np.empty(len(X))
    step = _step(model)
    for lo in range(0, len(X), step):
        K = kernel_matrix(X[lo:lo + step], model.support_vectors_, model, np.float64)
        out[lo:lo + step] = K @ model.dual_coef_[0] + model.intercept_[0]
    return out


def margins(model: SVC, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each row's functional margin ``y f(x)``, the smallest over the one-vs-one pairs of its class.

    A row whose class the model never saw gets ``-inf``: it violates any margin.
    """
    classes = model.classes_
    out = np.full(len(y), np.inf)
    starts = np.concatenate([[0], np.cumsum(model.n_support_)])
    coef = model.dual_coef_.astype(np.float32)
    step = _step(model)
    for lo in range(0, len(y), step):
        K = kernel_matrix(X[lo:lo + step], model.support_vectors_, model)
        yb = y[lo:lo + step]
        if len(classes) == 2:  # sklearn's binary sign: positive means classes_[1]
            f = K @ coef[0] + model.intercept_[0]
            out[lo:lo + step] = np.where(yb == classes[1], f, -f)
            continue
        pair = 0
        for i in range(len(classes)):
            for j in range(i + 1, len(classes)):
                si, sj = slice(starts[i], starts[i + 1]), slice(starts[j], starts[j + 1])
                f = K[:, si] @ coef[j - 1, si] + K[:, sj] @ coef[i, sj] + model.intercept_[pair]  # > 0 votes i
                block = out[lo:lo + step]
                block[yb == classes[i]] = np.minimum(block[yb == classes[i]], f[yb == classes[i]])
                block[yb == classes[j]] = np.minimum(block[yb == classes[j]], -f[yb == classes[j]])
                pair += 1
    out[~np.isin(y, classes)] = -np.inf
    return out
