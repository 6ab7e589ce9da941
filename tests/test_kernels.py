"""Compiled kernels (the numba extra) of convolutions, 2x2 max pooling and ReLU: the same results as the NumPy
paths, to the bit (signs of zero, NaN and inf included), in one part or two; and the NumPy paths when they
may not run."""

import numpy as np
import pytest

import backprop as bp
from _steps import classic_step
from backprop.engine import kernels, parallel
from backprop.nn import conv, pooling

pytestmark = pytest.mark.skipif(not kernels.enabled(), reason="the numba extra is not installed")


def _two_parts_possible():
    with parallel.budget(2):
        return kernels.parallel_bounds(64, 16).size == 3


def _grads(fn, arrays, g, numba, limit, monkeypatch):
    """fn's output and the gradients of every array, with the kernels on or off, under a thread budget."""
    monkeypatch.setenv("BACKPROP_NUMBA", "1" if numba else "0")
    tensors = [bp.tensor(a, requires_grad=True) for a in arrays]
    with parallel.budget(limit), np.errstate(invalid="ignore"):
        y = fn(*tensors)
        y.backward(bp.tensor(g))
    return [np.array(y.data)] + [np.array(t.grad) for t in tensors]


def _assert_same(ref, got):
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_array_equal(a, b)  # NaN equal to NaN
        np.testing.assert_array_equal(np.signbit(a), np.signbit(b))


def _compare(fn, arrays, out_shape, monkeypatch, seed=7):
    monkeypatch.setattr(conv, "_COMPILED_MIN_WORK", 0)  # small cases too (odd sizes, one image)
    monkeypatch.setattr(pooling, "_COMPILED_MIN_SIZE", 0)
    g = np.random.default_rng(seed).standard_normal(out_shape).astype(np.float32)
    ref = _grads(fn, arrays, g, False, 1, monkeypatch)
    for limit in (1, 2):
        _assert_same(ref, _grads(fn, arrays, g, True, limit, monkeypatch))
        _assert_same(ref, _grads(fn, arrays, g, False, limit, monkeypatch))


@pytest.mark.parametrize("n, c, h, w, o, k, kw", [
    (128, 1, 28, 28, 6, 5, {"padding": 2}),     # LeNet-5's first layer
    (128, 6, 14, 14, 16, 5, {}),                # and its second
    (37, 3, 9, 11, 4, 3, {"padding": 1}),       # odd sizes and batch
    (40, 2, 9, 9, 20, 3, {"dilation": 2}),      # dilation; many output channels (g by rows)
    (33, 2, 6, 7, 3, 2, {"padding": (1, 0)}),
    (1, 2, 6, 6, 3, 2, {}),                     # one image: one part
])
@pytest.mark.parametrize("bias", [True, False])
def test_convolutions_equal_the_numpy_loops(n, c, h, w, o, k, kw, bias, monkeypatch):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((n, c, h, w)).astype(np.float32), rng.standard_normal((o, c, k, k)).astype(np.float32)]
    if bias:
        arrays.append(rng.standard_normal(o).astype(np.float32))
    y = bp.nn.functional.conv2d(*(bp.tensor(a) for a in arrays), **kw)
    ran = []
    for name in ("forward", "weight_grad", "input_grad_banded"):
        kernel = getattr(conv.conv_kernels, name)
        monkeypatch.setattr(conv.conv_kernels, name, lambda *a, _k=kernel, _n=name: (ran.append(_n), _k(*a))[1])
    _compare(lambda *t: bp.nn.functional.conv2d(*t, **kw), arrays, y.shape, monkeypatch)
    assert {"forward", "weight_grad"} <= set(ran)  # the kernels did run (dx: where the banded form applies)


@pytest.mark.parametrize("shape", [(128, 6, 28, 28), (64, 16, 10, 10), (3, 2, 7, 9), (40, 1, 5, 4)])
def test_max_pooling_2x2_equals_the_numpy_form(shape, monkeypatch):
    """Ties of +0 and -0 (whole windows of zeros after a ReLU), NaN and inf; odd sizes leave rows out."""
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    x = np.where(x < 0, np.float32(-0.0), x)
    x[..., ::3] = 0
    x[0, 0, 0, 0], x[-1, -1, 1, 1], x[-1, 0, 2, 3] = np.nan, np.inf, -np.inf
    out = bp.nn.functional.max_pool2d(bp.tensor(x), 2).shape
    ran = []
    for name in ("max2x2", "max2x2_grad"):
        kernel = getattr(pooling.pooling_kernels, name)
        monkeypatch.setattr(pooling.pooling_kernels, name, lambda *a, _k=kernel, _n=name: (ran.append(_n), _k(*a))[1])
    _compare(lambda t: bp.nn.functional.max_pool2d(t, 2), [x], out, monkeypatch)
    assert set(ran) == {"max2x2", "max2x2_grad"}  # the kernels did run


