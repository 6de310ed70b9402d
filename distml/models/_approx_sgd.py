"""The approximate-kernel SVM's training-time estimator (kept apart so the job file's models import no scikit-learn)."""
from __future__ import annotations

import weakref
from typing import Any

import numpy as np
from sklearn.kernel_approximation import Nystroem, RBFSampler
from sklearn.linear_model import SGDClassifier

FEATURE_BATCH_BYTES = 32 * 2**20  # approximate features held at once by a training task


class _ApproxSGD(SGDClassifier):
    """Training-time only: an SGDClassifier that maps rows through ``approx_`` first.

    It lets the shared SGD engine stream approximate kernel features without
    holding them anywhere (a batch of rows at a time); ``plain_sgd`` turns it into an ordinary SGDClassifier.
    """

    approx_: Any = None

    def partial_fit(self, X: Any, y: Any, classes: Any = None, sample_weight: Any = None) -> _ApproxSGD:
        """SGD over ``X`` in order, mapped a batch of rows at a time: a task holds one batch's features."""
        step = _batch_rows(self.approx_)
        for lo in range(0, max(1, len(X)), step):
            weight = None if sample_weight is None else sample_weight[lo:lo + step]
            super().partial_fit(features(self.approx_, X[lo:lo + step]), y[lo:lo + step], classes=classes,
                                sample_weight=weight)
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        step = _batch_rows(self.approx_)
        parts = [super(_ApproxSGD, self).decision_function(features(self.approx_, X[lo:lo + step]))
                 for lo in range(0, len(X), step)]
        return np.concatenate(parts) if parts else super().decision_function(self.approx_.transform(X))


