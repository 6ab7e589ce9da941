"""Callbacks in fit: EarlyStopping, ModelCheckpoint, CSVLogger, LearningRateScheduler, TerminateOnNaN,
ProgressBar, the hook order, and on_train_end however training ends."""

import csv
import math
import os
import sys

import numpy as np
import pytest

import backprop as bp
from backprop import nn
from backprop.nn import functional as F
from backprop.training import (
    CSVLogger,
    EarlyStopping,
    LearningRateScheduler,
    ModelCheckpoint,
    ProgressBar,
    TensorBoard,
    TerminateOnNaN,
)

try:  # written in parallel; a stand-in with the same API until it exists
    from backprop.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau, StepLR
except ImportError:  # pragma: no cover
    class _Sched:
        def __init__(self, optimizer):
            self.optimizer, self.last_epoch = optimizer, 0
            self.base = optimizer.param_groups[0]["lr"]
            self._set(self.lr_at(0))

        def _set(self, lr):
            for g in self.optimizer.param_groups:
                g["lr"] = lr

        def step(self):
            self.last_epoch += 1
            self._set(self.lr_at(self.last_epoch))

        def get_last_lr(self):
            return [g["lr"] for g in self.optimizer.param_groups]

    class StepLR(_Sched):
        def __init__(self, optimizer, step_size, gamma=0.1):
            self.step_size, self.gamma = step_size, gamma
            super().__init__(optimizer)

        def lr_at(self, t):
            return self.base * self.gamma ** (t // self.step_size)

    class OneCycleLR(_Sched):
        def __init__(self, optimizer, max_lr, total_steps):
            self.max_lr, self.total = max_lr, total_steps
            super().__init__(optimizer)

        def lr_at(self, t):
            return self.max_lr * (1 - abs(2 * t / self.total - 1)) + 1e-4

    class ReduceLROnPlateau:
        def __init__(self, optimizer, factor=0.1, patience=10):
            self.optimizer, self.factor, self.patience, self.best, self.bad = optimizer, factor, patience, None, 0

        def step(self, metrics):
            if self.best is None or metrics < self.best:
                self.best, self.bad = metrics, 0
                return
            self.bad += 1
            if self.bad > self.patience:
                for g in self.optimizer.param_groups:
                    g["lr"] *= self.factor
                self.bad = 0


def blobs(n=40, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = (np.where(y[:, None] == 1, 1.0, -1.0) + rng.normal(size=(n, 2))).astype(np.float32)
    return x, y.astype(np.int64)


def small_mlp(seed=0):
    bp.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))


class Score(bp.Callback):
    """Puts a scripted metric ``score`` into the epoch logs (runs before the callbacks that read it)."""

    def __init__(self, values):
        self.values = values

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = self.values[epoch]


class Weights(bp.Callback):
    """Records the weights and logs at the end of every epoch."""

    def __init__(self):
        self.states, self.logs = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.states.append(self.model.state_dict())
        self.logs.append(dict(logs))


def assert_weights(model, state):
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)


def assert_not_weights(model, state):
    assert any(not np.array_equal(v, state[k]) for k, v in model.state_dict().items())


# ========================================================================================= EarlyStopping
def run_early(scores, epochs, *, patience=10, extra=(), **kw):
    model, rec = small_mlp(), Weights()
    es = EarlyStopping(monitor="score", mode="min", patience=patience, restore_best_weights=True)
    h = bp.fit(model, *blobs(), batch_size=10, epochs=epochs, verbose=0, callbacks=[Score(scores), es, rec, *extra],
               **kw)
    return model, rec, es, h


def test_early_stopping_restores_best_when_epochs_run_out():
    model, rec, es, h = run_early([5, 3, 1, 2, 4, 6], epochs=6)
    assert h.epochs == 6 and not h.stopped_early and es.stopped_epoch == 0
    assert es.best_epoch == 2 and es.best == 1
    assert_not_weights(model, rec.states[-1])  # training went on after the best epoch...
    assert_weights(model, rec.states[2])  # ...and the best epoch's weights came back


