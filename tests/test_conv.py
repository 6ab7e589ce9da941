"""Convolution and pooling: values and gradients against PyTorch over a grid of shapes and arguments,
dtypes, Module parameters and state dicts, error messages, and a LeNet-style model end to end."""

import itertools
import math

import numpy as np
import pytest

import backprop as bp
from backprop.nn import conv as conv_module
from backprop.nn.conv import Conv1d, Conv1dFn, Conv2d, Conv2dFn, conv1d, conv2d
from backprop.nn.pooling import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    MaxPool2d,
    adaptive_avg_pool2d,
    avg_pool2d,
    max_pool2d,
)

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.fixture(autouse=True, scope="module")
def _torch_one_thread():
    """PyTorch's multithreaded float64 kernels on these tiny inputs take ~100x longer on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _rand(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=shape).astype(dtype)


def _compare(ours_fn, torch_fn, arrays, rtol=1e-7, atol=1e-10):
    """Run both on copies of ``arrays``; compare outputs and the gradients of every input."""
    ours = [bp.tensor(a, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    out, ref = ours_fn(*ours), torch_fn(*theirs)
    assert out.shape == tuple(ref.shape)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=rtol, atol=atol)
    w = _rand(*out.shape, seed=99, dtype=arrays[0].dtype)
    out.backward(w)
    ref.backward(torch.tensor(w))
    for i, (a, b) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(a.grad, b.grad.numpy(), rtol=rtol, atol=atol, err_msg=f"gradient of input {i}")
    return out


@pytest.fixture(params=["slabs", "slabs-chunked", "col2im"])
def dx_path(request, monkeypatch):
    """Every input-gradient algorithm: shifted slabs (stride 1; all channels at once, or one per product)
    and per-image products + col2im (always used for strides > 1)."""
    monkeypatch.setattr(conv_module, "_DX_MAX_GROWTH", 0.0 if request.param == "col2im" else math.inf)
    if request.param == "slabs-chunked":
        monkeypatch.setattr(conv_module, "_DX_CHUNK_BYTES", 1)
    return request.param


# --------------------------------------------------------------------------------------- conv2d grid
STRIDES = [1, 2, (2, 1)]
PADDINGS = [0, 1, (1, 0), "same", "valid"]
GRID_2D = [
    (s, p, d, g, b)
    for s, p, d, g, b in itertools.product(STRIDES, PADDINGS, [1, 2], [1, 2], [True, False])
    if not (p == "same" and s != 1)
]


@pytest.mark.parametrize("stride, padding, dilation, groups, bias", GRID_2D)
def test_conv2d_matches_torch(stride, padding, dilation, groups, bias, dx_path):
    x = _rand(3, 4, 9, 8, seed=1)
    w = _rand(6, 4 // groups, 3, 2, seed=2)
    arrays = [x, w] + ([_rand(6, seed=3)] if bias else [])
    kw = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    _compare(lambda *t: conv2d(*t, **kw), lambda *t: F.conv2d(*t, **kw), arrays)


@pytest.mark.parametrize("shape, wshape, kw", [
    ((1, 3, 7, 7), (5, 3, 3, 3), {"padding": 1}),                      # batch of one
    ((2, 4, 6, 6), (4, 1, 3, 3), {"padding": "same", "groups": 4}),       # depthwise
    ((2, 3, 5, 5), (2, 3, 1, 1), {}),                                   # 1x1: the columns are the input
    ((2, 3, 6, 5), (2, 3, 1, 1), {"stride": 2, "padding": 1}),            # 1x1 strided and padded
    ((2, 2, 5, 6), (3, 2, 5, 6), {}),                                   # kernel as large as the input
    ((2, 2, 4, 9), (3, 2, 2, 4), {"padding": "same", "dilation": (1, 2)}),  # asymmetric same, per-axis dilation
    ((2, 2, 11, 10), (3, 2, 3, 3), {"stride": 3, "padding": 2}),          # stride 3, windows leaving gaps
    ((2, 2, 6, 6), (2, 2, 3, 3), {"stride": (1, 2), "dilation": (2, 1)}),
])
def test_conv2d_more_shapes(shape, wshape, kw, dx_path):
    arrays = [_rand(*shape, seed=4), _rand(*wshape, seed=5), _rand(wshape[0], seed=6)]
    _compare(lambda *t: conv2d(*t, **kw), lambda *t: F.conv2d(*t, **kw), arrays)


@pytest.mark.parametrize("fn, tfn, x, w", [
    (conv1d, F.conv1d, _rand(2, 3, 5), _rand(4, 3, 1)),
    (conv2d, F.conv2d, _rand(2, 3, 5, 4), _rand(4, 3, 1, 1)),
    (conv2d, F.conv2d, _rand(2, 5, 4, 3).transpose(0, 3, 1, 2), _rand(4, 3, 1, 1)),  # not contiguous
])
def test_1x1_convolution_reads_the_input_in_place(fn, tfn, x, w):
    x.setflags(write=False)  # the columns are the input itself: it must never be written
    out = fn(bp.Tensor(x), bp.tensor(w, requires_grad=True))
    np.testing.assert_allclose(out.data, tfn(torch.tensor(np.array(x)), torch.tensor(w)).numpy(), rtol=1e-7)


@pytest.mark.parametrize("shape, wshape, kw", [
    ((3, 4, 3, 3), (8, 4, 3, 3), {}),                        # one output pixel, more channels than pixels
    ((3, 4, 4, 4), (6, 2, 3, 3), {"groups": 2, "stride": 2}),
])
def test_weight_gradient_without_the_batched_temporary(shape, wshape, kw, monkeypatch):
    """Many output channels on tiny images: the weight gradient contracts over the batch in one product."""
    monkeypatch.setattr(conv_module, "_WGRAD_TEMP_BYTES", 0)
    arrays = [_rand(*shape, seed=30), _rand(*wshape, seed=31), _rand(wshape[0], seed=32)]
    _compare(lambda *t: conv2d(*t, **kw), lambda *t: F.conv2d(*t, **kw), arrays)


def test_conv2d_unbatched_input():
    kw = {"padding": 1, "stride": 2}
    _compare(lambda x, w: conv2d(x, w, **kw), lambda x, w: F.conv2d(x, w, **kw), [_rand(3, 6, 5), _rand(2, 3, 3, 3)])


def test_conv2d_input_without_grad_and_frozen_weight():
    x, w, b = _rand(2, 3, 6, 6), _rand(4, 3, 3, 3, seed=1), _rand(4, seed=2)
    xt, wt, bt = bp.tensor(x), bp.tensor(w), bp.tensor(b, requires_grad=True)
    conv2d(xt, wt, bt, padding=1).sum().backward()
    assert xt.grad is None and wt.grad is None
    np.testing.assert_allclose(bt.grad, np.full(4, 2 * 6 * 6))


# --------------------------------------------------------------------------------------- conv1d grid
GRID_1D = [
    (s, p, d, g, b)
    for s, p, d, g, b in itertools.product([1, 2], [0, 2, "same", "valid"], [1, 2], [1, 2], [True, False])
    if not (p == "same" and s != 1)
]


@pytest.mark.parametrize("stride, padding, dilation, groups, bias", GRID_1D)
def test_conv1d_matches_torch(stride, padding, dilation, groups, bias, dx_path):
    arrays = [_rand(3, 4, 11, seed=7), _rand(6, 4 // groups, 4, seed=8)] + ([_rand(6, seed=9)] if bias else [])
    kw = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    _compare(lambda *t: conv1d(*t, **kw), lambda *t: F.conv1d(*t, **kw), arrays)


def test_conv1d_unbatched_input():
    _compare(lambda x, w: conv1d(x, w, padding="same"), lambda x, w: F.conv1d(x, w, padding="same"),
             [_rand(3, 7), _rand(2, 3, 4)])


# ------------------------------------------------------------------------------------------- pooling
MAX_GRID = [
    (k, s, p, d, c)
    for k, s, p, d, c in itertools.product([2, 3, (2, 3)], [None, 1, 2, (2, 1)], [0, 1], [1, 2], [False, True])
]


@pytest.mark.parametrize("kernel, stride, padding, dilation, ceil_mode", MAX_GRID)
def test_max_pool2d_matches_torch(kernel, stride, padding, dilation, ceil_mode):
    kw = {"kernel_size": kernel, "stride": stride, "padding": padding, "dilation": dilation, "ceil_mode": ceil_mode}
    _compare(lambda x: max_pool2d(x, **kw), lambda x: F.max_pool2d(x, **kw), [_rand(2, 3, 9, 8, seed=10)])


AVG_GRID = [
    (k, s, p, c, inc)
    for k, s, p, c, inc in itertools.product([2, 3, (2, 3)], [None, 1, 2, (2, 1)], [0, 1], [False, True],
                                            [True, False])
]


@pytest.mark.parametrize("kernel, stride, padding, ceil_mode, count_include_pad", AVG_GRID)
def test_avg_pool2d_matches_torch(kernel, stride, padding, ceil_mode, count_include_pad):
    kw = {"kernel_size": kernel, "stride": stride, "padding": padding, "ceil_mode": ceil_mode,
              "count_include_pad": count_include_pad}
    _compare(lambda x: avg_pool2d(x, **kw), lambda x: F.avg_pool2d(x, **kw), [_rand(2, 3, 9, 8, seed=11)])


def test_avg_pool2d_divisor_override():
    kw = {"kernel_size": 3, "stride": 2, "padding": 1, "divisor_override": 5}
    _compare(lambda x: avg_pool2d(x, **kw), lambda x: F.avg_pool2d(x, **kw), [_rand(2, 2, 7, 6)])


def test_max_pool2d_ties_go_to_the_first_maximum_as_in_torch():
    """After a ReLU whole windows are 0: PyTorch sends the gradient to the window's first element only."""
    x = np.maximum(_rand(2, 3, 8, 8, seed=12), 0.0)
    x[0, 0, :4, :4] = 0.5  # ties inside windows
    for kw in ({"kernel_size": 2}, {"kernel_size": 3, "stride": 1, "padding": 1}, {"kernel_size": 2, "stride": 1}):
        _compare(lambda t, kw=kw: max_pool2d(t, **kw), lambda t, kw=kw: F.max_pool2d(t, **kw), [x])


