"""The kernel SVM's route, chosen from what a sample measures: the cascade, or Nyström features.

The cascade pays off when few rows end as support vectors: its merges shrink the
sets and its top fit is small. On noisy data most rows are support vectors, the
merges shrink nothing and the top fit costs as much as one SVC on all rows. So
before the cascade is committed, one SVC is fitted on a sample of ``PROBE_ROWS``
training rows (the rows with the lowest draws ``u``, the same on every run); when
more than ``switch_sv_fraction`` of them are support vectors, the family trains a
linear SVM on Nyström features instead, whose cost grows with the rows, not with
the square of the support vectors. The number of components comes from a small
learning curve on a larger sample (``CURVE_ROWS``): the most of
``CURVE_COMPONENTS`` whose validation accuracy is within ``CURVE_TOL`` of the
curve's best beyond its noise (``pick_components`` says why the most); the
route keeps that size's map. When that is the curve's largest size (no sign of
overfitting up to there), the route doubles it once if all the training rows give
``BEYOND_ROWS_PER_COMPONENT`` per component: that map is fitted beside the curve on the curve's
rows, not measured on it (its point would cost more than the rest). The route's maps factor
their basis kernel by Cholesky (``fit_nystroem``), which makes large maps cheap to fit. With more
than two classes the route's linear SVM (and the curve's) is one binary SVM per pair of classes,
as the SVC it replaces decides (``_pairs``), unless probabilities are asked or the classes are many.
Data of at most ``2 * PROBE_ROWS`` training rows keeps the cascade
without a probe: one or two chunks, as costly as one SVC, and exact.

The sample stays on the workers: one task per partition keeps its rows below the
draw, and one task each fits the probe and the curve on them; the client sees
their counts, accuracies and timings only.
"""
from __future__ import annotations

import math
import operator
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from distml.kernels import fit_svc
from distml.models._svsets import SVSet, concat
from distml.tasks import submit_bounded

if TYPE_CHECKING:
    from distml.blocks import Partitions
    from distml.models.base import TrainContext

PROBE_ROWS = 4000  # rows of the probe SVC: large enough that its fraction is near the whole problem's
CURVE_ROWS = 24_000  # rows of the learning curve: its first 80% (by draw) train, the rest validate
CURVE_COMPONENTS = (250, 500, 1000, 2000)  # Nyström sizes tried; the route may go beyond the largest taken
CURVE_ROWS_PER_COMPONENT = 8  # curve training rows per component: fewer, and the curve measures overfitting
BEYOND_ROWS_PER_COMPONENT = 8  # training rows per component of the doubled map (three times: no better, slower)
CURVE_TOL = 0.002  # validation accuracy below the curve's best that still counts as no worse
EPOCHS = 10  # SGD epochs of the curve, and most of the route's (5 end ~0.4 points short of 15 on noisy data)
MIN_EPOCHS = 3
SGD_ROW_STEPS = 2_000_000  # row updates the route's averaged SGD makes: more rows, fewer epochs

# --- runs on workers ---------------------------------------------------------


def _draw_part(source: Any, fraction: float) -> SVSet:
    """The rows of one partition whose draw falls below ``fraction``, with their labels and draws."""
    block = source.load()
    keep = block.u < fraction
    return SVSet(block.X[keep], block.y[keep], block.u[keep])


def _first(samples: list[SVSet], rows: int) -> SVSet:
    """The ``rows`` sampled rows with the lowest draws (fewer if the sample is smaller)."""
    union = concat(samples)
    return SVSet(union.X[:rows], union.y[:rows], union.ids[:rows])


def _probe_part(samples: list[SVSet], rows: int, svc_params: dict[str, Any], gram_bytes: int) -> dict[str, Any]:
    """One SVC on the sample's first ``rows`` rows: how many end as support vectors, and the fit's time."""
    started = time.perf_counter()
    probe = _first(samples, rows)
    model = fit_svc(probe.X, probe.y, svc_params, gram_bytes)
    return {"rows": len(probe), "support_vectors": len(model.support_),
            "seconds": round(time.perf_counter() - started, 3)}


def _curve_rows(samples: list[SVSet], rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The curve's training rows (the first 80% of the sample's first ``rows``, by draw) and validation rows."""
    curve = _first(samples, rows)
    cut = int(0.8 * len(curve))
    return curve.X[:cut], curve.y[:cut], curve.X[cut:], curve.y[cut:]


def _curve_map(X: np.ndarray, n: int, nystroem: dict[str, Any]) -> Any:
    """The Nyström map of ``n`` components fitted on the curve's training rows ``X``."""
    from sklearn.kernel_approximation import Nystroem

    from distml.models._approx_sgd import fit_nystroem

    return fit_nystroem(Nystroem(n_components=n, **nystroem), X, factor="cholesky")


def _curve_map_part(samples: list[SVSet], rows: int, n: int, nystroem: dict[str, Any]) -> Any:
    """The map of a size beyond the curve, fitted on the curve's training rows as a point's is."""
    return _curve_map(_curve_rows(samples, rows)[0], n, nystroem)


