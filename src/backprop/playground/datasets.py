"""The playground's data: 2-D data sets drawn from a seed, the input features, and uploaded CSV files.

Every set lives in the square [-6, 6]^2 (TensorFlow Playground's), classification labels are 0..K-1 and
regression targets lie in [-1, 1]. :func:`make` draws N points from ``seed`` (noise in percent, 0-50) and
:func:`split` shuffles them into a training and a test set, so a seed, a size, a noise level and a ratio give
the same data on every machine. NumPy only: an exported script imports this module without the extra.

>>> x, y, task, classes = make("spiral", samples=200, noise=0, seed=1)
>>> x.shape, y.shape, task, classes, sorted(set(y.tolist()))
((200, 2), (200,), 'classification', 2, [0, 1])
>>> (x_tr, y_tr), (x_te, y_te) = split(x, y, train_percent=50, seed=1)
>>> len(x_tr), len(x_te)
(100, 100)
>>> features(np.array([[1.0, 2.0]]), ["x1", "x2", "x1x2", "x2sq"]).tolist()
[[1.0, 2.0, 2.0, 4.0]]
>>> parse_csv("x1,x2,label\\n0.5,1,0\\n-1,2,1\\n2,2,1\\n0,0,0\\n").classes
2
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["CLASSIFICATION", "CSV_MAX_BYTES", "CSV_MAX_ROWS", "DATASETS", "DOMAIN", "FEATURES", "REGRESSION",
           "CSVData", "CSVError", "features", "make", "parse_csv", "split"]

CLASSIFICATION = ("circle", "xor", "gauss", "spiral", "blobs")
REGRESSION = ("plane", "multigauss")
DATASETS = CLASSIFICATION + REGRESSION
DOMAIN = 6.0  # points and the heat map cover [-DOMAIN, DOMAIN]^2
#: The input features, by name: what the network's input layer sees for a point (x1, x2).
FEATURES = {
    "x1": ("x1", lambda a, b: a),
    "x2": ("x2", lambda a, b: b),
    "x1sq": ("x1\u00b2", lambda a, b: a * a),
    "x2sq": ("x2\u00b2", lambda a, b: b * b),
    "x1x2": ("x1\u00b7x2", lambda a, b: a * b),
    "sinx1": ("sin x1", lambda a, b: np.sin(a)),
    "sinx2": ("sin x2", lambda a, b: np.sin(b)),
}
CSV_MAX_BYTES = 1_000_000
CSV_MAX_ROWS = 5_000
CSV_MAX_CLASSES = 10


def features(x: np.ndarray, names: list[str] | tuple[str, ...]) -> np.ndarray:
    """The feature columns ``names`` (keys of :data:`FEATURES`) of the points x (N, 2), float64 (N, len(names))."""
    a, b = x[:, 0].astype(np.float64), x[:, 1].astype(np.float64)
    return np.stack([FEATURES[n][1](a, b) for n in names], axis=1).astype(np.float64, copy=False)


def make(name: str, samples: int = 500, noise: float = 0.0, seed: int = 0,
         classes: int = 3) -> tuple[np.ndarray, np.ndarray, str, int]:
    """``samples`` points of the set ``name``: x (N, 2) float64, y (int64 labels, or float64 targets),
    the task ("classification" or "regression") and the number of classes (0 for regression).

    ``noise`` is in percent (0-50) of the set's scale; ``classes`` (3-5) is for "blobs" only.
    """
    rng = np.random.default_rng(seed)
    n, s = int(samples), float(noise) / 100.0
    if name == "circle":  # a disc (class 1) inside a ring (class 0)
        r = np.concatenate([rng.uniform(0.0, 2.5, n // 2), rng.uniform(3.5, 5.0, n - n // 2)])
        t = rng.uniform(0.0, 2 * math.pi, n)
        x = np.stack([r * np.sin(t), r * np.cos(t)], axis=1) + rng.uniform(-5.0, 5.0, (n, 2)) * s
        y = (np.hypot(x[:, 0], x[:, 1]) < 3.0).astype(np.int64)
        return x, y, "classification", 2
    if name == "xor":  # the quadrants: class 1 where x1 x2 > 0
        x = rng.uniform(-5.0, 5.0, (n, 2))
        x += np.where(x > 0, 0.3, -0.3)  # a gap along the axes
        x += rng.uniform(-5.0, 5.0, (n, 2)) * s
        y = (x[:, 0] * x[:, 1] >= 0).astype(np.int64)
        return x, y, "classification", 2
    if name == "gauss":  # two Gaussian clouds around (2, 2) and (-2, -2), wider with noise
        std = math.sqrt(0.5 + 3.5 * s / 0.5)
        y = (np.arange(n) < n // 2).astype(np.int64)
        centre = np.where(y[:, None] == 1, 2.0, -2.0)
        return centre + rng.normal(0.0, std, (n, 2)), y, "classification", 2
    if name == "spiral":  # two interleaved spirals, 1.75 turns each
        half = n // 2
        x_parts, y_parts = [], []
        for label, (count, shift) in enumerate(((half, 0.0), (n - half, math.pi))):
            i = np.arange(count)
            r = i / count * 5.0
            t = 1.75 * i / count * 2 * math.pi + shift
            pts = np.stack([r * np.sin(t), r * np.cos(t)], axis=1) + rng.uniform(-1.0, 1.0, (count, 2)) * s
            x_parts.append(pts)
            y_parts.append(np.full(count, label, dtype=np.int64))
        return np.concatenate(x_parts), np.concatenate(y_parts), "classification", 2
    if name == "blobs":  # K Gaussian clouds on a circle of radius 3.5
        k = int(classes)
        if not 3 <= k <= 5:
            raise ValueError(f"blobs: classes must be 3 to 5, got {classes}")
        y = np.arange(n, dtype=np.int64) % k
        angle = 2 * math.pi * y / k + math.pi / 2
        centre = 3.5 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        return centre + rng.normal(0.0, 0.6 + 4.0 * s, (n, 2)), y, "classification", k
    if name == "plane":  # y = (x1 + x2) / 12, noisy inputs
        x = rng.uniform(-DOMAIN, DOMAIN, (n, 2))
        y = (x[:, 0] + x[:, 1]) / (2 * DOMAIN)
        return x + rng.uniform(-DOMAIN, DOMAIN, (n, 2)) * s, y, "regression", 0
    if name == "multigauss":  # bumps of both signs
        x = rng.uniform(-DOMAIN, DOMAIN, (n, 2))
        centres = np.array([[-4, 2.5], [0, 2.5], [4, 2.5], [-4, -2.5], [0, -2.5], [4, -2.5]])
        signs = np.array([-1.0, 1.0, -1.0, 1.0, -1.0, 1.0])
        d2 = ((x[:, None, :] - centres[None]) ** 2).sum(axis=2)
        bumps = signs * np.exp(-d2 / 2.0)
        y = bumps[np.arange(n), np.argmax(np.abs(bumps), axis=1)]
        return x + rng.uniform(-DOMAIN, DOMAIN, (n, 2)) * s, y, "regression", 0
    raise ValueError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")


def split(x: np.ndarray, y: np.ndarray, train_percent: int = 50,
          seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Shuffle with ``seed`` and cut: the first ``train_percent`` % (at least 1, at most N-1) train, the rest test."""
    n = len(x)
    order = np.random.default_rng(seed).permutation(n)
    k = min(max(1, round(n * train_percent / 100)), n - 1)
    return (x[order[:k]], y[order[:k]]), (x[order[k:]], y[order[k:]])


