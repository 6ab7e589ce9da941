"""Tests for backprop.optim.lr_scheduler: lr sequences against PyTorch's, state dicts, validation."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from backprop.optim import SGD, Adam, RMSprop, lr_scheduler
from backprop.optim.optimizer import Optimizer

torch = pytest.importorskip("torch")
tsched = torch.optim.lr_scheduler

N_STEPS = 100
RTOL = 1e-12


class P:
    """Minimal stand-in for a parameter: ``.data`` and ``.grad``."""

    def __init__(self):
        self.data = np.zeros(2)
        self.grad = None


# --------------------------------------------------------------------------- #
# Building matching optimizers and schedulers on both sides
# --------------------------------------------------------------------------- #
OPTIMIZERS = {"sgd": (SGD, "SGD"), "adam": (Adam, "Adam"), "rmsprop": (RMSprop, "RMSprop")}


def make_optimizers(kind="sgd", lrs=(0.1,), **kwargs):
    """(ours, torch's): the same optimizer with one group per entry of ``lrs``."""
    ours_cls, torch_name = OPTIMIZERS[kind]
    ours = ours_cls([{"params": [P()], "lr": lr} for lr in lrs], **kwargs)
    theirs = getattr(torch.optim, torch_name)(
        [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs], **kwargs)
    return ours, theirs


def hyper(opt):
    """Per group: lr, and the momentum / beta1 when present."""
    out = []
    for g in opt.param_groups:
        out.append(float(g["lr"]))
        if "momentum" in g:
            out.append(float(g["momentum"]))
        if "betas" in g:
            out.append(float(g["betas"][0]))
    return out


def run(opt, sched, n, metrics=None):
    """The hyperparameters after construction and after each of ``n`` steps.

    ``sched`` may be a list of schedulers of the same optimizer, all stepped
    each time (PyTorch's chainable use: each one scales the current lr).
    """
    scheds = sched if isinstance(sched, list) else [sched]
    seq = [hyper(opt)]
    for i in range(n):
        opt.step()
        for s in scheds:
            if metrics is None:
                s.step()
            else:
                s.step(metrics[i])
        seq.append(hyper(opt))
    return np.array(seq)


def assert_same(a, b):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=0)


