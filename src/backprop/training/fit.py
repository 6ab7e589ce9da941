"""``fit``, ``evaluate``, ``predict``: training by mini-batch gradient descent in one call, as in Keras.

One iteration: a mini-batch goes forward through the model, the loss measures its error, ``backward``
carries the error back through every layer, and the optimizer moves every weight against its gradient.
With N samples and batch size B an epoch is ceil(N/B) iterations in which every sample is used once.

>>> import numpy as np, backprop as bp
>>> _ = bp.manual_seed(0)
>>> x = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
>>> y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)            # XOR of the signs
>>> model = bp.nn.Sequential(bp.nn.Linear(2, 16), bp.nn.Tanh(), bp.nn.Linear(16, 2))
>>> h = bp.fit(model, x, y, lr=0.5, epochs=30, batch_size=20, seed=0, verbose=0)
>>> h.iterations, h.history["accuracy"][-1] > 0.9
(300, True)
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from backprop import optim
from backprop.data.loader import DataLoader
from backprop.engine.random import manual_seed
from backprop.engine.tensor import Tensor, no_grad
from backprop.nn import functional as F
from backprop.nn.layers import Linear
from backprop.nn.module import Module
from backprop.training.callbacks import Callback
from backprop.training.history import History
from backprop.training.metrics import METRICS, correct

LossFn = Callable[[Tensor, np.ndarray], Tensor]


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the model keeps the last finite weights."""


# ------------------------------------------------------------------------------------------------ losses
def quadratic_loss(output: Tensor, target: Any) -> Tensor:
    """Nielsen's quadratic cost: 1/2 ||a - y||^2 summed over outputs, averaged over the batch."""
    d = output - F._as_target(target, output, "quadratic_loss")
    return (d * d).sum() * (0.5 / output.shape[0])


_DENSE_LOSSES: dict[str, Callable[..., Tensor]] = {
    "mse": F.mse_loss,
    "quadratic": quadratic_loss,
    "l1": F.l1_loss,
    "bce": F.binary_cross_entropy_with_logits,
    "binary_cross_entropy_with_logits": F.binary_cross_entropy_with_logits,
}
LOSSES = ("cross_entropy", "nll", *_DENSE_LOSSES)


def _one_hot_if_labels(fn: Callable[..., Tensor]) -> LossFn:
    """Losses that compare outputs elementwise get class labels as one-hot rows (or a column for 1 output)."""

    def loss(out: Tensor, y: np.ndarray) -> Tensor:
        if y.dtype.kind in "iub" and y.ndim == 1:
            c = out.shape[-1]
            y = np.eye(c, dtype=out.dtype)[y] if c > 1 else y.reshape(-1, 1).astype(out.dtype)
        return fn(out, y)

    return loss


def get_loss(loss: str | Callable[..., Tensor]) -> LossFn:
    """A loss function ``(outputs, targets) -> scalar Tensor`` from a name or a callable."""
    if callable(loss):
        return loss
    if loss == "cross_entropy":
        return F.cross_entropy
    if loss == "nll":
        return F.nll_loss
    if loss in _DENSE_LOSSES:
        return _one_hot_if_labels(_DENSE_LOSSES[loss])
    raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)} or a callable")


# ------------------------------------------------------------------------------------------- validation
def _check_xy(x: Any, y: Any, name: str, check_finite: bool, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray | None]:
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{name}: x must be numeric, got an array of dtype {x.dtype}")
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"{name}: x is empty (shape {x.shape}); need at least one sample")
    x = np.ascontiguousarray(x, dtype=dtype)
    if check_finite and not np.isfinite(x).all():
        raise ValueError(f"{name}: x contains NaN or infinity (pass check_finite=False to skip this check)")
    if y is None:
        return x, None
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise TypeError(f"{name}: y must be numeric, got an array of dtype {y.dtype}")
    if len(y) != len(x):
        raise ValueError(f"{name}: x and y have different lengths: x has {len(x)} samples, y has {len(y)}")
    if check_finite and y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError(f"{name}: y contains NaN or infinity")
    return x, y