def test_relu_equals_numpy(monkeypatch):
    x = np.random.default_rng(2).standard_normal((300, 1000)).astype(np.float32)
    x[0, :3] = [np.nan, -0.0, 0.0]
    x[1, 0] = -np.inf
    g = np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)
    g[0, 1], g[2, 2] = np.inf, np.nan
    from backprop.engine import elementwise_kernels

    ran = []
    for name in ("relu", "relu_grad"):
        kernel = getattr(elementwise_kernels, name)
        monkeypatch.setattr(elementwise_kernels, name, lambda *a, _k=kernel, _n=name: (ran.append(_n), _k(*a))[1])
    ref = _grads(lambda t: t.relu(), [x], g, False, 1, monkeypatch)
    for limit in (1, 2):
        _assert_same(ref, _grads(lambda t: t.relu(), [x], g, True, limit, monkeypatch))
    assert set(ran) == ({"relu", "relu_grad"} if _two_parts_possible() else set())  # two halves at budget 2 only


def test_the_kernels_run_where_they_apply_and_numpy_elsewhere(monkeypatch):
    """float32 ungrouped layers and 2x2 pooling get the kernels; groups, float64, other windows and
    BACKPROP_NUMBA=0 the NumPy paths; two parts only under a budget of two threads (a captured step's,
    which keeps the BLAS on one thread), never in an eager step between other ops' BLAS calls."""
    f32, f64, big = np.dtype(np.float32), np.dtype(np.float64), conv._COMPILED_MIN_WORK
    assert conv._compiled(f32, 1, big) is not None
    assert conv._compiled(f32, 2, big) is None and conv._compiled(f64, 1, big) is None
    assert conv._compiled(f32, 1, big - 1) is None  # too small to pay for numba's import
    x = np.zeros((64, 1, 32, 32), np.float32)
    geo = pooling._Geometry(x.shape, (2, 2), (2, 2), (0, 0), (1, 1), False, "t")
    assert pooling._compiled(x, geo) is not None
    assert pooling._compiled(x.astype(np.float64), geo) is None
    geo3 = pooling._Geometry(x.shape, (3, 3), (3, 3), (0, 0), (1, 1), False, "t")
    assert pooling._compiled(x, geo3) is None
    small = x[:, :, :8, :8]
    assert pooling._compiled(small, pooling._Geometry(small.shape, (2, 2), (2, 2), (0, 0), (1, 1), False, "t")) is None
    monkeypatch.setenv("BACKPROP_NUMBA", "0")
    assert conv._compiled(f32, 1, big) is None and not kernels.enabled()
    monkeypatch.delenv("BACKPROP_NUMBA")
    assert parallel.budget_limit() is None
    assert kernels.parallel_bounds(128, 16).tolist() == [0, 128]  # eager: one part (the BLAS may spin)
    with parallel.budget(1):
        assert kernels.parallel_bounds(128, 16).tolist() == [0, 128]
    with parallel.budget(2):
        assert kernels.parallel_bounds(20, 16).tolist() == [0, 20]  # too few for two parts
        if _two_parts_possible():
            assert kernels.parallel_bounds(128, 16).tolist() == [0, 64, 128]
            assert kernels.parallel_bounds(128, 16, grain=62).tolist() == [0, 62, 128]


