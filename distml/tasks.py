"""Dask idioms shared by every phase: task keys and their phase words, bounded submission, picks, tree reductions.

The public functions run on the client and take the client explicitly; ``_part``
functions run on the workers.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from distributed import Client, Future

T = TypeVar("T")

# Every phase word a task key may carry, and what it names. Words are short, all
# letters and never 8 letters starting a-f, so the dashboard's ``key_split``
# shows ``distml-<phase>`` as the task group (tests/test_cluster.py checks each).
PHASES: dict[str, str] = {
    "read": "the job's first phase: files, footers, partitions",
    "stats": "the statistics pass, one task per partition",
    "merge": "pairwise merges: statistics, metrics, Gram matrices, forest samples",
    "load": "blocks read into cluster memory (persist)",
    "train": "training tasks: SGD lanes, Gram matrices",
    "eval": "metrics on the holdout",
    "save": "the job's last phase: the artifact",
    "job": "a detached job's driver",
    "sample": "rows drawn from every partition (forest bootstrap, kernel approximation, the svm route's probe)",
    "tree": "forest: tree fits",
    "oob": "forest: out-of-bag tallies",
    "cut": "cascade SVM: partitions cut into chunk pieces",
    "pick": "cascade SVM: one chunk's piece of a cut",
    "svm": "cascade SVM: first-layer fits",
    "map": "kernel approximation: training rows mapped once to the features every epoch reads",
    "probe": "kernel SVM: the probe SVC and the learning curve that choose its route",
    "layer": "cascade SVM: merge layers",
    "screen": "cascade SVM: candidates screened by margin",
    "top": "cascade SVM: the top fit",
    "size": "cascade SVM: small results brought to the client",
    "kkt": "cascade SVM: every row checked against the final fit",
    "refit": "cascade SVM: refits with the violators",
    "restore": "cascade SVM: a checkpoint's support-vector sets put back on the workers",
    "predict": "batch scoring: one input file scored into one output file",
    "cv": "cross-validation and search: draw histograms and each fold's row subsets",
    "search": "the search (or cross-validation) phase of a job",
    "warm": "each worker imports its later tasks' libraries while the client waits (distml.warmup)",
}


def task_key(phase: str, job_id: str, *index: int | str) -> str:
    """Build the one key shape every distml task uses: ``distml-<phase>-<job>-<i>…``."""
    if phase not in PHASES:
        raise ValueError(f"phase word {phase!r} is not declared in distml.tasks.PHASES")
    return "-".join(["distml", phase, job_id, *(str(i) for i in index)])


def submit_bounded(
    client: Client,
    items: Sequence[T],
    submit: Callable[[int, T], Future],
    *,
    max_in_flight: int,
    on_done: Callable[[Future], None] | None = None,
    drain: bool = False,
) -> list[Future]:
    """Call ``submit(i, item)`` for every item, with at most ``max_in_flight`` of its futures unfinished.

    Bounding the tasks in flight is what keeps a pass over data larger than the
    cluster's memory from reading every partition at once. ``on_done`` sees each
    future that finished while waiting; with ``drain`` the call also waits for
    the last ones (and shows them to ``on_done``), otherwise it returns as soon as
    everything is submitted and the results stay on the workers.
    """
    from distributed import as_completed

    running = as_completed(loop=client.loop)
    futures: list[Future] = []
    for i, item in enumerate(items):
        if i >= max(1, max_in_flight):
            finished = next(running)  # wait for one task to finish before submitting another
            if on_done is not None:
                on_done(finished)
        futures.append(submit(i, item))
        running.add(futures[-1])
    if drain:
        for finished in running:
            if on_done is not None:
                on_done(finished)
    return futures


def map_bounded(
    client: Client,
    fn: Callable[..., Any],
    items: Sequence[Any],
    *,
    key: Callable[[int], str],
    max_in_flight: int,
    on_done: Callable[[int], None] | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Run ``fn(item, **kwargs)`` for every item, at most ``max_in_flight`` at once; the results in item order.

    Results come back to the client as they finish (they must be small) and
    each task is released at once; ``on_done`` gets the count finished so far.
    """
    results: list[Any] = [None] * len(items)
    position: dict[str, int] = {}
    done = 0

    def submit(i: int, item: Any) -> Future:
        future = client.submit(fn, item, key=key(i), **kwargs)
        position[future.key] = i
        return future

    def collect(future: Future) -> None:
        nonlocal done
        results[position.pop(future.key)] = future.result()
        future.release()
        done += 1
        if on_done is not None:
            on_done(done)

    submit_bounded(client, items, submit, max_in_flight=max_in_flight, on_done=collect, drain=True)
    return results


