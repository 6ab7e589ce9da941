"""The captured step (``bp.jit``, ``fit(jit=True)``) computes what the eager step computes.

Bit-identical wherever the order of floating-point operations is the same (every op, every optimizer
but plain SGD, resume); within float32 rounding where plain SGD's update is folded into the
weight-gradient product (one rounding less).
"""

import math
import warnings

import numpy as np
import pytest

import backprop as bp
import backprop.distributed.sync_batchnorm
from _steps import classic_step
from backprop.engine.capture import CaptureError
from backprop.engine.registry import all_cases
from backprop.nn.module import LazyGrad, raw_grad
from backprop.training.jit import CapturedStep

# NOTE: a step that falls back to eager warns (RuntimeWarning): none of these should, unless a test says so
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


@pytest.fixture(autouse=True)
def _replayed_plans(monkeypatch):
    """These tests are about the replayed plan: with numba installed, bp.jit runs a small dense network's
    step as one compiled kernel instead (within rounding, not to the bit), tested in tests/test_fused.py."""
    monkeypatch.setenv("BACKPROP_NUMBA", "0")


CASES = [pytest.param(cls, case, id=f"{cls.__name__}-{case.label}") for cls, case in all_cases()]
F = bp.nn.functional


def _eager(case, arrays, wrt, w):
    leaves = [bp.tensor(a, requires_grad=i in wrt) for i, a in enumerate(arrays)]
    out = case.fn(*leaves)
    if wrt:
        (out * bp.Tensor(w)).sum().backward()
    return out.data, [t.grad for t in leaves]


@pytest.mark.parametrize("cls, case", CASES)
def test_every_op_replays_as_it_ran(cls, case):
    """Generated from the op registry: a captured forward and backward of each case, replayed on new values."""
    if cls.__name__ == "Dropout":
        pytest.skip("the case makes a new Generator each call (a Python value, fixed at capture); "
                    "dropout's fresh masks are tested below with the global generator")
    wrt = range(len(case.inputs)) if case.wrt is None else case.wrt
    leaves = [bp.tensor(a, requires_grad=i in wrt) for i, a in enumerate(case.inputs)]
    shape = _eager(case, case.inputs, wrt, 1.0)[0].shape

    def step(w):  # NOTE: w has a leading axis of 1, so that no array of the case looks like a batch of w's
        out = case.fn(*leaves)
        if wrt:
            (out * bp.Tensor(w).reshape(shape)).sum().backward()
        return out

    jitted = bp.jit(step, fallback="error")
    rng = np.random.default_rng(1)
    for call in range(3):
        if call:  # new values, same shapes and signs (every op's domain is kept)
            for t in leaves:
                if t.data.dtype.kind == "f":
                    t.data[...] = t.data * rng.uniform(0.9, 1.1, size=t.data.shape)
        w = rng.uniform(0.5, 1.5, size=shape)
        for t in leaves:
            t.grad = None
        ref_out, ref_grads = _eager(case, [t.data.copy() for t in leaves], wrt, w)
        got = jitted(w[None])
        np.testing.assert_array_equal(got.data, ref_out)
        for i, t in enumerate(leaves):
            if i in wrt:
                np.testing.assert_array_equal(t.grad, ref_grads[i], err_msg=f"gradient of input {i}, call {call}")
    assert jitted.captures == 1


# --------------------------------------------------------------------------------------------- models
def _mlp(seed=0, dropout=0.0, bn=False, hidden=352):
    """12 -> 352 -> 3: plain SGD folds the first layer's update (4,224 weights), not the second's (1,056)."""
    bp.manual_seed(seed)
    layers = [bp.nn.Linear(12, hidden)]
    if bn:
        layers.append(bp.nn.BatchNorm1d(hidden))
    layers += [bp.nn.ReLU()]
    if dropout:
        layers.append(bp.nn.Dropout(dropout))
    layers += [bp.nn.Linear(hidden, 3)]
    return bp.nn.Sequential(*layers)


def _cnn(seed=0):
    bp.manual_seed(seed)
    return bp.nn.Sequential(
        bp.nn.Conv2d(1, 4, 3, padding=1), bp.nn.BatchNorm2d(4), bp.nn.ReLU(), bp.nn.MaxPool2d(2),
        bp.nn.Dropout(0.25), bp.nn.Flatten(), bp.nn.Linear(4 * 4 * 4, 10), bp.nn.ReLU(), bp.nn.Linear(10, 3))


