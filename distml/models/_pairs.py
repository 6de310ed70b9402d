"""One-vs-one for the linear SVM on kernel features: one binary fit per pair of classes, as ``SVC`` decides.

``SVC`` (libsvm) trains one binary SVM per pair of classes on that pair's rows and lets them vote. The
Nyström route approximates that SVC, so with more than two classes it does the same rather than
SGDClassifier's one-vs-rest: each pair's fit sees only its two classes' rows, with its own
regularisation ``1 / (C · rows of the pair)`` as SVC's pair problem has. The pairs share every task of the
lane engine (``_sgd.train_sgd_together``), and the result is a plain scikit-learn
``OneVsOneClassifier`` holding ordinary ``SGDClassifier``s.
"""
from __future__ import annotations

import itertools
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sklearn.multiclass import OneVsOneClassifier

    from distml.blocks import Partitions
    from distml.models._sgd import SGDFit
    from distml.models.base import TrainContext

MAX_PAIR_CLASSES = 10  # more classes train one-vs-rest: 45 pairs at most, each a model of the map's width


def pairs_of(classes: Any) -> list[tuple[Any, Any]]:
    """The pairs of classes in scikit-learn's order (``OneVsOneClassifier``'s ``estimators_``)."""
    return list(itertools.combinations(np.asarray(classes).tolist(), 2))


def pair_alpha(C: float, counts: dict[Any, int], pair: tuple[Any, Any]) -> float:
    """SGD's ``alpha`` for ``SVC``'s pair problem, ½‖w‖² + C Σ hinge over the pair's rows."""
    return 1.0 / (C * max(1, sum(counts[c] for c in pair)))


def pair_weights(weights: dict[Any, float] | None, pair: tuple[Any, Any]) -> dict[Any, float] | None:
    """The class weights of the pair's two classes (resolved on all classes, as SVC applies them per class)."""
    return None if weights is None else {c: weights[c] for c in pair if c in weights} or None


def pair_fits(fit: SGDFit, classes: Any, C: float, counts: dict[Any, int], alpha: float | None) -> list[SGDFit]:
    """One binary fit per pair of ``classes``, on that pair's rows (``alpha``: the user's, else SVC's per pair)."""
    template, out = fit.template, []
    for pair in pairs_of(classes):
        params = {"alpha": alpha if alpha is not None else pair_alpha(C, counts, pair),
                  "class_weight": pair_weights(template.class_weight, pair)}
        out.append(replace(fit, template=type(template)(**{**template.get_params(), **params}), labels=pair,
                           fit_kwargs={**fit.fit_kwargs, "classes": np.array(pair)}))
    return out


def one_vs_one(binaries: list[Any], classes: Any) -> OneVsOneClassifier:
    """A fitted ``OneVsOneClassifier`` from the pairs' binary models (in ``pairs_of`` order).

    scikit-learn's own fit trains each pair on labels 0 and 1 (the pair's second class) and counts votes from
    ``predict``; so each model's ``classes_`` becomes ``[0, 1]``, its decision values unchanged.
    """
    from sklearn.multiclass import OneVsOneClassifier

    for model in binaries:
        model.classes_ = np.array([0, 1])
    ovo = OneVsOneClassifier(type(binaries[0])(**binaries[0].get_params()))
    ovo.estimators_, ovo.classes_, ovo.pairwise_indices_ = list(binaries), np.asarray(classes), None
    ovo.n_features_in_ = binaries[0].n_features_in_
    return ovo


def multiclass(n_classes: int, probability: bool) -> str | None:
    """How the Nystroem route decides between more than two classes (None: two classes).

    ``one-vs-one`` as the SVC it stands in for; ``one-vs-rest`` where probabilities are asked (scikit-learn's
    one-vs-one has no ``predict_proba``) or where the pairs' models would be too many.
    """
    if n_classes <= 2:
        return None
    return "one-vs-rest" if probability or n_classes > MAX_PAIR_CLASSES else "one-vs-one"


def log_pairs(ctx: TrainContext, n_classes: int) -> None:
    """The log's line for a one-vs-one model."""
    ctx.env.log(f"one-vs-one: {n_classes * (n_classes - 1) // 2} binary linear SVMs, one per pair of the {n_classes} "
                "classes, each on its pair's rows (as SVC)")


def train_pairs(parts: Partitions, fit: SGDFit, ctx: TrainContext, C: float, alpha: float | None) -> OneVsOneClassifier:
    """One binary linear SVM per pair of classes from shared epochs, as one ``OneVsOneClassifier``."""
    from distml.models._approx_sgd import plain_sgd
    from distml.models._sgd import train_sgd_together

    classes = ctx.data.classes
    counts = dict(zip(classes.tolist(), ctx.data.class_counts.tolist()))
    fits = pair_fits(fit, classes, C, counts, alpha)
    log_pairs(ctx, len(classes))
    binaries = train_sgd_together(parts, fits, ctx, "one-vs-one fits")
    return one_vs_one([plain_sgd(b) for b in binaries], classes)