# Each case: (optimizer kind, group lrs, optimizer kwargs, build(module, opt) -> scheduler).
CASES = {
    "step": ("sgd", (0.1,), {}, lambda m, o: m.StepLR(o, step_size=7, gamma=0.5)),
    "step-every": ("sgd", (0.1,), {}, lambda m, o: m.StepLR(o, 1, gamma=0.97)),
    "step-2groups": ("sgd", (0.1, 0.03), {}, lambda m, o: m.StepLR(o, 10)),
    "multistep": ("sgd", (0.1,), {}, lambda m, o: m.MultiStepLR(o, [10, 30, 60], gamma=0.5)),
    "multistep-repeat-2groups": ("adam", (0.01, 0.002), {},
                                 lambda m, o: m.MultiStepLR(o, [20, 20, 50, 99])),
    "exponential": ("sgd", (0.1,), {}, lambda m, o: m.ExponentialLR(o, gamma=0.95)),
    "exponential-2groups": ("sgd", (0.1, 0.7), {"momentum": 0.9}, lambda m, o: m.ExponentialLR(o, 0.99)),
    "cosine": ("sgd", (0.1,), {}, lambda m, o: m.CosineAnnealingLR(o, T_max=100)),
    "cosine-past-tmax": ("sgd", (0.1,), {}, lambda m, o: m.CosineAnnealingLR(o, T_max=30)),
    "cosine-eta_min-2groups": ("adam", (0.01, 0.05), {},
                               lambda m, o: m.CosineAnnealingLR(o, T_max=25, eta_min=1e-3)),
    "cosine-tmax1": ("sgd", (0.1,), {}, lambda m, o: m.CosineAnnealingLR(o, T_max=1, eta_min=0.01)),
    "linear": ("sgd", (0.1,), {}, lambda m, o: m.LinearLR(o)),
    "linear-warmup": ("sgd", (0.1,), {}, lambda m, o: m.LinearLR(o, start_factor=0.1, total_iters=20)),
    "linear-decay-2groups": ("sgd", (0.1, 0.02), {},
                             lambda m, o: m.LinearLR(o, start_factor=1.0, end_factor=0.05, total_iters=50)),
    "lambda": ("sgd", (0.1,), {}, lambda m, o: m.LambdaLR(o, lambda e: 0.95 ** e)),
    "lambda-2groups": ("sgd", (0.1, 0.3), {},
                       lambda m, o: m.LambdaLR(o, [lambda e: 1.0 / (1 + e), lambda e: 0.5 ** (e // 10)])),
    "onecycle-sgd-momentum": ("sgd", (0.1,), {"momentum": 0.9},
                              lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=N_STEPS)),
    "onecycle-linear-3phase": ("sgd", (0.1,), {"momentum": 0.9},
                               lambda m, o: m.OneCycleLR(o, 0.5, total_steps=N_STEPS, anneal_strategy="linear",
                                                         three_phase=True)),
    "onecycle-3phase-cos": ("sgd", (0.1,), {"momentum": 0.5},
                            lambda m, o: m.OneCycleLR(o, 0.5, total_steps=N_STEPS, three_phase=True,
                                                      pct_start=0.25, div_factor=10.0, final_div_factor=100.0)),
    "onecycle-2groups": ("sgd", (0.1, 0.2), {"momentum": 0.9},
                         lambda m, o: m.OneCycleLR(o, max_lr=[0.1, 0.02], epochs=10, steps_per_epoch=10,
                                                   base_momentum=[0.8, 0.85], max_momentum=[0.9, 0.99])),
    "onecycle-adam-betas": ("adam", (0.001,), {"betas": (0.9, 0.99)},
                            lambda m, o: m.OneCycleLR(o, max_lr=0.01, total_steps=N_STEPS, pct_start=0.4)),
    "onecycle-adam-2groups": ("adam", (0.001, 0.002), {},
                              lambda m, o: m.OneCycleLR(o, max_lr=[0.01, 0.03], total_steps=N_STEPS)),
    "onecycle-rmsprop": ("rmsprop", (0.001,), {"momentum": 0.5},
                         lambda m, o: m.OneCycleLR(o, max_lr=0.02, total_steps=N_STEPS)),
    "onecycle-no-momentum": ("sgd", (0.1,), {"momentum": 0.9},
                             lambda m, o: m.OneCycleLR(o, 0.3, total_steps=N_STEPS, cycle_momentum=False)),
    "sequential-warmup-cosine": (
        "sgd", (0.1,), {},
        lambda m, o: m.SequentialLR(o, [m.LinearLR(o, start_factor=0.1, total_iters=5),
                                        m.CosineAnnealingLR(o, T_max=95)], milestones=[5])),
    "sequential-3-2groups": (
        "adam", (0.01, 0.004), {},
        lambda m, o: m.SequentialLR(o, [m.LinearLR(o, start_factor=0.25, total_iters=10),
                                        m.StepLR(o, 7, gamma=0.7),
                                        m.ExponentialLR(o, 0.98)], milestones=[10, 40])),
    "sequential-cosine-eta_min": (
        "sgd", (0.1,), {},
        lambda m, o: m.SequentialLR(o, [m.ExponentialLR(o, 0.9),
                                        m.CosineAnnealingLR(o, T_max=20, eta_min=0.001)], milestones=[30])),
    # Chained: every scheduler steps the same optimizer, each applying its rule to the current lr
    # (this is where the recursive forms matter, e.g. CosineAnnealingLR's).
    "chained-exponential-cosine": ("sgd", (0.1,), {},
                                   lambda m, o: [m.ExponentialLR(o, 0.97), m.CosineAnnealingLR(o, T_max=30)]),
    "chained-linear-step-cosine-2groups": (
        "adam", (0.01, 0.003), {},
        lambda m, o: [m.LinearLR(o, start_factor=0.5, total_iters=10), m.StepLR(o, 15, gamma=0.5),
                      m.CosineAnnealingLR(o, T_max=40, eta_min=1e-4)]),
    "chained-multistep-linear": ("sgd", (0.1,), {},
                                 lambda m, o: [m.MultiStepLR(o, [10, 50], 0.3),
                                               m.LinearLR(o, 1.0, 0.2, total_iters=80)]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_torch(name):
    kind, lrs, kwargs, build = CASES[name]
    ours_opt, torch_opt = make_optimizers(kind, lrs, **kwargs)
    ours = build(lr_scheduler, ours_opt)
    theirs = build(tsched, torch_opt)
    a = run(ours_opt, ours, N_STEPS)
    b = run(torch_opt, theirs, N_STEPS)
    assert a.shape == b.shape
    assert_same(a, b)
    for s_ours, s_theirs in zip(*(s if isinstance(s, list) else [s] for s in (ours, theirs))):
        assert s_ours.get_last_lr() == pytest.approx(s_theirs.get_last_lr(), rel=RTOL)
        assert s_ours.last_epoch == s_theirs.last_epoch


@pytest.mark.parametrize("name", ["exponential", "cosine-past-tmax", "step"])
def test_resume_with_last_epoch_matches_torch(name):
    kind, lrs, kwargs, build = CASES[name]
    seqs = []
    for mod, opt in zip((lr_scheduler, tsched), make_optimizers(kind, lrs, **kwargs)):
        build(mod, opt)  # sets "initial_lr"
        for g in opt.param_groups:
            g["lr"] = 0.05
        cls = type(build(mod, opt))
        sched = cls(opt, **_resume_kwargs(cls.__name__), last_epoch=12)
        seqs.append(run(opt, sched, 40))
    assert_same(*seqs)


def _resume_kwargs(cls_name):
    return {"ExponentialLR": {"gamma": 0.9}, "CosineAnnealingLR": {"T_max": 30},
            "StepLR": {"step_size": 5}}[cls_name]


def test_resume_needs_initial_lr():
    opt, _ = make_optimizers()
    with pytest.raises(KeyError, match="initial_lr"):
        lr_scheduler.StepLR(opt, 5, last_epoch=3)


def test_deprecated_epoch_argument_uses_closed_form_like_torch():
    ours_opt, torch_opt = make_optimizers(lrs=(0.1, 0.2))
    results = []
    for mod, opt in ((lr_scheduler, ours_opt), (tsched, torch_opt)):
        sched = mod.MultiStepLR(opt, [3, 8], gamma=0.5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sched.step(10)
            first = hyper(opt)
            sched.step()
        results.append(first + hyper(opt))
    assert_same(*results)


def test_initial_lr_base_lrs_and_get_last_lr():
    opt, _ = make_optimizers(lrs=(0.1, 0.02))
    sched = lr_scheduler.StepLR(opt, 2)
    assert [g["initial_lr"] for g in opt.param_groups] == [0.1, 0.02]
    assert sched.base_lrs == [0.1, 0.02]
    assert sched.last_epoch == 0
    last = sched.get_last_lr()
    last[0] = 123.0  # a copy
    assert sched.get_last_lr() == [0.1, 0.02]
    sched.step()
    sched.step()
    assert sched.get_last_lr() == [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.002])


def test_onecycle_raises_past_total_steps_like_torch():
    errors = []
    for mod, opt in zip((lr_scheduler, tsched), make_optimizers(momentum=0.9)):
        sched = mod.OneCycleLR(opt, max_lr=0.1, total_steps=10)
        for _ in range(10):
            opt.step()
            sched.step()
        opt.step()
        with pytest.raises(ValueError, match="total steps is 10") as err:
            sched.step()
        errors.append(str(err.value))
    assert errors[0] == errors[1]


# --------------------------------------------------------------------------- #
# ReduceLROnPlateau
# --------------------------------------------------------------------------- #
def plateau_metrics():
    """Improvements, long plateaus, small (sub-threshold) changes and noise."""
    rng = np.random.default_rng(0)
    m = [1.0 - 0.02 * i for i in range(10)]             # improving
    m += [0.8] * 15                                     # plateau
    m += [0.8 - 1e-6 * i for i in range(10)]            # sub-threshold "improvements"
    m += [0.7, 0.69, 0.71, 0.72, 0.73, 0.74, 0.75]      # improvement then worse
    m += list(0.6 + 0.01 * rng.standard_normal(25))     # noise
    m += [0.5] * 33                                     # long plateau: repeated cuts towards min_lr
    assert len(m) == N_STEPS
    return m


PLATEAU_CASES = {
    "defaults": ((0.1,), {}, 1),
    "patience0": ((0.1,), {"patience": 0, "factor": 0.5}, 1),
    "cooldown": ((0.1,), {"patience": 2, "cooldown": 3, "factor": 0.5}, 1),
    "min_lr": ((0.1,), {"patience": 1, "factor": 0.3, "min_lr": 0.004}, 1),
    "min_lr-list-2groups": ((0.1, 0.05), {"patience": 1, "factor": 0.5, "min_lr": [1e-3, 1e-2]}, 1),
    "abs": ((0.1,), {"patience": 3, "threshold": 0.01, "threshold_mode": "abs"}, 1),
    "max-rel": ((0.1,), {"mode": "max", "patience": 2, "factor": 0.7}, -1),
    "max-abs-cooldown": ((0.1, 0.2), {"mode": "max", "threshold_mode": "abs", "threshold": 1e-3,
                                      "patience": 1, "cooldown": 2, "factor": 0.8}, -1),
    "eps-skips": ((1e-6,), {"patience": 0, "factor": 0.5, "eps": 1e-7}, 1),
}


@pytest.mark.parametrize("name", list(PLATEAU_CASES))
def test_plateau_matches_torch(name):
    lrs, kwargs, sign = PLATEAU_CASES[name]
    metrics = [sign * v for v in plateau_metrics()]
    ours_opt, torch_opt = make_optimizers("sgd", lrs, momentum=0.9)
    ours = lr_scheduler.ReduceLROnPlateau(ours_opt, **kwargs)
    theirs = tsched.ReduceLROnPlateau(torch_opt, **kwargs)
    a = run(ours_opt, ours, N_STEPS, metrics)
    b = run(torch_opt, theirs, N_STEPS, metrics)
    assert_same(a, b)
    assert len(np.unique(a[:, 0])) > 1  # the lr was actually reduced
    for attr in ("best", "num_bad_epochs", "cooldown_counter", "last_epoch"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert ours.get_last_lr() == theirs.get_last_lr()


def test_plateau_accepts_array_metric_and_sets_no_initial_lr():
    opt, _ = make_optimizers()
    sched = lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    assert "initial_lr" not in opt.param_groups[0]
    sched.step(np.float32(1.0))
    sched.step(np.array(2.0))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)


# --------------------------------------------------------------------------- #
# state_dict round trip
# --------------------------------------------------------------------------- #
def assert_plain(obj, path="state"):
    """Only numbers, strings, None, lists/tuples and dicts (no callables, Counters, arrays)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            assert_plain(v, f"{path}[{i}]")
        return
    assert type(obj) is dict, f"{path} is a {type(obj).__name__}"
    for k, v in obj.items():
        assert_plain(k, f"{path} key")
        assert_plain(v, f"{path}[{k!r}]")


ROUND_TRIP = ["step", "multistep-repeat-2groups", "exponential-2groups", "cosine-past-tmax",
              "linear-warmup", "lambda-2groups", "onecycle-sgd-momentum", "onecycle-adam-2groups",
              "onecycle-linear-3phase", "sequential-warmup-cosine", "sequential-3-2groups"]


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_state_dict_round_trip(name):
    kind, lrs, kwargs, build = CASES[name]
    opt, torch_opt = make_optimizers(kind, lrs, **kwargs)
    sched = build(lr_scheduler, opt)
    full = run(opt, sched, N_STEPS)
    assert_same(full, run(torch_opt, build(tsched, torch_opt), N_STEPS))

    opt, _ = make_optimizers(kind, lrs, **kwargs)
    sched = build(lr_scheduler, opt)
    first = run(opt, sched, 40)
    opt_state, sched_state = opt.state_dict(), sched.state_dict()
    assert_plain(sched_state)
    json.dumps(sched_state)
    sched.step()  # must not affect the saved state
    assert sched_state["last_epoch"] == 40

    new_opt, _ = make_optimizers(kind, (0.5,) * len(lrs), **kwargs)
    new_sched = build(lr_scheduler, new_opt)  # build first, then load (as in PyTorch)
    new_opt.load_state_dict(opt_state)
    new_sched.load_state_dict(sched_state)
    rest = run(new_opt, new_sched, N_STEPS - 40)
    assert_same(np.concatenate([first, rest[1:]]), full)


def test_plateau_state_dict_round_trip():
    metrics = plateau_metrics()
    kwargs = {"patience": 2, "cooldown": 3, "factor": 0.5, "min_lr": 1e-3}
    opt, _ = make_optimizers(lrs=(0.1, 0.2))
    full = run(opt, lr_scheduler.ReduceLROnPlateau(opt, **kwargs), N_STEPS, metrics)

    opt, _ = make_optimizers(lrs=(0.1, 0.2))
    sched = lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
    first = run(opt, sched, 50, metrics)
    opt_state, sched_state = opt.state_dict(), sched.state_dict()
    assert_plain(sched_state)

    new_opt, _ = make_optimizers(lrs=(1.0, 1.0))
    new_sched = lr_scheduler.ReduceLROnPlateau(new_opt, mode="max")
    new_opt.load_state_dict(opt_state)
    new_sched.load_state_dict(sched_state)
    assert new_sched.mode == "min" and new_sched.mode_worse == math.inf
    rest = run(new_opt, new_sched, N_STEPS - 50, metrics[50:])
    assert_same(np.concatenate([first, rest[1:]]), full)


def test_lambda_state_dict_keeps_callable_object_attributes():
    class Factor:
        def __init__(self):
            self.scale = 1.0

        def __call__(self, epoch):
            return self.scale * 0.9 ** epoch

    opt, _ = make_optimizers()
    fn = Factor()
    sched = lr_scheduler.LambdaLR(opt, fn)
    fn.scale = 0.5
    state = sched.state_dict()
    assert state["lr_lambdas"] == [{"scale": 0.5}]
    other = Factor()
    sched2 = lr_scheduler.LambdaLR(opt, [other])
    sched2.load_state_dict(state)
    assert other.scale == 0.5
    assert lr_scheduler.LambdaLR(opt, lambda e: 1.0).state_dict()["lr_lambdas"] == [None]


# --------------------------------------------------------------------------- #
# Validation and factory
# --------------------------------------------------------------------------- #
class NoMomentum(Optimizer):
    def __init__(self, params, lr=0.1):
        super().__init__(params, {"lr": lr})


def _opt():
    return SGD([P()], lr=0.1, momentum=0.9)


S = lr_scheduler
BAD = [
    (lambda o: S.StepLR(o, step_size=-1), ValueError, "step_size: -1"),
    (lambda o: S.StepLR(o, step_size=0), ValueError, "step_size: 0"),
    (lambda o: S.StepLR(o, step_size=2.5), ValueError, "step_size: 2.5"),
    (lambda o: S.StepLR(o, step_size="5"), TypeError, "step_size"),
    (lambda o: S.StepLR(o, 5, gamma=0), ValueError, "gamma: 0"),
    (lambda o: S.StepLR(o, 5, gamma=-0.5), ValueError, "gamma: -0.5"),
    (lambda o: S.StepLR(o, 5, gamma=float("nan")), ValueError, "gamma: nan"),
    (lambda o: S.ExponentialLR(o, gamma=0.0), ValueError, "gamma: 0.0"),
    (lambda o: S.MultiStepLR(o, [30, 10]), ValueError, r"milestones: \[30, 10\]"),
    (lambda o: S.MultiStepLR(o, [-1, 5]), ValueError, r"milestones\[0\]: -1"),
    (lambda o: S.MultiStepLR(o, 10), TypeError, "milestones"),
    (lambda o: S.MultiStepLR(o, [5], gamma=0), ValueError, "gamma: 0"),
    (lambda o: S.CosineAnnealingLR(o, T_max=0), ValueError, "T_max: 0"),
    (lambda o: S.CosineAnnealingLR(o, T_max=10, eta_min=-1), ValueError, "eta_min: -1"),
    (lambda o: S.LinearLR(o, start_factor=0), ValueError, "start_factor: 0"),
    (lambda o: S.LinearLR(o, start_factor=1.5), ValueError, "start_factor: 1.5"),
    (lambda o: S.LinearLR(o, end_factor=-0.1), ValueError, "end_factor: -0.1"),
    (lambda o: S.LinearLR(o, total_iters=0), ValueError, "total_iters: 0"),
    (lambda o: S.OneCycleLR(o, max_lr=0.1), ValueError, "total_steps"),
    (lambda o: S.OneCycleLR(o, max_lr=0.1, epochs=3), ValueError, "steps_per_epoch=None"),
    (lambda o: S.OneCycleLR(o, 0.1, total_steps=0), ValueError, "total_steps: 0"),
    (lambda o: S.OneCycleLR(o, 0.1, epochs=0, steps_per_epoch=5), ValueError, "epochs: 0"),
    (lambda o: S.OneCycleLR(o, 0.1, total_steps=10, pct_start=1.5), ValueError, "pct_start: 1.5"),
    (lambda o: S.OneCycleLR(o, 0.1, total_steps=10, anneal_strategy="cosine"), ValueError,
     "anneal_strategy: 'cosine'"),
    (lambda o: S.OneCycleLR(o, [0.1, 0.2], total_steps=10), ValueError, "max_lr must have the same length"),
    (lambda o: S.OneCycleLR(o, -0.1, total_steps=10), ValueError, "max_lr: -0.1"),
    (lambda o: S.OneCycleLR(o, 0.1, total_steps=10, div_factor=0), ValueError, "div_factor: 0"),
    (lambda o: S.OneCycleLR(o, 0.1, total_steps=10, max_momentum=1.0), ValueError, "max_momentum: 1.0"),
    (lambda o: S.OneCycleLR(NoMomentum([P()]), 0.1, total_steps=10), ValueError, "momentum or beta1"),
    (lambda o: S.ReduceLROnPlateau(o, factor=1.0), ValueError, "factor: 1.0"),
    (lambda o: S.ReduceLROnPlateau(o, factor=2), ValueError, "factor: 2"),
    (lambda o: S.ReduceLROnPlateau(o, mode="mid"), ValueError, "mode: 'mid'"),
    (lambda o: S.ReduceLROnPlateau(o, threshold_mode="pct"), ValueError, "threshold_mode: 'pct'"),
    (lambda o: S.ReduceLROnPlateau(o, patience=-1), ValueError, "patience: -1"),
    (lambda o: S.ReduceLROnPlateau(o, cooldown=-2), ValueError, "cooldown: -2"),
    (lambda o: S.ReduceLROnPlateau(o, min_lr=[0.1, 0.2]), ValueError, "min_lr must have the same length"),
    (lambda o: S.ReduceLROnPlateau(o, min_lr=-1e-3), ValueError, "min_lr: -0.001"),
    (lambda o: S.SequentialLR(o, [S.StepLR(o, 5), S.StepLR(o, 5), S.StepLR(o, 5)], [10, 5]), ValueError,
     r"milestones: \[10, 5\]"),
    (lambda o: S.SequentialLR(o, [S.StepLR(o, 5), S.StepLR(o, 5)], [5, 10]), ValueError,
     "number of milestones"),
    (lambda o: S.SequentialLR(o, [], []), ValueError, "at least one scheduler"),
    (lambda o: S.SequentialLR(o, [S.StepLR(o, 5), S.ReduceLROnPlateau(o)], [5]), ValueError,
     "ReduceLROnPlateau"),
    (lambda o: S.SequentialLR(o, [S.StepLR(o, 5), S.StepLR(_opt(), 5)], [5]), ValueError,
     "same optimizer"),
    (lambda o: S.LambdaLR(o, [lambda e: 1.0] * 2), ValueError, "Expected 1 lr_lambdas, but got 2"),
    (lambda o: S.LambdaLR(o, 0.5), TypeError, "lr_lambda"),
    (lambda o: S.StepLR(object(), 5), TypeError, "not an Optimizer"),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_validation_errors(i):
    make, exc, match = BAD[i]
    with pytest.raises(exc, match=match):
        make(_opt())


def test_get_scheduler():
    examples = {
        "step": ({"step_size": 5}, S.StepLR),
        "multistep": ({"milestones": [5, 10]}, S.MultiStepLR),
        "exponential": ({"gamma": 0.9}, S.ExponentialLR),
        "cosine": ({"T_max": 10}, S.CosineAnnealingLR),
        "onecycle": ({"max_lr": 0.1, "total_steps": 10}, S.OneCycleLR),
        "linear": ({}, S.LinearLR),
        "plateau": ({"patience": 2}, S.ReduceLROnPlateau),
    }
    assert set(examples) == set(S.SCHEDULERS)
    for name, (kwargs, cls) in examples.items():
        assert type(S.get_scheduler(name, _opt(), **kwargs)) is cls
    assert type(S.get_scheduler(" One-Cycle ", _opt(), max_lr=0.1, total_steps=5)) is S.OneCycleLR
    assert type(S.get_scheduler("COSINE", _opt(), T_max=3)) is S.CosineAnnealingLR
    with pytest.raises(ValueError, match="Unknown scheduler 'warmup'; valid names are: 'step', 'multistep'"):
        S.get_scheduler("warmup", _opt())
    with pytest.raises(ValueError, match="gamma: 0"):
        S.get_scheduler("step", _opt(), step_size=3, gamma=0)
    with pytest.raises(TypeError):
        S.get_scheduler(None, _opt())
