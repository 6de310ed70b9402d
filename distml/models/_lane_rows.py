"""The rows a lane step of the SGD engine (``_sgd``) trains on: its slice of a group's rows, in one random order.

Runs on workers.
"""
from __future__ import annotations

import numpy as np

SLICE_DIGITS = 2**20  # a row's slice is taken from the draw's low digits, not from its range (validation's)


def in_slice(u: np.ndarray, k: int, n: int) -> np.ndarray:
    """Which rows fall in slice ``k`` of ``n``: a uniform 1/n of the rows, by the low digits of their draw
    ``u``, so each slice keeps its share of validation rows (``u < fraction``) and of every class."""
    if n == 1:
        return np.ones(len(u), dtype=bool)
    return (np.floor(u * SLICE_DIGITS).astype(np.int64) % n) == k


class ShuffledRows:
    """The chosen rows of several blocks in one random order: their labels, and their features either written
    once into a single array (``whole``) or gathered a batch at a time (``batch``).

    Batches suit wide features (a kernel map's, held on the workers): there the whole shuffled copy, fresh
    memory as large as the group's features, costs about as much as the SGD steps over it.
    """

    def __init__(self, pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]], seed: int) -> None:
        total = sum(len(rows) for _, _, rows in pieces)
        position = np.random.default_rng(seed).permutation(total)
        self.pieces, self._rows, self._where = [Xb for Xb, _, _ in pieces], [rows for _, _, rows in pieces], []
        self.y = np.empty(total, dtype=np.result_type(*(yb.dtype for _, yb, _ in pieces)))
        start = 0
        for _, yb, rows in pieces:
            where = position[start:start + len(rows)]  # where each chosen row of the piece goes
            self._where.append(where)
            self.y[where] = yb[rows]
            start += len(rows)
        self.shape = (total, pieces[0][0].shape[1])
        self._source: tuple[np.ndarray, np.ndarray] | None = None  # (piece, row) of each position, for batches
        self._buffer: np.ndarray | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def whole(self) -> np.ndarray:
        """Every row's features in the shuffled order, in the blocks' dtype (float16/32 for mapped kernel features)."""
        X = np.empty(self.shape, dtype=self.pieces[0].dtype)
        for Xb, rows, where in zip(self.pieces, self._rows, self._where):
            X[where] = Xb[rows]
        return X

    def batch(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` of the shuffled order as float64, in one buffer reused from batch to batch (the
        previous batch is overwritten: the caller is done with it)."""
        if self._source is None:
            owner, local = np.empty(len(self), dtype=np.intp), np.empty(len(self), dtype=np.intp)
            for piece, (rows, where) in enumerate(zip(self._rows, self._where)):
                owner[where], local[where] = piece, rows
            self._source = owner, local
        if self._buffer is None or len(self._buffer) < hi - lo:
            self._buffer = np.empty((hi - lo, self.shape[1]), dtype=np.float64)
        out = self._buffer[:hi - lo]
        owner, local = self._source[0][lo:hi], self._source[1][lo:hi]
        for piece, Xb in enumerate(self.pieces):
            mine = np.flatnonzero(owner == piece) if len(self.pieces) > 1 else slice(None)
            out[mine] = Xb[local[mine]]
        return out
