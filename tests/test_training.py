"""The fit loop: counters, convergence, History, output, reproducibility, options, validation, divergence."""

import math
import re

import numpy as np
import pytest

import backprop as bp
from backprop import nn
from backprop.nn import functional as F


def blobs(n=200, seed=0, dim=2):
    """Two Gaussian blobs, well separated: (x float32 (n, dim), y int64 (n,))."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    centers = np.where(y[:, None] == 1, 1.5, -1.5)
    x = (centers + rng.normal(size=(n, dim))).astype(np.float32)
    return x, y.astype(np.int64)


def small_mlp(n_in=2, hidden=8, n_out=2, dropout=None, seed=0):
    bp.manual_seed(seed)
    layers = [nn.Linear(n_in, hidden), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, n_out))
    return nn.Sequential(*layers)


class Recorder(bp.Callback):
    def __init__(self):
        self.batches = []
        self.epochs = []
        self.began = self.ended = 0

    def on_train_begin(self, logs=None):
        self.began += 1

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append((batch, logs["size"]))

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append((epoch, dict(logs)))

    def on_train_end(self, logs=None):
        self.ended += 1


def id_recording_loss(seen):
    """A loss that records the targets it receives (sample ids) and returns a real loss."""

    def loss(out, yb):
        seen.append(np.array(yb))
        return (out * out).mean()

    return loss


# ================================================================================================ counters
class TestCounters:
    @pytest.mark.parametrize("n, b, per_epoch", [(100, 10, 10), (105, 10, 11), (7, 10, 1), (10, 1, 10)])
    def test_iterations_and_samples(self, n, b, per_epoch):
        x = np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)
        ids = np.arange(n)
        seen = []
        rec = Recorder()
        h = bp.fit(small_mlp(3), x, ids, loss=id_recording_loss(seen), metrics=(), batch_size=b, epochs=3,
                   seed=0, verbose=0, callbacks=[rec])
        assert h.epochs == 3
        assert h.iterations == 3 * per_epoch
        assert h.samples_seen == 3 * n
        assert len(rec.batches) == 3 * per_epoch
        assert sum(size for _, size in rec.batches) == 3 * n
        assert [i for i, _ in rec.batches[:per_epoch]] == list(range(per_epoch))
        assert rec.began == rec.ended == 1
        assert len(seen) == 3 * per_epoch
        assert all(len(s) <= b for s in seen)
        # every sample exactly once per epoch
        for e in range(3):
            epoch_ids = np.concatenate(seen[e * per_epoch:(e + 1) * per_epoch])
            assert sorted(epoch_ids.tolist()) == list(range(n))
        np.testing.assert_array_equal(np.bincount(np.concatenate(seen), minlength=n), 3)

    def test_textbook_one_epoch(self):
        x = np.zeros((100, 2), dtype=np.float32)
        y = np.arange(100) % 2
        assert bp.fit(small_mlp(), x, y, batch_size=10, epochs=1, verbose=0).iterations == 10
        h = bp.fit(small_mlp(), x, y, batch_size=10, epochs=3, verbose=0)
        assert (h.iterations, h.samples_seen, h.epochs) == (30, 300, 3)

    def test_shuffle_changes_order_between_epochs(self):
        x = np.zeros((40, 3), dtype=np.float32)
        seen = []
        bp.fit(small_mlp(3), x, np.arange(40), loss=id_recording_loss(seen), metrics=(), batch_size=40, epochs=2,
               seed=0, verbose=0)
        assert not np.array_equal(seen[0], seen[1])
        seen.clear()
        bp.fit(small_mlp(3), x, np.arange(40), loss=id_recording_loss(seen), metrics=(), batch_size=40, epochs=2,
               shuffle=False, verbose=0)
        np.testing.assert_array_equal(seen[0], np.arange(40))
        np.testing.assert_array_equal(seen[1], np.arange(40))

    def test_zero_epochs(self):
        model = small_mlp()
        before = model.state_dict()
        h = bp.fit(model, *blobs(20), epochs=0, verbose=0)
        assert (h.epochs, h.iterations, h.samples_seen) == (0, 0, 0)
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(v, before[k])


# ============================================================================================ convergence
class TestConvergence:
    def test_parabola(self):
        w = nn.Parameter(np.array([0.0], dtype=np.float64))
        opt = bp.optim.SGD([w], lr=0.1)
        for _ in range(200):
            opt.zero_grad()
            loss = ((w - 3.0) ** 2).sum()
            loss.backward()
            opt.step()
        assert abs(w.data[0] - 3.0) < 1e-8
        assert loss.item() < 1e-15

    def test_parabola_gradient(self):
        w = nn.Parameter(np.array([1.0], dtype=np.float64))
        ((w - 3.0) ** 2).sum().backward()
        np.testing.assert_allclose(w.grad, [-4.0])

    def test_xor(self):
        x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
        y = np.array([0, 1, 1, 0])
        model = small_mlp(2, 8, 2, seed=0)
        h = bp.fit(model, x, y, lr=0.5, batch_size=4, epochs=400, seed=0, verbose=0, optimizer="sgd")
        pred = bp.predict(model, x).argmax(axis=1)
        np.testing.assert_array_equal(pred, y)
        assert h.history["accuracy"][-1] == 1.0
        assert h.history["loss"][-1] < 0.1

    def test_blobs(self):
        x, y = blobs(200, seed=0)
        xt, yt = blobs(200, seed=1)
        model = small_mlp(2, 16, 2)
        h = bp.fit(model, x, y, optimizer="adam", lr=0.01, batch_size=20, epochs=20, seed=0, verbose=0)
        assert h.history["accuracy"][-1] >= 0.95
        assert bp.evaluate(model, xt, yt)["accuracy"] >= 0.95
        assert h.history["loss"][-1] < h.history["loss"][0]

    def test_moons(self):
        sklearn_datasets = pytest.importorskip("sklearn.datasets")
        x, y = sklearn_datasets.make_moons(200, noise=0.1, random_state=0)
        bp.manual_seed(0)
        model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
        h = bp.fit(model, x.astype(np.float32), y, optimizer="adam", lr=0.01, batch_size=20, epochs=60, seed=0,
                   verbose=0)
        assert bp.evaluate(model, x, y)["accuracy"] >= 0.95, h.history["accuracy"][-5:]

    def test_digits(self):
        (x_train, y_train), (x_test, y_test) = bp.datasets.load_digits()
        bp.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        opt = bp.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        h = bp.fit(model, x_train, y_train, optimizer=opt, batch_size=32, epochs=25, seed=0, verbose=0,
                   validation_data=(x_test, y_test))
        result = bp.evaluate(model, x_test, y_test)
        assert result["accuracy"] >= 0.95
        assert result["accuracy"] == pytest.approx(h.history["val_accuracy"][-1])


# =============================================================================================== History
class TestHistory:
    def test_keys_with_validation_data(self):
        x, y = blobs(60)
        xv, yv = blobs(30, seed=1)
        h = bp.fit(small_mlp(), x, y, validation_data=(xv, yv), epochs=3, batch_size=16, verbose=0)
        assert set(h.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
        assert all(len(v) == 3 for v in h.history.values())
        assert h.epoch == [0, 1, 2]
        assert all(0 <= a <= 1 for a in h.history["accuracy"] + h.history["val_accuracy"])
        assert h["loss"] is h.history["loss"]

    def test_val_metrics_match_evaluate(self):
        x, y = blobs(60)
        xv, yv = blobs(30, seed=1)
        model = small_mlp()
        h = bp.fit(model, x, y, validation_data=(xv, yv), epochs=2, batch_size=16, verbose=0)
        ev = bp.evaluate(model, xv, yv)
        assert h.history["val_loss"][-1] == pytest.approx(ev["loss"], rel=1e-6)
        assert h.history["val_accuracy"][-1] == pytest.approx(ev["accuracy"])

    def test_keys_with_validation_split(self):
        x, y = blobs(100)
        seen = []

        def loss(out, yb):
            seen.append(len(yb))
            return F.cross_entropy(out, yb)

        h = bp.fit(small_mlp(), x, y, validation_split=0.2, epochs=2, batch_size=10, seed=0, verbose=0, loss=loss)
        assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(h.history)
        assert all(len(v) == 2 for v in h.history.values())
        assert h.samples_seen == 2 * 80  # 20 samples held out
        assert h.iterations == 2 * 8
        assert len(h.validation_indices) == 20
        assert len(set(np.asarray(h.validation_indices).tolist())) == 20
        # drawn at random, not the last rows
        assert not np.array_equal(np.sort(h.validation_indices), np.arange(80, 100))

    def test_train_loss_is_sample_weighted_mean(self):
        # 10 samples, batches of 4, 4, 2: the epoch loss weights each batch by its size
        x = np.random.default_rng(0).normal(size=(10, 2)).astype(np.float32)
        y = np.arange(10) % 2
        batch_losses = []
        rec = bp.LambdaCallback(on_train_batch_end=lambda b, logs: batch_losses.append((logs["loss"], logs["size"])))
        h = bp.fit(small_mlp(), x, y, batch_size=4, epochs=1, verbose=0, callbacks=[rec], seed=0)
        expected = sum(l * n for l, n in batch_losses) / 10
        assert [n for _, n in batch_losses] == [4, 4, 2]
        assert h.history["loss"][0] == pytest.approx(expected, rel=1e-9)


def test_float64_model_trains_in_float64():
    x, y = blobs(40)
    model = small_mlp().double()
    grads = []
    rec = bp.LambdaCallback(on_train_batch_end=lambda b, logs: grads.append(model[0].weight.grad.dtype))
    h = bp.fit(model, x, y, epochs=2, batch_size=10, verbose=0, callbacks=[rec])
    assert h.history["loss"][-1] < h.history["loss"][0]
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert grads and all(g == np.float64 for g in grads)
    assert bp.predict(model, x).dtype == np.float64


# ================================================================================================ output
class TestVerbose:
    def test_verbose_0_silent(self, capsys):
        h = bp.fit(small_mlp(), *blobs(40), epochs=2, verbose=0)
        out, err = capsys.readouterr()
        assert out == "" and err == ""
        assert isinstance(h, bp.History) and h.epochs == 2

    @pytest.mark.parametrize("verbose", [1, 2])
    def test_one_line_per_epoch(self, capsys, verbose):
        h = bp.fit(small_mlp(), *blobs(40), validation_data=blobs(20, seed=1), epochs=3, batch_size=8,
                   verbose=verbose)
        out, err = capsys.readouterr()
        lines = out.splitlines()
        assert len(lines) == 3, out
        for i, line in enumerate(lines):
            assert line.startswith(f"Epoch {i + 1}/3")
            assert "loss" in line and "val_accuracy" in line
        assert f"{h.history['loss'][-1]:.4f}" in lines[-1]
        for bar_char in ("\r", "\x1b", "█", "it/s", "%|"):
            assert bar_char not in out and bar_char not in err
        assert err == ""

    def test_bad_verbose(self):
        with pytest.raises(ValueError, match="verbose"):
            bp.fit(small_mlp(), *blobs(10), verbose=3)


# ======================================================================================= reproducibility
class TestReproducibility:
    def _run(self, seed):
        x, y = blobs(64)
        bp.manual_seed(0)
        model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
        bp.fit(model, x, y, epochs=3, batch_size=8, seed=seed, verbose=0, validation_split=0.25)
        return model.state_dict()

    def test_same_seed_bit_identical(self):
        a, b = self._run(0), self._run(0)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    def test_different_seed_differs(self):
        a, c = self._run(0), self._run(1)
        assert any(not np.array_equal(a[k], c[k]) for k in a)

    def test_seed_controls_dropout_not_just_order(self):
        # same data order (shuffle=False, no split) but different seeds: only dropout masks differ
        x, y = blobs(32)
        results = []
        for seed in (0, 0, 1):
            bp.manual_seed(0)
            model = nn.Sequential(nn.Linear(2, 16), nn.Dropout(0.5), nn.Linear(16, 2))
            bp.fit(model, x, y, epochs=1, batch_size=8, seed=seed, shuffle=False, verbose=0)
            results.append(model.state_dict()["0.weight"])
        np.testing.assert_array_equal(results[0], results[1])
        assert not np.array_equal(results[0], results[2])


# ============================================================================================== options
class TestOptions:
    def _one_step(self, model, x, y, lr):
        """Weights after one full-batch SGD step computed by hand with the engine."""
        model.zero_grad()
        F.cross_entropy(model(bp.tensor(x)), y).backward()
        return {n: p.data - lr * p.grad for n, p in model.named_parameters()}

    def test_lr_is_used_and_changed_between_fits(self):
        x, y = blobs(16)
        model = small_mlp()
        for lr in (0.1, 0.5, 0.01):
            expected = self._one_step(model, x, y, lr)
            bp.fit(model, x, y, lr=lr, batch_size=16, epochs=1, shuffle=False, verbose=0)
            for n, p in model.named_parameters():
                np.testing.assert_allclose(p.data, expected[n], rtol=1e-5, atol=1e-7, err_msg=f"{n} lr={lr}")

    def test_optimizer_as_name(self):
        x, y = blobs(40)
        for name in ("sgd", "adam", "rmsprop", "adamw", "Adam"):
            model = small_mlp()
            h = bp.fit(model, x, y, optimizer=name, lr=0.01, epochs=3, batch_size=10, verbose=0, seed=0)
            assert h.history["loss"][-1] < h.history["loss"][0], name

    def test_unknown_optimizer_name(self):
        with pytest.raises(ValueError, match="nesterov_magic"):
            bp.fit(small_mlp(), *blobs(10), optimizer="nesterov_magic", verbose=0)

    def test_optimizer_as_object(self):
        x, y = blobs(40)
        model = small_mlp()
        opt = bp.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        bp.fit(model, x, y, optimizer=opt, epochs=1, batch_size=10, verbose=0)
        # the given optimizer did the steps: its momentum buffers exist for every parameter
        assert len(opt.state) == 4
        assert all("momentum_buffer" in s for s in opt.state.values())

    def test_optimizer_as_callable(self):
        x, y = blobs(40)
        model = small_mlp()
        made = []

        def factory(params):
            opt = bp.optim.SGD(params, lr=0.05, momentum=0.9)
            made.append(opt)
            return opt

        h = bp.fit(model, x, y, optimizer=factory, epochs=2, batch_size=10, verbose=0)
        assert len(made) == 1
        assert len(made[0].param_groups[0]["params"]) == 4
        assert made[0].state
        assert h.history["loss"][-1] < h.history["loss"][0]

    def test_loss_as_name_and_callable(self):
        x, y = blobs(40)
        onehot = np.eye(2, dtype=np.float32)[y]
        a, b = small_mlp(seed=3), small_mlp(seed=3)
        ha = bp.fit(a, x, y, loss="mse", epochs=2, batch_size=10, seed=0, verbose=0)
        hb = bp.fit(b, x, onehot, loss=lambda out, t: F.mse_loss(out, t), epochs=2, batch_size=10, seed=0, verbose=0)
        np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-6)
        for k, v in a.state_dict().items():
            np.testing.assert_allclose(v, b.state_dict()[k], rtol=1e-6, atol=1e-7, err_msg=k)

    def test_unknown_loss(self):
        with pytest.raises(ValueError, match="hinge"):
            bp.fit(small_mlp(), *blobs(10), loss="hinge", verbose=0)


# ============================================================================================ bad input
class TestBadInput:
    def setup_method(self):
        self.x, self.y = blobs(20)
        self.model = small_mlp()

    def fit(self, x=None, y=None, **kw):
        kw.setdefault("verbose", 0)
        return bp.fit(self.model, self.x if x is None else x, self.y if y is None else y, **kw)

    def test_length_mismatch(self):
        with pytest.raises(ValueError, match=r"20.*19|19.*20"):
            self.fit(y=self.y[:19])

    def test_empty_x(self):
        with pytest.raises(ValueError, match="empty"):
            self.fit(x=np.zeros((0, 2), dtype=np.float32), y=np.zeros(0, dtype=np.int64))

    def test_feature_mismatch(self):
        with pytest.raises(ValueError) as err:
            self.fit(x=np.zeros((20, 7), dtype=np.float32))
        msg = str(err.value)
        assert re.search(r"\b7\b", msg) and re.search(r"\b2\b", msg), msg

    def test_feature_mismatch_in_validation_data(self):
        with pytest.raises(ValueError):
            self.fit(validation_data=(np.zeros((4, 3), dtype=np.float32), np.zeros(4, dtype=np.int64)))

    @pytest.mark.parametrize("bad", [np.nan, np.inf])
    def test_non_finite_x(self, bad):
        x = self.x.copy()
        x[3, 1] = bad
        with pytest.raises(ValueError, match="NaN"):
            self.fit(x=x)

    @pytest.mark.parametrize("label, pattern", [(2, "2"), (-1, "-1"), (7, "7")])
    def test_label_out_of_range(self, label, pattern):
        y = self.y.copy()
        y[5] = label
        with pytest.raises(ValueError, match=pattern):
            self.fit(y=y)

    def test_label_non_integer(self):
        y = self.y.astype(np.float64)
        y[2] = 0.5
        with pytest.raises(ValueError, match="integer"):
            self.fit(y=y)

    def test_integer_valued_float_labels_accepted(self):
        h = self.fit(y=self.y.astype(np.float32), epochs=1)
        assert h.iterations == 1

    def test_bad_labels_nothing_trained(self):
        before = self.model.state_dict()
        y = self.y.copy()
        y[-1] = 5
        with pytest.raises(ValueError):
            self.fit(y=y)
        for k, v in self.model.state_dict().items():
            np.testing.assert_array_equal(v, before[k])

    @pytest.mark.parametrize("kw, name", [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -3}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"epochs": -1}, "epochs"),
        ({"lr": -0.1}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"validation_split": 1.0}, "validation_split"),
        ({"validation_split": -0.1}, "validation_split"),
    ])
    def test_bad_hyperparameters(self, kw, name):
        with pytest.raises(ValueError, match=name):
            self.fit(**kw)

    def test_string_arrays(self):
        with pytest.raises(TypeError):
            self.fit(x=np.array([["a", "b"]] * 20))
        with pytest.raises(TypeError):
            self.fit(y=np.array(["cat", "dog"] * 10))


# ============================================================================================= divergence
def test_divergence_raises_and_weights_stay_finite():
    x, y = blobs(40)
    model = small_mlp(2, 16, 2)
    with np.errstate(all="ignore"), pytest.raises(bp.TrainingDiverged, match="step") as err:
        bp.fit(model, x, y, loss="mse", lr=1e6, batch_size=10, epochs=5, seed=0, verbose=0)
    assert isinstance(err.value, FloatingPointError)
    for name, p in model.named_parameters():
        assert np.all(np.isfinite(p.data)), name
    assert model.training is False  # fit always leaves the model in eval mode


def test_divergence_from_overflowing_update_keeps_finite_weights():
    # The loss of step 1 is finite but lr * grad overflows float32, so the update itself makes the weights
    # infinite; TrainingDiverged promises "the model keeps the last finite weights".
    x, y = blobs(40)
    bp.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
    with np.errstate(all="ignore"), pytest.raises(bp.TrainingDiverged, match="step"):
        bp.fit(model, x * 100, y, loss="mse", lr=1e38, batch_size=10, epochs=2, seed=0, verbose=0)
    for name, p in model.named_parameters():
        assert np.all(np.isfinite(p.data)), name


# ================================================================================== evaluate / predict
class TestEvaluatePredict:
    def test_evaluate_matches_manual(self):
        x, y = blobs(30)
        model = small_mlp(seed=5)
        result = bp.evaluate(model, x, y, batch_size=7)
        with bp.no_grad():
            out = model(bp.tensor(x))
            loss = F.cross_entropy(out, y).item()
        acc = float(np.mean(out.data.argmax(axis=1) == y))
        assert result["loss"] == pytest.approx(loss, rel=1e-5)
        assert result["accuracy"] == pytest.approx(acc)
        assert set(result) == {"loss", "accuracy"}

    def test_evaluate_mse(self):
        x, _ = blobs(12)
        t = np.random.default_rng(1).normal(size=(12, 2)).astype(np.float32)
        model = small_mlp(seed=5)
        result = bp.evaluate(model, x, t, loss="mse", batch_size=5)
        with bp.no_grad():
            expected = F.mse_loss(model(bp.tensor(x)), t).item()
        assert result["loss"] == pytest.approx(expected, rel=1e-5)

    def test_predict_shape_and_eval_mode(self):
        x, _ = blobs(25)
        model = small_mlp(2, 32, 3, dropout=0.5)
        model.train()
        p1 = bp.predict(model, x, batch_size=4)
        p2 = bp.predict(model, x)
        assert p1.shape == (25, 3)
        assert isinstance(p1, np.ndarray)
        np.testing.assert_allclose(p1, p2, rtol=1e-6)  # dropout off: deterministic
        model.eval()
        with bp.no_grad():
            np.testing.assert_allclose(p1, model(bp.tensor(x)).data, rtol=1e-6)
        model.train()
        bp.predict(model, x)
        assert model.training  # the mode is restored

    def test_predict_feature_mismatch(self):
        with pytest.raises(ValueError):
            bp.predict(small_mlp(), np.zeros((3, 4), dtype=np.float32))


# ============================================================================================ interrupts
@pytest.mark.parametrize("stop_at", [1, 3, 7])
def test_keyboard_interrupt_returns_history(stop_at, capsys):
    x, y = blobs(50)
    steps = []

    class Stop(bp.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append(batch)
            if len(steps) == stop_at:
                raise KeyboardInterrupt

    model = small_mlp()
    h = bp.fit(model, x, y, batch_size=10, epochs=3, callbacks=[Stop()], verbose=0)
    assert h.interrupted is True
    assert h.iterations == stop_at == len(steps)
    assert h.samples_seen == 10 * stop_at
    assert h.epochs == stop_at // 5
    assert not model.training


def test_stop_training_from_callback():
    x, y = blobs(50)

    class StopAfterEpoch(bp.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.stop_training = True

    h = bp.fit(small_mlp(), x, y, batch_size=10, epochs=10, callbacks=[StopAfterEpoch()], verbose=0)
    assert h.epochs == 2 and h.iterations == 10 and h.stopped_early and not h.interrupted
    assert math.isfinite(h.history["loss"][-1])
