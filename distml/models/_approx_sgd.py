"""The approximate-kernel SVM's training-time estimator (kept apart so the job file's models import no scikit-learn)."""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import SGDClassifier


class _ApproxSGD(SGDClassifier):
    """Training-time only: an SGDClassifier that maps rows through ``approx_`` first.

    It lets the shared SGD engine stream approximate kernel features without
    holding them anywhere; ``_plain`` turns it into an ordinary SGDClassifier.
    """

    approx_: Any = None

    def partial_fit(self, X: Any, y: Any, classes: Any = None, sample_weight: Any = None) -> _ApproxSGD:
        return super().partial_fit(self.approx_.transform(X), y, classes=classes, sample_weight=sample_weight)

    def decision_function(self, X: Any) -> np.ndarray:
        return super().decision_function(self.approx_.transform(X))
