"""backprop.engine.parallel: image loops split over two threads give the same results, to the bit."""

import numpy as np
import pytest

import backprop as bp
from backprop.engine import parallel


def _conv_step(x, w, b, padding, g):
    xt, wt, bt = (bp.tensor(a, requires_grad=True) for a in (x, w, b))
    y = bp.nn.functional.conv2d(xt, wt, bt, padding=padding)
    y.backward(g)
    return y.data, xt.grad, wt.grad, bt.grad


@pytest.mark.parametrize("shape, w_shape, padding", [((64, 1, 28, 28), (6, 1, 5, 5), 2),
                                                      ((48, 6, 14, 14), (16, 6, 5, 5), 0)])
def test_a_convolution_split_over_two_threads_is_bit_identical(shape, w_shape, padding, monkeypatch):
    """LeNet-5's layers: forward, weight and input gradients with the image loops in two halves (budget 2)
    and in one (budget 1), in NumPy (the compiled loops: tests/test_kernels.py)."""
    monkeypatch.setenv("BACKPROP_NUMBA", "0")
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    out = shape[2] + 2 * padding - w_shape[2] + 1
    g = rng.standard_normal((shape[0], w_shape[0], out, out)).astype(np.float32)
    calls = []
    split = parallel.split

    def counting(n, body, min_per_thread, grain=1):
        mid = parallel.halfway(n, grain)
        calls.append(min(mid, n - mid) >= min_per_thread and parallel.threads() == 2)
        return split(n, body, min_per_thread, grain)

    results = []
    for limit in (2, 1):
        with parallel.budget(limit), pytest.MonkeyPatch.context() as mp:
            mp.setattr(bp.nn.conv, "split", counting)
            results.append(_conv_step(x, w, b, padding, g))
    with parallel.budget(2):
        can_split = parallel.threads() == 2  # NOTE: not on a machine that lets this process use one CPU
    assert any(calls) == can_split and not all(calls)  # split under budget 2, never under 1
    for a, c in zip(*results):
        np.testing.assert_array_equal(a, c)


def test_split_runs_both_halves_and_reraises_the_workers_error():
    seen = []
    with parallel.budget(2):
        two = parallel.threads() == 2
        parallel.split(40, lambda lo, hi: seen.append((lo, hi)), 8)
        assert sorted(seen) == ([(0, 20), (20, 40)] if two else [(0, 40)])

        def fails(lo, hi):
            if lo:
                raise ValueError("from the second half")

        if two:
            with pytest.raises(ValueError, match="second half"):
                parallel.split(40, fails, 8)
            seen.clear()
            parallel.split(40, lambda lo, hi: seen.append((lo, hi)), 8)  # the worker still serves
            assert sorted(seen) == [(0, 20), (20, 40)]
    with parallel.budget(1):
        seen.clear()
        parallel.split(40, lambda lo, hi: seen.append((lo, hi)), 8)
        assert seen == [(0, 40)]


def test_a_split_in_chunks_cuts_at_a_whole_chunk():
    """A body that works in chunks of `grain` items from its start makes the same chunks split or not."""
    assert parallel.halfway(128, 62) == 62 and parallel.halfway(128, 1) == 64 and parallel.halfway(40, 50) == 0
    seen = []
    with parallel.budget(2):
        parallel.split(128, lambda lo, hi: seen.append((lo, hi)), 16, grain=62)
        if parallel.threads() == 2:
            assert sorted(seen) == [(0, 62), (62, 128)]
        seen.clear()
        parallel.split(40, lambda lo, hi: seen.append((lo, hi)), 8, grain=50)  # no whole chunk to cut at
        assert seen == [(0, 40)]