def _pick_part(values: Sequence[Any], index: int) -> Any:
    return values[index]


def pick(client: Client, future: Future, index: int, *, key: str) -> Future:
    """A future of item ``index`` of ``future``'s result (a tuple or list), taken on the worker holding it.

    The item is shared with the result, not copied, and nothing travels to the client.
    """
    return client.submit(_pick_part, future, index, key=key)


MERGE_FAN_IN = 8  # the most partial results one merge task combines: fewer scheduler round trips per pass
MERGE_BYTES = 64 * 2**20  # ... and at most about this many bytes of them


def fan_in(value_bytes: int) -> int:
    """How many partial results of ``value_bytes`` each one merge task combines (2 to ``MERGE_FAN_IN``)."""
    return max(2, min(MERGE_FAN_IN, MERGE_BYTES // max(1, value_bytes)))


def _combine_part(combine: Callable[[Any, Any], Any], *values: Any) -> Any:
    """``combine`` folded over ``values`` from left to right."""
    total = values[0]
    for value in values[1:]:
        total = combine(total, value)
    return total


class TreeSum:
    """Partial results combined on the workers as they are pushed, ``fan_in`` at a time.

    The groups depend only on each result's position (a base-``fan_in`` counter: results 0..k-1,
    then k..2k-1, …, then those groups' totals), so the sum is the same float whatever the
    scheduling, and a reduction holds at most ``fan_in - 1`` unmerged results per level.
    """

    def __init__(self, client: Client, combine: Callable[[Any, Any], Any], *, key: Callable[[int, int], str],
                 fan_in: int = 2) -> None:
        self.client, self.combine, self.key, self.fan_in = client, combine, key, max(2, fan_in)
        self.stack: list[tuple[int, Future]] = []  # (level, future), levels never increasing
        self.merges: dict[int, int] = {}

    def push(self, future: Future) -> None:
        """Add the next result; full groups are merged at once."""
        k, level = self.fan_in, 0
        self.stack.append((0, future))
        while len(self.stack) >= k and all(entry[0] == level for entry in self.stack[-k:]):
            self._merge_last(k, level + 1)
            level += 1

    def total(self) -> Future:
        """The future of the sum of everything pushed (at least one result): the leftovers merged, smallest last."""
        while len(self.stack) > 1:
            self._merge_last(min(self.fan_in, len(self.stack)), None)
        return self.stack[0][1]

    def _merge_last(self, count: int, level: int | None) -> None:
        group = self.stack[-count:]
        del self.stack[-count:]
        at = group[0][0] if level is None else level - 1  # the key's level: the group's largest
        index = self.merges.get(at, 0)
        self.merges[at] = index + 1
        future = self.client.submit(_combine_part, self.combine, *(f for _, f in group), key=self.key(at, index))
        self.stack.append((group[0][0] + 1 if level is None else level, future))


def tree_reduce(
    client: Client,
    futures: list[Future],
    combine: Callable[[Any, Any], Any],
    *,
    key: Callable[[int, int], str],
    fan_in: int = 2,
) -> Future:
    """Combine futures on the workers, ``fan_in`` at a time, ``log_fan_in(n)`` levels deep (see ``TreeSum``).

    Only the final value needs to travel to the client; intermediate values
    move between workers.
    """
    reduction = TreeSum(client, combine, key=key, fan_in=fan_in)
    for future in futures:
        reduction.push(future)
    return reduction.total()
