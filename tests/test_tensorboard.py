"""The TensorBoard callback: event files read back with TensorBoard's own EventAccumulator."""

import numpy as np
import pytest

import backprop as bp
from backprop import nn
from backprop.training import LearningRateScheduler, TensorBoard

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def blobs(n=40, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = (np.where(y[:, None] == 1, 1.0, -1.0) + rng.normal(size=(n, 2))).astype(np.float32)
    return x, y.astype(np.int64)


def small_mlp():
    bp.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))


def read(log_dir):
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


class BatchLosses(bp.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(logs["loss"])


def test_scalars_batches_and_histograms(tmp_path):
    x, y = blobs(60)
    rec = BatchLosses()
    epochs, steps, every = 3, 5, 2  # 40 samples / batch 8 = 5 iterations per epoch
    h = bp.fit(small_mlp(), x[:40], y[:40], validation_data=(x[40:], y[40:]), batch_size=8, epochs=epochs, verbose=0,
               callbacks=[LearningRateScheduler(lambda e, lr: 0.1 / (e + 1)),
                          TensorBoard(tmp_path, update_freq=every, histogram_freq=1), rec])
    acc = read(tmp_path)
    tags = acc.Tags()
    assert set(tags["scalars"]) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "batch/loss"}
    for key, values in h.history.items():
        events = acc.Scalars(key)
        assert [e.step for e in events] == list(range(epochs))
        np.testing.assert_allclose([e.value for e in events], values, rtol=1e-6, err_msg=key)
    batch = acc.Scalars("batch/loss")
    n_points = epochs * steps // every
    assert [e.step for e in batch] == [every * (i + 1) for i in range(n_points)]
    windows = np.asarray(rec.losses[: n_points * every]).reshape(n_points, every).mean(axis=1)
    np.testing.assert_allclose([e.value for e in batch], windows, rtol=1e-6)

    names = [n for n, _ in small_mlp().named_parameters()]
    assert set(tags["histograms"]) == {f"{kind}/{n}" for kind in ("weights", "grads") for n in names}
    model = small_mlp()
    for n, p in model.named_parameters():
        events = acc.Histograms(f"weights/{n}")
        assert [e.step for e in events] == list(range(epochs))
        v = events[0].histogram_value
        assert v.num == p.data.size and sum(v.bucket) == p.data.size
        assert v.min <= v.max and len(v.bucket) == len(v.bucket_limit)
        assert len(acc.Histograms(f"grads/{n}")) == epochs


def test_last_histogram_matches_final_weights(tmp_path):
    model = small_mlp()
    bp.fit(model, *blobs(), epochs=2, verbose=0, callbacks=[TensorBoard(tmp_path)])
    v = read(tmp_path).Histograms("weights/0.weight")[-1].histogram_value
    w = model.state_dict()["0.weight"].astype(np.float64)
    assert v.min == pytest.approx(w.min()) and v.max == pytest.approx(w.max())
    assert v.sum == pytest.approx(w.sum(), rel=1e-6) and v.sum_squares == pytest.approx((w * w).sum(), rel=1e-6)
    assert v.bucket_limit[-1] == pytest.approx(w.max())


def test_epoch_update_freq_and_histogram_freq(tmp_path):
    tb = TensorBoard(tmp_path, histogram_freq=2)
    assert "on_train_batch_end" not in vars(tb)  # no per-step hook when only epochs are logged
    h = bp.fit(small_mlp(), *blobs(), epochs=5, verbose=0, callbacks=[tb])
    acc = read(tmp_path)
    assert set(acc.Tags()["scalars"]) == {"loss", "accuracy"}
    assert len(acc.Scalars("loss")) == h.epochs == 5
    assert [e.step for e in acc.Histograms("weights/2.bias")] == [0, 2, 4]
    tb0 = TensorBoard(tmp_path / "none", histogram_freq=0)
    bp.fit(small_mlp(), *blobs(), epochs=2, verbose=0, callbacks=[tb0])
    assert read(tmp_path / "none").Tags()["histograms"] == []


def test_writer_closed_on_interrupt(tmp_path):
    class Stop(bp.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    tb = TensorBoard(tmp_path, update_freq=1)
    h = bp.fit(small_mlp(), *blobs(), batch_size=10, epochs=4, verbose=0, callbacks=[tb, Stop()])
    assert h.interrupted and tb.writer is None
    acc = read(tmp_path)
    assert len(acc.Scalars("batch/loss")) == 8 and len(acc.Scalars("loss")) == 2


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="update_freq"):
        TensorBoard(tmp_path, update_freq="batch")
    with pytest.raises(ValueError, match="histogram_freq"):
        TensorBoard(tmp_path, histogram_freq=-1)
