"""The exact least-squares Gram matrix measured by the statistics pass, so ``linear`` exact needs no pass of its own.

Each partition of the statistics pass sums the centred cross-products of its training rows' columns
``[features…, target]``; they merge pairwise as Chan et al.'s parallel variance does, exactly and
without the cancellation of raw sums. The standardisation the feature transformer then applies is
a shift and a scale per column, so the Gram matrix of the transformed rows, ``[X' 1 y]ᵀ[X' 1 y]``,
follows from these moments alone. It applies to numeric features without missing values (one-hot
columns and imputed values are made after the pass); otherwise the family sums the matrix in a pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sklearn.compose import ColumnTransformer


@dataclass(frozen=True)
class CrossMoments:
    """Rows, column means and centred cross-products ``Σ (z - mean)(z - mean)ᵀ`` of ``z = [features…, target]``."""

    n: int
    mean: np.ndarray  # (p + 1,)
    cross: np.ndarray  # (p + 1, p + 1)

    @classmethod
    def of(cls, Z: np.ndarray) -> CrossMoments:
        """The moments of the rows of ``Z`` (finite float64, the target as the last column)."""
        if not len(Z):
            width = Z.shape[1]
            return cls(0, np.zeros(width), np.zeros((width, width)))
        mean = Z.mean(axis=0)
        centred = Z - mean
        return cls(len(Z), mean, centred.T @ centred)

    def merge(self, other: CrossMoments) -> CrossMoments:
        """The moments of both sets of rows (associative: any tree of merges gives the same up to rounding)."""
        if not other.n:
            return self
        if not self.n:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        cross = self.cross + other.cross + np.outer(delta, delta) * (self.n * other.n / n)
        return CrossMoments(n, self.mean + delta * (other.n / n), cross)

    def gram(self, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """``[X' 1 y]ᵀ[X' 1 y]`` for ``X' = (X - center) / scale``: features, then intercept, then target."""
        p, n = len(center), float(self.n)
        offset, inverse = self.mean[:p] - center, 1.0 / scale
        y_mean = self.mean[p]
        gram = np.empty((p + 2, p + 2))
        gram[:p, :p] = inverse[:, None] * (self.cross[:p, :p] + n * np.outer(offset, offset)) * inverse[None, :]
        gram[:p, p] = gram[p, :p] = inverse * n * offset
        gram[:p, p + 1] = gram[p + 1, :p] = inverse * (self.cross[:p, p] + n * offset * y_mean)
        gram[p, p] = n
        gram[p, p + 1] = gram[p + 1, p] = n * y_mean
        gram[p + 1, p + 1] = self.cross[p, p] + n * y_mean * y_mean
        return gram


def transformed_gram(moments: CrossMoments | None, transformer: ColumnTransformer) -> np.ndarray | None:
    """The Gram matrix of the rows as ``transformer`` (numeric columns only: impute, then scale) passes them
    to the model; None when it does anything else, or when the pass could not measure the moments."""
    if moments is None or [name for name, *_ in transformer.transformers_ if name != "remainder"] != ["num"]:
        return None
    scaler = transformer.named_transformers_["num"].named_steps["scale"]
    if len(scaler.mean_) + 1 != len(moments.mean):
        return None
    return moments.gram(np.asarray(scaler.mean_, dtype=np.float64), np.asarray(scaler.scale_, dtype=np.float64))
