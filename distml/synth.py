"""Reproducible synthetic Parquet datasets for quickstarts, tests and benchmarks.

Rows are generated file by file from seeds drawn up front, so a dataset larger
than memory can be written and the same arguments always give the same bytes.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

Kind = Literal["classification", "regression"]
ROW_GROUP_ROWS = 65_536


def _truth(n_features: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The hidden model: weights, biases, and per-feature offsets and scales (so scaling matters)."""
    rng = np.random.default_rng([seed, 0])
    outputs = 1 if n_classes <= 2 else n_classes
    weights = rng.normal(size=(n_features, outputs)) * (rng.random(n_features) < 0.7)[:, None]
    bias = rng.normal(size=outputs)
    offsets = rng.normal(scale=5.0, size=n_features)
    scales = np.exp(rng.normal(scale=1.0, size=n_features))
    return weights, bias, offsets, scales


def make_rows(kind: Kind, rows: int, n_features: int, n_classes: int, seed: int, stream: int,
              noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` rows of features and target from the dataset's hidden model, stream ``stream``."""
    weights, bias, offsets, scales = _truth(n_features, n_classes, seed)
    rng = np.random.default_rng([seed, 1, stream])
    z = rng.normal(size=(rows, n_features))
    signal = z @ weights + bias
    X = z * scales + offsets
    if kind == "regression":
        return X, 3.0 * signal[:, 0] + 10.0 + rng.normal(scale=noise, size=rows)
    logits = 2.0 * signal + rng.gumbel(scale=noise, size=signal.shape)
    if n_classes <= 2:
        return X, (logits[:, 0] > rng.gumbel(scale=noise, size=rows)).astype(np.int64)
    return X, np.argmax(logits, axis=1).astype(np.int64)


def _write(path: Path, X: np.ndarray, y: np.ndarray, label_names: list[str] | None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {f"x{j}": X[:, j] for j in range(X.shape[1])}
    target = np.asarray(label_names, dtype=object)[y] if label_names else y
    columns["target"] = target
    pq.write_table(pa.table(columns), path, row_group_size=ROW_GROUP_ROWS)


def make_dataset(out: str | Path, kind: Kind = "classification", rows: int = 100_000, features: int = 10,
                 files: int = 4, classes: int = 2, seed: int = 0, sort_by_target: bool = False,
                 test_rows: int | None = None, string_labels: bool = False) -> tuple[Path, Path]:
    """Write ``files`` Parquet files under ``out/`` and a separate test file ``out-test.parquet``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [f"class-{chr(ord('a') + i)}" for i in range(classes)] if string_labels and kind != "regression" else None
    per_file = np.diff(np.linspace(0, rows, files + 1).astype(np.int64))
    for i, n in enumerate(per_file):
        X, y = make_rows(kind, int(n), features, classes, seed, stream=i)
        if sort_by_target:
            order = np.argsort(y, kind="stable")
            X, y = X[order], y[order]
        _write(out / f"part-{i:05d}.parquet", X, y, names)
    test_path = out.with_name(out.name + "-test.parquet")
    X, y = make_rows(kind, test_rows or max(1000, rows // 5), features, classes, seed, stream=10**6)
    _write(test_path, X, y, names)
    return out, test_path


def make_table(out: str | Path, rows: int = 20_000, files: int = 4, seed: int = 0, numeric: int = 4,
               null_fraction: float = 0.05, null_targets: int = 0, classes: int = 2,
               row_group_rows: int = ROW_GROUP_ROWS) -> Path:
    """A realistic table under ``out/``: numeric, string-categorical and boolean features with nulls,
    and a string target that depends on all of them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    truth = np.random.default_rng([seed, 2])
    colors, cities = ["red", "green", "blue", "black", "white"], [f"city-{i:02d}" for i in range(40)]
    effects = {"x": truth.normal(size=(numeric, classes)), "color": truth.normal(size=(len(colors), classes)),
               "city": truth.normal(scale=0.7, size=(len(cities), classes)), "flag": truth.normal(size=(2, classes))}
    city_p = 1.0 / np.arange(1, len(cities) + 1)  # a skewed category: a few cities hold most rows
    per_file = np.diff(np.linspace(0, rows, files + 1).astype(np.int64))
    for i, n in enumerate(per_file):
        rng = np.random.default_rng([seed, 3, i])
        z = rng.normal(size=(n, numeric))
        color, city = rng.integers(len(colors), size=n), rng.choice(len(cities), size=n, p=city_p / city_p.sum())
        flag = rng.random(n) < 0.3
        logits = (z @ effects["x"] + effects["color"][color] + effects["city"][city] + effects["flag"][flag.astype(int)]
                  + rng.gumbel(size=(n, classes)))
        label = np.array([f"label-{chr(ord('a') + k)}" for k in range(classes)], dtype=object)[logits.argmax(axis=1)]
        columns: dict[str, pa.Array] = {
            f"x{j}": pa.array(z[:, j] * (j + 1) * 3 + 10 * j, mask=rng.random(n) < null_fraction)
            for j in range(numeric)}
        columns["color"] = pa.array(np.array(colors, dtype=object)[color], mask=rng.random(n) < null_fraction)
        columns["city"] = pa.array(np.array(cities, dtype=object)[city], mask=rng.random(n) < null_fraction)
        columns["flag"] = pa.array(flag, mask=rng.random(n) < null_fraction)
        target_mask = np.zeros(n, dtype=bool)
        target_mask[rng.choice(n, size=min(n, null_targets // files), replace=False)] = True
        columns["label"] = pa.array(label, mask=target_mask)
        pq.write_table(pa.table(columns), out / f"part-{i:05d}.parquet", row_group_size=row_group_rows)
    return out


def _nonlinear_truth(n_features: int, n_classes: int, seed: int, terms: int = 24) -> tuple[np.ndarray, ...]:
    """A smooth random function per class (a sum of random cosines), plus offsets and scales."""
    rng = np.random.default_rng([seed, 7])
    outputs = 1 if n_classes <= 2 else n_classes
    freqs = rng.normal(size=(terms, n_features)) * 0.6 * (rng.random(n_features) < 0.75)
    phases = rng.uniform(0.0, 2 * np.pi, size=terms)
    amplitudes = rng.normal(size=(terms, outputs)) / np.sqrt(terms / 2)
    offsets = rng.normal(scale=5.0, size=n_features)
    scales = np.exp(rng.normal(scale=1.0, size=n_features))
    return freqs, phases, amplitudes, offsets, scales


def make_nonlinear_rows(rows: int, n_features: int, n_classes: int, seed: int, stream: int,
                        noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose classes follow curved boundaries no linear model can draw (for kernel SVMs)."""
    freqs, phases, amplitudes, offsets, scales = _nonlinear_truth(n_features, n_classes, seed)
    rng = np.random.default_rng([seed, 8, stream])
    z = rng.normal(size=(rows, n_features))
    logits = 3.0 * (np.cos(z @ freqs.T + phases) @ amplitudes) + rng.gumbel(scale=noise, size=(rows, amplitudes.shape[1]))
    if n_classes <= 2:
        y = (logits[:, 0] > rng.gumbel(scale=noise, size=rows)).astype(np.int64)
    else:
        y = np.argmax(logits, axis=1).astype(np.int64)
    return z * scales + offsets, y


def make_nonlinear_dataset(out: str | Path, rows: int = 100_000, features: int = 8, files: int = 4,
                           classes: int = 2, seed: int = 0, noise: float = 0.3,
                           test_rows: int | None = None) -> tuple[Path, Path]:
    """Like ``make_dataset`` (same layout), with nonlinear class boundaries."""
    return _write_streams(out, rows, files, test_rows,
                          lambda n, stream: make_nonlinear_rows(n, features, classes, seed, stream, noise=noise))


def _write_streams(out: str | Path, rows: int, files: int, test_rows: int | None,
                   make: Callable[[int, int], tuple[np.ndarray, np.ndarray]]) -> tuple[Path, Path]:
    """``files`` Parquet files of ``make(rows, stream)`` under ``out/`` (stream i for file i), and the test file."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_file = np.diff(np.linspace(0, rows, files + 1).astype(np.int64))
    for i, n in enumerate(per_file):
        _write(out / f"part-{i:05d}.parquet", *make(int(n), i), None)
    test_path = out.with_name(out.name + "-test.parquet")
    _write(test_path, *make(test_rows or max(1000, rows // 5), 10**6), None)
    return out, test_path


NOISY_FLIPS = 0.1  # labels flipped at random in ``make_noisy_rows``
NOISY_SCALE = 2.0  # logit scale: with the flips, the best possible accuracy is about 0.80


def make_noisy_rows(rows: int, n_features: int = 24, seed: int = 0, stream: int = 0,
                    classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Rows where most training rows end as support vectors: standard-normal features, a logit of a
    linear part, an interaction, a sine and a square, labels drawn from it and ``NOISY_FLIPS`` of them flipped.

    With more than two classes the logit plus logistic noise is cut at evenly spaced thresholds, and a
    flipped label moves to one of the other classes at random.
    """
    weights = np.random.default_rng([seed, 9]).normal(size=n_features)
    weights /= np.linalg.norm(weights)
    rng = np.random.default_rng([seed, 10, stream])
    z = rng.normal(size=(rows, n_features))
    logit = NOISY_SCALE * (z @ weights + z[:, 0] * z[:, 1] + 1.5 * np.sin(2.0 * z[:, 2]) + 0.5 * (z[:, 3] ** 2 - 1.0))
    if classes == 2:
        y = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
        return z, np.where(rng.random(rows) < NOISY_FLIPS, 1 - y, y)
    cuts = NOISY_SCALE * np.linspace(-1.0, 1.0, classes - 1)
    y = np.searchsorted(cuts, logit + rng.logistic(size=rows)).astype(np.int64)
    flipped = rng.random(rows) < NOISY_FLIPS
    return z, np.where(flipped, (y + rng.integers(1, classes, rows)) % classes, y)


def make_noisy_dataset(out: str | Path, rows: int = 50_000, features: int = 24, files: int = 4, seed: int = 0,
                       test_rows: int | None = None, classes: int = 2) -> tuple[Path, Path]:
    """Like ``make_dataset`` (same layout), with ``make_noisy_rows``'s labels."""
    return _write_streams(out, rows, files, test_rows,
                          lambda n, stream: make_noisy_rows(n, features, seed, stream, classes))
