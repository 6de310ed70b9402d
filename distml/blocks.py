"""Per-partition ``(X, y)`` blocks: how a worker builds one, and the list trainers iterate.

A ``BlockSource`` is anything whose ``load()`` gives a ``Block`` on a worker:
a ``PartSource`` re-reads its piece from Parquet, and a block already held in
cluster memory (after ``persist``) is its own source.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import numpy as np

from distml.stats import used_rows
from distml.tasks import pick, task_key

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client, Future
    from sklearn.compose import ColumnTransformer

    from distml.data import Piece, PieceGroup, Reader

# --- runs on workers ---------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A partition's training rows as numpy: features, target and each row's uniform draw."""

    X: np.ndarray
    y: np.ndarray
    u: np.ndarray  # in [0, 1), independent of partitioning; families carve validation slices from it

    def load(self) -> Block:
        """A block held in cluster memory is its own source."""
        return self


@dataclass(frozen=True)
class PartSource:
    """How a worker builds one partition's block: read the piece, split, transform."""

    piece: Piece | PieceGroup
    reader: Reader
    transformer: ColumnTransformer
    holdout: float
    split: str  # "train" or "holdout"
    drop_nulls: bool = False  # missing: drop (rows with a null target are always dropped)

    def load(self) -> Block:
        """This source's split of the partition."""
        frame, draws = self._read()
        return self._block(frame, draws, self.split)

    def load_both(self) -> tuple[Block, Block]:
        """The partition's training and holdout blocks from one read (its features transformed once)."""
        from distml.encoding import scaled_numeric

        frame, draws = self._read()
        scaled = scaled_numeric(self.transformer, frame[list(self.reader.columns[:-1])])
        return self._block(frame, draws, "train", scaled), self._block(frame, draws, "holdout", scaled)

    def _read(self) -> tuple[pd.DataFrame, np.ndarray]:
        frame, draws = self.reader.read(self.piece)
        keep = used_rows(frame, self.reader.columns[-1], list(self.reader.columns[:-1]), self.drop_nulls)
        if not keep.all():
            frame, draws = frame[keep], draws[keep]
        return frame, draws

    def _block(self, frame: pd.DataFrame, draws: np.ndarray, split: str, scaled: np.ndarray | None = None) -> Block:
        """One split's block; ``scaled``: every row's features already transformed (``load_both``)."""
        from distml.encoding import scaled_numeric

        if split == "train":
            keep = draws >= self.holdout
            u = (draws[keep] - self.holdout) / (1.0 - self.holdout)
        else:
            keep = draws < self.holdout
            u = draws[keep] / self.holdout
        y = frame[self.reader.columns[-1]].to_numpy()[keep]
        if scaled is not None:
            return Block(scaled[keep], y, u)
        rows = frame.loc[keep, list(self.reader.columns[:-1])]
        X = scaled_numeric(self.transformer, rows)  # numpy where it can, to scikit-learn's bits
        if X is None and len(rows):
            X = np.asarray(self.transformer.transform(rows), dtype=np.float64)
        elif X is None:  # scikit-learn refuses to transform zero rows
            X = np.empty((0, len(self.transformer.get_feature_names_out())))
        return Block(X, y, u)


def _load_part(source: PartSource) -> Block:
    return source.load()


def _load_both_part(source: PartSource) -> tuple[Block, Block]:
    return source.load_both()


# --- runs on the client ------------------------------------------------------


class BlockSource(Protocol):
    """What a trainer's worker function is handed: ``load()`` gives the partition's block there."""

    def load(self) -> Block:
        """The block, read (or already held) on the worker that runs the task."""
        ...


@dataclass
class Partitions:
    """Per-partition sources of ``(X, y)`` blocks; each ``source.load()`` runs on a worker.

    A source is either a ``PartSource`` (re-read from Parquet at every pass) or a
    future of a ``Block`` already held in cluster memory (after ``persist``);
    Dask hands the task the ``Block`` itself, which is its own source.
    """

    train: list[BlockSource | Future]
    holdout: list[BlockSource | Future]
    train_rows: int
    holdout_rows: int
    persisted: bool = False

    @property
    def n_parts(self) -> int:
        return len(self.train)


def persist(parts: Partitions, client: Client, job_id: str) -> Partitions:
    """Hold every partition's training and holdout blocks in cluster memory, each partition read once.

    Multi-pass trainers then read memory, not Parquet, and evaluation needs no
    further read either.
    """
    both = [client.submit(_load_both_part, s, key=task_key("load", job_id, i)) for i, s in enumerate(parts.train)]
    # The picks share the loaded blocks (no copy); once they ran, the pairs are released.
    train = [pick(client, b, 0, key=task_key("load", job_id, "train", i)) for i, b in enumerate(both)]
    holdout = [pick(client, b, 1, key=task_key("load", job_id, "holdout", i))
               for i, b in enumerate(both)] if parts.holdout else []
    return replace(parts, train=train, holdout=holdout, persisted=True)
