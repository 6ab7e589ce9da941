"""The Linear products take faster forms on small batches; they must equal the plain products."""

import numpy as np
import pytest

from backprop.engine import blas


@pytest.mark.parametrize("b", [1, 10, 63, 64, 200])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_products_equal_the_plain_ones(b, dtype):
    rng = np.random.default_rng(b)
    x, w, g = (rng.standard_normal(s).astype(dtype) for s in [(b, 784), (256, 784), (b, 256)])
    y = blas.linear_forward(x, w)
    assert y.flags.c_contiguous and y.dtype == dtype
    np.testing.assert_allclose(y, x @ w.T, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-3)
    gw = blas.weight_grad(g, x)
    assert gw.flags.c_contiguous and gw.shape == (256, 784)
    np.testing.assert_allclose(gw, g.T @ x, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-3)


def test_weight_grad_restores_the_thread_count():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    t = blas._openblas()
    if t.get is None:
        pytest.skip("NumPy's BLAS is not a pthreads OpenBLAS")
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = t.get()
        blas.weight_grad(np.ones((10, 256), np.float32), np.ones((10, 784), np.float32))
        assert t.get() == before


@pytest.mark.parametrize("b, out, inp, chunks", [
    (10, 256, 784, True), (6, 300, 784, True), (12, 256, 256, True),  # miss the small kernel by size: split
    (4, 256, 784, False), (16, 256, 784, False),  # too few rows to gain, too many to stay ahead
    (10, 512, 784, False), (10, 64, 1024, False),  # chunks of under 4 rows; already small enough whole
])
def test_few_rows_split_for_the_small_matrix_kernel(b, out, inp, chunks):
    """The rule is one of shapes only (the same sums every run), and the split products equal the plain ones."""
    small = blas._openblas().small_kernels
    assert bool(blas._rows_per_call(b, out * inp, out)) == (chunks and small)
    rng = np.random.default_rng(b)
    x, w, g = (rng.standard_normal(s).astype(np.float32) for s in [(b, inp), (out, inp), (b, out)])
    y, gx = blas.linear_forward(x, w), blas.input_grad(g, w)
    assert y.flags.c_contiguous and y.dtype == np.float32 and gx.shape == (b, inp)
    np.testing.assert_allclose(y, x.astype(np.float64) @ w.T.astype(np.float64), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(gx, g.astype(np.float64) @ w.astype(np.float64), rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(blas.linear_forward(x, w), y)  # deterministic


def test_gemm_update_equals_the_update_it_folds():
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        w, g, x = (rng.standard_normal(s).astype(dtype) for s in [(256, 784), (10, 256), (10, 784)])
        ref = w - 0.1 * (g.T @ x)
        blas.gemm_update(w, g, x, -0.1)
        np.testing.assert_allclose(w, ref, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
        g.flags.writeable = x.flags.writeable = False  # NOTE: read-only factors (a memory-mapped batch) are read
        ref = w - 0.1 * (g.T @ x)
        blas.gemm_update(w, g, x, -0.1)
        np.testing.assert_allclose(w, ref, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)


def test_address_of_writable_read_only_and_empty_arrays():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert blas._address(a) == a.__array_interface__["data"][0]
    assert blas._address(a[1:]) == a.__array_interface__["data"][0] + 16
    a.flags.writeable = False
    assert blas._address(a) == a.__array_interface__["data"][0]
    empty = np.empty((0, 4), np.float32)
    assert blas._address(empty) == empty.__array_interface__["data"][0]
