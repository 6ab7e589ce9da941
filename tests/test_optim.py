"""Tests for backprop.optim: golden values against PyTorch, convergence, validation, state."""

from __future__ import annotations

import functools
import pickle

import numpy as np
import pytest

from backprop.optim import get
from backprop.optim.adam import Adam, AdamW
from backprop.optim.optimizer import Optimizer
from backprop.optim.rmsprop import RMSprop
from backprop.optim.sgd import SGD

SHAPES = [(3, 4), (5,), ()]
N_STEPS = 20


class P:
    """Minimal stand-in for a parameter: ``.data`` and ``.grad``."""

    def __init__(self, data, dtype=np.float64):
        self.data = np.array(data, dtype=dtype)
        self.grad = None


def make_params(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [P(rng.standard_normal(s), dtype) for s in SHAPES]


def make_grads(n_steps=N_STEPS, seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s) for s in SHAPES] for _ in range(n_steps)]


GRADS = make_grads()

# name -> (our class, kwargs); the same kwargs build the torch optimizer of the same name.
CONFIGS = {
    "sgd": (SGD, {"lr": 0.1}),
    "sgd-momentum": (SGD, {"lr": 0.05, "momentum": 0.9}),
    "sgd-nesterov": (SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    "sgd-weight_decay": (SGD, {"lr": 0.05, "weight_decay": 0.1}),
    "sgd-momentum-wd": (SGD, {"lr": 0.05, "momentum": 0.8, "weight_decay": 0.05}),
    "sgd-dampening": (SGD, {"lr": 0.05, "momentum": 0.9, "dampening": 0.3}),
    "sgd-maximize": (SGD, {"lr": 0.05, "momentum": 0.5, "weight_decay": 0.1, "maximize": True}),
    "adam": (Adam, {"lr": 0.01}),
    "adam-weight_decay": (Adam, {"lr": 0.01, "weight_decay": 0.1}),
    "adam-amsgrad": (Adam, {"lr": 0.01, "amsgrad": True, "betas": (0.8, 0.99)}),
    "adam-maximize": (Adam, {"lr": 0.01, "maximize": True, "betas": (0.3, 0.9)}),
    "adamw": (AdamW, {"lr": 0.01}),
    "adamw-amsgrad": (AdamW, {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
    "rmsprop": (RMSprop, {"lr": 0.01}),
    "rmsprop-centered": (RMSprop, {"lr": 0.01, "centered": True}),
    "rmsprop-momentum": (RMSprop, {"lr": 0.01, "momentum": 0.9}),
    "rmsprop-weight_decay": (RMSprop, {"lr": 0.01, "weight_decay": 0.1, "alpha": 0.9}),
    "rmsprop-all": (RMSprop, {"lr": 0.01, "centered": True, "momentum": 0.5, "weight_decay": 0.1,
                                "maximize": True}),
}


# --------------------------------------------------------------------------- #
# Golden values against PyTorch
# --------------------------------------------------------------------------- #
def run_both(cls, kwargs, dtype, lr_changes=None, groups=None):
    """Apply GRADS with our optimizer and torch's; return the two lists of final arrays."""
    torch = pytest.importorskip("torch")
    tdtype = {np.float64: torch.float64, np.float32: torch.float32}[dtype]
    ours = make_params(dtype)
    theirs = [torch.tensor(p.data.copy(), dtype=tdtype, requires_grad=True) for p in ours]
    if groups is None:
        opt = cls(ours, **kwargs)
        topt = getattr(torch.optim, cls.__name__)(theirs, foreach=False, **kwargs)
    else:
        opt = cls([dict(g, params=[ours[i] for i in g["params"]]) for g in groups], **kwargs)
        topt = getattr(torch.optim, cls.__name__)(
            [dict(g, params=[theirs[i] for i in g["params"]]) for g in groups], foreach=False, **kwargs)
    for step, grads in enumerate(GRADS):
        if lr_changes and step in lr_changes:
            how, lr = lr_changes[step]
            if how == "property":
                opt.lr = lr
                for g in topt.param_groups:
                    g["lr"] = lr
            else:
                opt.param_groups[0]["lr"] = lr
                topt.param_groups[0]["lr"] = lr
        for p, t, g in zip(ours, theirs, grads):
            p.grad = g.astype(dtype)
            t.grad = torch.tensor(g, dtype=tdtype)
        opt.step()
        topt.step()
    return [p.data for p in ours], [t.detach().numpy() for t in theirs], opt


def assert_close(ours, theirs, dtype):
    rtol, atol = (1e-12, 1e-14) if dtype == np.float64 else (1e-6, 1e-7)
    for a, b in zip(ours, theirs):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_torch(name, dtype):
    cls, kwargs = CONFIGS[name]
    ours, theirs, opt = run_both(cls, kwargs, dtype)
    assert_close(ours, theirs, dtype)
    for st in opt.state.values():  # state keeps the parameter dtype
        for v in st.values():
            if isinstance(v, np.ndarray):
                assert v.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", ["sgd", "sgd-momentum", "adam", "adamw", "rmsprop-centered"])
def test_matches_torch_with_lr_changes(name, dtype):
    cls, kwargs = CONFIGS[name]
    changes = {5: ("property", 0.003), 9: ("group", 0.02), 15: ("property", 0.0)}
    ours, theirs, _ = run_both(cls, kwargs, dtype, lr_changes=changes)
    assert_close(ours, theirs, dtype)


@pytest.mark.parametrize("name", ["sgd-momentum", "adam", "rmsprop-momentum"])
def test_matches_torch_with_param_groups(name):
    cls, kwargs = CONFIGS[name]
    groups = [{"params": [0, 2], "lr": 0.003}, {"params": [1], "weight_decay": 0.2}]
    ours, theirs, opt = run_both(cls, kwargs, np.float64, groups=groups)
    assert_close(ours, theirs, np.float64)
    assert opt.param_groups[0]["lr"] == 0.003 and opt.param_groups[1]["lr"] == kwargs["lr"]


# --------------------------------------------------------------------------- #
# Convergence
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, lr=0.1),
    lambda ps: SGD(ps, lr=0.02, momentum=0.9, nesterov=True),
    lambda ps: Adam(ps, lr=0.1),
    lambda ps: Adam(ps, lr=0.1, amsgrad=True),
    lambda ps: AdamW(ps, lr=0.1, weight_decay=0.0),
    lambda ps: RMSprop(ps, lr=0.01),
    lambda ps: RMSprop(ps, lr=0.01, momentum=0.5, centered=True),
], ids=["sgd", "nesterov", "adam", "amsgrad", "adamw", "rmsprop", "rmsprop-centered-momentum"])
def test_minimises_parabola(make):
    params = [P(np.zeros(4)), P(np.float64(-1.0)), P(np.linspace(-5, 5, 6).reshape(2, 3))]
    opt = make(params)
    for _ in range(2000):
        for p in params:
            p.grad = 2.0 * (p.data - 3.0)
        opt.step()
    for p in params:
        np.testing.assert_allclose(p.data, 3.0, atol=1e-3)


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("cls, kwargs, word", [
    (SGD, {"lr": -0.1}, "learning rate"),
    (SGD, {"lr": float("nan")}, "lr"),
    (SGD, {"lr": float("inf")}, "lr"),
    (SGD, {"momentum": -0.5}, "momentum"),
    (SGD, {"momentum": 1.0}, "momentum"),
    (SGD, {"momentum": 0.9, "dampening": 1.5}, "dampening"),
    (SGD, {"weight_decay": -1e-4}, "weight_decay"),
    (SGD, {"nesterov": True}, "Nesterov"),
    (SGD, {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, "Nesterov"),
    (Adam, {"lr": -1.0}, "learning rate"),
    (Adam, {"betas": (1.0, 0.999)}, "betas[0]"),
    (Adam, {"betas": (0.9, -0.1)}, "betas[1]"),
    (Adam, {"betas": (0.9,)}, "betas"),
    (Adam, {"eps": -1e-8}, "eps"),
    (Adam, {"weight_decay": -0.1}, "weight_decay"),
    (AdamW, {"weight_decay": float("nan")}, "weight_decay"),
    (AdamW, {"betas": (0.9, float("nan"))}, "betas[1]"),
    (RMSprop, {"lr": -0.01}, "learning rate"),
    (RMSprop, {"alpha": 1.5}, "alpha"),
    (RMSprop, {"alpha": -0.1}, "alpha"),
    (RMSprop, {"eps": -1.0}, "eps"),
    (RMSprop, {"momentum": -0.1}, "momentum"),
    (RMSprop, {"weight_decay": -0.1}, "weight_decay"),
])
def test_bad_hyperparameters(cls, kwargs, word):
    with pytest.raises(ValueError, match=word.replace("[", r"\[").replace("]", r"\]")):
        cls(make_params(), **kwargs)


def test_non_number_is_type_error():
    with pytest.raises(TypeError, match="lr"):
        SGD(make_params(), lr="0.1")


def test_bad_value_in_message():
    with pytest.raises(ValueError, match=r"Invalid learning rate: -0\.1 \(lr must be >= 0\)"):
        SGD(make_params(), lr=-0.1)


def test_bad_group_override_and_lr_setter():
    ps = make_params()
    with pytest.raises(ValueError, match="momentum"):
        SGD([{"params": ps[:1]}, {"params": ps[1:], "momentum": 2.0}], lr=0.1)
    opt = SGD(ps, lr=0.1)
    with pytest.raises(ValueError, match="learning rate"):
        opt.lr = -1.0
    assert opt.lr == 0.1


def test_bad_params():
    with pytest.raises(ValueError, match="optimizer got an empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        Adam(iter([]))
    p = P(np.zeros(3))
    with pytest.raises(ValueError, match="more than once"):
        SGD([p, p], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(TypeError):
        SGD(p, lr=0.1)  # a single parameter, not an iterable of them
    with pytest.raises(TypeError):
        SGD([P(np.zeros(3), dtype=np.int64)], lr=0.1)


# --------------------------------------------------------------------------- #
# Semantics
# --------------------------------------------------------------------------- #
def test_zero_grad():
    ps = make_params()
    opt = SGD(ps, lr=0.1)
    grads = [np.ones(s) for s in SHAPES]
    for p, g in zip(ps, grads):
        p.grad = g
    opt.zero_grad(set_to_none=False)
    for p, g in zip(ps, grads):
        assert p.grad is g and not np.any(g)
    ps[0].grad = None
    opt.zero_grad(set_to_none=False)
    assert ps[0].grad is None
    opt.zero_grad()
    assert all(p.grad is None for p in ps)


@pytest.mark.parametrize("name", ["sgd", "sgd-momentum", "adam", "adamw", "rmsprop-all"])
def test_grad_none_skipped_and_grad_untouched(name):
    cls, kwargs = CONFIGS[name]
    ps = make_params()
    before = [p.data.copy() for p in ps]
    refs = [p.data for p in ps]
    opt = cls(ps, **kwargs)
    opt.step()  # no grads at all
    for p, b in zip(ps, before):
        np.testing.assert_array_equal(p.data, b)
    g = GRADS[0][1].copy()
    ps[1].grad = g
    opt.step()
    np.testing.assert_array_equal(g, GRADS[0][1])  # the gradient is not modified
    np.testing.assert_array_equal(ps[0].data, before[0])
    np.testing.assert_array_equal(ps[2].data, before[2])
    assert not np.array_equal(ps[1].data, before[1])
    assert all(p.data is r for p, r in zip(ps, refs))  # updated in place
    assert ps[0] not in opt.state and ps[2] not in opt.state


def test_plain_sgd_is_p_minus_lr_g():
    ps = make_params(np.float32)
    expected = []
    for p, g in zip(ps, GRADS[0]):
        p.grad = g.astype(np.float32)
        expected.append(p.data - np.float32(0.1) * p.grad)
    SGD(ps, lr=0.1).step()
    for p, e in zip(ps, expected):
        np.testing.assert_array_equal(p.data, e)


def test_closure_returns_loss():
    ps = make_params()
    opt = Adam(ps)

    def closure():
        for p in ps:
            p.grad = np.ones_like(p.data)
        return 1.5

    assert opt.step(closure) == 1.5
    assert opt.state[ps[0]]["step"] == 1


def test_lr_property():
    ps = make_params()
    opt = SGD([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.5}], lr=0.1)
    assert opt.lr == 0.1
    opt.lr = 0.01
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01]
    opt.param_groups[0]["lr"] = 0.2
    assert opt.lr == 0.2


# --------------------------------------------------------------------------- #
# state_dict
# --------------------------------------------------------------------------- #
def copy_params(ps):
    return [P(p.data.copy(), p.data.dtype) for p in ps]


def step_with(opt, ps, grads):
    for p, g in zip(ps, grads):
        p.grad = g.astype(p.data.dtype)
    opt.step()


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", ["sgd-momentum", "sgd-nesterov", "adam-amsgrad", "adamw",
                                  "rmsprop-all"])
