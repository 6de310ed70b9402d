"""In-memory references for quality tests: the same rows distml trains on, read with pandas."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from distml.draws import row_draws


def _frames_with_draws(folder: Path, seed: int):
    """Each Parquet file of the folder, in name order, with every row's draw as distml makes it."""
    for path in sorted(Path(folder).glob("*.parquet")):
        frame = pd.read_parquet(path)
        yield frame, row_draws(seed, path.name, np.arange(len(frame), dtype=np.uint64))


def split_frames(folder: Path, seed: int, holdout: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, holdout rows) of a dataset folder, chosen exactly as distml chooses them."""
    train, test = [], []
    for frame, u in _frames_with_draws(folder, seed):
        train.append(frame[u >= holdout])
        test.append(frame[u < holdout])
    return pd.concat(train, ignore_index=True), pd.concat(test, ignore_index=True)


def train_rows_with_draws(folder: Path, seed: int, holdout: float) -> tuple[pd.DataFrame, np.ndarray]:
    """The training rows in file order and each one's draw, rescaled to [0, 1) as the training blocks carry it."""
    frames, draws = [], []
    for frame, u in _frames_with_draws(folder, seed):
        frames.append(frame[u >= holdout])
        draws.append((u[u >= holdout] - holdout) / (1 - holdout))
    return pd.concat(frames, ignore_index=True), np.concatenate(draws)


def xy(frame: pd.DataFrame, target: str = "target") -> tuple[pd.DataFrame, np.ndarray]:
    return frame.drop(columns=[target]), frame[target].to_numpy()