def _data(n=50, shape=(12,), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    return x, rng.integers(0, 3, n)


def _fit_both(make, x, y, **kw):
    runs = []
    for jit in (False, True):
        model = make()
        h = bp.fit(model, x, y, verbose=0, seed=3, jit=jit, **kw)
        runs.append((model, h))
    return runs


def _assert_same(runs, exact=True):
    (m0, h0), (m1, h1) = runs
    for (name, a), b in zip(m0.state_dict().items(), m1.state_dict().values()):
        if exact:
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=name)
    assert h0.history.keys() == h1.history.keys()
    for k in h0.history:
        if exact:
            assert h0.history[k] == h1.history[k], k
        else:
            np.testing.assert_allclose(h0.history[k], h1.history[k], rtol=1e-4, err_msg=k)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "rmsprop"])
def test_fit_mlp_captured_equals_eager(optimizer):
    """Plain SGD folds its update into the product (float32 rounding); the other optimizers are bit-identical."""
    x, y = _data(53)  # 53 = 3 batches of 16 and a partial one of 5: two shapes captured
    runs = _fit_both(_mlp, x, y, optimizer=optimizer, lr=0.05, epochs=3, batch_size=16)
    _assert_same(runs, exact=optimizer != "sgd")


def test_fit_with_momentum_sgd_is_bit_identical():
    x, y = _data(40)
    opt = lambda params: bp.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True)
    _assert_same(_fit_both(_mlp, x, y, optimizer=opt, epochs=3, batch_size=8))


def test_cnn_with_batch_norm_and_dropout():
    """Conv, batch norm (its running statistics and counter), max-pooling and dropout's fresh masks."""
    x, y = _data(24, (1, 8, 8))
    opt = lambda params: bp.optim.SGD(params, lr=0.05, momentum=0.5)
    runs = _fit_both(_cnn, x, y, optimizer=opt, epochs=2, batch_size=10)
    _assert_same(runs)
    assert int(runs[1][0][1].num_batches_tracked) == 6
    _assert_same(_fit_both(_cnn, x, y, optimizer="sgd", lr=0.05, epochs=2, batch_size=10), exact=False)


LR = bp.optim.lr_scheduler
SCHEDULERS = {  # every schedule of backprop.optim.lr_scheduler: (maker, interval)
    "StepLR": (lambda o: LR.StepLR(o, step_size=1, gamma=0.5), "epoch"),
    "MultiStepLR": (lambda o: LR.MultiStepLR(o, milestones=[1, 3], gamma=0.3), "epoch"),
    "ExponentialLR": (lambda o: LR.ExponentialLR(o, gamma=0.7), "epoch"),
    "LinearLR": (lambda o: LR.LinearLR(o, start_factor=0.2, total_iters=8), "step"),
    "LambdaLR": (lambda o: LR.LambdaLR(o, lambda k: 1.0 / (1 + k)), "step"),
    "CosineAnnealingLR": (lambda o: LR.CosineAnnealingLR(o, T_max=4), "epoch"),
    "OneCycleLR": (lambda o: LR.OneCycleLR(o, max_lr=0.1, total_steps=12), "step"),
    "SequentialLR": (lambda o: LR.SequentialLR(o, [LR.LinearLR(o, start_factor=0.5, total_iters=2),
                                                  LR.ExponentialLR(o, gamma=0.8)], milestones=[2]), "epoch"),
    "ReduceLROnPlateau": (lambda o: LR.ReduceLROnPlateau(o, patience=0), "epoch"),
}


def test_every_scheduler_is_tested():
    made = {cls.__name__ for cls in LR.LRScheduler.__subclasses__()}
    assert made <= set(SCHEDULERS), made - set(SCHEDULERS)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_schedulers_change_the_captured_steps_learning_rate(name):
    """The captured step reads the learning rate every step, whatever changes it, bit-identically."""
    x, y = _data(48)
    scheduler, interval = SCHEDULERS[name]
    opt = lambda params: bp.optim.SGD(params, lr=0.1, momentum=0.9)
    kw = {"scheduler": scheduler, "scheduler_interval": interval}
    if name == "ReduceLROnPlateau":
        kw["validation_data"] = _data(20, seed=5)
    _assert_same(_fit_both(_mlp, x, y, optimizer=opt, epochs=4, batch_size=16, **kw))


