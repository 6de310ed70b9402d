"""Per-row uniform draws from stable keys: the holdout split and the forest's bootstrap counts.

A draw depends only on (seed, file, row number), or on (seed, row key) when a column (``data.row_key``,
an estimator's ``row_key``) or a collection's index keys the rows, never on how the rows are
partitioned or scheduled, so the same job file gives the same rows everywhere.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
ROW_KEY = "index"  # the file key draws from row keys are salted with (a job's and a collection's alike)


def mix_uniform(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 keys, scaled to uniforms in [0, 1): one well-mixed draw per key."""
    with np.errstate(over="ignore"):  # wrap-around is the point
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def row_draws(seed: int, file_key: str, rows: np.ndarray) -> np.ndarray:
    """A uniform draw per row from (seed, file, row number): the split never depends on partitioning."""
    digest = hashlib.blake2b(f"{seed}:{file_key}".encode(), digest_size=8).digest()
    with np.errstate(over="ignore"):
        x = rows.astype(np.uint64) + np.uint64(int.from_bytes(digest, "little")) + GOLDEN
    return mix_uniform(x)


def key_values(keys: Any) -> np.ndarray:
    """Row keys as uint64: integers as they are, anything else by pandas' fixed-key hash."""
    import pandas as pd

    values = np.asarray(keys)
    if values.dtype.kind in "iu":
        return values.astype(np.int64).astype(np.uint64)
    return pd.util.hash_array(np.asarray(values, dtype=object))


def key_draws(seed: int, keys: Any) -> np.ndarray:
    """A uniform draw per row from (seed, row key): the same for a job's ``data.row_key`` column and a
    collection's ``row_key`` column or index, however the rows are split into files or partitions."""
    return row_draws(seed, ROW_KEY, key_values(keys))