def test_early_stopping_restores_best_when_patience_ends_training():
    model, rec, es, h = run_early([5, 3, 1, 2, 4, 6, 7, 8], epochs=8, patience=2)
    assert h.stopped_early and es.stopped_epoch == 4 and h.epochs == 5
    assert len(h.history["loss"]) == 5
    assert_weights(model, rec.states[2])


def test_early_stopping_restores_best_on_keyboard_interrupt():
    calls = []

    class Interrupt(bp.Callback):
        def on_train_batch_end(self, batch, logs=None):
            calls.append(batch)
            if len(calls) == 11:  # epoch 2 (0-based), third batch
                raise KeyboardInterrupt

    model, rec, _, h = run_early([3, 1, 2, 4], epochs=4, extra=[Interrupt()])
    assert h.interrupted and h.epochs == 2
    assert_weights(model, rec.states[1])


def test_early_stopping_restores_best_when_another_callback_stops():
    stop = bp.LambdaCallback(on_epoch_end=lambda epoch, logs: setattr(stop.model, "stop_training", epoch == 3))
    model, rec, _, h = run_early([4, 2, 3, 5, 1, 0], epochs=6, extra=[stop])
    assert h.epochs == 4 and h.stopped_early
    assert_weights(model, rec.states[1])


def test_early_stopping_restores_best_on_divergence_and_reraises():
    steps = []

    def loss(out, y):
        steps.append(1)
        value = F.cross_entropy(out, y)
        return value * float("nan") if len(steps) == 14 else value

    ended = []
    model, rec = small_mlp(), Weights()
    es = EarlyStopping(monitor="score", mode="min", restore_best_weights=True, patience=10)
    with pytest.raises(bp.TrainingDiverged) as err:
        bp.fit(model, *blobs(), loss=loss, batch_size=10, epochs=5, verbose=0,
               callbacks=[Score([2, 1, 3, 4, 5]), es, rec, bp.LambdaCallback(on_train_end=ended.append)])
    assert ended == [rec.logs[-1]]  # on_train_end ran, with the last epoch's logs
    assert err.value.history.epochs == 3 and err.value.history.iterations == 13
    assert_weights(model, rec.states[1])


def test_early_stopping_real_val_loss_and_min_delta():
    x, y = blobs(60)
    model, rec = small_mlp(), Weights()
    es = EarlyStopping(patience=1, min_delta=1e-3, restore_best_weights=True)
    h = bp.fit(model, x[:40], y[:40], validation_data=(x[40:], y[40:]), lr=2.0, batch_size=10, epochs=15,
               verbose=0, seed=0, callbacks=[es, rec])
    val = h.history["val_loss"]
    best = int(np.argmin(val))
    # the best epoch beats every earlier one by min_delta (Keras's improvement rule), so it is the one kept
    assert es.best == pytest.approx(val[es.best_epoch])
    assert_weights(model, rec.states[es.best_epoch])
    assert val[es.best_epoch] <= val[best] + 1e-3


def test_early_stopping_falls_back_to_loss_with_a_warning():
    es = EarlyStopping(patience=0)
    with pytest.warns(UserWarning, match="'loss'"):
        bp.fit(small_mlp(), *blobs(), epochs=2, verbose=0, callbacks=[es])
    assert es.monitor == "loss" and es.mode == "min"


def test_early_stopping_baseline_and_mode_auto():
    es = EarlyStopping(monitor="val_accuracy")
    assert es.mode == "max"
    assert EarlyStopping(monitor="val_top_5_accuracy").mode == "max"
    assert EarlyStopping(monitor="macro_f1").mode == "max"
    assert EarlyStopping(monitor="val_loss").mode == "min"
    # baseline never reached: the first epoch does not reset the patience counter
    for baseline, stopped in ((None, 2), (0.5, 1)):
        es = EarlyStopping(monitor="score", mode="min", baseline=baseline, patience=2)
        h = bp.fit(small_mlp(), *blobs(), epochs=10, verbose=0, callbacks=[Score([3] * 10), es])
        assert es.stopped_epoch == stopped and h.epochs == stopped + 1


