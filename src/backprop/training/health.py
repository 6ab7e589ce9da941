"""``TrainingHealth``: a callback that says, in one line, when training is not learning, why, and what to change.

It watches what ``fit`` already has at hand: every batch's loss (one float a step) and, every ``every``
steps and at each epoch's end, the gradients of the layers' weights (read where the step left them).
At each epoch's end (and, for units that have all died, as soon as it is sure) it reports:

* the loss **stuck at its starting value** (the mean of the first batches against the mean of the last
  ones), noting chance level, ln(number of classes), for classification; or the loss that **fell and came
  back** there (a collapse);
* **dead units**: a layer whose units got exactly no gradient on every batch looked at (ReLUs that no input
  turns on), naming the deepest such layer, since nothing below it learns;
* **identical units**: a layer whose rows of weights are all equal (all zero, say): they stay equal;
* **vanishing gradients**: a layer whose gradient, relative to its weights, is ``vanishing`` times or less
  that of the layer that learns fastest, naming the layer nearest the input;
* **tiny steps**: the weights barely moved while the loss did not move (the learning rate is too low).

Each finding is one line, given to ``print_fn`` (default :func:`warnings.warn` with
:class:`TrainingHealthWarning`), said once per run, and kept in ``callback.issues``. A NaN or infinite loss
is not its business: ``fit`` raises :class:`~backprop.training.callbacks.TrainingDiverged` for that.

**Advice in the caller's words.** The line ends with what to try ("a lower learning rate (lr=0.01)"). What
is inside the parentheses comes from ``advice``, a mapping from an option key to a ``str.format`` template
with ``{value}``, merged over :data:`ADVICE` (the library speaks Python: ``fit``'s and the models' keywords);
a key mapped to None drops that suggestion. The keys: ``lr``, ``optimizer``, ``activation`` and ``init``.
A command line passes its own options, e.g. ``advice={"lr": "--lr {value}", "optimizer": "--optimizer
{value}", "activation": "--activation {value}", "init": None}``.

>>> import numpy as np, backprop as bp
>>> _ = bp.manual_seed(0)
>>> x = np.random.default_rng(0).normal(size=(256, 8)).astype(np.float32)
>>> y = (x[:, 0] > 0).astype(np.int64)
>>> model = bp.nn.Sequential(bp.nn.Linear(8, 16), bp.nn.ReLU(), bp.nn.Linear(16, 2))
>>> health = TrainingHealth(print_fn=print, advice={"lr": "--lr {value}"})
>>> _ = bp.fit(model, x, y, lr=1e-7, epochs=2, batch_size=8, seed=0, verbose=0, callbacks=[health])
training health (epoch 1): the loss has not moved from its starting value (0.756 -> 0.759); the steps are tiny: the weights moved by 4e-07 of their size; try a higher learning rate (--lr 0.0001)
>>> [issue.kind for issue in health.issues]
['small_steps']
"""

from __future__ import annotations

import math
import warnings
from array import array
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from backprop.nn.module import LazyGrad, raw_grad
from backprop.training.callbacks import Callback

__all__ = ["ADVICE", "HealthIssue", "TrainingHealth", "TrainingHealthWarning"]

#: How a suggestion names the option to change, by key: a ``str.format`` template with ``{value}`` (or a
#: fixed text). The library's own words are Python: ``fit``'s keywords and those of ``backprop.nn.models``.
ADVICE: dict[str, str | None] = {
    "lr": "lr={value}",
    "optimizer": "optimizer={value!r}",
    "activation": "activation={value!r}",
    "init": "bp.nn.init.{value}_",
}

_WORDS = {  # what each suggestion is, in words, before the option in parentheses
    ("lr", "lower"): "a lower learning rate",
    ("lr", "higher"): "a higher learning rate",
    ("optimizer", None): "Adam",
    ("activation", "leaky_relu"): "a leaky ReLU",
    ("activation", "relu"): "ReLU, which does not saturate",
    ("init", None): "random initial weights",
}

_SATURATING = ("Sigmoid", "Tanh", "Hardtanh", "Softsign", "Hardsigmoid")


class TrainingHealthWarning(UserWarning):
    """What :class:`TrainingHealth` reports by default: training that does not learn, and why."""


class HealthIssue(NamedTuple):
    """One finding: ``kind`` is "dead", "symmetric", "vanishing", "small_steps", "stuck" or "collapsed";
    ``epoch`` (0-based) and ``step`` (iterations so far) say when; ``layer`` names the parameter
    (its qualified name from ``named_parameters``) when one is to blame; ``message`` is the line said."""

    kind: str
    epoch: int
    step: int
    layer: str | None
    message: str


