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
