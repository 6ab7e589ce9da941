"""Hardtanh and Softplus: PyTorch's values and gradients, stable for any input, and their ONNX export.

(Their save/load round trip and their check against onnxruntime and PyTorch on their registered examples
run with every other layer's in tests/test_layer_registry.py.)
"""

import numpy as np
import pytest

import backprop as bp
from backprop import nn

EXTREMES = [-1e30, -1e4, -100.0, -30.0, -20.5, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.0, 2.0, 19.5, 20.0, 20.5,
            30.0, 100.0, 1e4, 1e30]
HARDTANH = [(-1.0, 1.0), (-0.5, 2.0), (0.0, 6.0), (-3.0, -2.0)]
SOFTPLUS = [(1.0, 20.0), (2.0, 20.0), (0.5, 1.0), (3.0, -1.0), (-1.0, 20.0), (1.0, 0.0)]


def _inputs(dtype, bounds=()):
    rng = np.random.default_rng(0)
    return np.concatenate([EXTREMES, bounds, 3 * rng.standard_normal(40)]).astype(dtype)


def _compare_with_torch(ours, theirs, x, rtol):
    torch = pytest.importorskip("torch")
    a = bp.tensor(x, requires_grad=True)
    b = torch.tensor(x, requires_grad=True)
    out, ref = ours(a), theirs(b)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=rtol, atol=1e-30)
    w = np.random.default_rng(1).uniform(0.5, 1.5, size=x.shape).astype(x.dtype)
    out.backward(w)
    ref.backward(torch.tensor(w))
    np.testing.assert_allclose(a.grad, b.grad.numpy(), rtol=rtol, atol=1e-30)
    assert out.dtype == x.dtype and a.grad.dtype == x.dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("min_val, max_val", HARDTANH)
def test_hardtanh_matches_torch(min_val, max_val, dtype):
    torch = pytest.importorskip("torch")
    x = _inputs(dtype, bounds=(min_val, max_val))  # at the bounds themselves the gradient is 0, as PyTorch's
    _compare_with_torch(nn.Hardtanh(min_val, max_val), torch.nn.Hardtanh(min_val, max_val), x, rtol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("beta, threshold", SOFTPLUS)
def test_softplus_matches_torch(beta, threshold, dtype):
    torch = pytest.importorskip("torch")
    x = _inputs(dtype, bounds=(threshold / beta,))
    # NOTE: log(1 + e^z) for z << 0 is computed as logsumexp(0, z): 1 + e^z rounds to 1 below z = -17
    # (float32), so there the value is 0 instead of torch's log1p(e^z) < 4e-8: compared with an absolute
    # tolerance, the relative one for the rest
    ours, theirs = nn.Softplus(beta, threshold), torch.nn.Softplus(beta, threshold)
    a, b = bp.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    out, ref = ours(a), theirs(b)
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=8 * eps, atol=2 * eps / abs(beta))
    out.backward(np.ones_like(x))
    ref.backward(torch.ones_like(b))
    np.testing.assert_allclose(a.grad, b.grad.numpy(), rtol=8 * eps, atol=2 * eps)
    assert out.dtype == x.dtype and np.isfinite(a.grad).all()


def test_softplus_is_stable_for_any_input():
    x = bp.tensor(np.array([-np.inf, -1e300, -1e4, 0.0, 1e4, 1e300, np.inf]), requires_grad=True)
    y = nn.Softplus()(x)
    y.sum().backward()
    np.testing.assert_array_equal(y.data, [0.0, 0.0, 0.0, np.log(2.0), 1e4, 1e300, np.inf])
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0])
    y = nn.Softplus(beta=1e-3, threshold=5.0)(bp.tensor(np.array([-1e6, 1e6], dtype=np.float32)))
    assert np.isfinite(y.data).all() and y.data[1] == 1e6


@pytest.mark.parametrize("layer", [nn.Hardtanh(), nn.Hardtanh(-0.3, 0.8), nn.Softplus(), nn.Softplus(2.0, 1.0),
                                   nn.Softplus(-0.7, 3.0)], ids=repr)
