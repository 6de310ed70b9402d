"""The cascade SVM's row sets (support vectors with their ids and SVC), and its checkpoints of them.

A cascade checkpoint holds every set of one layer: each set's support vectors (the rows once,
inside its fitted SVC; an unfitted single-class set keeps its rows), their labels and ids, about
``8 * (n_features + 2)`` bytes per support vector. A set above the first layer holds at most
``max_support_vectors`` of them; the first layer's sets together hold at most every training row
(a problem where every row is a support vector), usually a small share. The last set of a pass also
keeps the ids of the rows its SVC was fitted on (8 bytes a row, at most ``max_support_vectors``),
which the feedback check skips. Writing one brings the layer's sets to the client, as the final
SVC's support vectors come anyway, and only a layer of at most ``max_support_vectors`` rows in all
(the union one merge task may hold): a larger layer (a first layer of many chunks, say) is not
checkpointed, and says so in the job's log, so a resume may redo it and the layer before. A job
without checkpoints (a search candidate) skips all of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from distml.models.base import TrainEnv

# --- runs on workers ---------------------------------------------------------


@dataclass(frozen=True)
class SVSet:
    """Rows (usually support vectors) with their ids; ``model`` is the SVC fitted on them, if any."""

    X: np.ndarray
    y: np.ndarray
    ids: np.ndarray  # each row's draw u: unique, and independent of partitioning
    model: Any = None
    dropped: int = 0  # rows a first-layer task left out to stay within chunk_rows
    fitted: np.ndarray | None = None  # ids of every row ``model`` was fitted on (SVs or not)

    def __len__(self) -> int:
        return len(self.ids)


def concat(sets: list[SVSet]) -> SVSet:
    """Union of row sets, deduplicated and ordered by id (so row order never depends on scheduling)."""
    ids = np.concatenate([s.ids for s in sets])
    ids, first = np.unique(ids, return_index=True)
    X = np.concatenate([s.X for s in sets])[first]
    y = np.concatenate([s.y for s in sets])[first]
    return SVSet(X, y, ids, dropped=sum(s.dropped for s in sets))


# --- runs on the client ------------------------------------------------------


def _set_state(rows: SVSet, fitted: bool) -> dict[str, Any]:
    """A set as a checkpoint holds it: plain arrays and its SVC, whose support vectors are its rows."""
    return {"X": rows.X if rows.model is None else None, "y": rows.y, "ids": rows.ids, "model": rows.model,
            "dropped": rows.dropped, "fitted": rows.fitted if fitted else None}


def _set_from(state: dict[str, Any]) -> SVSet:
    """The set ``_set_state`` wrote, as it was (a fitted set's rows are its SVC's support vectors)."""
    model = state["model"]
    X = state["X"] if model is None else model.support_vectors_
    return SVSet(X, state["y"], state["ids"], model, state["dropped"], state["fitted"])


class LayerCheckpoints:
    """A cascade's checkpoints through ``TrainEnv.checkpoint``/``restore``: one layer's sets each.

    ``plan`` is what the sets depend on besides the data and the job file; a checkpoint written
    under another plan is not restored (the cascade starts over, and says so).
    """

    def __init__(self, env: TrainEnv, plan: dict[str, int], limit: int) -> None:
        self.env, self.plan, self.limit = env, plan, limit

    def write(self, step: int, state: dict[str, Any], sets: list[Any], n_rows: int) -> None:
        """Checkpoint ``step``: ``state`` and the layer's sets (futures of ``n_rows`` rows in all, gathered
        from the workers), unless they are more rows than ``limit``."""
        if not self.env.checkpointing:
            return
        if n_rows > self.limit:
            self.env.log(f"cascade SVM: checkpoint {step} not written: its {len(sets)} sets hold {n_rows:,} support "
                         f"vectors, more than the {self.limit:,} (max_support_vectors) the client gathers")
            return
        rows = self.env.client.gather(sets)
        self.env.checkpoint(step, {**state, "plan": self.plan,
                                   "sets": [_set_state(r, fitted=len(rows) == 1) for r in rows]})

    def restore(self) -> tuple[dict[str, Any], list[Any]] | None:
        """The job's last checkpoint: its state, and its sets put back on the workers (futures); or None."""
        restored = self.env.restore()
        if restored is None:
            return None
        step, state = restored
        if state.get("plan") != self.plan:
            self.env.log("cascade SVM: the checkpoint's chunks or kernel matrix budget do not match this "
                         "cluster's; fitting every layer again")
            return None
        keys = [self.env.key("restore", step, g) for g in range(len(state["sets"]))]
        futures = self.env.client.scatter(dict(zip(keys, map(_set_from, state["sets"]))))
        return state, [futures[k] for k in keys]
