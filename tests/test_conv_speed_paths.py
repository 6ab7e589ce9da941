"""The fast paths of convolution and max pooling, each forced on and off: flat (row-shift) columns in chunks,
the banded (Toeplitz) input gradient in column blocks, and separable max pooling of tiling windows. Each
must give what the general path gives (and PyTorch, where it is installed), and keep the Function protocol
(re-runnable forward, no writes to the incoming gradient)."""

import math

import numpy as np
import pytest

import backprop as bp
from backprop.nn import conv as conv_module
from backprop.nn import pooling as pool_module
from backprop.nn.conv import Conv1dFn, Conv2dFn
from backprop.nn.pooling import MaxPool2dFn


def _rand(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=shape).astype(dtype)


def _run(fn_cls, x, w, b, g, needs=None, **kw):
    """Forward and backward of one fresh Function instance, as a captured step replays them."""
    ctx = fn_cls()
    arrays = (x, w) if b is None else (x, w, b)
    ctx.needs_grad = needs or (True,) * len(arrays)
    out = ctx.forward(*arrays, **kw)
    g = np.array(g) if g is not None else _rand(*out.shape, seed=9, dtype=out.dtype)
    g.setflags(write=False)  # backward must not write into the incoming gradient
    return out, ctx.backward(g)


def _assert_same(a, b, rtol):
    for x, y in zip(a, b):
        if x is None or y is None:
            assert x is None and y is None
        else:
            np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol)


GENERAL = {"_FLAT_MAX_GROWTH": 0.0, "_TOEPLITZ_MAX_WASTE": 0.0}
FAST = {"_FLAT_MAX_GROWTH": math.inf, "_TOEPLITZ_MAX_WASTE": math.inf, "_TOEPLITZ_MAX_BYTES": 1 << 40}