class _Layer:
    """A module's weight (2-D or more: rows are its units) and bias, and what the samples saw of them."""

    __slots__ = ("name", "weight_name", "weight", "bias", "rows", "sumsq", "samples", "active", "streak", "ratio")

    def __init__(self, name: str, weight_name: str, weight: Any, bias: Any, rows: bool) -> None:
        self.name, self.weight_name, self.weight, self.bias = name, weight_name, weight, bias
        self.rows = rows  # the weight's rows are its units (Linear, Conv), so a bias-less layer's are seen too
        self.reset()
        self.streak = 0  # consecutive samples (across epochs) in which no unit got a gradient
        self.ratio = math.nan  # the last epoch's RMS gradient norm / weight norm

    def reset(self) -> None:
        self.sumsq, self.samples = 0.0, 0
        self.active: np.ndarray | None = None


def _grad(p: Any) -> np.ndarray | None:
    """The parameter's gradient as an array, or None. NOTE: a captured SGD step leaves a LazyGrad on the
    Linear weights it updated itself; it is formed here for this one reading (a product as costly as one
    layer's backward, done once every ``every`` steps) and NOT stored, so the parameter keeps it lazy."""
    g = raw_grad(p)
    if g is None:
        return None
    if type(g) is LazyGrad:
        g = g.form()
    return np.asarray(g)


def _norm(a: np.ndarray) -> float:
    """The L2 norm, scaled by the largest entry so that gradients of 1e-25 do not square to 0 in float32."""
    m = float(np.max(np.abs(a))) if a.size else 0.0
    if m == 0.0 or not math.isfinite(m):
        return m
    return m * float(np.sqrt(np.sum(np.square(a / m), dtype=np.float64)))


def _round(v: float) -> float:
    return float(f"{v:.1g}")