def test_plain_sgd_learning_rate_read_every_step():
    """The folded update reads the group's lr at every step: a schedule still applies."""
    x, y = _data(48)
    sched = lambda o: bp.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.1)
    _assert_same(_fit_both(_mlp, x, y, optimizer="sgd", lr=0.5, epochs=3, batch_size=16, scheduler=sched),
                 exact=False)


def test_resume_is_bit_identical(tmp_path):
    """An interrupted captured run resumed from its checkpoint ends where an uninterrupted one does."""
    x, y = _data(40)
    full = _mlp()
    h_full = bp.fit(full, x, y, epochs=4, batch_size=16, seed=1, verbose=0)
    part = _mlp()
    bp.fit(part, x, y, epochs=2, batch_size=16, seed=1, verbose=0, checkpoint=tmp_path / "ck.bp")
    resumed = _mlp(seed=9)
    h = bp.fit(resumed, x, y, epochs=4, batch_size=16, seed=1, verbose=0, resume_from=tmp_path / "ck.bp")
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        np.testing.assert_array_equal(a, b)
    assert h.history["loss"] == h_full.history["loss"]


# --------------------------------------------------------------------------------- bp.jit directly
def test_jit_function_equals_eager_and_honours_lr_changes():
    x, y = _data(64)
    models = [_mlp(), _mlp()]
    opts = [bp.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in models]
    eager = classic_step(models[0], opts[0], "loss, out")
    jitted = bp.jit(classic_step(models[1], opts[1], "loss, out"), fallback="error")
    for i in range(8):
        if i == 4:
            for o in opts:
                o.lr = 0.01  # between steps, by hand
        sl = slice(8 * i, 8 * i + 8)
        (l0, o0), (l1, o1) = eager(x[sl], y[sl]), jitted(x[sl], y[sl])
        np.testing.assert_array_equal(l0.data, l1.data)
        np.testing.assert_array_equal(o0.data, o1.data)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    assert jitted.captures == 1
    assert not l1.requires_grad  # returned tensors are detached


def test_plain_sgd_is_folded_and_close():
    x, y = _data(64)
    models = [_mlp(), _mlp()]
    opts = [bp.optim.SGD(m.parameters(), lr=0.1) for m in models]
    eager = classic_step(models[0], opts[0], "loss, out")
    jitted = bp.jit(classic_step(models[1], opts[1], "loss, out"), fallback="error")
    for i in range(8):
        if i == 4:
            opts[0].lr = opts[1].lr = 0.5
        eager(x[8 * i:8 * i + 8], y[8 * i:8 * i + 8])
        jitted(x[8 * i:8 * i + 8], y[8 * i:8 * i + 8])
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-5, atol=1e-6)
    assert type(raw_grad(models[1][0].weight)) is LazyGrad  # folded: formed only when read
    assert type(raw_grad(models[1][2].weight)) is np.ndarray  # too small to fold (FUSE_MIN_WEIGHTS)
    np.testing.assert_allclose(models[1][0].weight.grad, models[0][0].weight.grad, rtol=1e-4, atol=1e-6)


def test_fit_skips_the_optimizer_step_when_every_update_is_folded():
    """Every Linear large enough to fold: the whole update is made in the backward, ``optimizer.step()`` is not
    called (it has nothing left to do), and the weights equal the eager run's within float32 rounding."""
    x, y = _data(48)
    runs = []
    for jit in (False, True):
        bp.manual_seed(0)
        model = bp.nn.Sequential(bp.nn.Linear(12, 400), bp.nn.ReLU(), bp.nn.Linear(400, 12))
        opt = bp.optim.SGD(model.parameters(), lr=0.1)
        calls = []
        step = opt.step
        opt.step = lambda *a, step=step, calls=calls, **k: (calls.append(1), step(*a, **k))[1]
        h = bp.fit(model, x, y, optimizer=opt, epochs=2, batch_size=16, verbose=0, seed=1, jit=jit)
        runs.append((model, h, len(calls)))
    (eager, he, n_eager), (captured, hc, n_captured) = runs
    assert n_eager == 6 and n_captured == 1  # NOTE: only the step that captured ran eagerly
    for a, b in zip(eager.parameters(), captured.parameters()):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(he.history["loss"], hc.history["loss"], rtol=1e-5)
    assert all(type(raw_grad(p)) is LazyGrad for p in captured.parameters())