CASES_2D = [
    ((3, 4, 9, 8), (6, 4, 3, 2), {"padding": 1}),
    ((2, 3, 7, 7), (5, 3, 3, 3), {"padding": "same", "dilation": 2}),
    ((2, 2, 4, 9), (3, 2, 2, 4), {"padding": "same", "dilation": (1, 2)}),  # asymmetric padding
    ((2, 4, 6, 6), (6, 2, 3, 3), {"padding": 1, "groups": 2}),
    ((2, 3, 5, 5), (2, 3, 5, 5), {}),                                       # one output pixel
    ((1, 1, 12, 10), (4, 1, 5, 5), {"padding": 2}),                         # LeNet's first layer, smaller
    ((3, 6, 14, 14), (16, 6, 5, 5), {}),                                    # LeNet's second layer
    ((2, 3, 1, 9), (2, 3, 1, 3), {"padding": (0, 1)}),                      # one row
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape, wshape, kw", CASES_2D)
@pytest.mark.parametrize("chunk", [1, 1 << 20])
def test_conv2d_fast_paths_match_the_general_ones(shape, wshape, kw, dtype, bias, chunk, monkeypatch):
    x, w = _rand(*shape, seed=1, dtype=dtype), _rand(*wshape, seed=2, dtype=dtype)
    b = _rand(wshape[0], seed=3, dtype=dtype) if bias else None
    g = None  # a fixed random output gradient
    with monkeypatch.context() as m:
        for k, v in GENERAL.items():
            m.setattr(conv_module, k, v)
        ref_out, ref_grads = _run(Conv2dFn, x, w, b, g, **kw)
    for k, v in FAST.items():
        monkeypatch.setattr(conv_module, k, v)
    monkeypatch.setattr(conv_module, "_COLS_CHUNK_BYTES", chunk)  # 1: one image a chunk
    monkeypatch.setattr(conv_module, "_TOEPLITZ_CHUNK_BYTES", chunk)
    out, grads = _run(Conv2dFn, x, w, b, g, **kw)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    _assert_same([out], [ref_out], rtol)
    _assert_same(grads, ref_grads, rtol)
    assert out.dtype == dtype and all(gr.dtype == dtype for gr in grads)


@pytest.mark.parametrize("needs", [(True, False, True), (False, True, False), (False, False, True), (True, True, True)])
def test_conv2d_fast_paths_with_partial_needs(needs, monkeypatch):
    x, w, b = _rand(2, 3, 8, 8, seed=5), _rand(4, 3, 3, 3, seed=6), _rand(4, seed=7)
    ref = _run(Conv2dFn, x, w, b, None, needs=(True, True, True), padding=1)[1]
    _, grads = _run(Conv2dFn, x, w, b, None, needs=needs, padding=1)
    for got, want, need in zip(grads, ref, needs):
        if need:
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        else:
            assert got is None


@pytest.mark.parametrize("shape, wshape, kw", [
    ((2, 3, 9), (4, 3, 3), {"padding": 1}),
    ((2, 4, 10), (6, 2, 3), {"groups": 2, "dilation": 2, "padding": "same"}),
    ((1, 2, 7), (3, 2, 7), {}),
])
def test_conv1d_fast_paths_match_the_general_ones(shape, wshape, kw, monkeypatch):
    x, w, b = _rand(*shape, seed=8), _rand(*wshape, seed=9), _rand(wshape[0], seed=10)
    with monkeypatch.context() as m:
        for k, v in GENERAL.items():
            m.setattr(conv_module, k, v)
        ref_out, ref_grads = _run(Conv1dFn, x, w, b, None, **kw)
    for k, v in FAST.items():
        monkeypatch.setattr(conv_module, k, v)
    out, grads = _run(Conv1dFn, x, w, b, None, **kw)
    _assert_same([out], [ref_out], 1e-12)
    _assert_same(grads, ref_grads, 1e-12)


def test_conv2d_reads_a_non_contiguous_input():
    x = _rand(2, 7, 6, 3, seed=11).transpose(0, 3, 1, 2)  # (2, 3, 7, 6), channels last in memory
    w, b = _rand(4, 3, 3, 3, seed=12), _rand(4, seed=13)
    out, grads = _run(Conv2dFn, x, w, b, None, padding=0)
    ref_out, ref_grads = _run(Conv2dFn, np.ascontiguousarray(x), w, b, None, padding=0)
    _assert_same([out], [ref_out], 1e-12)
    _assert_same(grads, ref_grads, 1e-12)


def test_lenet_layers_take_the_fast_paths(monkeypatch):
    """Both of LeNet-5's convolutions run the flat columns; the second one's input gradient the banded form."""
    used = []
    for name in ("_flat_forward", "_flat_weight_grad", "_input_grad_toeplitz", "_input_grad_slabs", "_conv_forward"):
        fn = getattr(conv_module, name)
        monkeypatch.setattr(conv_module, name, lambda *a, _fn=fn, _name=name, **k: used.append(_name) or _fn(*a, **k))
    _run(Conv2dFn, _rand(2, 1, 28, 28, dtype=np.float32), _rand(6, 1, 5, 5, dtype=np.float32),
         _rand(6, dtype=np.float32), None, needs=(False, True, True), padding=2)
    assert used == ["_flat_forward", "_flat_weight_grad"]
    used.clear()
    _run(Conv2dFn, _rand(2, 6, 14, 14, dtype=np.float32), _rand(16, 6, 5, 5, dtype=np.float32),
         _rand(16, dtype=np.float32), None)
    assert used == ["_flat_forward", "_flat_weight_grad", "_input_grad_toeplitz"]


def test_toeplitz_blocks_cover_the_width():
    for wp in range(1, 40):
        for kw in (1, 2, 3, 5):
            for dw in (1, 2):
                nblk, bx = conv_module._toeplitz_blocks(wp, kw, dw)
                assert nblk * bx >= wp > (nblk - 1) * bx


def test_forward_is_rerunnable_and_backward_keeps_its_input():
    x, w, b = _rand(3, 6, 14, 14, seed=14), _rand(16, 6, 5, 5, seed=15), _rand(16, seed=16)
    g = _rand(3, 16, 10, 10, seed=17)
    g_before = g.copy()
    first = _run(Conv2dFn, x, w, b, g)
    second = _run(Conv2dFn, x, w, b, g)
    np.testing.assert_array_equal(g, g_before)
    _assert_same([first[0]], [second[0]], 0)
    _assert_same(first[1], second[1], 0)
    gx, gw, gb = first[1]
    assert len({id(gx), id(gw), id(gb)}) == 3


# ------------------------------------------------------------------------------------------ max pooling
def _pool(x, g, **kw):
    ctx = MaxPool2dFn()
    ctx.needs_grad = (True,)
    out = ctx.forward(x, **kw)
    g = g if g is not None else _rand(*out.shape, seed=21, dtype=x.dtype)
    g.setflags(write=False)
    return out, ctx.backward(g)


POOL_CASES = [
    ((2, 3, 8, 8), 2), ((2, 3, 9, 7), 2), ((2, 2, 9, 9), 3), ((2, 2, 8, 9), (2, 3)), ((1, 2, 6, 6), (1, 2)),
    ((1, 2, 6, 6), (2, 1)), ((3, 4, 4), 2), ((2, 2, 20, 17), 17),
]


@pytest.mark.parametrize("shape, kernel", POOL_CASES)
@pytest.mark.parametrize("relu", [False, True])
def test_tiled_max_pool_matches_the_general_path(shape, kernel, relu, monkeypatch):
    x = _rand(*shape, seed=22)
    if relu:  # whole windows of zeros: the gradient goes to each window's first element
        x = np.maximum(x, 0.0)
    x[..., :2, :2] = 0.25  # more ties
    out, dx = _pool(x, None, kernel_size=kernel)
    monkeypatch.setattr(pool_module._Geometry, "tiles", lambda self: False)
    ref_out, ref_dx = _pool(x, None, kernel_size=kernel)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(dx, ref_dx)
    assert dx.shape == x.shape


def test_tiled_max_pool_sends_each_window_gradient_to_one_element():
    x = np.zeros((1, 1, 4, 4), dtype=np.float32)
    x[0, 0, 2:, 2:] = [[1.0, 1.0], [1.0, 0.5]]
    g = np.arange(1, 5, dtype=np.float32).reshape(1, 1, 2, 2)
    _, dx = _pool(x, g, kernel_size=2)
    np.testing.assert_array_equal(dx[0, 0], [[1, 0, 2, 0], [0, 0, 0, 0], [3, 0, 4, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize("shape, kernel", POOL_CASES)
def test_tiled_max_pool_matches_torch(shape, kernel):
    torch = pytest.importorskip("torch")
    x = np.maximum(_rand(*shape, seed=23), 0.0)
    t = torch.tensor(x, requires_grad=True)
    ref = torch.nn.functional.max_pool2d(t, kernel)
    g = _rand(*ref.shape, seed=24)
    ref.backward(torch.tensor(g))
    out, dx = _pool(x, g, kernel_size=kernel)
    np.testing.assert_array_equal(out, ref.detach().numpy())
    np.testing.assert_array_equal(dx, t.grad.numpy())


def test_lenet_conv_layers_match_torch_in_float32():
    torch = pytest.importorskip("torch")
    x = _rand(4, 6, 14, 14, seed=25, dtype=np.float32)
    w, b = _rand(16, 6, 5, 5, seed=26, dtype=np.float32), _rand(16, seed=27, dtype=np.float32)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ref = torch.nn.functional.conv2d(tx, tw, tb)
    g = _rand(*ref.shape, seed=28, dtype=np.float32)
    ref.backward(torch.tensor(g))
    out, (gx, gw, gb) = _run(Conv2dFn, x, w, b, g)
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-4, atol=1e-5)
    for ours, theirs in ((gx, tx), (gw, tw), (gb, tb)):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_module_output_through_the_fast_paths_is_float32():
    bp.manual_seed(0)
    conv = bp.nn.Conv2d(1, 6, 5, padding=2)
    x = bp.tensor(_rand(2, 1, 28, 28, dtype=np.float32), requires_grad=True)
    y = bp.nn.MaxPool2d(2)(conv(x))
    y.sum().backward()
    assert y.dtype == np.float32 and x.grad.dtype == np.float32 and conv.weight.grad.dtype == np.float32