def test_max_pool2d_kernel_with_more_than_256_elements():
    kw = {"kernel_size": 17, "stride": 3}  # 289 offsets: the window index no longer fits in uint8
    _compare(lambda t: max_pool2d(t, **kw), lambda t: F.max_pool2d(t, **kw), [_rand(2, 2, 20, 23, seed=16)])


def test_max_pool2d_propagates_nan_like_torch():
    x = _rand(1, 1, 4, 4)
    x[0, 0, 1, 1] = np.nan
    out = max_pool2d(bp.tensor(x), 2).data
    ref = F.max_pool2d(torch.tensor(x), 2).numpy()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))


@pytest.mark.parametrize("shape, size", [
    ((2, 3, 6, 6), 1), ((2, 3, 6, 6), (1, 1)), ((2, 3, 6, 6), (2, 3)), ((2, 2, 7, 5), (4, 3)),
    ((2, 2, 7, 5), (None, 2)), ((2, 2, 4, 4), (5, 6)), ((3, 5, 7), (2, 2)),
])
def test_adaptive_avg_pool2d_matches_torch(shape, size):
    _compare(lambda x: adaptive_avg_pool2d(x, size), lambda x: F.adaptive_avg_pool2d(x, size),
             [_rand(*shape, seed=13)])


def test_pooling_unbatched_input():
    x = [_rand(3, 6, 7, seed=14)]
    _compare(lambda t: max_pool2d(t, 2), lambda t: F.max_pool2d(t, 2), x)
    _compare(lambda t: avg_pool2d(t, 3, 2, 1), lambda t: F.avg_pool2d(t, 3, 2, 1), x)