def _check_labels(model: Module, y: np.ndarray, loss: Any, name: str) -> np.ndarray:
    """Class labels for cross-entropy must be integers in [0, n_outputs)."""
    if loss not in ("cross_entropy", "nll") or y.ndim != 1:
        return y
    if y.dtype.kind == "f":
        if not np.all(y == np.round(y)):
            raise ValueError(f"{name}: class labels must be integers, got non-integer values such as {y[y != np.round(y)][0]}")
        y = y.astype(np.int64)
    y = y.astype(np.int64, copy=False)
    last = [m for m in model.modules() if isinstance(m, Linear)]
    n_out = last[-1].out_features if last else None
    if y.min() < 0 or (n_out is not None and y.max() >= n_out):
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise ValueError(
            f"{name}: class label {bad} is outside [0, {n_out - 1 if n_out else '...'}]"
            + (f": the model has {n_out} outputs" if n_out else "")
        )
    return y


def _check_features(model: Module, x: np.ndarray, name: str) -> None:
    """A first Linear layer must see as many features as x has (after flattening)."""
    for mod_name, m in model.named_modules():
        if isinstance(m, Linear):
            n_features = int(np.prod(x.shape[1:]))
            if x.ndim == 2 and x.shape[1] != m.in_features or x.ndim > 2 and n_features != m.in_features:
                raise ValueError(
                    f"{name}: x has {x.shape[1:]} features per sample but the model's first layer "
                    f"'{mod_name or type(m).__name__}' (Linear) expects {m.in_features}"
                )
            return


def _positive(name: str, value: Any, kind: type = int, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, np.integer) if kind is int else (int, float, np.number)) and not isinstance(value, bool)
    if ok and kind is float:
        ok = math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        need = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"fit: {name} must be {need} {'integer' if kind is int else 'finite number'}, got {value!r}")


def _split_validation(x, y, fraction, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n_val = round(len(x) * fraction)
    if n_val < 1 or n_val >= len(x):
        raise ValueError(f"fit: validation_split={fraction} leaves {len(x) - n_val} training and {n_val} validation samples")
    order = rng.permutation(len(x))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx], val_idx