def test_a_second_capture_of_the_same_step_reuses_its_compiled_code():
    """The next ``fit`` on the same model captures again (a new optimizer) and generates the same source:
    compiled once, and each plan is generated once however many times it is specialised."""
    from backprop.engine import capture

    x, y = _data(32)
    model = _mlp()
    bp.fit(model, x, y, epochs=1, batch_size=16, verbose=0)
    before = capture._compiled.cache_info()
    bp.fit(model, x, y, epochs=1, batch_size=16, verbose=0)
    after = capture._compiled.cache_info()
    assert after.misses == before.misses and after.hits == before.hits + 2  # forward and backward segments


def test_partial_batch_and_train_eval_switch_recapture():
    x, y = _data(20)
    models = [_mlp(dropout=0.5, bn=True), _mlp(dropout=0.5, bn=True)]
    opts = [bp.optim.Adam(m.parameters(), lr=0.01) for m in models]
    eager = classic_step(models[0], opts[0], "loss, out")
    jitted = bp.jit(classic_step(models[1], opts[1], "loss, out"), fallback="error")
    seeds = iter(range(100))
    for sl in [slice(0, 8), slice(8, 16), slice(16, 20), slice(0, 8), "eval", slice(8, 16), "train", slice(0, 8)]:
        if isinstance(sl, str):
            for m in models:
                m.train(sl == "train")
            continue
        s = next(seeds)
        bp.manual_seed(s)
        l0, _ = eager(x[sl], y[sl])
        bp.manual_seed(s)
        l1, _ = jitted(x[sl], y[sl])
        np.testing.assert_array_equal(l0.data, l1.data)
    for (k, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    assert jitted.captures == 3  # batch of 8 in training, batch of 4, batch of 8 in eval mode


def test_dropout_draws_fresh_masks_every_step():
    model = bp.nn.Sequential(bp.nn.Dropout(0.5))
    step = bp.jit(lambda x: model(bp.Tensor(x)), fallback="error")
    x = np.ones((4, 64), dtype=np.float32)
    masks = [step(x).data for _ in range(3)]
    assert not np.array_equal(masks[1], masks[2])
    bp.manual_seed(7)
    a = step(x).data
    bp.manual_seed(7)
    np.testing.assert_array_equal(a, step(x).data)


def test_requires_grad_change_recaptures():
    model = _mlp()
    opt = bp.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    step = bp.jit(classic_step(model, opt, "loss, out"), fallback="error")
    x, y = _data(8)
    step(x, y)
    model[0].weight.requires_grad = False
    before = model[0].weight.data.copy()
    step(x, y)
    np.testing.assert_array_equal(model[0].weight.data, before)
    assert step.captures == 2


def test_value_dependent_step_falls_back_with_a_warning():
    model = _mlp()
    opt = bp.optim.SGD(model.parameters(), lr=0.1)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(bp.Tensor(x)), y)
        if loss.item() > 100:  # Python control flow on a computed value
            return loss
        loss.backward()
        opt.step()
        return loss

    x, y = _data(8)
    jitted = bp.jit(step)
    with pytest.warns(RuntimeWarning, match="reads a computed tensor's value"):
        first = jitted(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = jitted(x, y)  # eager from now on, silently
    assert float(second.data) < float(first.data)
    with pytest.raises(CaptureError, match=r"item"):
        bp.jit(step, fallback="error")(x, y)


def test_tensor_from_an_input_view_is_refused():
    w = bp.tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    step = bp.jit(lambda x: (bp.Tensor(x[:, :3]) * w).sum(), fallback="error")
    with pytest.raises(CaptureError, match="view"):
        step(np.ones((2, 5), dtype=np.float32))


def test_closures_baked_and_arguments_followed():
    """A Python value passed as an argument is a guard (a new value re-captures)."""
    w = bp.tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    step = bp.jit(lambda x, k: (bp.Tensor(x) * w * k).sum(), fallback="error")
    x = np.arange(3, dtype=np.float32)
    assert float(step(x, 2.0).data) == 6.0 and float(step(x, 3.0).data) == 9.0
    assert step.captures == 2


def test_the_captured_step_reads_as_python():
    model = _mlp()
    step = bp.jit(classic_step(model, bp.optim.SGD(model.parameters(), lr=0.1), "loss, out"))
    with pytest.raises(RuntimeError, match="call the function once"):
        step.source()
    step(*_data(8))
    src = step.source()
    assert src.startswith("def segment_0(V, inputs):") and "inputs[0]" in src and "finish" in src


def test_keyword_arguments():
    w = bp.tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    step = bp.jit(lambda x, scale=1.0: (bp.Tensor(x) * w * scale).sum(), fallback="error")
    x = np.arange(3, dtype=np.float32)
    assert float(step(x, scale=2.0).data) == 6.0 and float(step(x * 2, scale=2.0).data) == 12.0
    assert float(step(x).data) == 3.0 and step.captures == 2


def test_small_steps_run_on_one_blas_thread_and_restore_it():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    model = _mlp()
    step = bp.jit(classic_step(model, bp.optim.SGD(model.parameters(), lr=0.1), "loss, out"), fallback="error")
    with threadpoolctl.threadpool_limits(2):
        for n in (8, 8, 100, 100):  # capture (eager, 2 threads) then replay; a large batch keeps 2 threads
            x, y = _data(n)
            step(x, y)
        assert threadpoolctl.threadpool_info()[0]["num_threads"] == 2
    small, large = (step.plans[k][0].plan for k in step.plans)
    assert "_set_threads(1)" in small.source(0) and "_set_threads" not in large.source(0)


def test_jit_validates_its_arguments():
    with pytest.raises(ValueError, match="fallback"):
        bp.jit(lambda: None, fallback="maybe")
    with pytest.raises(TypeError, match="function"):
        bp.jit(3)
    with pytest.raises(ValueError, match="jit"):
        bp.fit(_mlp(), *_data(8), jit="yes", verbose=0)


def test_custom_train_step_runs_eagerly():
    class Accumulate(bp.training.Step):
        def train_step(self, batch):
            return super().train_step(batch)

    assert not CapturedStep.supports(Accumulate(_mlp(), bp.optim.SGD(_mlp().parameters(), lr=0.1)))
    x, y = _data(16)
    h = bp.fit(_mlp(), x, y, epochs=1, batch_size=8, verbose=0, step=Accumulate)
    assert math.isfinite(h.history["loss"][0])


def test_nonfinite_gradient_stops_before_any_update():
    """The folded update keeps fit's promise: a NaN gradient stops training with the last finite weights."""
    x, y = _data(16)
    model = _mlp()
    before = {k: v.copy() for k, v in model.state_dict().items()}

    class NaNGradient(bp.training.Step):
        capturable = True  # NOTE: only ops in compute_loss

        def compute_loss(self, batch):
            out, loss = super().compute_loss(batch)
            return out, loss + (out * 0.0).abs().sqrt().sum()  # finite, with a NaN gradient

    assert CapturedStep.supports(NaNGradient(model, bp.optim.SGD(model.parameters(), lr=0.1)))
    with pytest.raises(bp.TrainingDiverged, match="gradient"), np.errstate(all="ignore"):
        bp.fit(model, x, y, epochs=1, batch_size=8, verbose=0, step=NaNGradient)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_module_zero_grad_inside_a_captured_step_replays():
    """A Module is callable but not a closure: ``model.zero_grad()`` in the step is recorded and replayed."""
    x = np.random.default_rng(0).random((5, 4)).astype(np.float32)
    y = np.arange(5) % 3
    losses = []
    for jitted in (False, True):
        bp.manual_seed(0)
        model = bp.nn.Sequential(bp.nn.Linear(4, 8), bp.nn.ReLU(), bp.nn.Linear(8, 3))
        opt = bp.optim.SGD(model.parameters(), lr=0.1)

        def step(xb, yb, model=model, opt=opt):
            model.zero_grad()
            loss = F.cross_entropy(model(bp.Tensor(xb)), yb)
            loss.backward()
            opt.step()
            return loss

        fn = bp.jit(step, fallback="error") if jitted else step
        losses.append([float(fn(x, y).data) for _ in range(4)])
    assert losses[0] == losses[1]


def test_an_optimizer_closure_runs_eagerly():
    model = bp.nn.Linear(4, 3)
    opt = bp.optim.SGD(model.parameters(), lr=0.1)
    x = np.ones((2, 4), dtype=np.float32)

    def step(xb):
        def closure():
            opt.zero_grad()
            loss = model(bp.Tensor(xb)).sum()
            loss.backward()
            return loss
        return opt.step(closure)

    with pytest.raises(CaptureError, match="given a function"):
        bp.jit(step, fallback="error")(x)
