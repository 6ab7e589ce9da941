"""Mini-batch iteration over in-memory numpy arrays.

A :class:`DataLoader` cuts a data set into mini-batches. One pass over it is one
*epoch*; ``len(loader)`` is the number of *iterations* (batches, i.e. weight
updates) per epoch. With 100 samples and ``batch_size=10`` an epoch is 10
iterations, so 3 epochs are 30 iterations and every sample is seen 3 times.

Example:
    >>> import numpy as np
    >>> from backprop.data.loader import DataLoader
    >>> x = np.arange(100, dtype=np.float32).reshape(100, 1)
    >>> y = np.arange(100) % 10
    >>> loader = DataLoader(x, y, batch_size=10, seed=0)
    >>> len(loader)
    10
    >>> seen = np.concatenate([xb[:, 0] for _ in range(3) for xb, yb in loader])
    >>> seen.shape, bool(np.all(np.bincount(seen.astype(int)) == 3))
    ((300,), True)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["DataLoader"]


class DataLoader:
    """Iterate over ``(xb, yb)`` mini-batches of ``x`` and ``y`` (or ``xb`` alone if ``y`` is None).

    Args:
        x: samples, an array (or array-like) whose first dimension indexes samples.
        y: targets with the same first dimension as ``x``, or None.
        batch_size: samples per batch, an int >= 1.
        shuffle: visit the samples in a fresh random order every epoch.
        drop_last: skip the final batch when it is smaller than ``batch_size``.
        seed: None (fresh OS entropy), an int, a ``np.random.SeedSequence`` or a
            ``np.random.Generator``; the same seed gives the same sequence of epoch orders.

    Attributes:
        rng: the ``np.random.Generator`` that draws the epoch permutations. Its
            ``rng.bit_generator.state`` can be saved and restored to resume training.
        n_samples: number of samples N.
        batch_size: the batch size B.

    Each ``iter(loader)`` starts a new epoch that visits every sample exactly once
    (except the dropped tail with ``drop_last=True``).

    Example:
        >>> import numpy as np
        >>> loader = DataLoader(np.arange(5), batch_size=2, shuffle=False)
        >>> [b.tolist() for b in loader], len(loader)
        ([[0, 1], [2, 3], [4]], 3)
    """

    def __init__(
        self,
        x: Any,
        y: Any = None,
        batch_size: int = 32,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int | np.random.Generator | np.random.SeedSequence | None = None,
    ) -> None:
        # NOTE: np.asarray does not copy an ndarray (or a memmap); the loader never
        # modifies or reorders the data, it only gathers batches from it.
        self.x = np.asarray(x)
        self.y = None if y is None else np.asarray(y)
        if self.x.ndim == 0:
            raise ValueError("x must have a first (sample) dimension, got a 0-d array")
        if self.y is not None:
            if self.y.ndim == 0:
                raise ValueError("y must have a first (sample) dimension, got a 0-d array")
            if len(self.y) != len(self.x):
                raise ValueError(
                    f"x and y must have the same number of samples: x has {len(self.x)}, y has {len(self.y)}"
                )
        if len(self.x) == 0:
            raise ValueError("x has no samples (its first dimension is 0)")
        # NOTE: bool is a subclass of int, but batch_size=True is surely a mistake.
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")

        self.n_samples: int = len(self.x)
        self.batch_size: int = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        # NOTE: default_rng returns a Generator passed in as-is (not a copy), so a
        # caller's Generator is shared and advanced by every shuffled epoch.
        self.rng: np.random.Generator = np.random.default_rng(seed)

    def __len__(self) -> int:
        """Iterations (batches) per epoch: ceil(N / B), or floor(N / B) with ``drop_last``."""
        if self.drop_last:
            return self.n_samples // self.batch_size
        return (self.n_samples + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[Any]:
        """Start a new epoch and return an iterator over its batches."""
        # NOTE: the permutation is drawn here, eagerly, not at the first next(): the
        # rng state saved just before iter(loader) fully determines the epoch order.
        order = self.rng.permutation(self.n_samples) if self.shuffle else None
        return self._batches(order)

    def _batches(self, order: np.ndarray | None) -> Iterator[Any]:
        # Hot loop: one slice of the permutation and one gather per array per batch.
        x, y, b = self.x, self.y, self.batch_size
        stop = len(self) * b
        for start in range(0, stop, b):
            if order is None:
                sel: slice | np.ndarray = slice(start, start + b)  # a view, no copy
            else:
                sel = order[start : start + b]  # gathers (copies) the batch
            if y is None:
                yield x[sel]
            else:
                yield x[sel], y[sel]

    def __repr__(self) -> str:
        return (
            f"DataLoader(n_samples={self.n_samples}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, drop_last={self.drop_last}, batches={len(self)})"
        )