# -------------------------------------------------------------------------------------------------- fit
def fit(
    model: Module,
    x: Any,
    y: Any,
    *,
    loss: str | Callable[..., Tensor] = "cross_entropy",
    optimizer: str | optim.Optimizer | Callable[..., optim.Optimizer] = "sgd",
    lr: float = 0.1,
    batch_size: int = 32,
    epochs: int = 10,
    validation_data: tuple[Any, Any] | None = None,
    validation_split: float = 0.0,
    shuffle: bool = True,
    seed: int | None = None,
    metrics: Sequence[str | Callable] = ("accuracy",),
    callbacks: Sequence[Callback] = (),
    verbose: int = 1,
    check_finite: bool = True,
) -> History:
    """Train ``model`` on (x, y) by mini-batch backpropagation; return the History of every epoch.

    ``optimizer`` is a name ("sgd", "adam", "adamw", "rmsprop", built with ``lr``), an Optimizer, or a
    callable ``params -> Optimizer``. ``loss`` is a name (cross_entropy, nll, mse, quadratic, l1, bce) or
    ``callable(outputs, targets) -> Tensor``. ``validation_split`` holds out that fraction of the samples,
    drawn at random with ``seed`` (``history.validation_indices`` says which), never the last rows.
    ``seed`` seeds the shuffling, the split and backprop's global generator (dropout): with the same
    initial model (``bp.manual_seed`` before building it) a run is reproducible to the bit.
    ``verbose``: 0 silent, 1 a progress bar per epoch in a terminal (one line per epoch otherwise),
    2 one line per epoch. Ctrl-C stops after the current step and returns History with ``interrupted``.
    """
    _positive("batch_size", batch_size)
    _positive("epochs", epochs, allow_zero=True)
    if isinstance(optimizer, str):
        _positive("lr", lr, float)
    if not (isinstance(validation_split, (int, float)) and 0.0 <= validation_split < 1.0):
        raise ValueError(f"fit: validation_split must be in [0, 1), got {validation_split!r}")
    if verbose not in (0, 1, 2):
        raise ValueError(f"fit: verbose must be 0, 1 or 2, got {verbose!r}")
    x, y = _check_xy(x, y, "fit", check_finite, model.dtype)
    _check_features(model, x, "fit")
    y = _check_labels(model, y, loss, "fit")
    loss_fn = get_loss(loss)
    metric_fns = _resolve_metrics(metrics, y)

    seeds = np.random.SeedSequence(seed).spawn(3) if seed is not None else [None, None, None]
    if seed is not None:
        manual_seed(int(seeds[1].generate_state(1)[0]))
    history = History()
    if validation_split:
        x, y, xv, yv, history.validation_indices = _split_validation(x, y, validation_split, np.random.default_rng(seeds[2]))
        validation_data = (xv, yv)
    if validation_data is not None:
        xv, yv = _check_xy(validation_data[0], validation_data[1], "fit (validation_data)", check_finite, model.dtype)
        yv = _check_labels(model, yv, loss, "fit (validation_data)")

    # NOTE: lr goes to names and Optimizer classes; an Optimizer instance or a factory carries its own
    if isinstance(optimizer, str) or (isinstance(optimizer, type) and issubclass(optimizer, optim.Optimizer)):
        opt = optim.get(optimizer, model.parameters(), lr=lr)
    else:
        opt = optim.get(optimizer, model.parameters())
    loader = DataLoader(x, y, batch_size=batch_size, shuffle=shuffle, seed=seeds[0])
    n_batches = len(loader)
    history.params = {"epochs": epochs, "batch_size": batch_size, "steps": n_batches, "samples": len(x)}
    model.stop_training = False
    for cb in callbacks:
        cb.set_model(model)
        cb.set_params(history.params)
        cb.on_train_begin({})
    params = list(model.parameters())
    batch_hooks = [cb for cb in callbacks if _overrides(cb, "on_train_batch_begin") or _overrides(cb, "on_train_batch_end")]
    progress = _Progress(verbose, epochs, n_batches)
    logs: dict[str, float] = {}

    try:
        for epoch in range(epochs):
            for cb in callbacks:
                cb.on_epoch_begin(epoch, {})
            model.train()
            progress.start_epoch(epoch)
            total_loss, total_correct, seen = 0.0, 0, 0
            snapshot = [p.data.copy() for p in params]  # finite weights to fall back on if a step overflows
            metric_sums = dict.fromkeys(metric_fns, 0.0)
            for batch, (xb, yb) in enumerate(loader):
                for cb in batch_hooks:
                    cb.on_train_batch_begin(batch, {})
                opt.zero_grad()
                out = model(Tensor(xb))
                loss_t = loss_fn(out, yb)
                loss_value = float(loss_t.data)
                if not math.isfinite(loss_value):
                    raise _diverged(loss_value, epoch, batch, history.iterations, model, snapshot)
                loss_t.backward()
                opt.step()
                n = len(xb)
                seen += n
                total_loss += loss_value * n
                if "accuracy" in metric_fns:
                    total_correct += correct(out.data, yb)
                for name, fn in metric_fns.items():
                    if name != "accuracy":
                        metric_sums[name] += fn(out.data, yb) * n
                history.iterations += 1
                history.samples_seen += n
                progress.step(n, loss_value)
                for cb in batch_hooks:
                    cb.on_train_batch_end(batch, {"loss": loss_value, "size": n})
                if model.stop_training:
                    break
            logs = {"loss": total_loss / max(seen, 1)}
            for name in metric_fns:
                logs[name] = total_correct / max(seen, 1) if name == "accuracy" else metric_sums[name] / max(seen, 1)
            if validation_data is not None:
                val = evaluate(model, xv, yv, loss=loss, metrics=list(metric_fns), batch_size=max(batch_size, 512),
                               check_finite=False)
                logs.update({f"val_{k}": v for k, v in val.items()})
            history.epochs += 1
            for cb in callbacks:  # first, so metrics a callback adds to logs are recorded and printed
                cb.on_epoch_end(epoch, logs)
            history.record(epoch, logs)
            progress.end_epoch(logs)
            if model.stop_training:
                history.stopped_early = True
                break
    except KeyboardInterrupt:
        history.interrupted = True
        progress.close()
        if verbose:
            print("training interrupted: returning the history so far", file=sys.stderr)
    finally:
        progress.close()
        model.eval()
    for cb in callbacks:
        cb.on_train_end(logs)
    return history


