"""``nn.functional.pad`` and the padding layers: PyTorch's semantics, errors and gradients.

The op registry (``backprop.nn.padding.Pad``'s cases) already gives every mode its float64 gradient check,
its PyTorch comparison and its captured-step replay; the layer registry gives every padding layer its
save/load, ONNX and PyTorch checks. Here: the index rules against an independent NumPy reference (no torch
needed), random shapes and amounts against PyTorch, and the errors.
"""

from __future__ import annotations

import numpy as np
import pytest

import backprop as bp
from backprop import nn
from backprop.nn.functional import pad

MODES = ("constant", "reflect", "replicate", "circular")


# ------------------------------------------------------------------------------- a NumPy reference
def _index(mode: str, n: int, left: int, right: int) -> np.ndarray | None:
    """Which input position each output position reads along one axis (None: constant's fill)."""
    if mode == "circular":  # crop, then wrap the rest around
        c0, m = max(-left, 0), n + min(left, 0) + min(right, 0)
        k = np.arange(-max(left, 0), m + max(right, 0))
        return c0 + np.mod(k, m) if m else k
    j = np.arange(-left, n + right)
    if mode == "replicate":
        return np.clip(j, 0, n - 1)
    if mode == "reflect":
        j = np.abs(j)
        return np.where(j > n - 1, 2 * (n - 1) - j, j)
    return j  # constant: positions outside [0, n) are the fill


def _reference(x: np.ndarray, p: tuple[int, ...], mode: str, value: float, g: np.ndarray):
    """Forward by one gather over all padded axes; backward by np.add.at on the flat indices."""
    k = len(p) // 2
    if k == 0:
        return x.copy(), g.copy()
    lead = x.ndim - k
    idx = [_index(mode, x.shape[lead + a], p[2 * (k - 1 - a)], p[2 * (k - 1 - a) + 1]) for a in range(k)]
    mesh = np.ix_(*idx)
    inside = np.ones([len(i) for i in idx], dtype=bool)
    if mode == "constant":
        for a, m in enumerate(mesh):
            inside = inside & (m >= 0) & (m < x.shape[lead + a])
        mesh = tuple(np.clip(m, 0, x.shape[lead + a] - 1) for a, m in enumerate(mesh))
    out = np.where(inside, x[(Ellipsis, *mesh)], value)
    dx = np.zeros_like(x)
    if g.size:
        flat = np.ravel_multi_index(tuple(np.broadcast_to(m, inside.shape)[inside] for m in mesh), x.shape[lead:])
        d2 = dx.reshape(int(np.prod(x.shape[:lead])), -1)
        np.add.at(d2, (slice(None), flat), g.reshape(d2.shape[0], -1)[:, inside.ravel()])
    return out, dx


def _random_config(rng: np.random.Generator):
    mode = str(rng.choice(MODES))
    if mode == "constant":
        ndim = int(rng.integers(1, 5))
        k = int(rng.integers(0, ndim + 1))
    else:
        k = int(rng.integers(1, 4))
        ndim = k + int(rng.integers(1, 3))
    shape = tuple(int(v) for v in rng.integers(1, 5, size=ndim))
    p = tuple(int(v) for v in rng.integers(-3, 5, size=2 * k))
    return mode, shape, p


def test_every_mode_matches_an_independent_reference():
    """Values and gradients (positions read several times accumulate) against gather + np.add.at."""
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(400):
        mode, shape, p = _random_config(rng)
        x = rng.standard_normal(shape)
        value = 0.5 if mode == "constant" else 0.0
        t = bp.tensor(x, requires_grad=True)
        try:
            y = pad(t, p, mode, value)
        except ValueError:
            continue
        g = rng.standard_normal(y.shape)
        want, want_dx = _reference(x, p, mode, value, g)
        np.testing.assert_array_equal(y.data, want, err_msg=f"{mode} {shape} {p}")
        y.backward(g)
        np.testing.assert_allclose(t.grad, want_dx, rtol=1e-12, atol=1e-12, err_msg=f"{mode} {shape} {p}")
        checked += 1
    assert checked > 150


def test_edges_read_many_times_get_every_gradient():
    x = bp.tensor(np.array([[[1.0, 2.0, 3.0]]]), requires_grad=True)
    pad(x, (10, 4), "replicate").sum().backward()
    assert x.grad.tolist() == [[[11.0, 1.0, 5.0]]]
    x.grad = None
    pad(x, (2, 2), "reflect").sum().backward()  # [3, 2, | 1, 2, 3 | 2, 1]
    assert x.grad.tolist() == [[[2.0, 3.0, 2.0]]]
    x.grad = None
    pad(x, (3, 3), "circular").sum().backward()  # every element read three times
    assert x.grad.tolist() == [[[3.0, 3.0, 3.0]]]


