"""Class weights every classifying family shares: a job file's ``class_weight`` resolved against the data.

It lives apart from any one family so logistic, svm and forest all take it from the trunk.
"""
from __future__ import annotations

import numpy as np


def class_weights(option: str | dict[str | int, float] | None, classes: np.ndarray,
                  counts: np.ndarray) -> dict[object, float] | None:
    """Resolve ``class_weight`` to a dict: ``balanced`` from the global class counts.

    ``partial_fit`` refuses ``"balanced"`` because one batch cannot know the
    class frequencies; the statistics pass does.
    """
    if option is None:
        return None
    if option == "balanced":
        weights = counts.sum() / (len(classes) * counts)
        return {c: float(w) for c, w in zip(classes.tolist(), weights)}
    by_name = {str(c): c for c in classes.tolist()}
    unknown = sorted(set(map(str, option)) - set(by_name))
    if unknown:
        from distml.errors import SpecError

        raise SpecError(f"model.params.class_weight names unknown class {unknown[0]!r}; "
                        f"classes are {', '.join(by_name)}")
    return {by_name[str(name)]: weight for name, weight in option.items()}
