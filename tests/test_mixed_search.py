"""A search mixing exact and SGD candidates (``_by_kind``): each kind's group through its own shared path.

Each model must be bitwise the one the candidate's own ``train`` gives; the exact group must make one task per
partition per pass, in the passes of its longest candidate alone, and the SGD group one task per group of
partitions per epoch, whatever the number of candidates (tasks counted by key, each fit in a key namespace of
its own); a job's search lists every candidate with its score.
"""
from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from distml.cluster import worker_resources
from distml.data import open_dataset
from distml.errors import JobCancelled
from distml.features import plan_features
from distml.jobfile import parse_job
from distml.models import linear, logistic
from distml.models._sgd import MIX
from distml.models.base import TrainContext
from distml.runner import run_job
from distml.spec import DataSpec

JOB = "20260101-000000-mixed"
EXACT = ("newton", "lbfgs", "exact")
CASES = {  # family, task, candidates: two exact and two SGD, interleaved as a grid over the solver gives them
    "logistic": (logistic, "classification", [{"solver": "newton", "alpha": 1e-4}, {"solver": "sgd", "alpha": 1e-4,
                 "epochs": 2}, {"solver": "newton", "alpha": 1e-2}, {"solver": "sgd", "alpha": 1e-2, "epochs": 3}]),
    "linear": (linear, "regression", [{"solver": "exact", "alpha": 0.0}, {"solver": "sgd", "alpha": 1e-3, "epochs": 2},
               {"solver": "exact", "alpha": 10.0}, {"solver": "sgd", "alpha": 0.0, "epochs": 3}]),
}


def _training_keys(client, job_id, fit):
    """``fit()``'s result and the suffixes of its training task keys (``distml-train-<job_id>-…``), by key."""
    client.get_task_stream(start=0, stop=0)  # starts the scheduler's task stream if it is not recording yet
    result = fit()
    prefix = f"distml-train-{job_id}-"
    return result, {str(r["key"]).removeprefix(prefix) for r in client.get_task_stream()
                    if str(r["key"]).startswith(prefix)}


def _per_step(keys, kind=None):
    """Tasks per pass (exact) or epoch (SGD), from keys ``[<kind>-]<step>-…``."""
    if kind is not None:
        keys = {k.removeprefix(f"{kind}-") for k in keys if k.startswith(f"{kind}-")}
    return Counter(int(k.split("-")[0]) for k in keys)


def _fitted(model):
    return {k: v for k, v in vars(model).items() if k.endswith("_") and not k.startswith("_")}


def _context(client, folder, case, kind, **env):
    """A context over ``folder``'s rows (all training, a file a partition) and the plan's partitions."""
    dataset = open_dataset(DataSpec(path=str(folder), target="target", holdout=0.0), 0)
    dataset.partition(1_000)  # a file each: one group of MIX partitions (test_sgd_many has the lanes)
    plan = plan_features(dataset, client, f"{JOB}-{case}-plan", kind)
    ctx = TrainContext.create(client=client, job_id=JOB, seed=0, plan=plan, resources=worker_resources(client))
    return plan.parts, TrainContext(replace(ctx.env, **env), ctx.data)