def test_state_dict_round_trip_is_bit_identical(name, dtype):
    cls, kwargs = CONFIGS[name]
    ps = make_params(dtype)
    opt = cls(ps, **kwargs)
    for grads in GRADS[:10]:
        step_with(opt, ps, grads)
    sd = opt.state_dict()
    sd = pickle.loads(pickle.dumps(sd))  # as if written to disk
    assert sorted(sd["state"]) == [0, 1, 2]
    assert sd["param_groups"][0]["params"] == [0, 1, 2]

    ps2 = copy_params(ps)
    opt2 = cls(ps2, lr=123.0)  # hyperparameters come from the state dict
    opt2.load_state_dict(sd)
    assert opt2.lr == kwargs["lr"]
    for grads in GRADS[10:]:
        step_with(opt, ps, grads)
        step_with(opt2, ps2, grads)
    for a, b in zip(ps, ps2):
        np.testing.assert_array_equal(a.data, b.data)
        assert b.data.dtype == dtype


def test_state_dict_is_a_copy_and_load_copies():
    ps = make_params()
    opt = Adam(ps)
    step_with(opt, ps, GRADS[0])
    sd = opt.state_dict()
    saved = sd["state"][0]["exp_avg"].copy()
    step_with(opt, ps, GRADS[1])
    np.testing.assert_array_equal(sd["state"][0]["exp_avg"], saved)
    opt2 = Adam(copy_params(ps))
    opt2.load_state_dict(sd)
    sd["state"][0]["exp_avg"][...] = 42.0
    assert not np.any(opt2.state[opt2.param_groups[0]["params"][0]]["exp_avg"] == 42.0)


