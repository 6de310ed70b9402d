"""One-vs-one for the Nyström route (``distml.models._pairs``): each pair's fit on its own rows, one plain
``OneVsOneClassifier`` from them (``tests/test_resume.py`` resumes the pairs together)."""
from __future__ import annotations

import numpy as np

from distml.blocks import Block
from distml.models._sgd import LaneState, StepInput, _sgd_epoch_part


def _blocks(seed: int = 0) -> list[Block]:
    rng = np.random.default_rng(seed)
    out = []
    for rows in (300, 250, 280):
        X = rng.normal(size=(rows, 4))
        y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)  # classes 0, 1, 2
        out.append(Block(X, y, rng.uniform(size=rows)))
    return out


def _hinge(model, X, y):
    return 0.0


def test_a_pair_fit_trains_on_its_two_classes_rows_as_a_fit_on_those_rows_alone():
    from sklearn.linear_model import SGDClassifier

    blocks = _blocks()
    template = SGDClassifier(alpha=1e-3, average=True, random_state=0)
    kwargs = {"classes": np.array([0, 2])}
    pair = StepInput(None, 0.0, _hinge, kwargs, labels=(0, 2))
    plain = StepInput(None, 0.0, _hinge, kwargs)
    # the pair shares its task with an unrestricted fit, which trains on every row
    got, everything = _sgd_epoch_part([LaneState(template), LaneState(SGDClassifier(random_state=0))], blocks,
                                      [pair, StepInput(None, 0.0, _hinge, {"classes": np.array([0, 1, 2])})], 7)
    alone = [Block(b.X[b.y != 1], b.y[b.y != 1], b.u[b.y != 1]) for b in blocks]
    (expected,) = _sgd_epoch_part([LaneState(template)], alone, [plain], 7)

    assert got.n_trained == expected.n_trained == sum(int((b.y != 1).sum()) for b in blocks)
    assert everything.n_trained == sum(len(b.y) for b in blocks)
    np.testing.assert_array_equal(got.model.coef_, expected.model.coef_)
    np.testing.assert_array_equal(got.model.intercept_, expected.model.intercept_)


def test_the_pairs_assemble_into_the_one_vs_one_classifier_scikit_learn_fits():
    from sklearn.linear_model import SGDClassifier
    from sklearn.multiclass import OneVsOneClassifier

    from distml.models._pairs import one_vs_one, pairs_of

    rng = np.random.default_rng(1)
    X = rng.normal(size=(1500, 5))
    y = np.array(["low", "mid", "top"])[(X[:, 0] + 0.5 * X[:, 1] ** 2 > 0.5).astype(int) + (X[:, 2] > 0.8)]
    base = SGDClassifier(max_iter=5, shuffle=False, tol=None, average=True, random_state=0)
    expected = OneVsOneClassifier(base).fit(X, y)
    binaries = [SGDClassifier(**base.get_params()).fit(X[np.isin(y, pair)], y[np.isin(y, pair)])
                for pair in pairs_of(np.unique(y))]
    got = one_vs_one(binaries, np.unique(y))

    assert pairs_of(["a", "b", "c"]) == [("a", "b"), ("a", "c"), ("b", "c")]
    np.testing.assert_array_equal(got.decision_function(X), expected.decision_function(X))
    np.testing.assert_array_equal(got.predict(X), expected.predict(X))
    assert sorted(vars(got)) == sorted(vars(expected))


def test_pair_weights_and_alpha_follow_svcs_pair_problems():
    from distml.models._pairs import pair_alpha, pair_weights

    assert pair_alpha(2.0, {0: 100, 1: 300, 2: 600}, (0, 2)) == 1.0 / (2.0 * 700)
    assert pair_weights({0: 1.5, 1: 2.0, 2: 0.5}, (1, 2)) == {1: 2.0, 2: 0.5}
    assert pair_weights({0: 3.0}, (1, 2)) is None and pair_weights(None, (0, 1)) is None
