"""TrainingHealth: one line when training does not learn (stuck loss, identical units, vanishing gradients,
dead ReLUs, tiny steps), naming the layer and the option to change in the caller's words; nothing when
training is healthy. Small networks on the bundled 8x8 digits: the whole file runs in a few seconds."""

import warnings

import numpy as np
import pytest

import backprop as bp
from backprop.data import load_dataset
from backprop.nn import models
from backprop.nn.module import LazyGrad, raw_grad
from backprop.training import HealthIssue, TrainingHealth, TrainingHealthWarning
from backprop.training.health import ADVICE

CLI_ADVICE = {"lr": "--lr {value}", "optimizer": "--optimizer {value}", "activation": "--activation {value}",
              "init": None}


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    return ds.x_train, ds.y_train


def train(model, data, epochs=2, advice=None, **kw):
    """fit with a TrainingHealth whose lines are collected; (lines, the callback)."""
    lines: list[str] = []
    health = TrainingHealth(print_fn=lines.append, advice=advice)
    kw.setdefault("batch_size", 16)
    bp.fit(model, *data, epochs=epochs, seed=0, verbose=0, callbacks=[health], **kw)
    return lines, health


def sgd(model, lr, momentum=0.9):
    return bp.optim.get("sgd", list(model.parameters()), lr=lr, momentum=momentum)


def test_a_healthy_mlp_says_nothing(digits):
    bp.manual_seed(0)
    model = models.mlp(64, [128, 64], 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingHealthWarning)  # the default print_fn: a warning would raise
        health = TrainingHealth()
        h = bp.fit(model, *digits, optimizer=sgd(model, **{k: models.MODEL_DEFAULTS["mlp"][k]
                                                             for k in ("lr", "momentum")}),
                   batch_size=16, epochs=4, seed=0, verbose=0, callbacks=[health])
    assert h.history["loss"][-1] < 0.3 and health.issues == []
    assert set(health.grad_ratios) == {"0.weight", "2.weight", "4.weight"}


def test_a_tiny_learning_rate_is_one_line_naming_the_cause(digits):
    bp.manual_seed(0)
    lines, health = train(models.mlp(64, [128, 64], 10), digits, lr=1e-6)
    assert len(lines) == 1 and "\n" not in lines[0]
    line = lines[0]
    assert "the loss has not moved from its starting value" in line and "= ln(10): the network predicts chance" in line
    assert "the steps are tiny" in line and "a higher learning rate (lr=0.001)" in line
    assert [i.kind for i in health.issues] == ["small_steps"] and health.issues[0].epoch == 0


def test_a_zero_initialised_sigmoid_net_is_stuck_with_identical_units(digits):
    bp.manual_seed(0)
    model = models.mlp(64, [32, 32, 32], 10, activation="sigmoid")
    for p in model.parameters():
        p.data[...] = 0.0
    lines, health = train(model, digits, lr=0.1)
    assert len(lines) == 1
    assert "the loss has not moved" in lines[0] and "the 32 units of layer '0' are identical" in lines[0]
    assert "random initial weights (bp.nn.init.kaiming_uniform_)" in lines[0]
    assert health.issues[0].kind == "symmetric" and health.issues[0].layer == "0.weight"


def test_a_deep_sigmoid_net_has_vanishing_gradients_in_its_first_layer(digits):
    bp.manual_seed(0)
    model = models.mlp(64, [32] * 10, 10, activation="sigmoid")
    lines, health = train(model, digits, optimizer=sgd(model, 0.1))
    assert len(lines) == 1
    issue = health.issues[0]
    assert issue.kind == "vanishing" and issue.layer == "0.weight"
    assert "the gradients vanish: '0.weight' gets" in lines[0] and "of what '20.weight' gets" in lines[0]
    assert "ReLU, which does not saturate (activation='relu')" in lines[0]
    ratios = health.grad_ratios
    assert ratios["0.weight"] < 1e-3 * ratios["20.weight"]


def test_dead_relus_are_reported_during_the_epoch_naming_the_layer(digits):
    bp.manual_seed(0)
    model = models.mlp(64, [128, 64], 10)
    lines, health = train(model, digits, epochs=3, optimizer=sgd(model, 1.0))  # a step far too large
    assert len(lines) == 1  # NOTE: the stuck loss that follows is the same cause, not said again
    issue = health.issues[0]
    assert issue.kind == "dead" and issue.layer == "2.bias" and issue.epoch == 0 and issue.step < 90
    assert "every unit of layer '2' is dead: none of its 64 got a gradient" in lines[0]
    assert "a lower learning rate (lr=0.2)" in lines[0] and "Adam (optimizer='adam')" in lines[0]


def feed(losses, steps, lr=0.05):
    """Drive a TrainingHealth by hand through one epoch of these batch losses (no gradients to read)."""
    model = bp.nn.Sequential(bp.nn.Linear(4, 8), bp.nn.ReLU(), bp.nn.Linear(8, 10))
    lines: list[str] = []
    health = TrainingHealth(print_fn=lines.append)
    health.set_model(model)
    health.set_params({"steps": steps})
    health.set_optimizer(bp.optim.SGD(model.parameters(), lr=lr))
    health.on_train_begin({})
    health.on_epoch_begin(0, {})
    for i, loss in enumerate(losses):
        health.on_train_batch_end(i, {"loss": float(loss), "size": 16})
    health.on_epoch_end(0, {})
    return lines, health