def test_early_stopping_start_from_epoch():
    es = EarlyStopping(monitor="score", mode="min", patience=0, start_from_epoch=3)
    h = bp.fit(small_mlp(), *blobs(), epochs=8, verbose=0, callbacks=[Score([9, 8, 7, 1, 2, 3, 4, 5]), es])
    assert h.epochs == 5 and es.best_epoch == 3


# ======================================================================================= ModelCheckpoint
def test_model_checkpoint_save_best_only(tmp_path):
    rec = Weights()
    ckpt = ModelCheckpoint(str(tmp_path / "ckpt" / "model-{epoch}-{score:.1f}.safetensors"), monitor="score",
                           save_best_only=True, mode="min")
    model = small_mlp()
    bp.fit(model, *blobs(), epochs=5, batch_size=10, verbose=0, callbacks=[Score([3, 2, 4, 1, 5]), ckpt, rec])
    files = sorted(os.listdir(tmp_path / "ckpt"))
    assert files == ["model-1-3.0.safetensors", "model-2-2.0.safetensors", "model-4-1.0.safetensors"]
    loaded = bp.io.load(tmp_path / "ckpt" / "model-4-1.0.safetensors")
    assert_weights(loaded, rec.states[3])
    meta = bp.io.load_metadata(tmp_path / "ckpt" / "model-4-1.0.safetensors")
    assert meta["epoch"] == 4 and meta["score"] == 1.0
    assert ckpt.best == 1 and ckpt.last_saved.endswith("model-4-1.0.safetensors")


def test_model_checkpoint_every_epoch_weights_only_val_loss(tmp_path):
    x, y = blobs(60)
    rec = Weights()
    ckpt = ModelCheckpoint(tmp_path / "w-{epoch:02d}-{val_loss:.4f}.safetensors", save_weights_only=True)
    model = small_mlp()
    h = bp.fit(model, x[:40], y[:40], validation_data=(x[40:], y[40:]), epochs=3, verbose=0, callbacks=[ckpt, rec])
    names = sorted(os.listdir(tmp_path))
    assert names == [f"w-{e + 1:02d}-{v:.4f}.safetensors" for e, v in enumerate(h.history["val_loss"])]
    other = small_mlp(seed=1)
    bp.io.load_weights(other, tmp_path / names[1])
    assert_weights(other, rec.states[1])


def test_model_checkpoint_bad_field(tmp_path):
    with pytest.raises(ValueError, match="val_acc"):
        bp.fit(small_mlp(), *blobs(), epochs=1, verbose=0,
               callbacks=[ModelCheckpoint(tmp_path / "m-{val_acc}.safetensors")])


# ============================================================================================ CSVLogger
def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_logger_equals_history(tmp_path):
    x, y = blobs(60)
    path = tmp_path / "log.csv"
    h = bp.fit(small_mlp(), x[:40], y[:40], validation_data=(x[40:], y[40:]), epochs=3, verbose=0,
               callbacks=[CSVLogger(path)])
    rows = read_csv(path)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert list(rows[0]) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    for key, values in h.history.items():
        assert [float(r[key]) for r in rows] == values, key  # exact: written with repr
    assert [p for p in os.listdir(tmp_path) if p != "log.csv"] == []  # no temporary files left


def test_csv_logger_append_and_separator(tmp_path):
    path = tmp_path / "log.tsv"
    h1 = bp.fit(small_mlp(), *blobs(), epochs=2, verbose=0, callbacks=[CSVLogger(path, separator="\t")])
    h2 = bp.fit(small_mlp(), *blobs(), epochs=2, verbose=0, scheduler=lambda opt: StepLR(opt, 1, 0.5),
                callbacks=[CSVLogger(path, separator="\t", append=True)])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [float(r["loss"]) for r in rows] == h1.history["loss"] + h2.history["loss"]
    assert [r["lr"] for r in rows[:2]] == ["", ""]  # a column that appeared later
    assert [float(r["lr"]) for r in rows[2:]] == h2.history["lr"]
    bp.fit(small_mlp(), *blobs(), epochs=1, verbose=0, callbacks=[CSVLogger(path, separator="\t")])
    assert len(read_csv(path)) == 1  # append=False starts afresh