# ------------------------------------------------------------------------------------------- PyTorch
# Where PyTorch is undefined or inconsistent, backprop refuses with a clear error instead:
# - circular padding of more than the (cropped) size: PyTorch returns uninitialised memory or fails on
#   overlapping memory;
# - reflect/replicate leaving an empty dimension: PyTorch refuses it for the last dimension only.
DELIBERATE = ("wrap around at most once", "crops", "leaves nothing")


@pytest.fixture
def torch_one_thread():
    """PyTorch's threaded pad kernels on these tiny inputs take ~1000x longer on a busy machine."""
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(n)


def test_random_shapes_and_amounts_match_torch(torch_one_thread):
    torch = torch_one_thread
    rng = np.random.default_rng(1)
    agreed = refused = 0
    for _ in range(600):
        mode, shape, p = _random_config(rng)
        if rng.random() < 0.2:  # outside the supported shapes too, for the errors
            shape = shape[1:] or (3,)
        x = rng.standard_normal(shape)
        ours_err = theirs_err = None
        try:
            t = bp.tensor(x, requires_grad=True)
            y = pad(t, p, mode)
        except ValueError as e:
            ours_err = e
        try:
            tt = torch.tensor(x, requires_grad=True)
            ref = torch.nn.functional.pad(tt, p, mode=mode)
        except (RuntimeError, NotImplementedError) as e:
            theirs_err = e
        what = f"{mode} {shape} {p}"
        if theirs_err is not None:
            assert ours_err is not None, f"{what}: PyTorch refuses ({theirs_err}), backprop does not"
            refused += 1
            continue
        if ours_err is not None:
            assert any(s in str(ours_err) for s in DELIBERATE), f"{what}: PyTorch accepts, backprop: {ours_err}"
            continue
        np.testing.assert_array_equal(y.data, ref.detach().numpy(), err_msg=what)
        if y.data.size:
            w = rng.standard_normal(y.shape)
            y.backward(w)
            ref.backward(torch.tensor(w))
            np.testing.assert_allclose(t.grad, tt.grad.numpy(), rtol=1e-12, atol=1e-12, err_msg=what)
        agreed += 1
    assert agreed > 150 and refused > 100


def test_float32_and_integer_inputs_keep_their_dtype():
    x = bp.tensor(np.arange(6, dtype=np.float32).reshape(1, 2, 3))
    assert pad(x, (1, 1), "reflect").dtype == np.float32
    ints = pad(np.arange(3), (1, 2), value=7.0)  # arrays are taken too; the fill is cast like the input
    assert ints.dtype == np.arange(3).dtype and ints.tolist() == [7, 0, 1, 2, 7, 7]


def test_the_ways_of_giving_pad():
    x = bp.tensor(np.ones((2, 3)))
    assert pad(x, [1, 1]).shape == pad(x, (np.int64(1), 1)).shape == (2, 5)
    assert pad(x, ()).shape == (2, 3) and pad(bp.tensor(2.0), ()).item() == 2.0
    assert pad(x, (0, 0, 1, -1), value=None).tolist()[0] == [0.0, 0.0, 0.0]
    assert pad(bp.tensor(np.ones((1, 3))), (1, 1), "reflect", value=0.0).shape == (1, 5)  # 0: no value


