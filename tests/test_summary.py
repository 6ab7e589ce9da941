"""``Module.summary()``: the counts, the shapes, and a model left exactly as it was."""

from __future__ import annotations

import numpy as np
import pytest

import backprop as bp
from backprop import nn
from backprop.engine.random import get_rng


def _rows(text: str) -> dict[str, list[str]]:
    """The table's rows by layer name: [type, output shape, param #] (split on runs of 4+ spaces)."""
    lines = text.splitlines()
    body = lines[lines.index(lines[1], 2) + 1:]
    body = body[:body.index(lines[1])]
    out = {}
    for ln in body:
        cells = [c.strip() for c in ln.strip().split("    ") if c.strip()]
        name, kind = cells[0].split(" (", 1)
        out[name] = [kind.rstrip(")"), *cells[1:]]
    return out


def _footer(text: str) -> dict[str, str]:
    return dict(ln.split(": ", 1) for ln in text.splitlines() if ": " in ln and not ln.startswith("Model"))


def _lenet(bn: bool = True) -> nn.Sequential:
    bp.manual_seed(0)
    norm = (lambda c: [nn.BatchNorm2d(c)]) if bn else (lambda c: [])
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), *norm(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), *norm(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(84, 10))


def test_mlp_counts_and_shapes():
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    text = model.summary((784,), print_fn=None)
    rows = _rows(text)
    assert rows == {"0": ["Linear", "(None, 256)", "200,960"], "1": ["ReLU", "(None, 256)", "0"],
                    "2": ["Linear", "(None, 10)", "2,570"]}
    foot = _footer(text)
    assert foot["Total params"] == "203,530 (795.04 KB)" and 203_530 == model.num_parameters()
    assert foot["Trainable params"].startswith("203,530 ") and foot["Non-trainable params"] == "0 (0 B)"
    assert foot["Input shape"] == "(None, 784)" and foot["Output shape"] == "(None, 10)"
    assert "Buffers" not in text


def test_lenet5_with_batch_norm_matches_torch():
    model = _lenet()
    text = model.summary((1, 28, 28), print_fn=None)
    rows = _rows(text)
    assert [r[1] for r in rows.values()] == [
        "(None, 6, 28, 28)", "(None, 6, 28, 28)", "(None, 6, 28, 28)", "(None, 6, 14, 14)",
        "(None, 16, 10, 10)", "(None, 16, 10, 10)", "(None, 16, 10, 10)", "(None, 16, 5, 5)",
        "(None, 400)", "(None, 120)", "(None, 120)", "(None, 84)", "(None, 84)", "(None, 84)", "(None, 10)"]
    assert rows["1"] == ["BatchNorm2d", "(None, 6, 28, 28)", "12"]  # weight and bias; the statistics are buffers
    total = int(_footer(text)["Total params"].split()[0].replace(",", ""))
    assert total == model.num_parameters() == 61_750
    assert _footer(text)["Buffers (not params)"] == "46 values in 6 arrays (192 B)"  # 2 x (mean, var, count)
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    theirs = tnn.Sequential(
        tnn.Conv2d(1, 6, 5, padding=2), tnn.BatchNorm2d(6), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(6, 16, 5), tnn.BatchNorm2d(16), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(), tnn.Dropout(0.5),
        tnn.Linear(84, 10))
    assert total == sum(p.numel() for p in theirs.parameters())
    assert sum(r[2] != "0" for r in rows.values()) == sum(1 for m in theirs if any(True for _ in m.parameters()))


def test_frozen_parameters_are_non_trainable():
    model = _lenet()
    for p in model[0].parameters():
        p.requires_grad = False
    model[1].bias.requires_grad = False
    text = model.summary(print_fn=None)
    foot = _footer(text)
    assert foot["Trainable params"].startswith(f"{61_750 - 156 - 6:,} ")
    assert foot["Non-trainable params"] == "162 (648 B)"
    rows = _rows(text)
    assert rows["0"] == ["Conv2d", "156 (frozen)"] and rows["1"] == ["BatchNorm2d", "12 (6 frozen)"]
    assert "Output Shape" not in text and "Input shape" not in text  # no input: no shapes


class _Block(nn.Module):
    def __init__(self) -> None:
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        return nn.functional.relu(self.bn(self.conv(x))) + x


class _Net(nn.Module):
    def __init__(self) -> None:
        self.stem = nn.Conv2d(1, 2, 3, padding=1)
        self.blocks = [_Block(), _Block()]
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
        self.temperature = nn.Parameter(np.ones(1, dtype=np.float32))

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x) / self.temperature


def test_nested_modules_are_indented_under_dotted_names():
    text = _Net().summary((1, 6, 6), print_fn=None)
    lines = text.splitlines()
    assert "  blocks.0.conv (Conv2d)" in "\n".join(lines)
    rows = _rows(text)
    assert list(rows)[:4] == ["_Net", "stem", "blocks.0", "blocks.0.conv"]
    assert rows["_Net"] == ["the model's own", "(None, 3)", "1"]  # its own parameter: temperature
    assert rows["blocks.0"] == ["_Block", "(None, 2, 6, 6)", "--"]
    assert rows["head.1"] == ["Linear", "(None, 3)", "219"]
    model_total = int(_footer(text)["Total params"].split()[0].replace(",", ""))
    column = sum(int(r[2].split()[0].replace(",", "")) for r in rows.values() if r[2] != "--")
    assert column == model_total == _Net().num_parameters()