# -------------------------------------------------------------------------------------------- dtypes
def test_float32_is_preserved_through_forward_and_backward():
    x = bp.tensor(_rand(2, 3, 8, 8, dtype=np.float32), requires_grad=True)
    conv = Conv2d(3, 4, 3, padding=1)
    y = MaxPool2d(2)(conv(x))
    z = AdaptiveAvgPool2d(1)(AvgPool2d(2)(y))
    assert conv.weight.dtype == np.float32 and y.dtype == np.float32 and z.dtype == np.float32
    z.sum().backward()
    assert x.grad.dtype == np.float32 and conv.weight.grad.dtype == np.float32 and conv.bias.grad.dtype == np.float32
    c1 = Conv1d(3, 2, 3)
    out = c1(bp.tensor(_rand(2, 3, 9, dtype=np.float32)))
    assert out.dtype == np.float32


def test_float32_matches_torch_loosely():
    arrays = [_rand(4, 3, 12, 12, dtype=np.float32), _rand(5, 3, 3, 3, seed=1, dtype=np.float32),
              _rand(5, seed=2, dtype=np.float32)]
    _compare(lambda *t: conv2d(*t, padding=1), lambda *t: F.conv2d(*t, padding=1), arrays, rtol=1e-5, atol=1e-5)


def test_module_accepts_numpy_input_in_the_weight_dtype():
    conv = Conv2d(1, 2, 3)
    out = conv(np.zeros((1, 1, 5, 5)))  # float64 array -> float32 like the weights
    assert out.dtype == np.float32 and out.shape == (1, 2, 3, 3)


