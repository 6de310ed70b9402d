"""In-memory references for quality tests: the same rows distml trains on, read with pandas."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from distml.draws import row_draws


def split_frames(folder: Path, seed: int, holdout: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, holdout rows) of a dataset folder, chosen exactly as distml chooses them."""
    train, test = [], []
    for path in sorted(Path(folder).glob("*.parquet")):
        frame = pd.read_parquet(path)
        u = row_draws(seed, path.name, np.arange(len(frame), dtype=np.uint64))
        train.append(frame[u >= holdout])
        test.append(frame[u < holdout])
    return pd.concat(train, ignore_index=True), pd.concat(test, ignore_index=True)


def xy(frame: pd.DataFrame, target: str = "target") -> tuple[pd.DataFrame, np.ndarray]:
    return frame.drop(columns=[target]), frame[target].to_numpy()
