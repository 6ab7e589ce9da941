"""One playground session: its data, its network, its optimizer, and training steps on backprop's engine.

A :class:`Session` is what one page (one WebSocket connection) trains. The network is a ``bp.nn.Sequential``
of ``nn.Linear`` layers, activations and ``nn.Dropout`` in float64, trained by a ``bp.optim`` optimizer
through a :class:`~backprop.training.loop.Step` of the library's one training loop (the loss from
:mod:`backprop.nn.losses`, the engine's backward): not a separate toy network. One iteration is one
mini-batch; with N training samples and batch size B an epoch is ceil(N/B) iterations, as in ``fit``.

:meth:`Session.step` runs one iteration; :meth:`Session.substep` runs it in the three pieces a learner can
advance one by one: forward (the batch's outputs and loss), backward (every gradient) and update (the
optimizer's step). :meth:`Session.frame` is what the page draws; :meth:`Session.explain` the chain rule of
one weight's gradient (the computation ``backprop trace`` prints, :mod:`backprop.viz.trace`).

Everything random comes from the configuration's seed: the data, the split, the initial weights and the
dropout masks (backprop's generator, swapped in for this session's steps), and the batches' order. So the
same Config trains the same weights to the bit, as the exported script does.

>>> from backprop.playground.config import Config
>>> s = Session(Config(dataset="xor", hidden=(4,), activations=("tanh",), batch_size=25))
>>> s.iterations_per_epoch, s.substep(), s.substep(), s.substep(), s.iteration
(10, 'forward', 'backward', 'update', 1)
>>> s.run(19), s.epoch, s.samples_seen
(19, 2, 500)
"""

from __future__ import annotations

import base64
import contextlib
import math
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backprop import nn
from backprop.engine.random import get_rng
from backprop.engine.tensor import Tensor, no_grad
from backprop.io.serialization import save
from backprop.nn.init import kaiming_normal_, xavier_uniform_, zeros_
from backprop.optim import OPTIMIZERS
from backprop.optim.lr_scheduler import CosineAnnealingLR, ExponentialLR, StepLR
from backprop.playground.config import Config, ConfigError
from backprop.playground.datasets import DOMAIN, FEATURES, CSVData, features, make, split
from backprop.playground.script import script
from backprop.training.loop import Batch, Step, TrainingDiverged, batches
from backprop.viz.trace import Backward, Net, backward, explain_weight

__all__ = ["ACTIVATION_MODULES", "ENGINE_LOCK", "Data", "Diverged", "Session", "build_model", "load_data"]

#: The engine's global state (the random generator, the gradient mode) is shared by every thread: sessions
#: take turns through this lock. NOTE: steps of tiny networks are short; the GIL serialises them anyway.
ENGINE_LOCK = threading.RLock()
ACTIVATION_MODULES: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid,
                                                  "linear": nn.Identity, "gelu": nn.GELU}
HEAT = 64  # the heat map's grid: HEAT x HEAT points of the input plane
THUMB = HEAT // 2  # each neuron's thumbnail: every other point of that grid
HISTORY = 1000  # loss-curve points kept by the page before it halves them (the page's memory stays flat)


class Diverged(TrainingDiverged):
    """The loss or a gradient stopped being finite: the run is paused, the weights are the last finite ones."""