@pytest.mark.parametrize("shape, p, mode, kwargs, error, match", [
    ((2, 3), (1, 2, 3), "constant", {}, ValueError, r"even number of values; got 3"),
    ((3,), (1, 1, 1, 1), "constant", {}, ValueError, r"pad 2 dimensions, but the input has only 1 .*at most 2 \* ndim"),
    ((2, 3), (1, 1), "wrap", {}, ValueError, r"mode must be one of 'constant', 'reflect', 'replicate', 'circular'"),
    ((2, 3), (1.0, 1), "constant", {}, TypeError, r"tuple of ints, got float 1.0 at position 0"),
    ((2, 3), (True, 1), "constant", {}, TypeError, r"got bool"),
    ((2, 3), 1, "constant", {}, TypeError, r"pad must be a tuple of ints"),
    ((2, 4), (1, 1), "reflect", {"value": 1.0}, ValueError, r"mode 'reflect' takes no fill value"),
    ((4,), (1, 1), "reflect", {}, ValueError,
     r"pads the last 1 dimension of a batched or unbatched input, so it needs a 2-D or 3-D input; got a 1-D input"),
    ((3, 4), (1, 1, 1, 1), "replicate", {}, ValueError, r"last 2 dimensions .* needs a 3-D or 4-D input"),
    ((1, 2, 2, 2, 2, 2), (1,) * 8, "circular", {}, ValueError,
     r"pads the last 1, 2 or 3 dimensions \(2, 4 or 6 values\), got 8 values"),
    ((2, 3), (), "reflect", {}, ValueError, r"got 0 values"),
    ((2, 3, 4), (4, 0), "reflect", {}, ValueError,
     r"reflect padding must be smaller than the dimension it pads: padding \(4, 0\) of dimension 2 \(size 4"),
    ((2, 3, 4), (5, 0), "circular", {}, ValueError, r"wrap around at most once"),
    ((2, 3, 4), (-2, 3), "circular", {}, ValueError, r"after cropping: 2"),
    ((2, 3), (-4, 2), "constant", {}, ValueError, r"crops 4 elements, more than the 3 there are"),
    ((1, 4), (-3, -1), "replicate", {}, ValueError, r"leaves nothing"),
    ((1, 4), (-9, 2), "reflect", {}, ValueError, r"negative size -3"),
    ((2, 0, 4), (1, 1), "reflect", {}, ValueError, r"non-empty dimensions \(only the batch dimension may be 0\)"),
])
def test_errors_say_what_is_wrong(shape, p, mode, kwargs, error, match):
    with pytest.raises(error, match=match):
        pad(bp.tensor(np.ones(shape)), p, mode, **kwargs)


def test_an_empty_batch_pads():
    assert pad(bp.tensor(np.ones((0, 2, 3))), (1, 1), "reflect").shape == (0, 2, 5)


# -------------------------------------------------------------------------------------------- layers
def test_layers_take_pytorchs_arguments_and_print_alike():
    torch = pytest.importorskip("torch")
    for ours, theirs in [
        (nn.ZeroPad2d(1), torch.nn.ZeroPad2d(1)),
        (nn.ZeroPad2d((1, 2, 3, 4)), torch.nn.ZeroPad2d((1, 2, 3, 4))),
        (nn.ConstantPad2d((1, -1, 2, 0), 1.5), torch.nn.ConstantPad2d((1, -1, 2, 0), 1.5)),
        (nn.ConstantPad1d(2, 3.0), torch.nn.ConstantPad1d(2, 3.0)),
        (nn.ReflectionPad1d(2), torch.nn.ReflectionPad1d(2)),
        (nn.ReplicationPad3d((1, 2, 0, 1, 2, 0)), torch.nn.ReplicationPad3d((1, 2, 0, 1, 2, 0))),
    ]:
        assert repr(ours) == repr(theirs)
        assert ours.padding == theirs.padding


def test_layer_arguments_are_checked():
    with pytest.raises(ValueError, match=r"ReflectionPad2d: padding must be an int or a tuple of 4 ints"):
        nn.ReflectionPad2d((1, 2))
    with pytest.raises(ValueError, match=r"ZeroPad1d: padding must be"):
        nn.ZeroPad1d(1.5)
    with pytest.raises(ValueError, match=r"reflect padding must be smaller"):
        nn.ReflectionPad1d(3)(bp.tensor(np.ones((1, 2, 3))))


def test_a_padded_cnn_trains_like_torch(torch_one_thread):
    """ReflectionPad2d + Conv2d, the usual pairing, forward and backward against PyTorch."""
    torch = torch_one_thread
    bp.manual_seed(0)
    ours = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(2, 3, 3), nn.ReplicationPad2d((0, 1, 1, 0)),
                         nn.ReLU(), nn.ConstantPad2d(1, -0.25)).double()
    theirs = torch.nn.Sequential(torch.nn.ReflectionPad2d(1), torch.nn.Conv2d(2, 3, 3),
                                 torch.nn.ReplicationPad2d((0, 1, 1, 0)), torch.nn.ReLU(),
                                 torch.nn.ConstantPad2d(1, -0.25)).double()
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 6))
    a, b = bp.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    out, ref = ours(a), theirs(b)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=1e-12, atol=1e-12)
    (out * out).sum().backward()
    (ref * ref).sum().backward()
    np.testing.assert_allclose(a.grad, b.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours[1].weight.grad, theirs[1].weight.grad.numpy(), rtol=1e-10)
