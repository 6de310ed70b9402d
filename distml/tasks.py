"""Dask idioms shared by every phase: task keys, bounded submission, tree reductions.

All functions here run on the client and take the client explicitly.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Client, Future

# Phase words are short, all letters and never 8 letters starting a-f, so the
# dashboard's ``key_split`` shows ``distml-<phase>`` as the task group.
PHASES = ("read", "stats", "train", "merge", "eval", "save", "load", "job", "tree", "svm",
          "sample", "oob", "cut", "pick", "layer", "screen", "kkt", "top", "refit", "size")
_PHASE = re.compile(r"^[a-z]{2,7}$")


def task_key(phase: str, job_id: str, *index: int | str) -> str:
    """Build the one key shape every distml task uses: ``distml-<phase>-<job>-<i>…``."""
    if not _PHASE.match(phase):
        raise ValueError(f"phase word {phase!r} must be 2-7 lowercase letters")
    return "-".join(["distml", phase, job_id, *(str(i) for i in index)])


def map_bounded(
    client: Client,
    fn: Callable[..., Any],
    items: Sequence[Any],
    *,
    key: Callable[[int], str],
    max_in_flight: int,
    combine: Callable[[Any, Any], Any] | None = None,
    on_done: Callable[[int], None] | None = None,
    **kwargs: Any,
) -> list[Any] | Any:
    """Run ``fn(item, **kwargs)`` for every item, at most ``max_in_flight`` at once.

    Results come back to the client as they finish (they must be small); with
    ``combine`` they are folded into one value in item order, otherwise a list in
    item order is returned. Bounding the tasks in flight is what keeps a pass over
    data larger than the cluster's memory from reading every partition at once.
    """
    from distributed import as_completed

    results: list[Any] = [None] * len(items)
    pending = iter(enumerate(items))
    done = 0

    def submit_next(queue: Any) -> None:
        nxt = next(pending, None)
        if nxt is not None:
            i, item = nxt
            fut = client.submit(fn, item, key=key(i), **kwargs)
            fut.distml_index = i  # type: ignore[attr-defined]
            queue.add(fut)

    queue = as_completed(loop=client.loop)
    for _ in range(max(1, max_in_flight)):
        submit_next(queue)
    for fut in queue:
        i = fut.distml_index  # type: ignore[attr-defined]
        results[i] = fut.result()
        fut.release()
        done += 1
        if on_done is not None:
            on_done(done)
        submit_next(queue)
    if combine is None:
        return results
    return fold(results, combine)


def fold(values: Iterable[Any], combine: Callable[[Any, Any], Any]) -> Any:
    """Combine small values left to right on the client (used after ``map_bounded``)."""
    it = iter(values)
    acc = next(it)
    for value in it:
        acc = combine(acc, value)
    return acc


def tree_reduce(
    client: Client,
    futures: list[Future],
    combine: Callable[[Any, Any], Any],
    *,
    key: Callable[[int, int], str],
) -> Future:
    """Combine futures pairwise on the workers, ``log2(n)`` levels deep.

    Only the final value needs to travel to the client; intermediate values
    move between workers.
    """
    level = 0
    while len(futures) > 1:
        nxt = []
        for j in range(0, len(futures) - 1, 2):
            nxt.append(client.submit(combine, futures[j], futures[j + 1], key=key(level, j // 2)))
        if len(futures) % 2:
            nxt.append(futures[-1])
        futures = nxt
        level += 1
    return futures[0]