# ------------------------------------------------------------------------------------------------ CSV
class CSVError(ValueError):
    """An uploaded CSV file that cannot be used; the message says where and why, in one line."""


@dataclass(frozen=True)
class CSVData:
    """A parsed CSV upload: points (N, 2), labels (int64 indices into ``labels``) or float targets."""

    x: np.ndarray
    y: np.ndarray
    task: str
    classes: int
    labels: tuple[str, ...]  # the class names in the file, in the order of their indices (empty: regression)


def _number(text: str, line: int, column: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise CSVError(f"line {line}: {column} is {text.strip()[:20]!r}, not a number") from None
    if not math.isfinite(v):
        raise CSVError(f"line {line}: {column} is {text.strip()!r}; only finite numbers are allowed")
    return v


def parse_csv(text: str) -> CSVData:
    """Rows of ``x1,x2,label`` (an optional header line; ``;`` or tab also separate). Integer labels (at most
    10 distinct) make a classification set; other numbers a regression set. Raises :class:`CSVError`."""
    if len(text.encode("utf-8", "replace")) > CSV_MAX_BYTES:
        raise CSVError(f"the file is larger than {CSV_MAX_BYTES // 1000} KB")
    lines = [(i + 1, ln.strip()) for i, ln in enumerate(text.splitlines()) if ln.strip()]
    if not lines:
        raise CSVError("the file is empty: expected lines of x1,x2,label")
    sep = next((c for c in (",", ";", "\t") if c in lines[0][1]), None)
    if sep is None:
        raise CSVError(f"line {lines[0][0]}: expected three columns separated by commas (x1,x2,label)")
    first = [c.strip() for c in lines[0][1].split(sep)]
    try:
        [float(c) for c in first]
    except ValueError:
        lines = lines[1:]  # a header
    if len(lines) > CSV_MAX_ROWS:
        raise CSVError(f"the file has {len(lines)} rows; at most {CSV_MAX_ROWS} are allowed")
    if len(lines) < 4:
        raise CSVError(f"the file has {len(lines)} data rows; at least 4 are needed (a training and a test set)")
    xs, raw = [], []
    for number, line in lines:
        cells = [c.strip() for c in line.split(sep)]
        if len(cells) != 3:
            raise CSVError(f"line {number}: {len(cells)} columns, expected 3 (x1, x2, label)")
        xs.append((_number(cells[0], number, "x1"), _number(cells[1], number, "x2")))
        raw.append((_number(cells[2], number, "the label"), cells[2], number))
    x = np.asarray(xs, dtype=np.float64)
    values = np.asarray([r[0] for r in raw])
    if np.all(values == np.round(values)) and len(np.unique(values)) <= CSV_MAX_CLASSES:
        uniq = np.unique(values)
        if len(uniq) < 2:
            raise CSVError("every row has the same label: a classification set needs at least 2 classes")
        y = np.searchsorted(uniq, values).astype(np.int64)
        labels = tuple(str(int(v)) for v in uniq)
        return CSVData(x, y, "classification", len(uniq), labels)
    if np.all(values == np.round(values)):
        raise CSVError(f"the labels are integers with {len(np.unique(values))} distinct values; at most "
                       f"{CSV_MAX_CLASSES} classes are allowed (non-integer labels make a regression set)")
    return CSVData(x, values.astype(np.float64), "regression", 0, ())