def test_state_dict_keeps_extra_group_keys_and_groups_in_place():
    ps = make_params()
    opt = SGD([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.5}], lr=0.1, momentum=0.9)
    opt.param_groups[0]["initial_lr"] = 0.1  # as a scheduler would add
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2]]
    ps2 = copy_params(ps)
    opt2 = SGD([{"params": ps2[:2]}, {"params": ps2[2:]}], lr=0.3)
    group0 = opt2.param_groups[0]
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0] is group0
    assert group0["initial_lr"] == 0.1 and group0["momentum"] == 0.9
    assert opt2.param_groups[1]["lr"] == 0.5
    assert group0["params"][0] is ps2[0]


def test_load_state_dict_validation():
    ps = make_params()
    opt = SGD(ps, lr=0.1, momentum=0.9)
    step_with(opt, ps, GRADS[0])
    sd = opt.state_dict()

    two_groups = SGD([{"params": ps[:1]}, {"params": ps[1:]}], lr=0.1)
    with pytest.raises(ValueError, match="number of parameter groups"):
        two_groups.load_state_dict(sd)
    with pytest.raises(ValueError, match="parameter group 0 has 3 parameters"):
        SGD(ps[:2], lr=0.1).load_state_dict(sd)

    bad = opt.state_dict()
    bad["state"][0]["momentum_buffer"] = np.zeros((4, 3))
    fresh = SGD(copy_params(ps), lr=0.2, momentum=0.5)
    with pytest.raises(ValueError, match="shape"):
        fresh.load_state_dict(bad)
    assert fresh.state == {} and fresh.lr == 0.2  # nothing changed on failure

    bad = opt.state_dict()
    bad["state"][7] = bad["state"][0]
    with pytest.raises(ValueError, match="unknown parameter"):
        fresh.load_state_dict(bad)
    with pytest.raises(ValueError):
        fresh.load_state_dict({"state": {}})