def _state(model: nn.Module):
    return ({k: v.copy() for k, v in model.state_dict().items()},
            [(m.__dict__.get("training", "class"), sorted(m.__dict__)) for m in model.modules()],
            [p.grad for p in model.parameters()])


def _assert_same(before, after):
    (s0, m0, g0), (s1, m1, g1) = before, after
    assert list(s0) == list(s1)
    for k in s0:
        np.testing.assert_array_equal(s1[k], s0[k], err_msg=k)
        assert s1[k].dtype == s0[k].dtype
    assert m0 == m1  # modes (an instance attribute or the class default) and no attribute left behind
    assert all(a is b for a, b in zip(g0, g1))


def test_summary_leaves_the_model_as_it_was():
    model = _lenet()
    x = bp.tensor(np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32))
    model.train()
    model(x).sum().backward()  # running statistics off their defaults, gradients present
    model[2].eval()  # mixed modes are restored one by one
    rng_state = get_rng().bit_generator.state
    before = _state(model)
    stats = model[1].running_mean
    model.summary((1, 28, 28), print_fn=None)
    model.summary(example_input=x, print_fn=None)
    _assert_same(before, _state(model))
    assert model[1].running_mean is stats and model.training and not model[2].training
    assert get_rng().bit_generator.state == rng_state


class _Meddler(nn.Module):
    """A layer that draws random numbers and updates a buffer even in eval mode."""

    def __init__(self) -> None:
        self.register_buffer("calls", np.zeros((), dtype=np.int64))

    def forward(self, x):
        self.calls += 1
        return x + float(get_rng().random())


def test_buffers_and_the_generator_are_restored_even_if_a_layer_touches_them():
    model = nn.Sequential(nn.Linear(3, 3), _Meddler())
    rng_state = get_rng().bit_generator.state
    model.summary((3,), print_fn=None)
    assert int(model[1].calls) == 0 and get_rng().bit_generator.state == rng_state


def test_a_bad_input_shape_names_the_layer_that_failed():
    model = _lenet()
    before = _state(model)
    with pytest.raises(ValueError, match=r"summary: layer '0' \(Conv2d\) fails on its input \(None, 3, 28, 28\): "
                                         r"ValueError: conv2d: input has 3 channels"):
        model.summary((3, 28, 28), print_fn=None)
    with pytest.raises(ValueError, match=r"layer '9' \(Linear\) fails on its input \(None, 256\): .*400"):
        model.summary((1, 24, 24), print_fn=None)
    with pytest.raises(ValueError, match=r"layer 'blocks.1.conv' \(Conv2d\) fails"):
        net = _Net()
        net.blocks[1].conv = nn.Conv2d(3, 2, 3)
        net.summary((1, 6, 6), print_fn=None)
    _assert_same(before, _state(model))  # nothing left behind by the failed runs
    assert all("forward" not in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("bad", ["28x28", (1, -28), (1.0, 28), [[1, 2], 3], True])
def test_input_shape_is_checked(bad):
    with pytest.raises(ValueError, match=r"input_shape must be one sample's shape, without the batch dimension"):
        nn.Sequential(nn.Linear(3, 2)).summary(bad, print_fn=None)


def test_other_arguments_are_checked():
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="input_shape or example_input, not both"):
        model.summary((3,), example_input=np.zeros((1, 3)), print_fn=None)
    with pytest.raises(ValueError, match="0-dimensional"):
        model.summary(example_input=np.float32(1.0), print_fn=None)
    from backprop.nn.summary import summary

    with pytest.raises(TypeError, match="expected a backprop Module, got list"):
        summary([model], print_fn=None)


def test_a_shared_module_is_counted_once_and_every_call_is_shown():
    class Twice(nn.Module):
        def __init__(self) -> None:
            self.body = nn.Linear(3, 3)
            self.again = self.body

        def forward(self, x):
            return self.again(self.body(x))

    text = Twice().summary((3,), print_fn=None)
    rows = _rows(text)
    assert rows["body"] == ["Linear", "(None, 3) [2 calls]", "12"]
    assert rows["again"] == ["Linear", "(None, 3) [2 calls]", "(shared: body)"]
    assert _footer(text)["Total params"].startswith("12 ")


def test_print_fn_gets_each_line_and_the_text_is_returned(capsys):
    model = nn.Sequential(nn.Linear(3, 2))
    lines = []
    text = model.summary(3, print_fn=lines.append)
    assert lines == text.splitlines() and capsys.readouterr().out == ""
    assert model.summary(3) == text and capsys.readouterr().out == text + "\n"  # print by default, like Keras


def test_example_input_and_several_inputs():
    class Two(nn.Module):
        def __init__(self) -> None:
            self.a, self.b = nn.Linear(3, 4), nn.Linear(5, 4)

        def forward(self, x, y):
            return self.a(x) * self.b(y)

    text = Two().summary([(3,), (5,)], print_fn=None)
    assert _footer(text)["Input shape"] == "(None, 3), (None, 5)"
    text2 = Two().summary(example_input=(np.ones((7, 3), np.float32), np.ones((7, 5), np.float32)), print_fn=None)
    assert text2 == text
    emb = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2))  # integer input from input_shape
    assert _rows(emb.summary((3,), print_fn=None))["0"] == ["Embedding", "(None, 3, 4)", "40"]