# ---------------------------------------------------------------------------- Modules and state dicts
@pytest.mark.parametrize("ours, theirs, x_shape", [
    (lambda: Conv2d(4, 6, (3, 2), stride=2, padding=1, groups=2),
     lambda: torch.nn.Conv2d(4, 6, (3, 2), stride=2, padding=1, groups=2), (2, 4, 9, 8)),
    (lambda: Conv2d(3, 5, 3, padding="same", dilation=2, bias=False),
     lambda: torch.nn.Conv2d(3, 5, 3, padding="same", dilation=2, bias=False), (2, 3, 7, 7)),
    (lambda: Conv1d(4, 6, 3, stride=2, groups=2), lambda: torch.nn.Conv1d(4, 6, 3, stride=2, groups=2), (2, 4, 10)),
])
def test_module_parameters_and_torch_state_dict(ours, theirs, x_shape):
    m, t = ours(), theirs().double()
    assert [(k, v.shape) for k, v in m.named_parameters()] == [(k, tuple(v.shape)) for k, v in t.named_parameters()]
    m.double()
    m.load_state_dict({k: v.detach().numpy() for k, v in t.state_dict().items()})
    x = _rand(*x_shape, seed=15)
    np.testing.assert_allclose(m(bp.tensor(x)).data, t(torch.tensor(x)).detach().numpy(), rtol=1e-7, atol=1e-10)


def test_conv_init_is_pytorch_kaiming_uniform_and_reproducible():
    bp.manual_seed(0)
    conv = Conv2d(8, 16, (3, 5), groups=2)
    fan_in = 4 * 3 * 5
    bound = 1 / math.sqrt(fan_in)
    w, b = conv.weight.data, conv.bias.data
    assert w.shape == (16, 4, 3, 5) and b.shape == (16,)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.1 * bound  # U(-a, a) has std a / sqrt(3)
    bp.manual_seed(0)
    again = Conv2d(8, 16, (3, 5), groups=2)
    np.testing.assert_array_equal(again.weight.data, w)
    np.testing.assert_array_equal(again.bias.data, b)