def _curve_model(Z: np.ndarray, y: np.ndarray, sgd: dict[str, Any], pairs: bool) -> Any:
    """The route's linear SVM on the curve's features ``Z``: one SGDClassifier, or one per pair of classes."""
    from sklearn.linear_model import SGDClassifier

    if not pairs:
        return SGDClassifier(**{**sgd, "alpha": sgd["alpha"] / len(Z)}).fit(Z, y)
    from distml.models._pairs import one_vs_one, pair_weights, pairs_of

    binaries = []
    for pair in pairs_of(np.unique(y)):
        rows = np.isin(y, pair)
        binaries.append(SGDClassifier(**{**sgd, "alpha": sgd["alpha"] / rows.sum(),
                                         "class_weight": pair_weights(sgd["class_weight"], pair)}).fit(Z[rows], y[rows]))
    return one_vs_one(binaries, np.unique(y))


def _curve_part(samples: list[SVSet], rows: int, n: int, nystroem: dict[str, Any],
                sgd: dict[str, Any], pairs: bool = False) -> tuple[dict[str, Any], Any]:
    """One point of the learning curve: the Nyström route with ``n`` components fitted on the sample's first
    rows and scored on the rest; (the point, the fitted map, which the route reuses if it picks ``n``)."""
    from distml.models._approx_sgd import features

    started = time.perf_counter()
    X, y, Xv, yv = _curve_rows(samples, rows)
    approx = _curve_map(X, n, nystroem)
    model = _curve_model(features(approx, X), y, sgd, pairs)
    accuracy = float((model.predict(features(approx, Xv)) == yv).mean())
    point = {"n_components": n, "accuracy": round(accuracy, 5), "validation_rows": len(yv),
             "seconds": round(time.perf_counter() - started, 3)}
    return point, approx


# --- runs on the client ------------------------------------------------------


@dataclass
class Route:
    """The route taken and why: the manifest's ``training.route`` section (``record``)."""

    name: str  # cascade | nystroem
    reason: str
    threshold: float
    probe: dict[str, Any] | None = None  # rows, support_vectors, seconds
    curve: list[dict[str, Any]] = field(default_factory=list)
    n_components: int | None = None
    epochs: int | None = None  # the Nystroem route's SGD epochs
    multiclass: str | None = None  # the Nystroem route's linear SVM for 3+ classes: one-vs-one | one-vs-rest
    approx: Any = None  # the fitted Nystroem map of the chosen size (from the curve)
    seconds: float = 0.0  # probe and curve, as the client waited for them

    @property
    def sv_fraction(self) -> float | None:
        return None if self.probe is None else round(self.probe["support_vectors"] / self.probe["rows"], 4)

    def record(self, train_seconds: float) -> dict[str, Any]:
        """The manifest's section: the route, the measured fraction against its threshold, and the costs."""
        return {"route": {"taken": self.name, "reason": self.reason, "sv_fraction": self.sv_fraction,
                          "threshold": self.threshold, "probe": self.probe, "curve": self.curve,
                          "n_components": self.n_components, "epochs": self.epochs, "multiclass": self.multiclass,
                          "choice_seconds": round(self.seconds, 3), "train_seconds": round(train_seconds, 3)}}


def route_epochs(train_rows: int) -> int:
    """The Nystroem route's SGD epochs: about ``SGD_ROW_STEPS`` row updates, ``MIN_EPOCHS`` to ``EPOCHS`` passes."""
    return min(EPOCHS, max(MIN_EPOCHS, math.ceil(SGD_ROW_STEPS / max(1, train_rows))))