class TrainingHealth(Callback):
    """Say in one line when training does not learn, why, and which option to change (see the module doc).

    Args:
        every: read the layers' gradients every ``every`` steps (and at each epoch's end); None: about 8
            times an epoch, at most every 50 steps. Between readings a step costs one float append.
        rtol: the loss "has not moved" when the mean of the last batches is within ``rtol`` (relative) of
            the mean of the first ones (or within twice their noise).
        vanishing: a layer's gradient norm over its weight norm at most this fraction of the largest
            layer's is reported as vanishing.
        dead: report a layer once at least this fraction of its units got no gradient on every batch
            looked at in an epoch (1.0: only layers that are entirely dead).
        n_classes: for the "chance" note, ln(n_classes); None: the ``out_features`` of the model's last
            Linear layer, if it has one with 2 or more.
        advice: option key -> template (``{value}`` is the suggested value) or None, merged over
            :data:`ADVICE`; keys: lr, optimizer, activation, init.
        print_fn: called with each one-line message; default ``warnings.warn(message, TrainingHealthWarning)``.

    ``issues`` lists the :class:`HealthIssue` found so far; ``grad_ratios`` the last epoch's RMS gradient
    norm over weight norm of every layer.
    """

    root_only = True  # NOTE: under data parallelism every rank has the same (reduced) gradients: one speaks

    def __init__(self, *, every: int | None = None, rtol: float = 0.01, vanishing: float = 1e-3,
                 dead: float = 0.9, n_classes: int | None = None, advice: Mapping[str, str | None] | None = None,
                 print_fn: Callable[[str], Any] | None = None) -> None:
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"TrainingHealth: every must be a positive int or None, got {every!r}")
        for name, value, high in (("rtol", rtol, 1.0), ("vanishing", vanishing, 1.0), ("dead", dead, 1.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= high:
                raise ValueError(f"TrainingHealth: {name} must be a number in (0, {high:g}], got {value!r}")
        if n_classes is not None and (isinstance(n_classes, bool) or not isinstance(n_classes, int)
                                      or n_classes < 2):
            raise ValueError(f"TrainingHealth: n_classes must be an int >= 2 or None, got {n_classes!r}")
        self.advice = dict(ADVICE)
        for key, template in (advice or {}).items():
            if key not in ADVICE:
                raise ValueError(f"TrainingHealth: unknown advice key {key!r}; the keys are {', '.join(ADVICE)}")
            if template is not None:
                if not isinstance(template, str):
                    raise TypeError(f"TrainingHealth: advice[{key!r}] must be a str template or None, "
                                    f"got {type(template).__name__}")
                try:
                    template.format(value="x")
                except (KeyError, IndexError, ValueError) as e:
                    raise ValueError(f"TrainingHealth: advice[{key!r}] = {template!r} is not a template whose "
                                     f"only field is {{value}} ({e})") from None
            self.advice[key] = template
        self.every, self.rtol, self.vanishing, self.dead = every, float(rtol), float(vanishing), float(dead)
        self.n_classes = n_classes
        self.print_fn = print_fn
        self.issues: list[HealthIssue] = []

    @property
    def grad_ratios(self) -> dict[str, float]:
        """The last epoch's RMS gradient norm over weight norm, by weight name (NaN: no gradient seen)."""
        return {layer.weight_name: layer.ratio for layer in getattr(self, "_layers", [])}

    # ------------------------------------------------------------------------------------- the hooks
    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        model = self.model
        self._layers = []
        for name, module in model.named_modules():
            w, b = vars(module).get("weight"), vars(module).get("bias")
            kind = type(module).__name__
            # NOTE: an embedding's gradient touches only the rows of the batch's tokens: neither dead nor vanishing
            if w is None or not getattr(w, "requires_grad", False) or np.ndim(w.data) < 2 or "Embedding" in kind:
                continue
            b = b if b is not None and getattr(b, "requires_grad", False) and np.size(b.data) == w.shape[0] \
                and "Transpose" not in kind else None
            self._layers.append(_Layer(name, f"{name}.weight" if name else "weight", w, b,
                                       rows=kind == "Linear" or (kind.startswith("Conv") and "Transpose" not in kind)))
        self._saturating = any(type(m).__name__ in _SATURATING for m in model.modules())
        k = self.n_classes
        if k is None:
            outs = [m.out_features for m in model.modules() if isinstance(getattr(m, "out_features", None), int)]
            k = outs[-1] if outs and outs[-1] >= 2 else None
        self._chance = math.log(k) if k else None
        self._k = k
        steps = (self.params or {}).get("steps")
        steps = steps if isinstance(steps, int) and steps > 0 else None
        self._steps_per_epoch = steps
        self._every = self.every or (max(1, min(50, steps // 8)) if steps else 50)
        self._window = max(5, min(100, steps // 4)) if steps else 50
        # NOTE: bounded memory however long the run: the first `window` losses, and those since the last
        # check (plus the `window` - 1 before them, for the running means that span a check)
        self._first, self._recent = array("d"), array("d")
        self._lowest = math.inf  # the lowest mean of `window` consecutive losses so far
        self._count = 0  # losses seen
        self._start = [w.weight.data.copy() for w in self._layers]  # NOTE: freed once the loss has moved
        self._reported: set[str] = set()
        self._step, self._epoch, self._sampled_at = 0, 0, -1

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._epoch = epoch
        for layer in self._layers:
            layer.reset()

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        loss = (logs or {}).get("loss", math.nan)
        if not math.isfinite(loss):
            return  # NOTE: TrainingDiverged's business
        if len(self._first) < self._window:
            self._first.append(loss)
        self._recent.append(loss)
        self._count += 1
        self._step += 1
        if self._step % self._every == 0 or (self._steps_per_epoch and batch + 1 == self._steps_per_epoch):
            self._sample()
            dead = self._dead_layer(streak=3)
            if dead is not None and "dead" not in self._reported:  # NOTE: entirely dead units never come back
                self._report(*self._diagnose(mid_epoch=True))

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if self._sampled_at != self._step:  # the last step's gradients are still in place
            self._sample()
        for layer in self._layers:
            layer.ratio = math.sqrt(layer.sumsq / layer.samples) / max(_norm(layer.weight.data), 1e-30) \
                if layer.samples else math.nan
        self._report(*self._diagnose(mid_epoch=False))

    # ---------------------------------------------------------------------------------- measuring
    def _sample(self) -> None:
        """Read every layer's gradient: its norm, and which of its units got any gradient at all."""
        self._sampled_at = self._step
        for layer in self._layers:
            g = _grad(layer.weight)
            if g is None:
                continue
            flat = g.reshape(-1)
            sq = float(np.dot(flat, flat))  # NOTE: one BLAS pass, no copy; below 1e-30 (or 0) scaled instead
            layer.sumsq += sq if 1e-30 < sq < math.inf else _norm(g) ** 2
            layer.samples += 1
            gb = _grad(layer.bias) if layer.bias is not None else None
            # NOTE: a dead unit (no sample turned it on) has an error of exactly 0, so the gradients of its
            # bias (its summed error) and of its weight row are 0. Either alone can be 0 for a live unit: the
            # row when the layer's INPUTS are all 0 (the layer below is dead), the bias (to rounding) when a
            # batch norm follows. The rows are read only for units whose bias gradient is 0.
            if gb is not None:
                active = np.abs(gb).reshape(-1) > 0
                if layer.rows and not active.all():
                    active |= np.abs(g).reshape(g.shape[0], -1).max(axis=1) > 0
            elif layer.rows:
                active = np.abs(g).reshape(g.shape[0], -1).max(axis=1) > 0
            else:
                continue
            layer.active = active if layer.active is None else (layer.active | active)
            layer.streak = 0 if active.any() else layer.streak + 1

    def _dead_layer(self, streak: int = 0) -> tuple[_Layer, int] | None:
        """The deepest layer with at least ``dead`` of its units never active in this epoch's samples (with
        ``streak``: entirely inactive in that many samples in a row); and how many of its units are dead."""
        for layer in reversed(self._layers):
            if layer.active is None or layer.samples < 2:
                continue
            n_dead = int(layer.active.size - np.count_nonzero(layer.active))
            if streak:
                if layer.streak >= streak:
                    return layer, layer.active.size
            elif n_dead >= self.dead * layer.active.size:
                return layer, n_dead
        return None

    def _loss_state(self) -> tuple[str | None, str]:
        """"stuck" (the loss is where it started), "collapsed" (it fell, then came back there) or None; and
        the clause that says so."""
        w = self._window
        if self._count < 2 * w:
            return None, ""
        recent = np.frombuffer(self._recent, dtype=np.float64)
        if len(recent) >= w:  # the lowest running mean of the losses since the last check
            c = np.cumsum(np.concatenate([[0.0], recent]))
            self._lowest = min(self._lowest, float(((c[w:] - c[:-w]) / w).min()))
        first, last = np.frombuffer(self._first, dtype=np.float64), recent[-w:].copy()
        del recent  # NOTE: a view would keep the array from being resized
        self._recent = self._recent[-(w - 1):] if w > 1 else array("d")
        a, b = float(first.mean()), float(last.mean())
        # NOTE: the noise of the quieter window: a diverging start is noisy, a stuck network is not
        noise = 2 * math.sqrt(2 * min(float(first.var()), float(last.var())) / w)
        chance = self._chance is not None and abs(b - self._chance) <= 0.02 * self._chance
        fell = a - self._lowest > max(0.2 * abs(a), 2 * noise)
        if fell and b - self._lowest > max(0.5 * (a - self._lowest), 2 * noise):
            # NOTE: it learned, then gave back more than half of it: a collapse, even short of the start
            text = f"the loss fell to {self._lowest:.3f} and came back to {b:.3f}"
            if chance:
                text += f" = ln({self._k}): the network now predicts chance"
            return "collapsed", text
        if abs(b - a) > max(self.rtol * abs(a), noise):
            if b < a:
                self._start = None  # NOTE: it has learned: the copy of the first weights is no longer needed
            return None, ""
        text = f"the loss has not moved from its starting value ({a:.3f} -> {b:.3f})"
        if chance:
            text += f", {self._chance:.3f} = ln({self._k}): the network predicts chance"
        return "stuck", text

    def _diagnose(self, mid_epoch: bool) -> tuple[str | None, str, str | None, list[tuple[str, Any]]]:
        """(kind, the line's body, the layer to blame, suggestions) for now, or kind None when all is well."""
        state, loss_text = self._loss_state() if not mid_epoch else self._loss_state_now()
        lr = self._lr()
        lower = ("lr", "lower", _round(lr / 5) if lr else None)
        adam = [] if self._optimizer_name() == "adam" else [("optimizer", None, "adam")]
        found = self._dead_layer(streak=3 if mid_epoch else 0)
        if found is not None:
            layer, n_dead = found
            n = layer.active.size
            # NOTE: the parameter that shows it: the bias, whose gradient is the units' summed error
            name = f"{layer.name}.bias" if layer.bias is not None and layer.name else layer.weight_name
            if n_dead == n:
                cause = (f"every unit of layer '{layer.name}' is dead: none of its {n} got a gradient on the "
                         f"batches checked (ReLUs that no input turns on), so nothing passes through it")
            else:
                cause = (f"{n_dead} of the {n} units of layer '{layer.name}' are dead: they got no gradient on "
                         f"the batches checked (ReLUs no input turns on)")
            return "dead", _join(loss_text, cause), name, [lower, *adam, ("activation", "leaky_relu", "leaky_relu")]
        if mid_epoch:
            return None, "", None, []
        for layer in self._layers:
            w = layer.weight.data
            rows = w.reshape(w.shape[0], -1)
            if layer.rows and w.shape[0] > 1 and rows.size and bool(np.all(rows == rows[:1])) and (
                    layer.bias is None or bool(np.all(layer.bias.data == layer.bias.data.reshape(-1)[:1]))):
                cause = (f"the {w.shape[0]} units of layer '{layer.name}' are identical (their weights started "
                         "equal, e.g. all zero), so they all learn the same thing")
                return "symmetric", _join(loss_text, cause), layer.weight_name, [("init", None, "kaiming_uniform")]
        seen = [layer for layer in self._layers if math.isfinite(layer.ratio) and layer.samples]
        if len(seen) >= 2:
            top = max(seen, key=lambda layer: layer.ratio)
            low = [layer for layer in seen if layer.ratio <= self.vanishing * top.ratio]
            if top.ratio > 0 and low:
                v = low[0]
                cause = (f"the gradients vanish: '{v.weight_name}' gets {v.ratio:.0e} of its weights' size per "
                         f"step, {v.ratio / top.ratio:.0e} of what '{top.weight_name}' gets, so the layers near "
                         "the input barely learn")
                tips = [("activation", "relu", "relu")] if self._saturating else [("init", None, "kaiming_uniform")]
                return "vanishing", _join(loss_text, cause), v.weight_name, [*tips, *adam]
        if state is None:
            return None, "", None, []
        if state == "stuck" and self._start is not None:
            moved = math.sqrt(sum(float(np.sum(np.square(layer.weight.data - w0, dtype=np.float64)))
                                  for layer, w0 in zip(self._layers, self._start)))
            size = math.sqrt(sum(float(np.sum(np.square(w0, dtype=np.float64))) for w0 in self._start))
            rel = moved / size if size else moved
            if rel < 1e-3:
                factor = min(1000.0, max(10.0, 1e-2 / max(rel, 1e-30)))
                cause = f"the steps are tiny: the weights moved by {rel:.0e} of their size"
                return "small_steps", _join(loss_text, cause), None, [
                    ("lr", "higher", _round(lr * factor) if lr else None)]
        if state == "collapsed":
            return "collapsed", _join(loss_text, "the steps were too large"), None, [lower, *adam]
        return "stuck", loss_text, None, [*adam, lower]

    def _loss_state_now(self) -> tuple[str | None, str]:
        """Mid-epoch: the last batches' loss, and whether it is chance level."""
        losses = self._recent[-self._window:]
        if not losses:
            return None, ""
        b = sum(losses) / len(losses)
        if self._chance is not None and abs(b - self._chance) <= 0.02 * self._chance:
            return "stuck", f"the loss is stuck at {b:.3f} = ln({self._k}): the network predicts chance"
        return None, f"the loss is {b:.3f}"

    # ---------------------------------------------------------------------------------- reporting
    def _lr(self) -> float | None:
        try:
            return float(self.optimizer.param_groups[0]["lr"])
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            return None

    def _optimizer_name(self) -> str:
        return type(self.optimizer).__name__.lower() if self.optimizer is not None else ""

    def _advise(self, suggestions: list[tuple[str, Any]]) -> str:
        """At most two suggestions, in the caller's words; those the ``advice`` mapping drops are left out."""
        said = []
        for key, kind, value in suggestions:
            template = self.advice.get(key)
            if template is None:
                continue
            words = _WORDS.get((key, kind), _WORDS.get((key, None), key))
            said.append(f"{words} ({template.format(value=value)})" if value is not None else words)
            if len(said) == 2:
                break
        return f"; try {' or '.join(said)}" if said else ""

    def _report(self, kind: str | None, body: str, layer: str | None, suggestions: list[tuple[str, Any]]) -> None:
        if kind is None or kind in self._reported or (kind in ("stuck", "collapsed") and self.issues):
            return  # NOTE: a loss that does not move is what the causes found before it explain
        self._reported.add(kind)
        if kind in ("dead", "collapsed"):  # NOTE: one cause, said once, whichever of the two came first
            self._reported.update(("dead", "collapsed"))
        where = f"epoch {self._epoch + 1}" + (f", step {self._step}" if kind == "dead" else "")
        message = f"training health ({where}): {body}{self._advise(suggestions)}"
        self.issues.append(HealthIssue(kind, self._epoch, self._step, layer, message))
        if self.print_fn is not None:
            self.print_fn(message)
        else:
            warnings.warn(message, TrainingHealthWarning, stacklevel=2)


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)