@pytest.mark.parametrize("case", list(CASES))
def test_mixed_candidates_share_passes_by_kind_and_get_the_models_of_their_own_fits(client, make_data, case):
    family, kind, grid = CASES[case]
    folder, _ = make_data(kind, rows=4000, features=5, files=4)
    logs: list[str] = []
    parts, ctx = _context(client, folder, case, kind, log=logs.append)
    groups = -(-parts.n_parts // MIX)
    params = [family.Params(**p) for p in grid]
    exact = [p.solver in EXACT for p in params]
    alone = []
    for i, p in enumerate(params):
        own = TrainContext(replace(ctx.env, job_id=f"{JOB}-{case}-c{i}"), ctx.data)
        alone.append(_training_keys(client, own.env.job_id, lambda p=p, own=own: family.train(parts, p, own)))

    logs.clear()
    shared_ctx = TrainContext(replace(ctx.env, job_id=f"{JOB}-{case}-all"), ctx.data)
    shared, keys = _training_keys(client, shared_ctx.env.job_id, lambda: family.train_many(parts, params, shared_ctx))

    for ours, (theirs, _) in zip(shared, alone):
        assert type(ours) is type(theirs) and ours.get_params() == theirs.get_params()
        mine, own = _fitted(ours), _fitted(theirs)
        assert mine.keys() == own.keys()
        for name in own:
            np.testing.assert_array_equal(mine[name], own[name], err_msg=name)
    epochs = [p.epochs for p, e in zip(params, exact) if not e]
    if case == "linear":  # one Gram pass, a task per partition, for every alpha
        assert all(k == {str(i) for i in range(parts.n_parts)} for (_, k), e in zip(alone, exact) if e)
        assert {k for k in keys if k.startswith("exact-")} == {f"exact-{i}" for i in range(parts.n_parts)}
    else:  # one task per partition and pass, in the passes of the longest candidate alone
        passes = [_per_step(k) for (_, k), e in zip(alone, exact) if e]
        assert all(n == dict.fromkeys(range(len(n)), parts.n_parts) for n in passes)
        longest = max(len(n) for n in passes)
        assert _per_step(keys, "exact") == dict.fromkeys(range(longest), parts.n_parts)
        assert f"2 exact logistic fits from {longest} shared passes over the data " \
               f"(alone: {sum(len(n) for n in passes)})" in logs
    assert all(_per_step(k) == dict.fromkeys(range(n), groups)
               for (_, k), n in zip([a for a, e in zip(alone, exact) if not e], epochs))
    assert _per_step(keys, "sgd") == dict.fromkeys(range(max(epochs)), groups)  # one per group of MIX and epoch
    assert {k.split("-")[0] for k in keys} == {"exact", "sgd"}  # no task outside the two groups' namespaces
    assert logs[0] == "4 candidates in 2 groups trained side by side: 2 exact, 2 sgd"
    assert f"2 SGD fits from {max(epochs)} shared epochs over the data (alone: {sum(epochs)})" in logs


def test_a_cancel_in_one_group_ends_the_other(client, make_data):
    """``JobCancelled`` from the first group to report stops the other at its next report; every thread ends."""
    folder, _ = make_data("classification", rows=4000, features=5, files=4)
    reports: list[float] = []

    def report(phase: str, fraction: float) -> None:
        reports.append(fraction)
        if len(reports) == 1:
            raise JobCancelled("cancelled")

    parts, ctx = _context(client, folder, "cancel", "classification", job_id=f"{JOB}-cancel", report=report)
    params = [logistic.Params(solver="newton", alpha=a) for a in (1e-5, 1e-3)] + [logistic.Params(solver="sgd")]
    with pytest.raises(JobCancelled):
        logistic.train_many(parts, params, ctx)
    assert len(reports) == 1  # the group that went on stopped at its next report, before the job's was called
    assert not [t for t in threading.enumerate() if t.name.startswith(("distml-fit-", "distml-group-"))]


def test_a_job_searching_over_exact_and_sgd_solvers_lists_every_candidate_with_its_score(client, tmp_path, make_data):
    folder, _ = make_data("classification", rows=4000, features=5, files=2)
    grid = {"solver": ["newton", "sgd"], "alpha": [1e-4, 1e-2]}
    logs: list[str] = []
    spec = parse_job({"name": "mixed", "seed": 0, "data": {"path": str(folder), "target": "target"},
                      "model": {"kind": "logistic"}, "search": {"params": grid},
                      "output": {"store": str(tmp_path / "models")}}, "test")
    result = run_job(spec, client, log=logs.append)
    search = json.loads((Path(result.uri) / "manifest.json").read_text())["search"]
    rows = search["candidates"]
    assert [r["params"] for r in rows] == [{"solver": s, "alpha": a} for s in grid["solver"] for a in grid["alpha"]]
    assert all("error" not in r and len(r["scores"]) == 1 and 0.5 < r["mean"] <= 1.0 for r in rows), rows
    best = max(rows, key=lambda r: r["mean"])
    assert search["best"] == best["params"] and search["best_score"] == best["mean"]
    assert result.summary["search"]["candidates"] == rows
    assert any(line.endswith("4 candidates in 2 groups trained side by side: 2 exact, 2 sgd") for line in logs), logs
