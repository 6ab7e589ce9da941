"""The buffer contract, as PyTorch's: register_buffer, named_buffers/buffers, and assignments that keep it."""

import copy
import pickle

import numpy as np
import pytest

import backprop as bp
from backprop import nn


class Counter(nn.Module):
    def __init__(self):
        self.weight = nn.Parameter(np.ones(2, dtype=np.float32))
        self.register_buffer("total", np.zeros(2, dtype=np.float32))
        self.register_buffer("steps", np.zeros((), dtype=np.int64))
        self.register_buffer("scratch", np.zeros(3, dtype=np.float32), persistent=False)

    def forward(self, x):
        self.total += x.data.sum(axis=0)
        self.steps += 1
        return x * self.weight


def test_registered_buffers_are_found_saved_and_cast():
    m = nn.Sequential(Counter(), nn.BatchNorm1d(2))
    m(bp.tensor(np.ones((3, 2), dtype=np.float32)))
    assert [n for n, _ in m.named_buffers()] == ["0.total", "0.steps", "0.scratch", "1.running_mean",
                                                 "1.running_var", "1.num_batches_tracked"]
    assert [n for n, _ in m.named_buffers(persistent_only=True)] == ["0.total", "0.steps", "1.running_mean",
                                                                    "1.running_var", "1.num_batches_tracked"]
    assert len(list(m.buffers())) == 6 and next(m[0].named_buffers(prefix="c", recurse=False))[0] == "c.total"
    state = m.state_dict()
    assert "0.scratch" not in state and state["0.steps"] == 1 and state["0.total"].tolist() == [3.0, 3.0]
    m.double()
    assert m[0].total.dtype == np.float64 and m[0].scratch.dtype == np.float64 and m[0].steps.dtype == np.int64
    assert next(m.named_buffers())[0] == "0.total"  # still buffers after the cast
    fresh = nn.Sequential(Counter(), nn.BatchNorm1d(2)).double()
    fresh.load_state_dict(state)
    assert fresh[0].steps == 1 and fresh[0].total.tolist() == [3.0, 3.0]


def test_assignment_keeps_a_buffer_a_buffer():
    m = Counter()
    m.total = bp.tensor([5.0, 6.0])  # a Tensor: its array is kept
    assert isinstance(m.total, np.ndarray) and dict(m.named_buffers())["total"].tolist() == [5.0, 6.0]
    m.total = None  # not in use: listed nowhere, saved nowhere
    assert "total" not in dict(m.named_buffers()) and "total" not in m.state_dict()
    m.total = np.ones(2)
    assert "total" in m.state_dict()
    with pytest.raises(TypeError, match="buffer 'total'"):
        m.total = [1.0, 2.0]
    with pytest.raises(TypeError, match="dtype"):
        m.total = np.array(["a"])
    m.total = nn.Parameter(np.zeros(2))  # a Parameter in its place: no longer a buffer, as in PyTorch
    assert "total" not in dict(m.named_buffers()) and "total" in dict(m.named_parameters())
    del m.steps
    assert "steps" not in dict(m.named_buffers())
    m.steps = np.zeros(())  # a plain attribute again
    assert "steps" not in m.state_dict()


def test_register_buffer_refuses_bad_names_and_a_parameter_needs_a_parameter():
    m = Counter()
    with pytest.raises(KeyError, match="identifier"):
        m.register_buffer("a.b", np.zeros(1))
    with pytest.raises(KeyError, match="already exists"):
        m.register_buffer("weight", np.zeros(1))
    with pytest.raises(KeyError, match="already exists"):
        m.register_buffer("forward", np.zeros(1))
    with pytest.raises(TypeError, match="string"):
        m.register_buffer(3, np.zeros(1))
    with pytest.raises(TypeError, match="as parameter 'weight'"):
        m.weight = np.zeros(2)
    with pytest.raises(TypeError, match="as parameter 'weight'"):
        m.weight = bp.tensor([1.0, 2.0])
    m.weight = None
    assert "weight" not in dict(m.named_parameters())


def test_copies_and_pickles_keep_the_buffers():
    bn = nn.BatchNorm2d(3)
    for other in (copy.deepcopy(bn), pickle.loads(pickle.dumps(bn))):
        assert [n for n, _ in other.named_buffers()] == ["running_mean", "running_var", "num_batches_tracked"]
        other.running_mean = np.ones(3, dtype=np.float32)
        assert other.state_dict()["running_mean"].tolist() == [1.0, 1.0, 1.0]
        assert bn.running_mean.tolist() == [0.0, 0.0, 0.0]


def test_a_shared_buffer_is_listed_once():
    a, b = Counter(), Counter()
    b.total = a.total
    both = nn.Sequential(a, b)
    assert [n for n, _ in both.named_buffers()].count("1.total") == 0


def test_old_buffers_attribute_still_works():
    """``getattr(mod, "_buffers", ())`` (names) is what code written before register_buffer reads."""
    bn = nn.BatchNorm1d(2)
    assert bn._buffers == ("running_mean", "running_var", "num_batches_tracked")
    assert nn.BatchNorm1d(2, track_running_stats=False)._buffers == () and nn.Linear(2, 2)._buffers == ()

    class Old(nn.Module):  # declared the old way: the names assigned to _buffers
        def __init__(self):
            self._buffers = ("count",)
            self.count = np.zeros(2)

    old = Old()
    assert list(old.state_dict()) == ["count"] and old.double().count.dtype == np.float64
    net = nn.Sequential(old, bn)
    seen = [f"{m}.{n}" for m, mod in net.named_modules() for n in getattr(mod, "_buffers", ())]
    assert seen == ["0.count", "1.running_mean", "1.running_var", "1.num_batches_tracked"]