def test_repr_like_torch():
    assert repr(Conv2d(1, 6, 5, padding=2)) == "Conv2d(1, 6, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2))"
    assert repr(Conv1d(2, 4, 3, bias=False, groups=2)) == "Conv1d(2, 4, kernel_size=(3,), stride=(1,), groups=2, bias=False)"
    assert "kernel_size=2" in repr(MaxPool2d(2)) and "output_size=1" in repr(AdaptiveAvgPool2d(1))


# --------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("call, match", [
    (lambda: conv2d(bp.tensor(np.zeros((5, 5))), bp.tensor(np.zeros((1, 1, 3, 3)))), r"\(N, C, H, W\)"),
    (lambda: conv2d(bp.tensor(np.zeros((1, 1, 1, 5, 5))), bp.tensor(np.zeros((1, 1, 3, 3)))), r"\(N, C, H, W\)"),
    (lambda: conv1d(bp.tensor(np.zeros((1, 1, 5, 5))), bp.tensor(np.zeros((1, 1, 3)))), r"\(N, C, L\)"),
    (lambda: conv2d(bp.tensor(np.zeros((1, 3, 5, 5))), bp.tensor(np.zeros((2, 2, 3, 3)))), "3 channels.*expects 2"),
    (lambda: conv2d(bp.tensor(np.zeros((1, 4, 5, 5))), bp.tensor(np.zeros((3, 2, 3, 3))), groups=2),
     "divisible by groups"),
    (lambda: conv2d(bp.tensor(np.zeros((1, 1, 4, 4))), bp.tensor(np.zeros((1, 1, 5, 5)))),
     r"kernel size \(5, 5\).*larger than the padded input size \(4, 4\)"),
    (lambda: conv2d(bp.tensor(np.zeros((1, 1, 4, 4))), bp.tensor(np.zeros((1, 1, 3, 3))), dilation=2),
     r"dilated: \(5, 5\)"),
    (lambda: conv1d(bp.tensor(np.zeros((1, 1, 4))), bp.tensor(np.zeros((1, 1, 6)))), "kernel size 6.*length 4"),
    (lambda: conv2d(bp.tensor(np.zeros((1, 1, 5, 5))), bp.tensor(np.zeros((1, 1, 3, 3))), stride=2, padding="same"),
     "not supported for strided"),
    (lambda: conv2d(bp.tensor(np.zeros((1, 1, 5, 5))), bp.tensor(np.zeros((1, 1, 3, 3))), padding="full"),
     "'same', 'valid'"),
    (lambda: conv2d(bp.tensor(np.zeros((1, 1, 5, 5))), bp.tensor(np.zeros((1, 1, 3, 3))), padding=-1),
     "non-negative"),
    (lambda: conv2d(bp.tensor(np.zeros((1, 1, 5, 5))), bp.tensor(np.zeros((1, 1, 3, 3))), stride=0), "positive"),
    (lambda: conv2d(bp.tensor(np.zeros((1, 1, 5, 5))), bp.tensor(np.zeros((1, 1, 3, 3))), stride=(1, 2, 3)),
     "tuple of 2 ints"),
    (lambda: conv2d(bp.tensor(np.zeros((1, 1, 5, 5))), bp.tensor(np.zeros((2, 1, 3, 3))), bp.tensor(np.zeros(3))),
     r"bias must have shape \(2,\)"),
    (lambda: Conv2d(3, 4, 3, groups=2), r"in_channels \(3\) must be divisible by groups \(2\)"),
    (lambda: Conv2d(4, 3, 3, groups=2), r"out_channels \(3\) must be divisible by groups \(2\)"),
    (lambda: Conv2d(0, 3, 3), "in_channels must be a positive integer"),
    (lambda: Conv2d(1, 3, 3, stride=2, padding="same"), "not supported for strided"),
    (lambda: max_pool2d(bp.tensor(np.zeros((1, 1, 5, 5))), 2, padding=2), "at most half"),
    (lambda: max_pool2d(bp.tensor(np.zeros((1, 1, 2, 2))), 3), "smaller than the"),
    (lambda: max_pool2d(bp.tensor(np.zeros((5, 5))), 2), r"\(N, C, H, W\)"),
    (lambda: avg_pool2d(bp.tensor(np.zeros((1, 1, 5, 5))), 0), "positive"),
    (lambda: adaptive_avg_pool2d(bp.tensor(np.zeros((1, 1, 5, 5))), 0), "positive"),
    (lambda: AdaptiveAvgPool2d((1, 2, 3)), "int or a pair"),
])
def test_errors_are_clear(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_not_implemented_options_say_so():
    with pytest.raises(NotImplementedError, match="return_indices"):
        MaxPool2d(2, return_indices=True)
    with pytest.raises(NotImplementedError, match="padding_mode"):
        Conv2d(1, 1, 3, padding_mode="reflect")


# ------------------------------------------------------------------------------------- graph behaviour
def test_backward_twice_with_retain_graph_accumulates():
    x = bp.tensor(_rand(2, 2, 6, 6), requires_grad=True)
    conv = Conv2d(2, 3, 3, padding=1).double()
    y = max_pool2d(conv(x), 2).sum()
    y.backward(retain_graph=True)
    gx, gw = x.grad.copy(), conv.weight.grad.copy()
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * gx)
    np.testing.assert_allclose(conv.weight.grad, 2 * gw)