# ------------------------------------------------------------------------------------------------ data
@dataclass
class Data:
    """The points (x: (N, 2)), their targets, the network's inputs (the features), and what the set is."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    f_train: np.ndarray
    f_test: np.ndarray
    task: str
    classes: int
    labels: tuple[str, ...]
    domain: tuple[float, float, float, float]  # x1 from, x1 to, x2 from, x2 to


def load_data(config: Config, csv: CSVData | None = None) -> Data:
    """The training and test sets of ``config`` (``csv``: an uploaded file's data, for dataset "csv"), with the
    added points appended to the training set, and the network's inputs."""
    if config.dataset == "csv":
        if csv is None:
            raise ConfigError("dataset", "no CSV file has been uploaded in this page (a link cannot carry one)")
        x, y, task, k, labels = csv.x, csv.y, csv.task, csv.classes, csv.labels
        lo, hi = x.min(axis=0), x.max(axis=0)
        pad = np.maximum((hi - lo) * 0.1, 1e-3)
        domain = (float(lo[0] - pad[0]), float(hi[0] + pad[0]), float(lo[1] - pad[1]), float(hi[1] + pad[1]))
    else:
        x, y, task, k = make(config.dataset, config.samples, config.noise, config.seed, config.classes)
        labels = tuple(str(i) for i in range(k))
        domain = (-DOMAIN, DOMAIN, -DOMAIN, DOMAIN)
    config.checked(task, k)
    (x_tr, y_tr), (x_te, y_te) = split(x, y, config.train_percent, config.seed)
    if config.points:
        pts = np.asarray(config.points, dtype=np.float64)
        x_tr = np.concatenate([x_tr, pts[:, :2]])
        y_tr = np.concatenate([y_tr, pts[:, 2].astype(y_tr.dtype)])
    return Data(x_tr, y_tr, x_te, y_te, features(x_tr, config.features), features(x_te, config.features), task, k,
                labels, domain)


# ------------------------------------------------------------------------------------------------ model
def output_layer(config: Config, data: Data) -> tuple[int, str]:
    """The output units and their activation: softmax (cross-entropy), sigmoid (binary cross-entropy, or the
    quadratic cost on one-hot classes, as ``backprop trace``), linear (regression)."""
    if data.task == "regression":
        return 1, "linear"
    if config.loss == "cross_entropy":
        return data.classes, "softmax"
    if config.loss == "bce":
        return 1, "sigmoid"
    return data.classes, "sigmoid"


def build_model(config: Config, n_in: int, n_out: int, out_act: str) -> nn.Sequential:
    """The network, drawn from backprop's generator as the exported script draws it: Linear layers (float64),
    each hidden one followed by its activation and, with dropout, an nn.Dropout; then the initialisation."""
    sizes = [n_in, *config.hidden, n_out]
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], dtype=np.float64))
        if i < len(config.hidden):
            layers.append(ACTIVATION_MODULES[config.activations[i]]())
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
    if out_act == "sigmoid" and config.loss == "quadratic":  # NOTE: the other losses take the logits
        layers.append(nn.Sigmoid())
    model = nn.Sequential(*layers)
    for layer in model.layers:
        if isinstance(layer, nn.Linear):
            if config.init == "xavier":
                xavier_uniform_(layer.weight)
                zeros_(layer.bias)
            elif config.init == "he":
                kaiming_normal_(layer.weight, nonlinearity="relu")
                zeros_(layer.bias)
            elif config.init == "zeros":
                zeros_(layer.weight)
                zeros_(layer.bias)
    return model


def build_optimizer(config: Config, model: nn.Module) -> Any:
    """The optimizer (L2 as its weight_decay; SGD and RMSprop with momentum) and the schedule (per iteration)."""
    kwargs: dict[str, Any] = {"lr": config.lr, "weight_decay": config.l2}
    if config.optimizer in ("sgd", "rmsprop"):
        kwargs["momentum"] = config.momentum
    optimizer = OPTIMIZERS[config.optimizer](model.parameters(), **kwargs)
    if config.schedule == "step":  # halve every decay_steps iterations
        scheduler = StepLR(optimizer, step_size=config.decay_steps, gamma=0.5)
    elif config.schedule == "exponential":  # smoothly: halved after decay_steps iterations
        scheduler = ExponentialLR(optimizer, gamma=0.5 ** (1.0 / config.decay_steps))
    elif config.schedule == "cosine":  # down to 0 in decay_steps iterations (and back up, as PyTorch's)
        scheduler = CosineAnnealingLR(optimizer, T_max=config.decay_steps)
    else:
        scheduler = None
    return optimizer, scheduler