def _diverged(loss_value: float, epoch: int, batch: int, steps: int, model: Module,
              snapshot: list[np.ndarray]) -> TrainingDiverged:
    """The error for a non-finite loss; restores the epoch's first weights if the last update overflowed."""
    where = f"epoch {epoch + 1}, iteration {batch + 1} (step {steps + 1})"
    bad = [name for name, p in model.named_parameters() if not np.isfinite(p.data).all()]
    if bad:
        for p, saved in zip(model.parameters(), snapshot):
            p.data[...] = saved
        kept = (f"the previous update overflowed parameter '{bad[0]}', so the weights from the start of "
                f"epoch {epoch + 1} were restored")
    else:
        kept = "the model keeps the weights of the last finite step"
    return TrainingDiverged(
        f"the loss became {loss_value} at {where}; {kept}. Try a lower learning rate (or gradient clipping)."
    )


def _overrides(cb: Callback, hook: str) -> bool:
    return getattr(type(cb), hook, None) is not getattr(Callback, hook) or hook in vars(cb)


def _resolve_metrics(metrics: Sequence[str | Callable], y: np.ndarray | None) -> dict[str, Callable]:
    out: dict[str, Callable] = {}
    for m in metrics:
        if callable(m):
            out[getattr(m, "__name__", "metric")] = m
        elif m in METRICS:
            # NOTE: accuracy needs classes: integer labels or probability rows; regression targets skip it
            if m == "accuracy" and y is not None and y.dtype.kind == "f" and y.ndim == 1:
                continue
            out[m] = METRICS[m]
        else:
            raise ValueError(f"unknown metric {m!r}; expected one of {', '.join(METRICS)} or a callable")
    return out


# ------------------------------------------------------------------------------------ evaluate, predict
def predict(model: Module, x: Any, batch_size: int = 1024) -> np.ndarray:
    """The model's outputs for x (eval mode, no graph), computed in batches."""
    _positive("batch_size", batch_size)
    x, _ = _check_xy(x, None, "predict", False, model.dtype)
    _check_features(model, x, "predict")
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            outs = [model(Tensor(x[i:i + batch_size])).data for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(outs)


def evaluate(model: Module, x: Any, y: Any, *, loss: str | Callable[..., Tensor] = "cross_entropy",
             metrics: Sequence[str | Callable] = ("accuracy",), batch_size: int = 1024,
             check_finite: bool = True) -> dict[str, float]:
    """Mean loss and metrics over (x, y): ``{"loss": ..., "accuracy": ...}``."""
    x, y = _check_xy(x, y, "evaluate", check_finite, model.dtype)
    y = _check_labels(model, y, loss, "evaluate")
    out = predict(model, x, batch_size)
    loss_fn = get_loss(loss)
    with no_grad():
        total = sum(float(loss_fn(Tensor(out[i:i + batch_size]), y[i:i + batch_size]).data) * len(y[i:i + batch_size])
                    for i in range(0, len(y), batch_size))
    result = {"loss": total / len(y)}
    for name, fn in _resolve_metrics(metrics, y).items():
        result[name] = float(fn(out, y))
    return result


# ------------------------------------------------------------------------------------------------ output
class _Progress:
    """A tqdm bar per epoch in a terminal; one summary line per epoch (also in logs and pipes)."""

    def __init__(self, verbose: int, epochs: int, steps: int) -> None:
        self.verbose, self.epochs, self.steps = verbose, epochs, steps
        self.use_bar = verbose == 1 and sys.stderr.isatty()
        self.bar = None

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.t0, self.samples, self.loss_sum, self.last = epoch, time.perf_counter(), 0, 0.0, 0.0
        if self.use_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.steps, desc=f"Epoch {epoch + 1}/{self.epochs}", unit="it", leave=False,
                            dynamic_ncols=True, mininterval=0.1)

    def step(self, n: int, loss: float) -> None:
        if self.bar is None:
            return
        self.samples += n
        self.loss_sum += loss * n
        self.bar.update(1)
        now = time.perf_counter()
        if now - self.last > 0.2:
            self.last = now
            rate = self.samples / max(now - self.t0, 1e-9)
            self.bar.set_postfix_str(f"loss={self.loss_sum / self.samples:.4f}, {rate:,.0f} samples/s", refresh=False)

    def end_epoch(self, logs: dict[str, float]) -> None:
        seconds = time.perf_counter() - self.t0
        self.close()
        if self.verbose:
            parts = " - ".join(f"{k} {v:.4f}" for k, v in logs.items())
            print(f"Epoch {self.epoch + 1}/{self.epochs} - {seconds:.2f}s - {parts}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
