"""The registry: a job file's ``model.kind`` -> the family module that trains it."""
from __future__ import annotations

from types import ModuleType

from distml.models import linear, logistic
from distml.models import forest
from distml.models import svm

FAMILIES: dict[str, ModuleType] = {
    "linear": linear,
    "logistic": logistic,
    "forest": forest,
    "svm": svm,
}