ENGINE_LOSS = {"cross_entropy": "cross_entropy", "bce": "bce", "quadratic": "quadratic"}


# ------------------------------------------------------------------------------------------------ step
@dataclass
class Record:
    """What a forward pass leaves for the page: each layer's z (a Tensor keeping its gradient) and a, and the
    dropout masks."""

    zs: list[Tensor]
    acts: list[np.ndarray]
    masks: list[np.ndarray | None]


class PlaygroundStep(Step):
    """The library's Step, its forward pass run layer by layer so the page can show every neuron.

    The same operations in the same order as ``model(x)``: the results are those of a plain Step to the bit
    (the exported script uses a plain one). Each Linear's output keeps its gradient (dL/dz).
    """

    record: Record | None = None

    def compute_loss(self, batch: Batch) -> tuple[Tensor, Tensor]:
        h = Tensor(batch.x)
        zs: list[Tensor] = []
        acts: list[np.ndarray] = []
        masks: list[np.ndarray | None] = []
        for layer in self.model.layers:
            h = layer(h)
            if isinstance(layer, nn.Linear):
                h.retain_grad()
                zs.append(h)
                acts.append(h.data)
                masks.append(None)
            elif isinstance(layer, nn.Dropout):
                # NOTE: the engine's Dropout keeps its inverted mask (0 or 1/(1-p)) on the op that made h
                ctx = getattr(h, "_ctx", None)
                masks[-1] = getattr(ctx, "mask", None) if ctx is not None else None
                acts[-1] = h.data
            else:
                acts[-1] = h.data
        self.record = Record(zs, acts, masks)
        return h, self.loss_fn(h, batch.y)


# ------------------------------------------------------------------------------------------------ session
def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.uint8).tobytes()).decode("ascii")


def _finite_list(a: np.ndarray | None) -> Any:
    """An array as nested lists of floats (None for NaN/inf, which JSON cannot carry)."""
    if a is None:
        return None
    a = np.asarray(a, dtype=np.float64)
    if np.all(np.isfinite(a)):
        return a.tolist()
    return np.where(np.isfinite(a), a.astype(object), None).tolist()


