"""The registry: a job file's ``model.kind`` -> the family module that trains it."""
from __future__ import annotations

from distml.models import forest, linear, logistic, svm
from distml.models.base import Family

FAMILIES: dict[str, Family] = {
    "linear": linear,
    "logistic": logistic,
    "forest": forest,
    "svm": svm,
}
