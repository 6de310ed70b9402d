"""Kernel SVM arithmetic with BLAS: K(X, S) in blocks, margins and decision values, and fits on a Gram matrix.

libsvm evaluates a kernel entry by entry; one matrix product per block of rows
is much faster, more so in float32 (README.md has the benchmarks). The cascade
checks margins in float32; evaluation uses float64.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sklearn.svm import SVC

KERNEL_BLOCK = 2**20  # kernel entries computed at once (4 MiB of float32: large enough for BLAS, small for cache)


class KernelBlocks:
    """K(X, S) for blocks of rows X against fixed rows S, one BLAS product per block.

    S's side is prepared once and one output buffer is reused: a fresh buffer per
    block costs page faults on every block (Dask's nanny has glibc hand freed
    memory back to the OS).
    For rbf, ``-gamma |x - s|^2`` comes out of a single product of augmented rows
    ``[x, 1, |x|^2] . [2 gamma s, -gamma |s|^2, -gamma]``. float32 is faster and
    keeps margins within ~1e-4 of libsvm's; float64 agrees with libsvm within 1e-9.
    """

    def __init__(self, S: np.ndarray, model: SVC, dtype: type, rows: int) -> None:
        self.kernel = model.kernel
        # gamma is a number: distml computes gamma "scale" itself, from the whole dataset
        self.gamma, self.coef0, self.degree = dtype(model.gamma), dtype(model.coef0), model.degree
        if self.kernel == "rbf":
            gamma = self.gamma
            self._B = np.empty((len(S), S.shape[1] + 2), dtype)
            self._B[:, :-2], self._B[:, -2], self._B[:, -1] = 2.0 * gamma * S, -gamma * (S**2).sum(axis=1), -gamma
            self._A = np.empty((rows, S.shape[1] + 2), dtype)
            self._A[:, -2] = 1.0
        else:
            self._B, self._A = S.astype(dtype), np.empty((rows, S.shape[1]), dtype)
        self._out = np.empty((rows, len(S)), dtype)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """K(X, S) for at most ``rows`` rows of X, in the reused buffer (overwritten by the next call)."""
        A, K = self._A[:len(X)], self._out[:len(X)]
        if self.kernel == "rbf":
            A[:, :-2], A[:, -1] = X, (X**2).sum(axis=1)
        else:
            A[:] = X
        np.matmul(A, self._B.T, out=K)
        if self.kernel == "rbf":
            np.minimum(K, 0.0, out=K)
            return np.exp(K, out=K)
        if self.kernel == "linear":
            return K
        K *= self.gamma
        K += self.coef0
        return np.tanh(K, out=K) if self.kernel == "sigmoid" else np.power(K, self.degree, out=K)


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
    kernel = KernelBlocks(model.support_vectors_, model, dtype, min(step, len(X)))
    for lo in range(0, len(X), step):
        K = kernel(X[lo:lo + step])
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
    """``model.decision_function(X)`` of a binary SVC, in float64 BLAS blocks (not libsvm's entry by entry)."""
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


# libsvm on a precomputed matrix: shrinking on, as on libsvm's own kernel (it pays there too when most rows
# are support vectors), and a small cache is enough (the matrix is already in memory).
PRECOMPUTED_SOLVER = {"kernel": "precomputed", "shrinking": True, "cache_size": 50}
# Kernels fitted on a float32-built Gram matrix. Not sigmoid: it is not positive semi-definite, its dual has
# no unique solution, and float32 entries moved decision values by up to 0.4 in a test (rbf, poly: < 0.02).
GRAM_KERNELS = ("rbf", "poly")
GRAM_BLOCK_ROWS = 256  # rows of the Gram matrix computed per float32 block (chosen by the benchmarks)


def gram_matrix(X: np.ndarray, model: SVC) -> np.ndarray:
    """K(X, X) in float64 for libsvm's precomputed kernel, computed in float32 BLAS blocks.

    float32 for the products and ``exp`` (float64 ``exp`` is several times slower);
    the entries are within ~1e-6 of libsvm's own, far below its stopping tolerance.
    """
    K = np.empty((len(X), len(X)))
    kernel = KernelBlocks(X, model, np.float32, min(GRAM_BLOCK_ROWS, len(X)))
    for lo in range(0, len(X), GRAM_BLOCK_ROWS):
        K[lo:lo + GRAM_BLOCK_ROWS] = kernel(X[lo:lo + GRAM_BLOCK_ROWS])
    return K


def fit_svc(X: np.ndarray, y: np.ndarray, params: dict[str, Any], gram_bytes: int) -> SVC:
    """``SVC(**params).fit(X, y)``, through a BLAS Gram matrix when its ``8 n^2`` bytes fit in ``gram_bytes``.

    libsvm evaluates kernel entries one at a time (float64 ``exp``), most of an
    SVC's time on support-vector-heavy problems. Solving on a precomputed matrix
    built in float32 BLAS blocks gives the same solution (support vectors equal
    but for a few borderline rows, decision values within 0.02) in less time while
    the matrix is small: its memory is touched fresh at every fit, which is slow on
    some virtual machines, hence the callers' small budget (``svm.GRAM_MAX_BYTES``).
    The result is a plain ``SVC`` with the named kernel and ``params``, fitted on
    ``X``, as if libsvm had computed the kernel itself.
    """
    from sklearn.svm import SVC

    model = SVC(**params)
    if 8 * len(X) ** 2 > gram_bytes or model.kernel not in GRAM_KERNELS:
        return model.fit(X, y)
    solved = SVC(**{**params, **PRECOMPUTED_SOLVER}).fit(gram_matrix(X, model), y)
    hyper = model.get_params()
    for name, value in vars(solved).items():  # the fitted state: dual coefficients, intercepts, classes…
        if name not in hyper:
            setattr(model, name, value)
    model.support_vectors_ = X[solved.support_]
    model.shape_fit_, model.n_features_in_, model._gamma = X.shape, X.shape[1], float(params["gamma"])
    return model


FOLD_BLOCK_BYTES = 32 * 2**20  # float64 kernel entries computed at once by ``folded_decision``


def _flat_steps(model: Any) -> list[Any]:
    """A pipeline's steps, nested pipelines opened in place (a plain estimator: itself)."""
    steps = getattr(model, "steps", None)
    return [model] if steps is None else [s for _, step in steps for s in _flat_steps(step)]


def _folded(model: Any, X: np.ndarray) -> tuple[np.ndarray, Any] | None:
    """For a model ending in a ``Nystroem`` map and one or more binary linear models (one, or a
    ``OneVsOneClassifier`` of them): each binary model's decision values, one column each, from
    ``K(X, landmarks) @ (normalizationᵀ W)``, and the last step; None for any other model."""
    from sklearn.kernel_approximation import Nystroem
    from sklearn.metrics.pairwise import pairwise_kernels
    from sklearn.multiclass import OneVsOneClassifier

    steps = _flat_steps(model)
    if len(steps) < 2:
        return None
    approx, last = steps[-2], steps[-1]
    linears = last.estimators_ if type(last) is OneVsOneClassifier else [last]
    if type(approx) is not Nystroem or not isinstance(approx.kernel, str) or approx.kernel == "precomputed" or \
            any(getattr(e, "coef_", None) is None or e.coef_.shape[0] != 1 or len(e.classes_) != 2 for e in linears):
        return None
    for step in steps[:-2]:
        X = step.transform(X)
    folded = approx.normalization_.T @ np.vstack([e.coef_ for e in linears]).T  # [landmark, binary model]
    out = np.empty((len(X), len(linears)))
    rows = max(1, FOLD_BLOCK_BYTES // (8 * len(folded)))
    params = approx._get_kernel_params()
    for lo in range(0, len(X), rows):
        K = pairwise_kernels(X[lo:lo + rows], approx.components_, metric=approx.kernel, filter_params=True, **params)
        out[lo:lo + rows] = K @ folded
    return out + np.array([float(np.ravel(e.intercept_)[0]) for e in linears]), last


def folded_decision(model: Any, X: np.ndarray) -> np.ndarray | None:
    """``model.decision_function(X)`` for a binary model ending in a ``Nystroem`` map and a linear classifier;
    None for any other model.

    The map's ``transform`` multiplies each row's kernel by the ``n_components^2`` normalisation, most of a
    prediction's cost; folded into the coefficients once, each row costs its kernel only. The same values
    as the pipeline's to round-off (float64 throughout).
    """
    folded = _folded(model, X)
    return None if folded is None or folded[0].shape[1] != 1 else folded[0][:, 0]


def folded_predict(model: Any, X: np.ndarray) -> np.ndarray | None:
    """``model.predict(X)`` from ``_folded``'s decision values (a ``OneVsOneClassifier``'s votes and
    confidences as scikit-learn combines them); None for any other model."""
    folded = _folded(model, X)
    if folded is None:
        return None
    decision, last = folded
    if decision.shape[1] == 1 and not hasattr(last, "estimators_"):
        return last.classes_[(decision[:, 0] > 0).astype(np.int64)]
    from sklearn.multiclass import _ovr_decision_function

    votes = _ovr_decision_function((decision > 0).astype(np.int64), decision, len(last.classes_))
    return last.classes_[np.argmax(votes, axis=1)]