def test_optimizer_pickles():
    ps = make_params()
    opt = RMSprop(ps, momentum=0.5)
    step_with(opt, ps, GRADS[0])
    opt2 = pickle.loads(pickle.dumps(opt))
    assert isinstance(opt2, RMSprop) and len(opt2.state) == 3


# --------------------------------------------------------------------------- #
# get()
# --------------------------------------------------------------------------- #
def test_get():
    ps = make_params()
    assert type(get("sgd", ps, lr=0.1)) is SGD
    assert type(get("Adam", ps)) is Adam
    assert type(get("ADAMW", ps, weight_decay=0.0)) is AdamW
    opt = get("rmsprop", ps, lr=0.05, momentum=0.9)
    assert type(opt) is RMSprop and opt.lr == 0.05 and opt.param_groups[0]["momentum"] == 0.9
    assert get(opt, ps) is opt
    assert get(opt) is opt
    with pytest.raises(ValueError, match="existing optimizer"):
        get(opt, ps, lr=0.1)
    made = get(functools.partial(SGD, lr=0.3, momentum=0.9), ps)
    assert isinstance(made, SGD) and made.lr == 0.3
    assert type(get(Adam, ps, lr=0.01)) is Adam
    assert isinstance(get(lambda params: SGD(params, lr=0.1), ps), Optimizer)
    with pytest.raises(ValueError, match="'sgd', 'adam', 'adamw', 'rmsprop'"):
        get("adagrad", ps)
    with pytest.raises(TypeError):
        get(lambda params: None, ps)
    with pytest.raises(TypeError):
        get(3, ps)