def test_a_loss_that_falls_and_comes_back_to_chance_is_a_collapse():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.01, 100)
    lines, health = feed(np.r_[np.full(25, 2.30), np.full(50, 0.5), np.full(25, 2.30)] + noise, steps=100)
    assert len(lines) == 1 and health.issues[0].kind == "collapsed"
    assert "the loss fell to 0.5" in lines[0] and "= ln(10): the network now predicts chance" in lines[0]
    assert lines[0].endswith("the steps were too large; try a lower learning rate (lr=0.01) or Adam (optimizer='adam')")
    lines, _ = feed(np.r_[np.linspace(2.3, 0.2, 50), np.full(50, 0.2)] + noise, steps=100)  # learned, then flat
    assert lines == []


def test_a_loss_that_gives_back_most_of_what_it_learned_is_a_collapse_short_of_the_start():
    """LeNet-5 at lr 0.05 on MNIST: the loss falls to 0.6, then climbs to 2.23 as ReLUs die (start 2.30)."""
    noise = np.random.default_rng(0).normal(0, 0.01, 100)
    lines, health = feed(np.r_[np.full(25, 2.30), np.full(50, 0.6), np.full(25, 2.23)] + noise, steps=100)
    assert len(lines) == 1 and health.issues[0].kind == "collapsed"
    assert "the loss fell to 0.6" in lines[0] and "came back to 2.2" in lines[0]
    lines, _ = feed(np.r_[np.full(25, 2.30), np.full(50, 0.6), np.full(25, 0.9)] + noise, steps=100)
    assert lines == []  # a little worse at the end of the epoch is noise, not a collapse


def test_the_advice_speaks_the_callers_options(digits):
    bp.manual_seed(0)
    lines, _ = train(models.mlp(64, [128, 64], 10), digits, lr=1e-6, advice=CLI_ADVICE)
    assert lines[0].endswith("try a higher learning rate (--lr 0.001)") and "lr=" not in lines[0]
    bp.manual_seed(0)
    model = models.mlp(64, [128, 64], 10)
    lines, _ = train(model, digits, optimizer=sgd(model, 1.0), advice=CLI_ADVICE)
    assert "a lower learning rate (--lr 0.2) or Adam (--optimizer adam)" in lines[0]
    bp.manual_seed(0)
    model = models.mlp(64, [32, 32], 10, activation="sigmoid")
    for p in model.parameters():
        p.data[...] = 0.0
    lines, _ = train(model, digits, lr=0.1, advice=CLI_ADVICE)  # "init": None drops the suggestion
    assert "are identical" in lines[0] and "try" not in lines[0] and "bp.nn.init" not in lines[0]


def test_the_default_is_one_warning_line(digits):
    bp.manual_seed(0)
    model = models.mlp(64, [128, 64], 10)
    with pytest.warns(TrainingHealthWarning) as record:
        bp.fit(model, *digits, lr=1e-6, batch_size=16, epochs=2, seed=0, verbose=0, callbacks=[TrainingHealth()])
    assert len(record) == 1 and "\n" not in str(record[0].message)


def test_lazy_gradients_are_read_as_the_eager_ones_and_stay_lazy(digits):
    """Plain SGD under the captured step leaves LazyGrads on the Linear weights: read, not stored."""
    ratios = {}
    for jit in (True, False):
        bp.manual_seed(0)
        model = models.mlp(64, [128, 64], 10)
        health, kinds = TrainingHealth(every=10, print_fn=print), []
        after = bp.training.LambdaCallback(  # runs after the health check of the same batch
            on_train_batch_end=lambda b, logs: kinds.append(type(raw_grad(model[0].weight))))
        bp.fit(model, *digits, lr=0.1, batch_size=16, epochs=1, seed=0, verbose=0, jit=jit,
               callbacks=[health, after])
        ratios[jit] = health.grad_ratios
        if jit:  # read at steps 10, 20, ... (batches 9, 19, ...), and still lazy afterwards
            assert kinds[9] is LazyGrad and kinds[19] is LazyGrad
    for name in ratios[False]:
        assert ratios[True][name] == pytest.approx(ratios[False][name], rel=1e-4)


def test_options_are_checked():
    with pytest.raises(ValueError, match="unknown advice key 'learning_rate'"):
        TrainingHealth(advice={"learning_rate": "--lr {value}"})
    with pytest.raises(ValueError, match="only field is"):
        TrainingHealth(advice={"lr": "--lr {lr}"})
    with pytest.raises(TypeError, match="str template or None"):
        TrainingHealth(advice={"lr": 3})
    for kw in ({"every": 0}, {"rtol": 0.0}, {"vanishing": 2.0}, {"dead": -1}, {"n_classes": 1}):
        with pytest.raises(ValueError, match="TrainingHealth"):
            TrainingHealth(**kw)
    assert set(ADVICE) == {"lr", "optimizer", "activation", "init"}
    assert HealthIssue._fields == ("kind", "epoch", "step", "layer", "message")
