"""One random generator for everything random in backprop: initialisation, dropout, shuffling by default.

``manual_seed(seed)`` makes a whole run reproducible to the bit, as ``torch.manual_seed`` does.

>>> import backprop as bp
>>> _ = bp.manual_seed(0); a = bp.nn.Linear(2, 2).weight.data.copy()
>>> _ = bp.manual_seed(0); b = bp.nn.Linear(2, 2).weight.data.copy()
>>> bool((a == b).all())
True
"""

from __future__ import annotations

import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed: int | None) -> np.random.Generator:
    """Reseed the global generator (``None``: fresh entropy) and return it."""
    global _generator
    if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    _generator = np.random.default_rng(seed)
    return _generator


def get_rng() -> np.random.Generator:
    """The global generator (its ``bit_generator.state`` can be saved and restored for exact resumes)."""
    return _generator