def _batch_rows(approx: Any) -> int:
    """Rows mapped at once: about ``FEATURE_BATCH_BYTES`` of float64 features."""
    return max(256, FEATURE_BATCH_BYTES // (8 * int(getattr(approx, "n_components", 1))))


def fit_nystroem(approx: Nystroem, X: np.ndarray, factor: str = "eigh") -> Nystroem:
    """``approx.fit(X)``, its basis kernel factored by ``factor``: ``eigh`` or ``cholesky``.

    ``eigh``: the inverse square root from a symmetric eigendecomposition. scikit-learn takes it from an
    SVD, several times slower on the same symmetric matrix; the basis (the same random rows), the
    attributes and the map are scikit-learn's (``normalization_`` to round-off: an eigenvalue's sign
    stands in for the SVD's sign flip). ``cholesky``: the inverse of the kernel's Cholesky factor, an
    order of magnitude cheaper again. Its map is scikit-learn's rotated (both satisfy AᵀA = K⁻¹), so
    the kernel it approximates, ``transform(X) @ transform(Z).T``, is the same and so is any
    L2-regularised linear model fitted on it; a basis kernel too ill-conditioned for it is factored by
    ``eigh``. Either way the fitted object is a plain ``Nystroem``. Other approximations are fitted by
    their own ``fit``.
    """
    from scipy.linalg import eigh
    from sklearn.metrics.pairwise import pairwise_kernels
    from sklearn.utils import check_random_state

    if not isinstance(approx, Nystroem) or not isinstance(approx.kernel, str) or approx.kernel == "precomputed":
        return approx.fit(X)
    X = np.asarray(X, dtype=np.float64)
    n = min(len(X), approx.n_components)
    basis_inds = check_random_state(approx.random_state).permutation(len(X))[:n].astype(np.int64)
    basis = X[basis_inds]
    kernel = pairwise_kernels(basis, metric=approx.kernel, filter_params=True, **approx._get_kernel_params())
    normalization = _inverse_cholesky(kernel) if factor == "cholesky" else None
    if normalization is None:
        values, vectors = eigh(kernel, driver="evd", overwrite_a=True, check_finite=False)
        scale = np.sign(values) / np.sqrt(np.clip(np.abs(values), 1e-12, None))
        normalization = (vectors * scale) @ vectors.T
    approx.normalization_ = normalization
    approx.components_, approx.component_indices_ = basis, basis_inds
    approx._n_features_out, approx.n_features_in_ = n, X.shape[1]
    return approx


CHOLESKY_MIN_PIVOT = 1e-4  # smallest pivot of the basis kernel's Cholesky factor, relative to its largest


def _inverse_cholesky(kernel: np.ndarray) -> np.ndarray | None:
    """L⁻¹ where ``kernel`` = LLᵀ, or None when the kernel is not positive definite beyond round-off
    (a pivot below ``CHOLESKY_MIN_PIVOT`` of the largest: duplicate or nearly dependent basis rows)."""
    from scipy.linalg import LinAlgError, cholesky, solve_triangular

    try:
        lower = cholesky(kernel, lower=True, check_finite=False)
    except LinAlgError:
        return None
    pivots = np.abs(np.diag(lower))
    if not len(pivots) or pivots.min() < CHOLESKY_MIN_PIVOT * pivots.max():
        return None
    return solve_triangular(lower, np.eye(len(lower)), lower=True, check_finite=False)


def features32(approx: Any, X: np.ndarray) -> np.ndarray:
    """``approx.transform(X)`` in float32 for training; an rbf Nystroem map in float32 BLAS
    (``K(X, landmarks) @ normalization.T``).

    Its cost per row is the ``n_components^2`` product, which float32 halves, and a triangular
    normalization (``fit_nystroem``'s Cholesky factor) halves again: one ``strmm`` in place of a
    full product. The entries stay within ~1e-5 of the saved map's float64 ``transform``, far below
    what moves an SGD step.
    """
    if not isinstance(approx, Nystroem) or approx.kernel != "rbf" or approx.gamma is None:
        return approx.transform(X).astype(np.float32)
    from scipy.linalg.blas import strmm

    from distml.kernels import KernelBlocks

    K = KernelBlocks(approx.components_, approx, np.float32, len(X))(np.asarray(X, dtype=np.float32))
    lower, dense = _normalization32(approx)
    if lower is None:
        return K @ dense
    # K @ Lᵀ is (L @ Kᵀ)ᵀ, and Kᵀ is K's buffer read in Fortran order: BLAS overwrites it in place
    return strmm(1.0, lower, K.T, side=0, lower=1, trans_a=0, overwrite_b=1).T


_NORMALIZATIONS32: weakref.WeakKeyDictionary[Nystroem, tuple[np.ndarray, Any, Any]] = weakref.WeakKeyDictionary()


def _normalization32(approx: Nystroem) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(L, None) in float32 Fortran order when ``normalization_`` is lower triangular, else (None, its float32
    transpose): made once per fitted map and process, not for every batch of rows."""
    normalization = approx.normalization_
    cached = _NORMALIZATIONS32.get(approx)
    if cached is None or cached[0] is not normalization:
        if not np.triu(normalization, 1).any():
            cached = (normalization, np.asfortranarray(normalization, dtype=np.float32), None)
        else:
            cached = (normalization, None, np.ascontiguousarray(normalization.T, dtype=np.float32))
        _NORMALIZATIONS32[approx] = cached
    return cached[1], cached[2]


def held_dtypes(approx: Any) -> tuple[type, ...]:
    """How held training features may be stored, most precise first: float32, then float16 where the map's
    entries are bounded by 1 (an rbf Nystroem map, whose rows have norm at most 1, or an RBFSampler).

    float16 takes half the memory, so twice the rows keep their features held instead of mapped again at
    every epoch; its rounding (~5e-4 of an entry) is far below what moves an averaged SGD step.
    """
    bounded = isinstance(approx, Nystroem) and approx.kernel == "rbf" or isinstance(approx, RBFSampler)
    return (np.float32, np.float16) if bounded else (np.float32,)


def features(approx: Any, X: np.ndarray) -> np.ndarray:
    """``features32`` as float64: SGDClassifier's float64 coefficients take float64 rows."""
    return features32(approx, X).astype(np.float64)


class _MappedSGD(SGDClassifier):
    """Training-time only: an SGDClassifier on blocks already mapped to features (``_map_part``),
    fed to SGD a float64 batch at a time; from the SGD engine's shuffled rows, each batch is gathered
    from the held blocks (``BATCHED``: no whole shuffled copy of the features)."""

    BATCHED = True

    def partial_fit(self, X: Any, y: Any, classes: Any = None, sample_weight: Any = None) -> _MappedSGD:
        step = max(256, FEATURE_BATCH_BYTES // (8 * max(1, X.shape[1])))
        gather = getattr(X, "batch", None)  # _lane_rows.ShuffledRows
        for lo in range(0, max(1, len(X)), step):
            weight = None if sample_weight is None else sample_weight[lo:lo + step]
            rows = gather(lo, min(lo + step, len(X))) if gather else np.asarray(X[lo:lo + step], dtype=np.float64)
            super().partial_fit(rows, y[lo:lo + step], classes=classes, sample_weight=weight)
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        return super().decision_function(np.asarray(X, dtype=np.float64))


def _map_part(source: Any, approx: Any, dtype: type = np.float32) -> Any:
    """One partition's training block with its rows mapped to float32 features stored as ``dtype``, a batch at
    a time."""
    from distml.blocks import Block

    block = source.load()
    out = np.empty((len(block.X), int(approx.n_components)), dtype=dtype)
    step = _batch_rows(approx)
    for lo in range(0, len(block.X), step):
        out[lo:lo + step] = features32(approx, block.X[lo:lo + step])
    return Block(out, block.y, block.u)


def plain_sgd(model: _ApproxSGD | _MappedSGD) -> SGDClassifier:
    """A training-time subclass as an ordinary, fitted SGDClassifier (the artifact's), without its map."""
    plain = SGDClassifier(**model.get_params())
    for name, value in vars(model).items():
        if name != "approx_":
            setattr(plain, name, value)
    return plain