# ================================================================================ LearningRateScheduler
class BatchLR(bp.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_begin(self, batch, logs=None):
        self.lrs.append(self.optimizer.param_groups[0]["lr"])


def test_lr_scheduler_function():
    rec = BatchLR()
    sched = LearningRateScheduler(lambda epoch, lr: 0.2 * 0.5 ** epoch)
    h = bp.fit(small_mlp(), *blobs(), batch_size=10, epochs=4, verbose=0, callbacks=[sched, rec])
    expected = [0.2 * 0.5 ** e for e in range(4)]
    assert h.history["lr"] == pytest.approx(expected)
    assert rec.lrs == pytest.approx(np.repeat(expected, 4).tolist())


def test_lr_scheduler_function_of_epoch_only_and_verbose(capsys):
    h = bp.fit(small_mlp(), *blobs(), epochs=2, verbose=0,
               callbacks=[LearningRateScheduler(lambda epoch: 0.01 * (epoch + 1), verbose=1)])
    assert h.history["lr"] == pytest.approx([0.01, 0.02])
    assert "setting learning rate to 0.02" in capsys.readouterr().out


def test_lr_scheduler_bad_value():
    with pytest.raises(ValueError, match="schedule returned"):
        bp.fit(small_mlp(), *blobs(), epochs=1, verbose=0, callbacks=[LearningRateScheduler(lambda e, lr: -1.0)])


def test_lr_scheduler_with_step_lr():
    model = small_mlp()
    opt = bp.optim.SGD(model.parameters(), lr=0.1)
    rec = BatchLR()
    h = bp.fit(model, *blobs(), optimizer=opt, batch_size=20, epochs=5, verbose=0,
               callbacks=[LearningRateScheduler(StepLR(opt, step_size=2, gamma=0.5)), rec])
    assert h.history["lr"] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    assert rec.lrs == pytest.approx([0.1] * 4 + [0.05] * 4 + [0.025] * 2)
    assert set(h.history) == {"loss", "accuracy", "lr"}


def test_scheduler_on_another_optimizer_is_refused():
    model = small_mlp()
    other = bp.optim.SGD(small_mlp().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="another optimizer"):
        bp.fit(model, *blobs(), epochs=1, verbose=0, scheduler=StepLR(other, 1))


def test_one_cycle_per_step_matches_a_manual_schedule():
    x, y = blobs(40)
    epochs, steps = 3, 4
    rec = BatchLR()
    model = small_mlp()
    h = bp.fit(model, x, y, optimizer="sgd", lr=0.1, batch_size=10, epochs=epochs, verbose=0, callbacks=[rec],
               scheduler=lambda opt: OneCycleLR(opt, max_lr=0.5, total_steps=epochs * steps),
               scheduler_interval="step")
    ref_opt = bp.optim.SGD(small_mlp().parameters(), lr=0.1)
    ref = OneCycleLR(ref_opt, max_lr=0.5, total_steps=epochs * steps)
    expected = []
    for _ in range(epochs * steps):
        expected.append(ref_opt.param_groups[0]["lr"])
        ref.step()
    assert len(rec.lrs) == epochs * steps
    assert rec.lrs == pytest.approx(expected)
    assert len(set(np.round(rec.lrs, 8))) > epochs  # it changed within epochs
    # lr in the History: the optimizer's rate at each epoch's end
    assert h.history["lr"] == pytest.approx([expected[steps], expected[2 * steps], ref_opt.param_groups[0]["lr"]])


def test_reduce_lr_on_plateau_gets_the_metric():
    model = small_mlp()
    opt = bp.optim.SGD(model.parameters(), lr=0.1)
    h = bp.fit(model, *blobs(), optimizer=opt, epochs=6, verbose=0,
               callbacks=[Score([1, 1, 1, 1, 1, 1]),
                          LearningRateScheduler(ReduceLROnPlateau(opt, factor=0.5, patience=1), monitor="score")])
    assert h.history["lr"] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.025])


# ======================================================================================== TerminateOnNaN
def nan_at(step):
    count = []

    def loss(out, y):
        count.append(1)
        value = F.cross_entropy(out, y)
        return value * float("nan") if len(count) == step else value

    return loss


