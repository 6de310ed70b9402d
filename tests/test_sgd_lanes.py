"""Every worker thread trains an SGD lane on data of few partitions (``_sgd._slices``).

Data that fits memory is cut into two partitions a thread, fewer than the ``MIX`` a lane step reads: the group
is cut into row slices by the rows' draw, one task per slice, so both threads train and each lane still mixes
the rows of every file of its group (files that each hold one class must not drift it).
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from distml.blocks import persist
from distml.cluster import worker_resources
from distml.data import open_dataset
from distml.features import plan_features
from distml.models import logistic
from distml.models._lane_rows import ShuffledRows, in_slice
from distml.models._sgd import MIX
from distml.models.base import TrainContext
from distml.spec import DataSpec
from distml.synth import _write, make_rows

JOB = "20260101-000000-lanes"


def test_slices_cut_the_rows_into_disjoint_even_shares_that_keep_the_validation_share():
    u = np.random.default_rng(0).random(300_000)
    masks = [in_slice(u, k, 3) for k in range(3)]
    assert (np.sum(masks, axis=0) == 1).all()  # every row in exactly one slice
    assert [round(m.mean(), 2) for m in masks] == [0.33] * 3
    assert [round((u[m] < 0.1).mean(), 2) for m in masks] == [0.1] * 3  # validation rows are u < fraction
    assert in_slice(u, 0, 1).all()


def test_few_partitions_of_files_one_class_each_train_in_both_lanes_within_half_a_point(client, tmp_path):
    classes, columns = 4, [f"x{j}" for j in range(6)]
    X, y = make_rows("classification", 40_000, 6, classes, seed=5, stream=0, noise=4.0)
    test_X, test_y = make_rows("classification", 10_000, 6, classes, seed=5, stream=1, noise=4.0)
    for i, rows in enumerate(np.array_split(np.argsort(y, kind="stable"), 4)):
        _write(tmp_path / f"part-{i}.parquet", X[rows], y[rows], None)
    dataset = open_dataset(DataSpec(path=str(tmp_path), target="target", holdout=0.0), 0)
    dataset.partition(2**30)  # as data that fits: no more partitions than files
    logs: list[str] = []
    plan = plan_features(dataset, client, f"{JOB}-plan", "classification")
    ctx = TrainContext.create(client=client, job_id=JOB, seed=0, plan=plan, resources=worker_resources(client),
                              log=logs.append)
    parts = persist(plan.parts, client, f"{JOB}-keep")
    assert parts.n_parts <= MIX  # one group
    client.get_task_stream(start=0, stop=0)
    ours = logistic.train(parts, logistic.Params(solver="softmax", epochs=5), ctx)
    client.cancel(parts.train)

    prefix = f"distml-train-{JOB}-"
    keys = {str(r["key"]).removeprefix(prefix) for r in client.get_task_stream() if str(r["key"]).startswith(prefix)}
    assert Counter(k.rsplit("-", 2)[0] for k in keys) == dict.fromkeys(map(str, range(5)), 2)  # 2 lanes an epoch
    assert [line for line in logs if line.startswith("epoch ")] == [
        f"epoch {e}: trained on 40000 rows in 2 lanes" for e in range(5)]  # the slices cover every row
    test = plan.transformer.transform(pd.DataFrame(test_X, columns=columns))
    reference = LogisticRegression(max_iter=1000).fit(plan.transformer.transform(pd.DataFrame(X, columns=columns)), y)
    theirs, mine = (reference.predict(test) == test_y).mean(), (ours.predict(test) == test_y).mean()
    assert mine > theirs - 0.005, (mine, theirs)


def test_shuffled_rows_gathered_in_batches_are_the_whole_shuffled_copy():
    """The mapped route's SGD gathers each float64 batch from the held blocks: the same rows, in the same order."""
    rng = np.random.default_rng(1)
    pieces = [(rng.random((n, 5), dtype=np.float32), rng.integers(0, 3, n), np.flatnonzero(rng.random(n) < 0.7))
              for n in (40, 7, 25)]
    rows = ShuffledRows(pieces, seed=3)
    whole = rows.whole()
    chosen = np.concatenate([Xb[r] for Xb, _, r in pieces])
    labels = np.concatenate([yb[r] for _, yb, r in pieces])
    assert whole.dtype == np.float32 and len(rows) == len(chosen)
    order = np.lexsort(whole.T)  # the same rows with their labels, shuffled
    np.testing.assert_array_equal(whole[order], chosen[np.lexsort(chosen.T)])
    np.testing.assert_array_equal(rows.y[order], labels[np.lexsort(chosen.T)])
    assert not np.array_equal(whole, chosen)
    batches = [rows.batch(lo, min(lo + 8, len(rows))).copy() for lo in range(0, len(rows), 8)]
    assert all(b.dtype == np.float64 for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), whole.astype(np.float64))
    np.testing.assert_array_equal(ShuffledRows(pieces, seed=3).whole(), whole)  # the seed fixes the order
