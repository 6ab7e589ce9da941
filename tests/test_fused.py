"""backprop.training.fused: a small dense network's step as one numba kernel equals the eager step.

Every test that runs the kernel needs numba (the ``numba`` extra) and is skipped without it; the tests that
check when the kernel is *not* used run anyway.
"""

import itertools
import os
import warnings

import numpy as np
import pytest

import backprop as bp
from _steps import classic_step
from backprop.engine import kernels
from backprop.training import fused
from backprop.training.fused import FusedDenseStep

F = bp.nn.functional
needs_numba = pytest.mark.skipif(not bp.extras.available("numba") or os.environ.get("BACKPROP_NUMBA") == "0",
                                 reason="numba is not installed, or BACKPROP_NUMBA=0 turns the kernels off")


def _net(bias=True, dtype=np.float32, sizes=(5, 7, 6, 4, 3), acts=("relu", "tanh", "sigmoid")):
    """Linear layers with each activation in turn (the last layer without), seeded."""
    bp.manual_seed(0)
    kinds = {"relu": bp.nn.ReLU, "tanh": bp.nn.Tanh, "sigmoid": bp.nn.Sigmoid}
    layers = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(bp.nn.Linear(a, b, bias=bias))
        if i < len(sizes) - 2:
            layers.append(kinds[acts[i % len(acts)]]())
    model = bp.nn.Sequential(*layers)
    for p in model.parameters():
        p.data = p.data.astype(dtype)
    return model


def _data(n, features=5, classes=3, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, features)).astype(dtype), rng.integers(0, classes, n)


def _runner(jitted):
    return next(e for entries in jitted.plans.values() for e in entries).plan


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n", [1, 6])
def test_the_kernel_equals_the_eager_step(dtype, bias, n):
    """Weights, gradients, losses and logits of four steps (lr changed after two), within rounding."""
    models = [_net(bias, dtype), _net(bias, dtype)]
    opts = [bp.optim.SGD(m.parameters(), lr=0.5) for m in models]
    eager = classic_step(models[0], opts[0], "out, loss")
    jitted = bp.jit(classic_step(models[1], opts[1], "out, loss"), fallback="error")
    tol = {"rtol": 2e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-13}
    for k in range(4):
        if k == 2:
            opts[0].param_groups[0]["lr"] = opts[1].param_groups[0]["lr"] = 0.1
        x, y = _data(n, dtype=dtype, seed=k)
        (o0, l0), (o1, l1) = eager(x, y), jitted(x, y)
        assert l1.dtype == dtype and l1.shape == () and o1.shape == (n, 3)
        np.testing.assert_allclose(l1.data, l0.data, **tol)
        np.testing.assert_allclose(o1.data, o0.data, **tol)
        for p0, p1 in zip(models[0].parameters(), models[1].parameters()):
            np.testing.assert_allclose(p1.data, p0.data, **tol)
            np.testing.assert_allclose(p1.grad, p0.grad, **tol)
            assert p1.data.dtype == dtype and p1.grad.dtype == dtype
    assert isinstance(_runner(jitted), FusedDenseStep) and jitted.captures == 1