def test_terminate_on_nan_stops_and_returns_history(capsys):
    model, rec = small_mlp(), Weights()
    h = bp.fit(model, *blobs(), loss=nan_at(7), batch_size=10, epochs=5, verbose=0,
               callbacks=[TerminateOnNaN(), rec])
    assert isinstance(h, bp.History)
    assert h.terminated_on_nan and h.stopped_early and not h.interrupted
    assert h.iterations == 6 and h.epochs == 2
    assert math.isfinite(h.history["loss"][0]) and math.isnan(h.history["loss"][1])
    for p in model.parameters():
        assert np.isfinite(p.data).all()
    assert_weights(model, rec.states[-1])
    assert "Invalid loss" in capsys.readouterr().err


def test_without_terminate_on_nan_fit_raises():
    with pytest.raises(bp.TrainingDiverged, match="TerminateOnNaN"):
        bp.fit(small_mlp(), *blobs(), loss=nan_at(3), batch_size=10, epochs=2, verbose=0)


# ========================================================================================= hook order
class HookLog(bp.Callback):
    def __init__(self):
        self.calls = []

    def on_train_begin(self, logs=None):
        self.calls.append(("train_begin",))

    def on_train_end(self, logs=None):
        self.calls.append(("train_end",))

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch))

    def on_train_batch_begin(self, batch, logs=None):
        self.calls.append(("batch_begin", batch))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("batch_end", batch))


def test_hook_order_and_counts():
    log = HookLog()
    bp.fit(small_mlp(), *blobs(25), batch_size=10, epochs=2, verbose=0, callbacks=[log])
    expected = [("train_begin",)]
    for e in range(2):
        expected.append(("epoch_begin", e))
        for b in range(3):
            expected += [("batch_begin", b), ("batch_end", b)]
        expected.append(("epoch_end", e))
    expected.append(("train_end",))
    assert log.calls == expected


def test_hooks_on_interrupt_and_divergence_end_with_train_end():
    log = HookLog()

    class Stop(bp.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    h = bp.fit(small_mlp(), *blobs(20), batch_size=10, epochs=3, verbose=0, callbacks=[log, Stop()])
    assert h.interrupted and log.calls[-2:] == [("epoch_begin", 1), ("train_end",)]
    log = HookLog()
    with pytest.raises(bp.TrainingDiverged):
        bp.fit(small_mlp(), *blobs(20), loss=nan_at(2), batch_size=10, epochs=3, verbose=0, callbacks=[log])
    assert log.calls[-3:] == [("batch_begin", 1), ("batch_end", 1), ("train_end",)]


def test_epoch_callbacks_get_no_batch_calls():
    from backprop.training.loop import _overrides

    assert not _overrides(EarlyStopping(), "on_train_batch_end")
    assert not _overrides(LearningRateScheduler(lambda e, lr: lr), "on_train_batch_end")
    assert _overrides(LearningRateScheduler(StepLR(bp.optim.SGD(small_mlp().parameters()), 1), interval="step"),
                      "on_train_batch_end")
    assert _overrides(TerminateOnNaN(), "on_train_batch_end")


# ============================================================================================= progress
def test_progress_bar_callback_prints_like_verbose_1(capsys):
    x, y = blobs(60)
    h = bp.fit(small_mlp(), x[:40], y[:40], validation_data=(x[40:], y[40:]), epochs=2, verbose=0,
               callbacks=[ProgressBar(), LearningRateScheduler(lambda e, lr: 0.1)])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].startswith("Epoch 2/2")
    assert "val_accuracy" in out[1] and "lr 0.1000" in out[1]  # it runs after the other callbacks
    assert f"{h.history['loss'][-1]:.4f}" in out[1]


def test_progress_bar_forced_bar(capsys):
    bp.fit(small_mlp(), *blobs(), epochs=1, verbose=1, callbacks=[ProgressBar(bar=True)])
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1  # fit's own line is replaced by the callback's
    assert "Epoch 1/1" in err  # the tqdm bar


# ========================================================================================== TensorBoard
def test_tensorboard_missing_package(monkeypatch):
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        TensorBoard("logs")