def test_a_captured_lenet_step_with_kernels_equals_the_numpy_step(monkeypatch):
    """LeNet-5 (convolutions, ReLU, 2x2 pooling) trained 3 steps by bp.jit: the same weights, to the bit."""
    def train(numba):
        monkeypatch.setenv("BACKPROP_NUMBA", "1" if numba else "0")
        bp.manual_seed(0)
        model = bp.nn.Sequential(bp.nn.Conv2d(1, 6, 5, padding=2), bp.nn.ReLU(), bp.nn.MaxPool2d(2),
                                 bp.nn.Conv2d(6, 16, 5), bp.nn.ReLU(), bp.nn.MaxPool2d(2), bp.nn.Flatten(),
                                 bp.nn.Linear(400, 10))
        step = bp.jit(classic_step(model, bp.optim.SGD(model.parameters(), lr=0.05)))
        rng = np.random.default_rng(0)
        with parallel.budget(2):
            for _ in range(3):
                step(rng.random((64, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 64))
        return [p.data.copy() for p in model.parameters()]

    for a, b in zip(train(False), train(True), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kw", [
    {},                                                   # LSTM(8, 24), B=32: two blocks of 16
    {"bidirectional": True, "num_layers": 2, "B": 33},    # a reverse direction; blocks of 16 and 17 (padded)
    {"bias": False, "B": 5},                              # one block
    {"state": True},                                      # initial h0 and c0, and their gradients
])
def test_the_compiled_lstm_equals_the_numpy_loops_within_float32_rounding(kw, monkeypatch):
    """Outputs, final states and every gradient (input, weights, biases, initial states) against the NumPy
    loops (BACKPROP_NUMBA=0), within float32 rounding (its tanh is a rational approximation); one thread or
    two give the same numbers, to the bit (fixed blocks of sequences)."""
    from backprop.nn import recurrence

    monkeypatch.setattr(recurrence, "_COMPILED_MIN_GATES", 0)  # these small LSTMs too
    kw = dict(kw)
    B, state = kw.pop("B", 32), kw.pop("state", False)
    T, I, H = 12, 8, 24
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1), B, H)).astype(np.float32)
    c0 = rng.standard_normal(h0.shape).astype(np.float32)

    def run(numba, limit):
        monkeypatch.setenv("BACKPROP_NUMBA", "1" if numba else "0")
        bp.manual_seed(0)
        lstm = bp.nn.LSTM(I, H, **kw)
        xt = bp.tensor(x, requires_grad=True)
        hx = (bp.tensor(h0, requires_grad=True), bp.tensor(c0, requires_grad=True)) if state else None
        with parallel.budget(limit):
            out, (h, c) = lstm(xt, hx)
            g = np.random.default_rng(2).standard_normal(out.shape).astype(np.float32)
            ((out * bp.tensor(g)).sum() + (h * h).sum() + c.sum()).backward()
        grads = [np.array(xt.grad)] + [np.array(p.grad) for p in lstm.parameters()]
        if state:
            grads += [np.array(t.grad) for t in hx]
        return [out.data.copy(), h.data.copy(), c.data.copy(), *grads]

    ref, one, two = run(False, 1), run(True, 1), run(True, 2)
    for a, b, c in zip(ref, one, two, strict=True):
        np.testing.assert_array_equal(b, c)
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-5 * float(np.abs(a).max()))


def test_the_compiled_lstm_runs_only_where_it_applies(monkeypatch):
    """float32 LSTMs without lengths or a projection, large enough; float64, lengths, proj_size, GRU: the NumPy
    loops."""
    from backprop.nn import recurrence

    calls = []
    kernel = recurrence.recurrence_kernels.lstm_forward
    monkeypatch.setattr(recurrence.recurrence_kernels, "lstm_forward", lambda *a: (calls.append(1), kernel(*a))[1])
    x = np.zeros((3, 4, 2), np.float32)
    bp.nn.LSTM(2, 3)(bp.tensor(x))
    assert not calls  # too small to pay for numba's import
    monkeypatch.setattr(recurrence, "_COMPILED_MIN_GATES", 3 * 4 * 4 * 3)
    bp.nn.LSTM(2, 3)(bp.tensor(x))
    assert len(calls) == 1
    bp.nn.LSTM(2, 3, dtype=np.float64)(bp.tensor(x.astype(np.float64)))
    bp.nn.LSTM(2, 3)(bp.tensor(x), lengths=[3, 2, 1, 3])
    bp.nn.LSTM(2, 3, proj_size=2)(bp.tensor(x))
    bp.nn.GRU(2, 3)(bp.tensor(x))
    assert len(calls) == 1


def test_the_kernels_tanh_is_within_4e7_of_tanh():
    from backprop.nn import recurrence_kernels

    x = np.concatenate([np.linspace(-12, 12, 200_001), np.logspace(-9, 1, 1000), -np.logspace(-9, 1, 1000),
                        [0.0, np.inf, -np.inf]]).astype(np.float32)
    y = recurrence_kernels.tanh_array(x)
    err = np.abs(y.astype(np.float64) - np.tanh(x.astype(np.float64)))
    assert err.max() <= 4e-7
    assert np.all(np.abs(y) <= 1) and y[-3] == 0 and np.isnan(recurrence_kernels.tanh_array(np.float32([np.nan])))[0]


def test_kernels_that_do_not_compile_leave_the_numpy_loops_with_one_warning(monkeypatch):
    """A numba or LLVM that cannot build a module's kernels: one RuntimeWarning, then the NumPy paths."""
    from backprop.nn import conv_kernels

    def broken():
        raise TypeError("no such kernel")

    monkeypatch.setattr(conv_kernels, "_warm_up", broken)
    conv_kernels.ready.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="convolutions did not compile.*TypeError: no such kernel"):
            assert conv._compiled(np.dtype(np.float32), 1, conv._COMPILED_MIN_WORK) is None
        x = bp.tensor(np.ones((64, 1, 12, 12), np.float32))
        assert bp.nn.functional.conv2d(x, bp.tensor(np.ones((8, 1, 5, 5), np.float32))).shape == (64, 8, 8, 8)
    finally:
        conv_kernels.ready.cache_clear()
    monkeypatch.undo()
    assert conv._compiled(np.dtype(np.float32), 1, conv._COMPILED_MIN_WORK) is not None