def test_gradcheck(layer):
    rng = np.random.default_rng(5)
    x = rng.uniform(-3, 3, size=(4, 5))
    if isinstance(layer, nn.Hardtanh):  # finite differences need to stay on one side of the kinks
        x = x[(np.abs(x - layer.min_val) > 0.05) & (np.abs(x - layer.max_val) > 0.05)]
    else:
        x = x[np.abs(layer.beta * x - layer.threshold) > 0.05]
    assert bp.gradcheck(layer, [x])


def test_arguments_and_repr():
    assert repr(nn.Hardtanh(-2, 3)) == "Hardtanh(min_val=-2.0, max_val=3.0)"
    assert repr(nn.Softplus()) == "Softplus(beta=1.0, threshold=20.0)"
    with pytest.raises(ValueError, match="max_val .* must be greater than min_val"):
        nn.Hardtanh(1.0, 1.0)
    with pytest.raises(ValueError, match="min_val must be a finite number"):
        nn.Hardtanh(-np.inf, 1.0)
    with pytest.raises(ValueError, match="beta must not be 0"):
        nn.Softplus(beta=0)
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        nn.Softplus(threshold="20")
    net = nn.Sequential(nn.Linear(3, 4), nn.Softplus(), nn.Hardtanh())
    assert "-> 4 features" in repr(net).splitlines()[2] and "-> 4 features" in repr(net).splitlines()[3]


# --------------------------------------------------------------------------------------------- ONNX
def _export_and_run(model, x, tmp_path, **kw):
    """The exported graph's operators and its output on x: by onnxruntime, or by onnx's reference evaluator
    where onnxruntime has no kernel (float64 Softplus)."""
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    import backprop.onnx as bonnx

    path = tmp_path / "m.onnx"
    if x.dtype == np.float64:  # NOTE: onnxruntime 1.16-1.23 has no float64 Softplus: export warns, checks less
        with pytest.warns(RuntimeWarning, match="no kernel"):
            proto = bonnx.export(model, path, x, **kw)
        (got,) = ReferenceEvaluator(onnx.load(str(path))).run(None, {"input": x})
    else:
        ort = pytest.importorskip("onnxruntime")
        proto = bonnx.export(model, path, x, **kw)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (got,) = sess.run(None, {"input": x})
    with bp.no_grad():
        want = model(bp.tensor(x)).data
    return [n.op_type for n in proto.graph.node], got, want


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("beta, threshold", SOFTPLUS)
def test_softplus_onnx_for_large_inputs(beta, threshold, dtype, tmp_path):
    x = np.array([[-1e4, -100.0, -20.0, -1.0, 0.0, 0.3, 1.0, threshold / beta, 20.0, 100.0, 1e4]], dtype=dtype)
    identity = nn.Linear(x.shape[1], x.shape[1], bias=False).to(dtype)  # gives the model its dtype
    identity.weight.data[...] = np.eye(x.shape[1])
    ops, got, want = _export_and_run(nn.Sequential(identity, nn.Softplus(beta, threshold)), x, tmp_path)
    np.testing.assert_allclose(got, want, rtol=4 * np.finfo(dtype).eps, atol=2 * np.finfo(dtype).eps)
    assert got.dtype == dtype and "Softplus" in ops and ("Mul" in ops) == (beta != 1.0)
    # the threshold is written where it can change a value of this dtype (float32 at 20 it cannot)
    assert ("Where" in ops) == (dtype == np.float64 or threshold < 20.0)


@pytest.mark.parametrize("min_val, max_val", HARDTANH)
def test_hardtanh_onnx_is_clip(min_val, max_val, tmp_path):
    x = _inputs(np.float32, bounds=(min_val, max_val))[None]
    ops, got, want = _export_and_run(nn.Sequential(nn.Linear(x.shape[1], 7), nn.Hardtanh(min_val, max_val)), x,
                                     tmp_path)
    assert ops == ["Gemm", "Clip"]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
