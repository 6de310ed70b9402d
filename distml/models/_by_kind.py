"""A search whose candidates take different kinds of solver: each kind's group through its own shared path.

``train_by_kind`` splits the candidates by kind (exact and SGD, say), trains every group with the
trainer a search of that kind alone uses, side by side on the cluster, and returns the results in the
candidates' order. Each group drives its own tasks, under its own task-key namespace
(``<job>-<kind>``), from its own client thread (the first in the caller's): a group's client-side
work (a Newton solve, an epoch's average) and its waits on a pass then overlap with the other's tasks,
as a search's concurrent candidates do. The groups share nothing but the thread-safe client, and each
group's trainer gives every candidate the model its own ``train`` gives, so the models do not depend
on the interleaving.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from distml.models.base import TrainContext

Candidate = TypeVar("Candidate")


class _Stopped(Exception):
    """Raised at a group's next progress report once another group has failed, so it ends too."""


def train_by_kind(candidates: Sequence[Candidate], kinds: Sequence[str],
                  trainers: Mapping[str, Callable[[list[Candidate], TrainContext], list[Any]]],
                  ctx: TrainContext) -> list[Any]:
    """``trainers[kind](group, group_ctx)`` for each kind's candidates, side by side; results in ``candidates``' order.

    One kind alone trains in ``ctx`` itself. The first failure of a group (the cluster's, or
    ``JobCancelled`` from ``ctx.env.report``) stops the others at their next report and is raised once
    every group has ended; a candidate's own exception in its group's results stays in its place.
    """
    order = list(dict.fromkeys(kinds))
    if len(order) == 1:
        return trainers[order[0]](list(candidates), ctx)
    members = {kind: [i for i, k in enumerate(kinds) if k == kind] for kind in order}
    done = dict.fromkeys(order, 0.0)
    lock = threading.Lock()  # the job's report and log callbacks are called from one group at a time
    failures: list[BaseException] = []
    results: dict[str, list[Any]] = {}

    def group_ctx(kind: str) -> TrainContext:
        def report(phase: str, fraction: float) -> None:
            if failures:
                raise _Stopped(kind)
            with lock:
                done[kind] = fraction
                ctx.env.report(phase, sum(done[k] * len(members[k]) for k in order) / len(kinds))

        def log(message: str) -> None:
            with lock:
                ctx.env.log(message)

        return TrainContext(replace(ctx.env, job_id=f"{ctx.env.job_id}-{kind}", report=report, log=log), ctx.data)

    def train(kind: str) -> None:
        try:
            results[kind] = trainers[kind]([candidates[i] for i in members[kind]], group_ctx(kind))
        except BaseException as exc:  # noqa: BLE001 - raised below, once every group has ended
            failures.append(exc)

    ctx.env.log(f"{len(kinds)} candidates in {len(order)} groups trained side by side: "
                + ", ".join(f"{len(members[k])} {k}" for k in order))
    threads = [threading.Thread(target=train, args=(kind,), name=f"distml-group-{kind}", daemon=True)
               for kind in order[1:]]
    for thread in threads:
        thread.start()
    try:
        train(order[0])
    finally:
        for thread in threads:
            thread.join()
    first = next((exc for exc in failures if not isinstance(exc, _Stopped)), None)
    if first is not None:
        raise first
    out: list[Any] = [None] * len(kinds)
    for kind in order:
        for i, result in zip(members[kind], results[kind]):
            out[i] = result
    return out