def _curve_components(curve_rows: int, n_features: int, worker_memory: int) -> list[int]:
    """The sizes the curve tries: enough curve rows per component, and the curve task's features
    (its rows' features and their float64 copy while SGD fits) within a quarter of a worker's memory."""
    fits = [n for n in CURVE_COMPONENTS if CURVE_ROWS_PER_COMPONENT * n <= 0.8 * curve_rows
            and (not worker_memory or 2 * 8 * curve_rows * (n + n_features) <= worker_memory // 4)]
    return fits or [CURVE_COMPONENTS[0]]


def _beyond(components: list[int], train_rows: int, worker_memory: int) -> int | None:
    """Twice the curve's largest size, if all the training rows give ``BEYOND_ROWS_PER_COMPONENT`` per
    component and its fit's n×n float64 matrices (four) take at most a quarter of a worker's memory; else None."""
    n = 2 * max(components)
    fits = BEYOND_ROWS_PER_COMPONENT * n <= train_rows and (not worker_memory or 4 * 8 * n * n <= worker_memory // 4)
    return n if fits else None


def pick_components(curve: list[dict[str, Any]]) -> tuple[int, float]:
    """The most components whose validation accuracy is no worse than the curve's best beyond its noise:
    ``CURVE_TOL``, or two standard errors of the best accuracy on the curve's validation rows if more.

    The curve's few thousand rows understate what more components give on all the rows (there each
    component is fitted on many more of them), so a size is given up only where the curve shows it
    does worse: a map too large for its rows, overfitting. Returns (components, the tolerance used).
    """
    top = max(curve, key=lambda p: p["accuracy"])
    best = top["accuracy"]
    tol = max(CURVE_TOL, 2.0 * math.sqrt(best * (1.0 - best) / max(1, top["validation_rows"])))
    return max(p["n_components"] for p in curve if p["accuracy"] >= best - tol), tol


def _solver(route: Route, sgd: dict[str, Any]) -> str:
    """How the route's linear SVM is fitted, for its reason: by its dual (hinge loss, two classes or one
    problem per pair) where the features are held, else by SGD."""
    if route.multiclass != "one-vs-rest" and sgd["loss"] == "hinge":
        return f" (solved by its dual where the features are held, else {route.epochs} epochs of SGD)"
    return f", {route.epochs} epochs"


def choose(parts: Partitions, ctx: TrainContext, threshold: float, svc_params: dict[str, Any], gram_bytes: int,
           sgd: dict[str, Any], multiclass: str | None = None) -> Route:
    """Measure the support-vector fraction of a probe SVC and choose the route (see the module's docstring).

    ``sgd`` holds the curve's SGDClassifier parameters, with ``alpha`` as ``alpha * rows`` (``1 / C``);
    ``multiclass`` how the Nystroem route decides between 3+ classes (``one-vs-one``: one fit per pair).
    """
    rows = ctx.data.train_rows
    if rows <= 2 * PROBE_ROWS:
        return Route("cascade", f"{rows:,} training rows, at most {2 * PROBE_ROWS:,}: one SVC's worth, kept exact",
                     threshold)
    started = time.perf_counter()
    client, key = ctx.env.client, ctx.env.key

    def draw(want: int, name: str) -> list[Any]:
        """Futures of every partition's rows below the draw that yields about ``want`` rows (4 standard
        deviations more: nearly always enough)."""
        fraction = min(1.0, (want + 4 * math.sqrt(want)) / rows)
        return submit_bounded(client, parts.train, lambda i, source: client.submit(
            _draw_part, source, fraction, key=key("sample", name, i)), max_in_flight=ctx.env.max_in_flight)

    samples = draw(PROBE_ROWS, "probe")  # the curve's larger sample only if the route needs it
    probe = client.submit(_probe_part, samples, PROBE_ROWS, svc_params, gram_bytes, key=key("probe", 1)).result()
    client.cancel(samples)
    route = Route("cascade", "", threshold, probe)
    if route.sv_fraction <= threshold:
        route.reason = (f"{route.sv_fraction:.0%} of a {probe['rows']:,}-row probe SVC's rows are support vectors, "
                        f"at most switch_sv_fraction={threshold}: the cascade's merges will shrink its sets")
    else:
        nystroem = {"kernel": svc_params["kernel"], "gamma": svc_params["gamma"], "degree": svc_params["degree"],
                    "coef0": svc_params["coef0"], "random_state": ctx.env.child_seeds(1, salt=5)[0]}
        want = min(rows, CURVE_ROWS)
        samples = draw(want, "curve")
        components = _curve_components(want, ctx.data.n_features, ctx.env.worker_memory)
        larger = _beyond(components, rows, ctx.env.worker_memory)
        # the map beyond the curve first, then one task per size, largest first: they run side by side
        beyond = None if larger is None else client.submit(_curve_map_part, samples, want, larger, nystroem,
                                                           key=key("probe", 5, larger))
        pairs = multiclass == "one-vs-one"
        points = {n: client.submit(_curve_part, samples, want, n, nystroem, sgd, pairs, key=key("probe", 2, n))
                  for n in sorted(components, reverse=True)}
        route.curve = [client.submit(operator.itemgetter(0), points[n], key=key("probe", 3, n)).result()
                       for n in components]
        picked, tol = pick_components(route.curve)
        route.name, route.epochs, route.multiclass = "nystroem", route_epochs(rows), multiclass
        size = (f"{picked} components, the most within {tol:.1%} of the best of {components} on a {want:,}-row "
                "learning curve")
        if beyond is not None and picked == max(components):
            route.n_components, route.approx = larger, beyond.result()
            size = f"{larger} components: twice the {size}, its largest size"
        else:
            route.n_components = picked
            route.approx = client.submit(operator.itemgetter(1), points[picked], key=key("probe", 4)).result()
        client.cancel([*points.values(), *samples, *([beyond] if beyond is not None else [])])
        route.reason = (f"{route.sv_fraction:.0%} of a {probe['rows']:,}-row probe SVC's rows are support vectors, "
                        f"more than switch_sv_fraction={threshold}: the cascade's merges would shrink little and its "
                        f"top fit cost about one SVC; Nyström features ({size}) with a linear SVM instead"
                        f"{f' ({multiclass})' if multiclass else ''}{_solver(route, sgd)}")
    route.seconds = time.perf_counter() - started
    return route