class Session:
    """The state of one page: configuration, data, network, optimizer, counters (see the module docstring).

    Not thread-safe by itself: one worker thread drives it (:mod:`backprop.playground.server`); every engine
    call goes through :data:`ENGINE_LOCK` with this session's random generator swapped in.
    """

    def __init__(self, config: Config | None = None, csv: CSVData | None = None) -> None:
        self.csv = csv
        self._inside = False
        self.sample_index = 0  # the sample of the batch whose neuron values the step view shows
        self.reset(config or Config())

    # ------------------------------------------------------------------------------------- building
    def reset(self, config: Config | None = None) -> None:
        """Start over (with ``config``, checked against its data): iteration 0, the seed's initial weights."""
        config = config or self.config
        data = load_data(config, self.csv)
        self.config, self.data = config, data
        self.n_out, self.out_act = output_layer(config, data)
        self.rng_state = np.random.default_rng(config.seed).bit_generator.state  # as bp.manual_seed(seed)
        with self.engine():
            self.model = build_model(config, data.f_train.shape[1], self.n_out, self.out_act)
        self.linears = [m for m in self.model.layers if isinstance(m, nn.Linear)]
        self.optimizer, self.scheduler = build_optimizer(config, self.model)
        self.step_ = PlaygroundStep(self.model, self.optimizer, ENGINE_LOSS[config.loss])
        y_train = data.y_train[:, None] if data.task == "regression" else data.y_train
        self.batches = batches(data.f_train, y_train, batch_size=config.batch_size, seed=config.seed)
        self._epoch_batches: Iterator[Batch] | None = None
        self.iterations_per_epoch = len(self.batches)
        self.iteration = self.epoch = self.epoch_iteration = self.samples_seen = 0
        self.phase = "idle"  # idle | forward | backward | update: how far the current iteration has gone
        self.view = "step"  # "play" after run(), "step" after step()/substep(): what the page puts on the edges
        self.batch: Batch | None = None
        self.loss: Tensor | None = None
        self.batch_loss: float | None = None
        self.before: list[np.ndarray] | None = None  # the weights the last gradient was computed at
        self.grads: list[np.ndarray] | None = None
        self.update: list[np.ndarray] | None = None
        self.stopped: str | None = None
        self.stop_fired = False  # NOTE: the stop condition fires once: play after it goes on past it
        self._evaluated: tuple[int, dict[str, Any]] | None = None

    @contextlib.contextmanager
    def engine(self) -> Iterator[None]:
        """Hold the engine, with this session's random generator state as backprop's (restored after)."""
        if self._inside:  # NOTE: nested (a stop check evaluates inside a step): the generator is already ours
            yield
            return
        # NOTE: overflow in a diverging run is reported once, as Diverged (the loss is checked every step),
        # not as NumPy warnings on the server's console
        with ENGINE_LOCK, np.errstate(over="ignore", invalid="ignore"):
            self._inside = True
            rng = get_rng()
            saved = rng.bit_generator.state
            rng.bit_generator.state = self.rng_state
            try:
                yield
            finally:
                self.rng_state = rng.bit_generator.state
                rng.bit_generator.state = saved
                self._inside = False

    def params(self) -> list[np.ndarray]:
        """W1, b1, W2, b2, ...: copies of the current weights."""
        return [a.copy() for lin in self.linears for a in (lin.weight.data, lin.bias.data)]

    # ------------------------------------------------------------------------------------- training
    def _next_batch(self) -> Batch:
        if self._epoch_batches is None:
            self._epoch_batches = iter(self.batches)
        try:
            return next(self._epoch_batches)
        except StopIteration:  # NOTE: a new epoch: the loader draws its next permutation
            self._epoch_batches = iter(self.batches)
            return next(self._epoch_batches)

    def _forward(self) -> None:
        self.batch = self._next_batch()
        self.before = self.params()
        self.update = None
        self.optimizer.zero_grad()
        _, self.loss = self.step_.compute_loss(self.batch)
        self.batch_loss = float(self.loss.data)
        self.grads = None

    def _backward(self) -> None:
        if not math.isfinite(self.batch_loss):
            self.phase = "idle"
            raise Diverged(f"the loss of iteration {self.iteration + 1} is {self.batch_loss}: the weights went "
                           "too far; lower the learning rate and reset")
        self.step_.backpropagate(self.loss)
        self.grads = [np.array(p.grad, dtype=np.float64) for lin in self.linears for p in (lin.weight, lin.bias)]

    def _update(self) -> None:
        try:
            self.step_.apply_gradients(self.batch_loss)
        except TrainingDiverged as e:
            raise Diverged(f"{e}: lower the learning rate and reset") from None
        if self.scheduler is not None:
            self.scheduler.step()
        self.update = [new - old for new, old in zip(self.params(), self.before)]
        self._count()

    def _count(self) -> None:
        self.iteration += 1
        self.samples_seen += self.batch.n
        self.epoch_iteration += 1
        if self.epoch_iteration == self.iterations_per_epoch:
            self.epoch += 1
            self.epoch_iteration = 0
        self.loss = None  # NOTE: drop the graph: memory stays flat however long the run

    def substep(self) -> str:
        """Advance the current iteration by one piece: forward, then backward, then update; returns the piece."""
        self.view = "step"
        with self.engine():
            if self.phase in ("idle", "update"):
                self._forward()
                self.phase = "forward"
            elif self.phase == "forward":
                self._backward()
                self.phase = "backward"
            else:
                self._update()
                self.phase = "update"
                self._check_stop()
        return self.phase

    def step(self) -> None:
        """Complete one iteration (all of it, or what is left of it after substeps): exactly one mini-batch."""
        self.substep()
        while self.phase != "update":
            self.substep()

    def run(self, n: int) -> int:
        """Up to ``n`` whole iterations with the Step's own ``train_step`` (stops early at the stop condition);
        returns how many ran. A half-done iteration (substeps) is completed first, and counts."""
        done = 0
        if self.phase in ("forward", "backward"):
            self.step()
            done += 1
        self.view = "play"
        with self.engine():
            while done < n and not self.stopped:
                self.batch = self._next_batch()
                self.before = self.params()
                try:
                    result = self.step_.train_step(self.batch)
                except TrainingDiverged as e:
                    raise Diverged(f"{e}: lower the learning rate and reset") from None
                self.batch_loss = result.loss
                if not result.applied:
                    raise Diverged(f"the loss of iteration {self.iteration + 1} is {result.loss}: lower the "
                                   "learning rate and reset")
                if self.scheduler is not None:
                    self.scheduler.step()
                self.update = None  # NOTE: computed when a frame asks (self.last_update)
                self.grads = None
                self.phase = "update"
                self._count()
                done += 1
                self._check_stop()
        return done

    def _check_stop(self) -> None:
        if self.stop_fired:
            return
        self._check_condition()
        self.stop_fired = self.stopped is not None

    def _check_condition(self) -> None:
        c = self.config
        if c.stop_iterations is not None and self.iteration >= c.stop_iterations:
            self.stopped = f"reached {c.stop_iterations} iterations"
        if c.stop_loss is None and c.stop_accuracy is None:
            return
        ev = self.evaluate()
        if c.stop_loss is not None and ev["test_loss"] <= c.stop_loss:
            self.stopped = f"test loss {ev['test_loss']:.4f} <= {c.stop_loss:g}"
        if c.stop_accuracy is not None and ev["accuracy"] is not None and ev["accuracy"] * 100 >= c.stop_accuracy:
            self.stopped = f"test accuracy {ev['accuracy'] * 100:.1f}% >= {c.stop_accuracy:g}%"

    def set_sample(self, index: int) -> None:
        self.sample_index = int(index)

    # ------------------------------------------------------------------------------------- evaluation
    def _outputs(self, f: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Every layer's activation (after its activation function; the output's as the loss sees it) and the
        model's outputs, in eval mode (no dropout), without a graph."""
        was = self.model.training
        self.model.eval()
        try:
            with no_grad():
                h = Tensor(f)
                outs = [f]
                for layer in self.model.layers:
                    h = layer(h)
                    if isinstance(layer, nn.Linear):
                        outs.append(h.data)
                    elif not isinstance(layer, nn.Dropout):
                        outs[-1] = h.data
        finally:
            self.model.train(was)
        return outs, h

    def _probabilities(self, out: np.ndarray) -> np.ndarray:
        """(N, K) class probabilities (or (N, 1) regression values) from the model's outputs."""
        if self.data.task == "regression":
            return out
        if self.out_act == "softmax":
            e = np.exp(out - out.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        if self.config.loss == "bce":
            p = 1.0 / (1.0 + np.exp(-np.clip(out, -500, 500)))
            return np.concatenate([1 - p, p], axis=1)
        return out  # sigmoid outputs of the quadratic cost: one score per class

    def evaluate(self) -> dict[str, Any]:
        """Loss on the whole training and test sets (eval mode), test accuracy and confusion matrix."""
        if self._evaluated is not None and self._evaluated[0] == self.iteration:
            return self._evaluated[1]
        d = self.data
        with self.engine():  # NOTE: a diverging run's loss may overflow: shown as such (null), without a warning
            losses = {}
            outputs = {}
            for name, f, y in (("train", d.f_train, d.y_train), ("test", d.f_test, d.y_test)):
                _, out = self._outputs(f)
                target = y[:, None] if d.task == "regression" else y
                with no_grad():
                    losses[name] = float(self.step_.loss_fn(out, target).data)
                outputs[name] = out.data
        result: dict[str, Any] = {"train_loss": losses["train"], "test_loss": losses["test"], "accuracy": None,
                                  "train_accuracy": None, "confusion": None}
        if d.task == "classification":
            pred_te = np.argmax(self._probabilities(outputs["test"]), axis=1)
            pred_tr = np.argmax(self._probabilities(outputs["train"]), axis=1)
            result["accuracy"] = float(np.mean(pred_te == d.y_test))
            result["train_accuracy"] = float(np.mean(pred_tr == d.y_train))
            k = d.classes
            result["confusion"] = np.bincount(d.y_test * k + pred_te, minlength=k * k).reshape(k, k).tolist()
        self._evaluated = (self.iteration, result)
        return result

    def grid(self) -> dict[str, Any]:
        """The heat map (HEAT x HEAT) and every neuron's thumbnail (THUMB x THUMB), quantised to bytes."""
        x0, x1, y0, y1 = self.data.domain
        gx = np.linspace(x0, x1, HEAT)
        gy = np.linspace(y1, y0, HEAT)  # NOTE: row 0 is the top of the picture: the largest x2
        pts = np.stack(np.meshgrid(gx, gy), axis=-1).reshape(-1, 2)
        with self.engine():
            outs, out = self._outputs(features(pts, self.config.features))
        probs = self._probabilities(out.data)
        if self.data.task == "regression":
            lo, hi = -1.0, 1.0  # the generated sets' range; an uploaded file's own
            if self.config.dataset == "csv":
                lo, hi = float(self.data.y_train.min()), float(self.data.y_train.max())
            v = np.clip((probs[:, 0] - lo) / max(hi - lo, 1e-12), 0, 1)
            heat = {"kind": "regression", "lo": lo, "hi": hi, "data": _b64(np.round(v * 255))}
        elif (probs.shape[1] == 2 and self.out_act != "sigmoid") or self.config.loss == "bce":
            heat = {"kind": "binary", "data": _b64(np.round(np.clip(probs[:, 1], 0, 1) * 255))}
        else:
            cls = np.argmax(probs, axis=1)
            conf = probs[np.arange(len(cls)), cls]
            if self.out_act == "sigmoid":  # scores, not probabilities: how far ahead of the runner-up
                conf = np.clip(conf - np.sort(probs, axis=1)[:, -2] + 0.5, 0, 1)
            k = probs.shape[1]
            conf = np.clip((conf - 1.0 / k) / (1 - 1.0 / k), 0, 1)
            heat = {"kind": "multiclass", "data": _b64(np.stack([cls, np.round(conf * 255)], axis=1))}
        heat["size"] = HEAT
        thumbs = []
        sub = np.zeros((HEAT, HEAT), dtype=bool)
        sub[::2, ::2] = True
        sub = sub.reshape(-1)
        for layer in outs:
            a = layer[sub]
            scale = np.maximum(np.abs(a).max(axis=0), 1e-12)
            q = np.round((np.clip(a / scale, -1, 1) + 1) * 127.5)
            thumbs.append([{"scale": float(scale[i]), "data": _b64(q[:, i])} for i in range(a.shape[1])])
        return {"heat": heat, "thumbs": thumbs, "thumb_size": THUMB}

    # ------------------------------------------------------------------------------------- what the page draws
    def structure(self) -> dict[str, Any]:
        """What changes only on reset: the layers, the points, the counters' arithmetic, the configuration."""
        d, c = self.data, self.config
        sizes = [d.f_train.shape[1], *c.hidden, self.n_out]
        return {
            "type": "model",
            "config": c.to_json(),
            "query": c.to_query(),  # NOTE: with dataset=csv a reload asks for the file again
            "task": d.task, "classes": d.classes, "labels": list(d.labels), "domain": list(d.domain),
            "sizes": sizes,
            "layer_names": ["input", *[f"hidden {i + 1}" for i in range(len(c.hidden))], "output"],
            "activations": ["", *c.activations, self.out_act],
            "feature_names": [FEATURES[n][0] for n in c.features],
            "train": {"x": np.round(d.x_train, 4).tolist(), "y": d.y_train.tolist()},
            "test": {"x": np.round(d.x_test, 4).tolist(), "y": d.y_test.tolist()},
            "n_train": len(d.x_train), "n_test": len(d.x_test), "batch_size": c.batch_size,
            "iterations_per_epoch": self.iterations_per_epoch,
            "optimizer": c.optimizer, "loss": c.loss,
        }

    def _layers_of(self, flat: list[np.ndarray] | None) -> tuple[Any, Any]:
        if flat is None:
            return None, None
        return [_finite_list(a) for a in flat[0::2]], [_finite_list(a) for a in flat[1::2]]

    def last_update(self) -> list[np.ndarray] | None:
        """The last iteration's change of every weight (new - old), or None before the first update."""
        if self.update is None and self.before is not None and self.phase == "update":
            self.update = [new - old for new, old in zip(self.params(), self.before)]
        return self.update if self.phase == "update" else None

    def last_grads(self) -> list[np.ndarray] | None:
        """dL/dW1, dL/db1, ... of the current mini-batch (the engine's), once backward has run."""
        if self.phase in ("backward", "update") and self.grads is None:
            self.grads = [np.array(p.grad, dtype=np.float64) for lin in self.linears for p in (lin.weight, lin.bias)]
        return self.grads if self.phase in ("backward", "update") else None

    def optimizer_state(self) -> list[dict[str, Any]]:
        """Per weight matrix: the optimizer's state (momentum buffer, Adam's moments...) as lists."""
        out = []
        for lin in self.linears:
            st = self.optimizer.state.get(lin.weight, {})
            out.append({k: _finite_list(v) for k, v in st.items() if isinstance(v, np.ndarray) and v.shape == lin.weight.shape})
        return out

    def neurons(self) -> dict[str, Any] | None:
        """The step view's numbers for the chosen sample of the current batch: a (forward), z, delta (backward)."""
        rec = self.step_.record
        if self.batch is None or rec is None or self.phase == "idle":
            return None
        s = min(self.sample_index, self.batch.n - 1)
        values = [self.batch.x[s].tolist()]
        zs, deltas = [None], [None]
        for i, z in enumerate(rec.zs):
            a = rec.acts[i][s]
            if i == len(rec.zs) - 1:  # the output as the page shows it: probabilities / sigmoid / value
                a = self._probabilities(rec.acts[i][s:s + 1])[0]
                if self.config.loss == "bce":
                    a = a[1:]
            values.append(_finite_list(a))
            zs.append(_finite_list(z.data[s]))
            grad = z.grad if self.phase in ("backward", "update") else None
            deltas.append(None if grad is None else _finite_list(np.asarray(grad)[s] * self.batch.n))
        index = int(self.batch.index[s])
        return {"sample": s, "batch_size": self.batch.n, "index": index,
                "point": self.data.x_train[index].tolist(), "target": _finite_list(self.data.y_train[index]),
                "values": values, "z": zs, "delta": deltas}

    def frame(self, grid: bool = True) -> dict[str, Any]:
        """Everything the page shows now (``grid``: with the heat map and thumbnails)."""
        ev = self.evaluate()
        weights, biases = self._layers_of(self.params())
        grads = self.last_grads()
        update = self.last_update()
        g_w, g_b = self._layers_of(grads)
        u_w, u_b = self._layers_of(update)
        lr = float(self.optimizer.param_groups[0]["lr"])
        frame: dict[str, Any] = {
            "type": "frame",
            "iteration": self.iteration, "epoch": self.epoch, "epoch_iteration": self.epoch_iteration,
            "samples_seen": self.samples_seen, "phase": self.phase, "view": self.view, "lr": lr,
            "batch_loss": self.batch_loss if self.batch_loss is None or math.isfinite(self.batch_loss) else None,
            "stopped": self.stopped,
            **ev,
            "weights": weights, "biases": biases, "grads": g_w, "bias_grads": g_b, "updates": u_w,
            "bias_updates": u_b,
            "grad_norms": None if grads is None else [float(np.linalg.norm(g)) for g in grads[0::2]],
            "batch_indices": None if self.batch is None or self.phase == "idle" else self.batch.index.tolist(),
            "neurons": self.neurons(),
            "optimizer_state": self.optimizer_state() if self.phase in ("backward", "update") else None,
        }
        if grid:
            frame.update(self.grid())
        return frame

    # ------------------------------------------------------------------------------------- explain a weight
    def explain(self, layer: int, source: int, target: int) -> dict[str, Any]:
        """The chain rule of dL/dW^layer[target, source] on the current mini-batch (backprop.viz.trace, the
        computation ``backprop trace`` prints), beside the engine's value and a finite difference."""
        L = len(self.linears)
        if not 1 <= layer <= L:
            raise ConfigError("layer", f"expected a layer from 1 to {L}, got {layer}")
        w = self.linears[layer - 1].weight.data
        if not (0 <= target < w.shape[0] and 0 <= source < w.shape[1]):
            raise ConfigError("edge", f"layer {layer} has no edge from unit {source} to unit {target}")
        if self.batch is None or self.before is None or self.phase in ("idle", "forward"):
            raise ConfigError("explain", "no gradient yet: press step (or run forward and backward) first; the "
                              "explanation uses the current mini-batch")
        net, x, y = self.trace_net()
        bw: Backward = backward(net, x, y)
        e = explain_weight(net, x, y, bw, layer, target, source)
        engine = self.last_grads()
        e["engine"] = float(engine[2 * (layer - 1)][target, source])
        e["l2"] = self.config.l2
        e["optimizer"] = self.config.optimizer
        e["lr"] = float(self.optimizer.param_groups[0]["lr"])
        upd = self.last_update()
        e["update"] = None if upd is None else float(upd[2 * (layer - 1)][target, source])
        e["iteration"] = self.iteration
        e["activations"] = net.acts[1:]
        return e

    def trace_net(self) -> tuple[Net, np.ndarray, np.ndarray]:
        """The current mini-batch as backprop.viz.trace sees it: the weights the gradient was computed at, the
        dropout masks of that forward pass, inputs and targets as columns."""
        rec = self.step_.record
        weights, biases = self.before[0::2], self.before[1::2]
        acts = [*self.config.activations, self.out_act]
        masks = [None if m is None else np.asarray(m, dtype=np.float64).T for m in rec.masks]
        net = Net(list(weights), list(biases), list(acts), ENGINE_LOSS[self.config.loss], masks)
        x = np.asarray(self.batch.x, dtype=np.float64).T
        yb = np.asarray(self.batch.y)
        if self.data.task == "regression" or self.config.loss == "bce":  # one output unit
            y = yb.reshape(1, -1).astype(np.float64)
        else:
            y = np.eye(self.n_out)[yb].T
        return net, x, y

    # ------------------------------------------------------------------------------------- exports
    def export_model(self) -> bytes:
        """The network as a safetensors file (``backprop.io.load`` rebuilds it; PyTorch reads its tensors)."""
        c, d = self.config, self.data
        meta = {"source": "backprop playground", "iteration": self.iteration, "features": list(c.features),
                "task": d.task, "classes": list(d.labels), "output": self.out_act, "loss": c.loss,
                "query": c.to_query() if c.dataset != "csv" else None}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.safetensors"
            with self.engine():
                save(self.model, path, metadata=meta)
            return path.read_bytes()

    def export_script(self) -> str:
        """A Python script that trains this network with backprop's API to the same weights."""
        return script(self)