@needs_numba
@pytest.mark.parametrize("n", [8, 40, 80])
def test_products_in_row_chunks_and_transposed_equal_the_eager_step(n):
    """A 784 -> 256 layer at 8 rows: its forward and input-gradient products are made 4 rows a call (blas.py's
    rule for OpenBLAS's small-matrix kernel); at 40 rows the forward transposed in one call; at 80 as x W^T
    in one call. All within rounding."""
    from backprop.engine.blas import _rows_per_call
    sizes = (64, 784, 256, 10)
    assert _rows_per_call(8, 784 * 256, 256) and _rows_per_call(8, 784 * 256) and not _rows_per_call(40, 784 * 256)
    models = [_net(sizes=sizes), _net(sizes=sizes)]
    opts = [bp.optim.SGD(m.parameters(), lr=0.05) for m in models]
    eager = classic_step(models[0], opts[0], "out, loss")
    jitted = bp.jit(classic_step(models[1], opts[1], "out, loss"), fallback="error")
    for k in range(3):
        x, y = _data(n, features=64, classes=10, seed=k)
        (o0, l0), (o1, l1) = eager(x, y), jitted(x, y)
        np.testing.assert_allclose(o1.data, o0.data, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(l1.data, l0.data, rtol=1e-5)
    for p0, p1 in zip(models[0].parameters(), models[1].parameters()):
        np.testing.assert_allclose(p1.data, p0.data, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(p1.grad, p0.grad, rtol=1e-3, atol=1e-6)
    assert isinstance(_runner(jitted), FusedDenseStep)


@needs_numba
def test_the_benchmarks_4_8_3_step_is_fused_and_learns():
    model = bp.nn.Sequential(bp.nn.Linear(4, 8), bp.nn.ReLU(), bp.nn.Linear(8, 3))
    opt = bp.optim.SGD(model.parameters(), lr=0.1)
    step = bp.jit(classic_step(model, opt))
    x, y = _data(12, features=4)
    losses = [float(step(x[i:i + 1], y[i:i + 1]).data) for _ in range(30) for i in range(12)]
    assert isinstance(_runner(step), FusedDenseStep)
    assert np.mean(losses[-12:]) < np.mean(losses[:12])
    assert "def forward(" in step.source() and "def backward(" in step.source()  # what a learner reads


@needs_numba
def test_a_group_that_stops_being_plain_sgd_gets_its_optimizers_update():
    """Momentum switched on after capture: the kernels form the gradients and leave the update to the
    optimizer (its momentum buffers appear), equal to the eager steps within rounding."""
    models = [_net(), _net()]
    opts = [bp.optim.SGD(m.parameters(), lr=0.3) for m in models]
    eager, jitted = classic_step(models[0], opts[0]), bp.jit(classic_step(models[1], opts[1]), fallback="error")
    x, y = _data(4)
    for k in range(4):
        if k == 1:
            opts[0].param_groups[0]["momentum"] = opts[1].param_groups[0]["momentum"] = 0.9
        eager(x, y), jitted(x, y)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        np.testing.assert_allclose(b.data, a.data, rtol=2e-5, atol=1e-6)
        assert "momentum_buffer" in opts[1].state[b]
    assert isinstance(_runner(jitted), FusedDenseStep)


@needs_numba
def test_a_target_out_of_range_gives_the_ops_error_and_changes_nothing():
    model = _net()
    opt = bp.optim.SGD(model.parameters(), lr=0.3)
    step = bp.jit(classic_step(model, opt))
    x, y = _data(4)
    step(x, y)
    step(x, y)
    before = [p.data.copy() for p in model.parameters()]
    with pytest.raises((ValueError, IndexError)):
        step(x, np.array([0, 1, 7, 2]))
    for b, p in zip(before, model.parameters()):
        np.testing.assert_array_equal(b, p.data)


def test_not_fused_without_numba_or_turned_off(monkeypatch):
    x, y = _data(8)
    monkeypatch.setenv("BACKPROP_NUMBA", "0")
    model = _net()
    step = bp.jit(classic_step(model, bp.optim.SGD(model.parameters(), lr=0.1)))
    step(x, y)
    assert not isinstance(_runner(step), FusedDenseStep)
    monkeypatch.setenv("BACKPROP_NUMBA", "1")
    monkeypatch.setattr(kernels, "available", lambda name: False)  # the one gate: engine.kernels.enabled
    kernels._ready.cache_clear()
    try:
        model = _net()
        step = bp.jit(classic_step(model, bp.optim.SGD(model.parameters(), lr=0.1)))
        step(x, y)
        assert not isinstance(_runner(step), FusedDenseStep)
    finally:
        kernels._ready.cache_clear()  # NOTE: answered again once the patch is undone


def _counting(monkeypatch):
    calls = []
    backward = FusedDenseStep._backward
    monkeypatch.setattr(FusedDenseStep, "_backward", lambda self, seed: (calls.append(seed), backward(self, seed))[1])
    return calls


@needs_numba
@pytest.mark.parametrize("options", [{}, {"optimizer": "momentum"}, {"clip_norm": 0.5}],
                         ids=["plain", "momentum", "clip_norm"])
def test_fit_runs_the_kernels_and_equals_the_eager_fit(monkeypatch, options):
    """fit (plain SGD: the update in the kernel; momentum or clipping: the optimizer's, on the kernels'
    gradients), every step including the partial last batch, against fit(jit=False), within rounding."""
    calls = _counting(monkeypatch)
    x, y = _data(70)
    runs = []
    for jit in (False, True):
        model = _net()
        kw = dict(options)
        if kw.pop("optimizer", None):
            kw["optimizer"] = bp.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
        h = bp.fit(model, x, y, epochs=3, batch_size=16, verbose=0, seed=2, jit=jit, lr=0.2, **kw)
        runs.append((model, h))
    assert len(calls) == 15  # NOTE: 5 batches (the last of 6) x 3 epochs: every step, the captured ones too
    (m0, h0), (m1, h1) = runs
    np.testing.assert_allclose(h1.history["loss"], h0.history["loss"], rtol=1e-5)
    for a, b in zip(m0.parameters(), m1.parameters()):
        np.testing.assert_allclose(b.data, a.data, rtol=2e-5, atol=2e-6)


@needs_numba
def test_fit_resumed_with_the_kernels_is_bit_identical(tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    x, y = _data(64)
    full = _net()
    h_full = bp.fit(full, x, y, epochs=3, batch_size=16, verbose=0, seed=1)
    ck = tmp_path / "run.ckpt"
    bp.fit(_net(), x, y, epochs=1, batch_size=16, verbose=0, seed=1, checkpoint=str(ck))
    resumed = _net()
    h_resumed = bp.fit(resumed, x, y, epochs=3, batch_size=16, verbose=0, seed=1, resume_from=str(ck))
    assert len(calls) == 12 + 4 + 8
    assert h_resumed.history["loss"] == h_full.history["loss"]
    for a, b in zip(full.parameters(), resumed.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


@needs_numba
def test_a_gradient_that_may_overflow_moves_nothing_and_is_formed():
    """fit's check_finite in the kernel: with n |g| |a| beyond float32's range nothing is updated and the
    gradients are formed for the step's own exact check."""
    model = _net()
    opt = bp.optim.SGD(model.parameters(), lr=0.1)
    step = bp.jit(classic_step(model, opt))
    x, y = _data(4)
    step(x, y)
    runner = _runner(step)
    runner.bind(opt, check_finite=True)
    runner.zero = None  # NOTE: as fit drives it: forward (segment 0), then backward seeded (segment 1)
    before = [p.data.copy() for p in model.parameters()]
    runner.run(0, x, y)
    runner.run(1, np.float32(3e38))
    assert not runner.checked and not runner.complete
    for b, p in zip(before, model.parameters()):
        np.testing.assert_array_equal(b, p.data)
        assert type(bp.nn.module.raw_grad(p)) is np.ndarray
    runner.run(0, x, y)
    runner.run(1, np.float32(1.0))
    assert runner.checked and runner.complete
    assert any(not np.array_equal(b, p.data) for b, p in zip(before, model.parameters()))
    opt.param_groups[0]["momentum"] = 0.9  # checked, formed, left to the optimizer: no second exact check
    moved = [p.data.copy() for p in model.parameters()]
    runner.run(0, x, y)
    runner.run(1, np.float32(1.0))
    assert runner.checked and not runner.complete
    for b, p in zip(moved, model.parameters()):
        np.testing.assert_array_equal(b, p.data)
        assert type(bp.nn.module.raw_grad(p)) is np.ndarray


def test_steps_other_than_the_classic_one_are_not_matched():
    """Adam, label smoothing, a dropout layer, a loss read with .item(): each keeps the replayed plan."""
    x, y = _data(4)

    def variants():
        model = _net(sizes=(5, 6, 3))
        yield bp.jit(classic_step(model, bp.optim.Adam(model.parameters(), lr=0.1)))
        model = _net(sizes=(5, 6, 3))
        opt = bp.optim.SGD(model.parameters(), lr=0.1)

        def smoothed(xb, yb):
            opt.zero_grad()
            loss = F.cross_entropy(model(bp.Tensor(xb)), yb, label_smoothing=0.1)
            loss.backward()
            opt.step()
            return loss
        yield bp.jit(smoothed)
        bp.manual_seed(0)
        model = bp.nn.Sequential(bp.nn.Linear(5, 6), bp.nn.Dropout(0.5), bp.nn.Linear(6, 3))
        yield bp.jit(classic_step(model, bp.optim.SGD(model.parameters(), lr=0.1)))

    for step in variants():
        step(x, y)
        step(x, y)
        assert not isinstance(_runner(step), FusedDenseStep)


@needs_numba
def test_the_next_fit_on_the_model_reuses_its_compiled_step(monkeypatch):
    """A second fit (a new optimizer, another learning rate) binds the kept step instead of capturing again,
    and equals the eager runs; a parameter replaced by a new one makes it capture again."""
    import sys

    jit_module = sys.modules["backprop.training.jit"]  # NOTE: backprop.training.jit is also the function
    captures = []
    real = jit_module.Capture
    monkeypatch.setattr(jit_module, "Capture", lambda: (captures.append(1), real())[1])
    x, y = _data(64)
    runs = []
    for jit in (False, True):
        model = _net()
        bp.fit(model, x, y, epochs=1, batch_size=16, verbose=0, seed=1, jit=jit, lr=0.3)
        bp.fit(model, x, y, epochs=1, batch_size=16, verbose=0, seed=2, jit=jit, lr=0.05)
        runs.append(model)
    assert len(captures) == 1
    for a, b in zip(runs[0].parameters(), runs[1].parameters()):
        np.testing.assert_allclose(b.data, a.data, rtol=2e-5, atol=1e-6)
    runs[1][0].weight = bp.nn.Parameter(runs[1][0].weight.data.copy())
    bp.fit(runs[1], x, y, epochs=1, batch_size=16, verbose=0, seed=2, lr=0.05)
    assert len(captures) == 2


@needs_numba
def test_a_wide_tanh_layer_runs_the_replayed_plan():
    """numba's tanh is scalar: a step with more tanh/sigmoid values than MAX_CURVED keeps NumPy's, in the plan."""
    sizes, n = (20, 64, 3), 32
    assert n * 64 > fused.MAX_CURVED
    models = [_net(sizes=sizes, acts=("tanh",)), _net(sizes=sizes, acts=("tanh",))]
    opts = [bp.optim.SGD(m.parameters(), lr=0.1) for m in models]
    eager, jitted = classic_step(models[0], opts[0]), bp.jit(classic_step(models[1], opts[1]), fallback="error")
    x, y = _data(n, features=20)
    for _ in range(3):
        eager(x, y), jitted(x, y)
    runner = _runner(jitted)
    assert isinstance(runner, FusedDenseStep) and runner.forward_kernel is None  # recognised, never run
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        np.testing.assert_allclose(b.data, a.data, rtol=1e-5, atol=1e-7)


def test_numba_is_imported_only_for_a_step_it_can_run():
    """numba and llvmlite weigh ~60 MB of memory: a convolutional step too small for the compiled convolution
    (tests/test_kernels.py) and not a dense step never imports them (a fresh interpreter: this one may have
    imported numba already)."""
    import subprocess
    import sys

    code = """
import sys, numpy as np, backprop as bp
model = bp.nn.Sequential(bp.nn.Conv2d(1, 2, 3), bp.nn.ReLU(), bp.nn.Flatten(), bp.nn.Linear(8, 3))
x, y = np.zeros((4, 1, 4, 4), np.float32), np.array([0, 1, 2, 0])
bp.fit(model, x, y, epochs=1, batch_size=2, verbose=0)
print("numba" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@needs_numba
@pytest.mark.parametrize("writable", [True, False])
def test_the_kernels_are_kept_in_the_cache_folder_where_it_can_be_written(tmp_path, writable):
    """The generated kernels go to $BACKPROP_CACHE/kernels with numba's machine code beside them (a later
    process loads them instead of compiling); where that folder cannot be made, they compile in memory."""
    import subprocess
    import sys

    code = """
import numpy as np, backprop as bp
bp.manual_seed(0)
model = bp.nn.Sequential(bp.nn.Linear(4, 8), bp.nn.ReLU(), bp.nn.Linear(8, 3))
x, y = np.random.default_rng(0).random((32, 4)).astype(np.float32), np.arange(32) % 3
h = bp.fit(model, x, y, epochs=3, batch_size=8, verbose=0, seed=0)
print(repr(h.history["loss"][-1]))
"""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    root = tmp_path / "cache" if writable else blocker  # NOTE: a file where the folder should be
    env = {**os.environ, "BACKPROP_CACHE": str(root)}
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
            for _ in range(2)]
    assert runs[0].stdout == runs[1].stdout  # the cached kernels compute what the compiled ones did
    kernels = root / "kernels"
    if writable:
        assert len(list(kernels.glob("backprop_kernels_*.py"))) == 1
        assert list((kernels / "__pycache__").glob("*.nbc"))  # numba's machine code
    else:
        assert not kernels.exists()


@needs_numba
def test_kernels_that_fail_to_compile_leave_the_replayed_plan_with_one_warning(monkeypatch):
    def fails(source, dtype):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(fused, "_compile", fails)
    models = [_net(), _net()]
    opts = [bp.optim.SGD(m.parameters(), lr=0.2) for m in models]
    eager, jitted = classic_step(models[0], opts[0]), bp.jit(classic_step(models[1], opts[1]))
    x, y = _data(6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            eager(x, y), jitted(x, y)
    messages = [str(w.message) for w in caught if "could not be compiled" in str(w.message)]
    assert len(messages) == 1 and "replayed plan runs instead" in messages[0]
    assert _runner(jitted).broken
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        np.testing.assert_allclose(b.data, a.data, rtol=1e-6, atol=1e-7)
