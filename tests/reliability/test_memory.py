"""Memory stays flat over long training: every step's graph is released, nothing accumulates.

tracemalloc sees NumPy's arrays (NumPy reports its allocations to it) and every Python object. The peak
after step 100 (by then every buffer, optimizer state and cache exists) may grow by less than 5% up to
step 2,000; the same over many epochs of ``fit``. ``tests/test_engine.py`` checks the memory in use at
two points; here it is the peak (a graph kept alive for one step too long shows there), the graph's
release itself, and ``fit``.
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref

import numpy as np
import pytest

import backprop as bp
from backprop import nn
from backprop.nn import functional as F

STEPS, WARM = 2000, 100


@pytest.fixture
def traced():
    gc.collect()
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def _mlp() -> nn.Module:
    bp.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 64), nn.Tanh(),
                         nn.Linear(64, 5))


def test_training_steps_peak_memory_is_flat(traced) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 32)).astype(np.float32)
    y = rng.integers(0, 5, size=64)
    model = _mlp()
    opt = bp.optim.Adam(model.parameters(), lr=1e-3)
    graphs: list[weakref.ref] = []
    for step in range(1, STEPS + 1):
        opt.zero_grad()
        loss = F.cross_entropy(model(bp.Tensor(x)), y)
        loss.backward()
        opt.step()
        if step % 400 == 0:
            graphs.append(weakref.ref(loss.grad_fn))
        if step == 1:
            first = loss.item()
        if step == WARM:
            peak_warm = tracemalloc.get_traced_memory()[1]
    peak_end = tracemalloc.get_traced_memory()[1]
    del loss
    gc.collect()
    assert all(g() is None for g in graphs), "a step's graph is still alive"
    assert peak_end < 1.05 * peak_warm, f"peak {peak_warm} B at step {WARM}, {peak_end} B at step {STEPS}"
    assert not any(np.isnan(p.data).any() for p in model.parameters()) and first > 0


def test_graph_is_released_by_backward_even_if_the_loss_is_kept() -> None:
    """After backward() the saved arrays are freed although the caller still holds the loss tensor."""
    model = _mlp()
    x = bp.Tensor(np.ones((8, 32), np.float32))
    loss = model(x).sum()
    loss.backward()
    fn = loss.grad_fn
    assert fn.parents is None and not {k: v for k, v in vars(fn).items() if k not in ("parents", "retains")}


def test_fit_peak_memory_is_flat_over_many_epochs(traced) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(256, 32)).astype(np.float32)
    y = rng.integers(0, 5, size=256)
    model = _mlp()
    peaks: dict[int, int] = {}

    def record(epoch, logs):
        peaks[epoch + 1] = tracemalloc.get_traced_memory()[1]

    epochs = 150  # 150 * 8 = 1,200 steps, validation every epoch
    history = bp.fit(model, x, y, lr=0.05, batch_size=32, epochs=epochs, validation_split=0.25, seed=0,
                     verbose=0, callbacks=[bp.LambdaCallback(on_epoch_end=record)])
    assert history.epochs == epochs
    # the History grows by a few floats per epoch (about 100 B): allowed for, on top of the 5%
    growth = peaks[epochs] - peaks[10]
    assert growth < 0.05 * peaks[10] + 200 * epochs, f"peak {peaks[10]} B after epoch 10, {peaks[epochs]} B at the end"


def test_repeated_fit_calls_do_not_accumulate(traced) -> None:
    """fit() called again and again on one model (hyper-parameter search) keeps nothing from earlier calls."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(128, 32)).astype(np.float32)
    y = rng.integers(0, 5, size=128)
    model = _mlp()
    current = []
    for _ in range(40):
        bp.fit(model, x, y, lr=0.01, batch_size=32, epochs=2, verbose=0)
        gc.collect()
        current.append(tracemalloc.get_traced_memory()[0])
    assert current[-1] < 1.05 * current[4], (current[4], current[-1])
