"""Every registered primitive, checked from its registration: finite differences and PyTorch."""

import numpy as np
import pytest

import backprop as bp
import backprop.distributed.sync_batchnorm  # registers SyncBatchNormTrain (imports without mpi4py)
from backprop.engine.registry import REGISTRY, all_cases
from backprop.engine.tensor import Function


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


CASES = [pytest.param(cls, case, id=f"{cls.__name__}-{case.label}") for cls, case in all_cases()]


def test_every_function_is_registered():
    """A primitive that is not registered would escape the gradient checks below."""
    import backprop.nn  # noqa: F401  (its fused primitives register on import)

    concrete = [c for c in _subclasses(Function) if not c.__name__.startswith("_") and c.__module__.startswith("backprop")]
    missing = [c.__name__ for c in concrete if c not in REGISTRY]
    assert not missing, f"Function subclasses without registered test cases: {missing}"
    assert len(REGISTRY) >= 30


@pytest.mark.parametrize("cls, case", CASES)
def test_gradcheck(cls, case):
    assert bp.gradcheck(case.fn, case.inputs, atol=case.atol, wrt=case.wrt)


@pytest.mark.parametrize("cls, case", CASES)
def test_matches_torch(cls, case):
    torch = pytest.importorskip("torch")
    if case.torch_fn is None:
        pytest.skip("no PyTorch equivalent")
    wrt = range(len(case.inputs)) if case.wrt is None else case.wrt
    ours = [bp.tensor(x, requires_grad=i in wrt) for i, x in enumerate(case.inputs)]
    theirs = [torch.tensor(x, requires_grad=i in wrt) for i, x in enumerate(case.inputs)]
    out, ref = case.fn(*ours), case.torch_fn(torch, *theirs)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=1e-6, atol=1e-12)
    if not wrt:
        return
    w = np.random.default_rng(1).uniform(0.5, 1.5, size=out.shape)
    out.backward(w)
    ref.backward(torch.tensor(w))
    for i in wrt:
        np.testing.assert_allclose(ours[i].grad, theirs[i].grad.numpy(), rtol=1e-6, atol=1e-12,
                                   err_msg=f"gradient of input {i}")