def test_no_grad_records_nothing():
    conv = Conv2d(1, 2, 3)
    with bp.no_grad():
        y = conv(bp.tensor(np.ones((1, 1, 4, 4), dtype=np.float32)))
    assert not y.requires_grad and y.grad_fn is None


def test_functions_are_registered():
    from backprop.engine.registry import REGISTRY
    from backprop.nn.pooling import AdaptiveAvgPool2dFn, AvgPool2dFn, MaxPool2dFn

    for cls in (Conv2dFn, Conv1dFn, MaxPool2dFn, AvgPool2dFn, AdaptiveAvgPool2dFn):
        assert cls in REGISTRY


# --------------------------------------------------------------------------------------- a small CNN
def _lenet_pair(dtype):
    from backprop.nn import Flatten, Linear, ReLU, Sequential

    bp.manual_seed(0)
    ours = Sequential(Conv2d(1, 6, 5, padding=2), ReLU(), MaxPool2d(2), Conv2d(6, 16, 5), ReLU(), MaxPool2d(2),
                      Flatten(), Linear(400, 120), ReLU(), Linear(120, 84), ReLU(), Linear(84, 10)).to(dtype)
    tnn = torch.nn
    theirs = tnn.Sequential(tnn.Conv2d(1, 6, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Conv2d(6, 16, 5),
                            tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(), tnn.Linear(400, 120), tnn.ReLU(),
                            tnn.Linear(120, 84), tnn.ReLU(), tnn.Linear(84, 10))
    theirs = theirs.double() if dtype == np.float64 else theirs
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    return ours, theirs


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-9), (np.float32, 1e-4)])
def test_lenet_forward_backward_and_step_match_torch(dtype, tol):
    ours, theirs = _lenet_pair(dtype)
    rng = np.random.default_rng(0)
    x = rng.random((8, 1, 28, 28)).astype(dtype)
    y = rng.integers(0, 10, 8)
    loss = bp.nn.functional.cross_entropy(ours(bp.Tensor(x)), y)
    ref = F.cross_entropy(theirs(torch.tensor(x)), torch.tensor(y))
    np.testing.assert_allclose(loss.item(), ref.item(), rtol=tol)
    loss.backward()
    ref.backward()
    tparams = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        g = tparams[name].grad.numpy()
        np.testing.assert_allclose(p.grad, g, rtol=tol, atol=tol * np.abs(g).max(), err_msg=name)
    # and one SGD step lands on the same weights
    opt, topt = bp.optim.SGD(ours.parameters(), lr=0.05), torch.optim.SGD(theirs.parameters(), lr=0.05)
    opt.step()
    topt.step()
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.data, tparams[name].detach().numpy(), rtol=tol, atol=tol, err_msg=name)
