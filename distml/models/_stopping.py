"""Early stopping's rule, shared by the SGD engine and the forest: scikit-learn's, on a curve of scores."""
from __future__ import annotations

# --- runs on the client ------------------------------------------------------


def best_and_stale(scores: list[float], tol: float) -> tuple[int | None, int]:
    """(index of the best score, scores in a row that did not beat the best before them by ``tol``).

    Higher is better (pass a loss negated). As scikit-learn's SGD counts them: the best is the highest
    score so far (the first when tied); a score below best + ``tol`` counts one more, any other resets.
    """
    best, stale = None, 0
    for i, score in enumerate(scores):
        if best is not None:
            stale = stale + 1 if score < scores[best] + tol else 0
        if best is None or score > scores[best]:
            best = i
    return best, stale
