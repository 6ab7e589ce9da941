"""``backprop.jit``: run a training step once eagerly while recording it, then replay the recording.

The first call of ``jit(train_step)(x, y)`` runs ``train_step`` as it is, while a
:class:`~backprop.engine.capture.Capture` writes down every op, the backward pass and the calls of the
optimizer (``zero_grad``, ``step``), of schedulers and of gradient clipping. Later calls with the same
**guards** replay that plan: no modules walked, no Tensor objects or graph built, no topological sort.
The guards, as ``torch.compile`` has them: the inputs' shapes and dtypes (so the last, partial batch of
an epoch is captured once more), Python values passed as arguments, grad mode, the train/eval mode of
every module the step called, and ``requires_grad`` of every tensor it read. Changing one re-captures.

What replays, and what does not (as with ``jax.jit``, Python runs only while capturing):

* Ops re-run their own ``forward`` on the new data, with the same keyword arguments: dropout draws a
  fresh mask every step from backprop's seeded generator; batch norm updates its running statistics.
* Parameters, buffers and the optimizer are read live: a learning rate changed between steps (by a
  scheduler, by hand) takes effect, and so do weights loaded in place.
* Tensors the step makes from Python numbers or fixed arrays are constants. Pass what changes from one
  step to the next as an argument (an array), never as a closed-over Python value.
* A step that reads a computed value into Python (``loss.item()``, ``if loss > 0:``), builds a tensor
  from a view of an input outside tensor ops, or hands a closure to ``optimizer.step`` cannot be
  replayed: it runs eagerly, with one ``RuntimeWarning`` saying why (``fallback="error"`` raises
  :class:`~backprop.engine.capture.CaptureError` instead). Return tensors, not floats.
* Returned tensors are detached (their values, no graph).

``fit``, the scikit-learn estimators and data-parallel training capture their step by default through
:class:`CapturedStep` (``fit(..., jit=False)`` runs it eagerly). The replayed step runs the same
``forward``/``backward`` code in the same order as the eager one, so its results are bit-identical, with
one exception that pays for itself: plain SGD's update of a large Linear weight is folded into its
weight-gradient product (:func:`fuse_sgd`), equal to the eager update within float32 rounding.
Small steps run NumPy's BLAS on one thread (:func:`_thread_policy`). With the ``numba`` extra, the step of
a dense network (Linear layers and ReLU/Tanh/Sigmoid, cross-entropy, SGD) runs as two compiled kernels
instead (:mod:`backprop.training.fused`), equal to the eager step within float32 rounding; ``fit`` keeps
them on the model for its next call.

>>> import numpy as np, backprop as bp
>>> _ = bp.manual_seed(0)
>>> model = bp.nn.Sequential(bp.nn.Linear(4, 8), bp.nn.ReLU(), bp.nn.Linear(8, 3))
>>> opt = bp.optim.SGD(model.parameters(), lr=0.1)
>>> @bp.jit
... def train_step(x, y):
...     opt.zero_grad()
...     loss = bp.nn.functional.cross_entropy(model(bp.Tensor(x)), y)
...     loss.backward()
...     opt.step()
...     return loss
>>> x, y = np.ones((5, 4), dtype=np.float32), np.array([0, 1, 2, 0, 1])
>>> first, second = float(train_step(x, y).data), float(train_step(x, y).data)  # captured, then replayed
>>> second < first, train_step.captures
(True, 1)
"""

from __future__ import annotations

import functools
import math
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Self

import numpy as np

from backprop.engine.blas import SMALL_BATCH, gemm_update, weight_grad
from backprop.engine.capture import Capture, CaptureError, Plan, accumulate_grad
from backprop.engine.function import is_grad_enabled
from backprop.engine.memory import tune_malloc
from backprop.engine.tensor import Tensor
from backprop.nn.conv import Conv1dFn, Conv2dFn
from backprop.nn.functional import Linear
from backprop.nn.module import Module, Parameter, raw_grad, set_linear_grads
from backprop.nn.recurrence import Recurrence
from backprop.optim.optimizer import Optimizer
from backprop.optim.sgd import SGD
from backprop.training.fused import FusedDenseStep, dense_forward, fuse_dense_step
from backprop.training.loop import Batch, Step, _nonfinite_gradient

__all__ = ["CapturedStep", "Jitted", "captured", "jit"]

_EAGER = "eager"  # a guard under which capture failed: run eagerly


def jit(fn: Callable | None = None, *, fallback: str = "warn") -> Any:
    """Capture ``fn`` (a training step: forward, loss, ``backward``, ``optimizer.step()``) and replay it.

    Use as ``step = bp.jit(train_step)`` or as a decorator. ``fallback``: ``"warn"`` (default) runs a
    step that cannot be captured eagerly with one RuntimeWarning; ``"error"`` raises ``CaptureError``.
    """
    if fallback not in ("warn", "error"):
        raise ValueError(f"jit: fallback must be 'warn' or 'error', got {fallback!r}")
    if fn is None:
        return functools.partial(jit, fallback=fallback)
    if not callable(fn):
        raise TypeError(f"jit: expected a function, got {type(fn).__name__}")
    return Jitted(fn, fallback)


def _describe(x: Any) -> Any:
    """What the guard keys on for one argument: an array's shape and dtype, a Python value itself."""
    if type(x) is np.ndarray:  # NOTE: the dtype object itself (it hashes by value); .str builds a string
        return (x.shape, x.dtype)
    if isinstance(x, Tensor):
        return ("T", x.data.shape, x.data.dtype, x.requires_grad)
    return ("=", x) if isinstance(x, (int, float, str, bool, type(None))) else ("id", id(x))


class _Captured:
    """One plan with the guards that must hold to replay it."""

    def __init__(self, plan: Plan, modules: list[Module], outputs: Any) -> None:
        self.plan, self.modules, self.outputs = plan, modules, outputs
        self.modes = tuple(m.training for m in modules)
        self.grads = tuple(t.requires_grad for t in plan.leaves)
        self.update: Any = None  # the folded SGD update of its backward, if any

    def holds(self) -> bool:
        return (tuple([m.training for m in self.modules]) == self.modes
                and tuple([t.requires_grad for t in self.plan.leaves]) == self.grads)


class _ModuleCalls:
    """While capturing: which modules the step calls (their train/eval modes are guards)."""

    def __init__(self) -> None:
        self.modules: list[Module] = []
        self._seen: set[int] = set()

    def __enter__(self) -> Self:
        self._orig = Module.__dict__["__call__"]
        orig, seen, modules = self._orig, self._seen, self.modules

        def __call__(module: Module, *args: Any, **kwargs: Any) -> Any:
            if id(module) not in seen:
                seen.add(id(module))
                modules.append(module)
            return orig(module, *args, **kwargs)

        Module.__call__ = __call__
        return self

    def __exit__(self, *exc: object) -> None:
        Module.__call__ = self._orig


class Jitted:
    """What :func:`jit` returns: call it like the function. ``captures`` counts the captures so far;
    ``plans`` maps the arguments' guard to its plans, one per train/eval mode and ``requires_grad``
    pattern (print ``plans[key][0].plan`` to see the recorded instructions)."""

    def __init__(self, fn: Callable, fallback: str = "warn") -> None:
        self.fn, self.fallback = fn, fallback
        self.plans: dict[Any, Any] = {}
        self.captures = 0
        functools.update_wrapper(self, fn)

    def source(self) -> str:
        """The Python generated for the most recent capture: what each call now runs, line by line."""
        plans = [e for entries in self.plans.values() if entries is not _EAGER for e in entries]
        if not plans:
            raise RuntimeError("nothing captured yet: call the function once first")
        return plans[-1].plan.source(0)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:  # NOTE: keyword arguments become positional ones after the others, in a fixed order
            names = tuple(sorted(kwargs))
            call = functools.partial(_by_keyword, self.fn, len(args), names)
            return self._call((*args, *[kwargs[k] for k in names]), names, call)
        return self._call(args, (), self.fn)

    def _call(self, args: tuple[Any, ...], names: tuple[str, ...], fn: Callable) -> Any:
        key = (tuple([_describe(a) for a in args]), names, is_grad_enabled())
        entries = self.plans.get(key, ())
        if entries is _EAGER:
            return fn(*args)
        for entry in entries:  # NOTE: one plan per train/eval mode and requires_grad pattern, as torch.compile
            if entry.holds():
                return _unflatten(entry.outputs, entry.plan.run(0, *args))
        return self._capture(key, args, fn)

    def _capture(self, key: Any, args: tuple[Any, ...], fn: Callable) -> Any:
        tune_malloc()  # NOTE: as fit does: a training loop's arrays come and go; see backprop.engine.memory
        cap = Capture()
        result: list[Any] = []
        try:
            with _ModuleCalls() as calls, cap.segment(*args) as seg:
                result.append(fn(*seg.inputs))
                tensors, structure = _flatten(result[0])
                seg.outputs(*tensors)
        except CaptureError as e:
            if not result:
                raise
            if self.fallback == "error":
                raise
            warnings.warn(f"bp.jit({getattr(self.fn, '__name__', 'step')}): {e}; running it eagerly", RuntimeWarning,
                          stacklevel=3)
            self.plans[key] = _EAGER
            return result[0]
        self.captures += 1
        plan = cap.plan()
        _thread_policy(plan)
        opt = _plain_sgd_step(plan)
        if opt is not None:
            fuse_sgd(plan, 0, opt)
        # NOTE: a small dense network's whole step as one compiled kernel, where numba is installed
        runner: Any = fuse_dense_step(plan) or plan
        self.plans.setdefault(key, []).append(_Captured(runner, calls.modules, structure))
        return _detach(result[0])


def _by_keyword(fn: Callable, n: int, names: tuple[str, ...], *args: Any) -> Any:
    return fn(*args[:n], **dict(zip(names, args[n:])))


def _flatten(out: Any) -> tuple[list[Tensor], Any]:
    """The tensors of a returned structure (a tensor, None, or tuples, lists and dicts of them)."""
    tensors: list[Tensor] = []

    def walk(o: Any) -> Any:
        if isinstance(o, Tensor):
            tensors.append(o)
            return len(tensors) - 1
        if o is None:
            return None
        if isinstance(o, (tuple, list)):
            return type(o), [walk(v) for v in o]
        if isinstance(o, dict):
            return dict, {k: walk(v) for k, v in o.items()}
        raise CaptureError(f"the step returns a {type(o).__name__}; a captured step returns tensors (or tuples, "
                           "lists and dicts of them)")

    return tensors, walk(out)


def _unflatten(structure: Any, arrays: Sequence[np.ndarray]) -> Any:
    if structure is None:
        return None
    if isinstance(structure, int):
        return _wrap(arrays[structure])
    kind, items = structure
    if kind is dict:
        return {k: _unflatten(v, arrays) for k, v in items.items()}
    return kind(_unflatten(v, arrays) for v in items)


def _wrap(a: np.ndarray) -> Tensor:
    """A result as a Tensor without a graph (what ``Tensor(a)`` makes, without its checks: ``a`` came from an op)."""
    t = object.__new__(Tensor)
    t.data, t.grad, t.requires_grad, t._ctx = a, None, False, None
    return t


def _detach(out: Any) -> Any:
    tensors, structure = _flatten(out)
    return _unflatten(structure, [t.data for t in tensors])


# --------------------------------------------------------------------------------- the loop's step
class CapturedStep:
    """A :class:`~backprop.training.loop.Step` whose forward and backward are captured and replayed.

    Wraps a Step from outside (as data parallelism does): ``compute_loss`` replays the forward and the
    cost, ``backpropagate`` the backward pass (seeded with ``scale``, an input of the plan, so a
    data-parallel rank's share may change from batch to batch); ``apply_gradients`` (the finite check,
    clipping, the optimizer) and everything else is the wrapped step's own. A step class that overrides
    ``train_step`` or ``backpropagate`` runs eagerly: what it does is not known here.
    """

    def __init__(self, step: Step, fuse: bool = True) -> None:
        self.step, self.model, self.optimizer = step, step.model, step.optimizer
        # NOTE: the update may be folded into the backward only when nothing needs the gradients in between
        self.fuse = fuse and step.clip_norm is None and step.clip_value is None
        self.sharded = not fuse  # NOTE: data parallelism: backpropagate() is seeded with each rank's share
        self.modules = list(step.model.modules())
        self.plans: dict[Any, Any] = {}
        self.captures = 0
        self._pending: tuple[Capture, Any, Tensor] | None = None
        self._active: tuple[Any, Tensor] | None = None
        self._done: Tensor | None = None  # a loss whose backward ran when its step was captured
        self._folded: _FoldedUpdate | None = None
        loss = step.loss if isinstance(step.loss, str) else id(step.loss)
        self._config = (type(step), loss, getattr(step, "weighted", None), self.sharded)
        self._kept = _KEPT.setdefault(step.model, {})

    @staticmethod
    def supports(step: Any) -> bool:
        """True when ``step`` may be captured: see :attr:`Step.capturable`. A step that overrides
        ``train_step`` or ``backpropagate`` never is (what it does around the ops is not known here)."""
        cls = type(step)
        if not (isinstance(step, Step) and cls.train_step is Step.train_step
                and cls.backpropagate is Step.backpropagate):
            return False
        if step.capturable is not None:
            return bool(step.capturable)
        # NOTE: a loss given as a function may do Python (count calls, log) that must run at every step
        return cls.compute_loss is Step.compute_loss and isinstance(step.loss, str)

    train_step = Step.train_step  # NOTE: the one definition of a step, with this class's pieces

    @property
    def skip_nonfinite(self) -> bool:
        return self.step.skip_nonfinite

    def _key(self, batch: Batch) -> Any:
        y = batch.y
        return (batch.x.shape, batch.x.dtype.str, _describe(y) if isinstance(y, np.ndarray) else ("id", type(y)),
                None if batch.w is None else batch.w.shape, is_grad_enabled(),
                tuple([m.training for m in self.modules]))

    def compute_loss(self, batch: Batch) -> tuple[Tensor, Tensor]:
        key = self._key(batch)
        entry = self.plans.get(key)
        self._pending = self._active = self._done = None
        if entry is _EAGER or not isinstance(batch.y, np.ndarray) or not isinstance(batch.x, np.ndarray):
            return self.step.compute_loss(batch)
        if entry is None:
            entry = self._kept_step(key)
        if entry is not None and entry.holds():
            out, loss = entry.plan.run(0, batch.x, batch.y, batch.w)
            loss_t = _wrap(loss)
            self._active = (entry, loss_t)
            return _wrap(out), loss_t
        return self._capture(key, batch)

    def _kept_step(self, key: Any) -> _Captured | None:
        """A dense step captured by an earlier ``fit`` on this model (Keras keeps its train function on the
        model too), bound to this run's optimizer; None when there is none or the model's parameters are
        not the ones it was captured with."""
        kept = self._kept.get((key, self._config))
        if kept is None:
            return None
        entry, params = kept
        if params != tuple([id(p) for p in self.model.parameters()]):
            return None
        fused = entry.plan
        fused.fallback_update = fuse_sgd(fused.plan, 1, self.optimizer, self.step.check_finite) if self.fuse else None
        fused.bind(self.optimizer, fold=self.fuse, check_finite=self.step.check_finite)
        self.plans[key] = entry
        return entry

    def _capture(self, key: Any, batch: Batch) -> tuple[Tensor, Tensor]:
        cap = Capture()
        result: list[Any] = []
        try:
            with cap.segment(batch.x, batch.y, batch.w) as seg:
                result.extend(self.step.compute_loss(batch))
                seg.outputs(*result)
        except CaptureError as e:
            if len(result) != 2:
                raise
            self._give_up(key, e)
            return result[0], result[1]
        if not self.sharded and dense_forward(cap.segments[0][0]):
            return self._capture_dense(cap, key, batch, result[0], result[1])
        self._pending = (cap, key, result[1])
        return result[0], result[1]

    def _capture_dense(self, cap: Capture, key: Any, batch: Batch, out: Tensor, loss: Tensor) -> tuple[Tensor, Tensor]:
        """A dense network's step (:mod:`backprop.training.fused`): its backward is recorded at once (this is
        the step's own backward: without data parallelism it is seeded with 1), and if the kernels apply,
        this step already runs them, so that every step of a run (and of a resumed run) computes alike."""
        self._done = loss
        if not self._record_backward(cap, key, loss, np.asarray(1.0, dtype=loss.dtype)):
            return out, loss
        entry = self.plans[key]
        if not isinstance(entry.plan, FusedDenseStep):
            return out, loss  # NOTE: the gradients are this step's: backpropagate() has nothing left to do
        self._done = None
        for p in entry.plan.params:
            p.grad = None  # NOTE: as zero_grad() left them: the kernels compute this step again
        return self.compute_loss(batch)

    def _record_backward(self, cap: Capture, key: Any, loss: Tensor, seed: np.ndarray) -> bool:
        """Record the backward as the plan's segment 1 (running it) and keep the plan; False: cannot."""
        try:
            with cap.segment(seed) as seg:  # NOTE: the seed array is the segment's input, so it may vary
                self.step.backpropagate(loss, scale=seg.inputs[0])
        except CaptureError as e:
            self._give_up(key, e)
            return False
        self.captures += 1
        plan = cap.plan()
        _thread_policy(plan)
        entry = _Captured(plan, [], None)  # NOTE: the modes are in the key already: not checked twice a step
        if self.fuse:
            entry.update = fuse_sgd(plan, 1, self.optimizer, self.step.check_finite)
        fused = fuse_dense_step(plan)  # NOTE: a dense network's step as compiled kernels, with numba
        if fused is not None:
            fused.bind(self.optimizer, fold=self.fuse, check_finite=self.step.check_finite)
            fused.fallback_update, entry.plan, entry.update = entry.update, fused, fused
            self._kept[(key, self._config)] = (entry, tuple([id(p) for p in self.model.parameters()]))
        self.plans[key] = entry
        return True

    def _give_up(self, key: Any, error: Exception) -> None:
        warnings.warn(f"{type(self.step).__name__}: the training step cannot be captured ({error}); it runs "
                      "eagerly (fit(..., jit=False) says so without this warning)", RuntimeWarning, stacklevel=4)
        self.plans[key] = _EAGER

    def backpropagate(self, loss: Tensor | None, scale: float | None = None, x: np.ndarray | None = None) -> None:
        if loss is None:
            return self.step.backpropagate(loss, scale, x)
        if self._done is not None and self._done is loss:  # run already, when its step was captured
            self._done = None
            return None
        seed = np.asarray(1.0 if scale is None else scale, dtype=loss.dtype)
        if self._active is not None and self._active[1] is loss:
            entry, _ = self._active
            self._active = None
            entry.plan.run(1, seed)
            self._folded = entry.update
            return None
        if self._pending is not None and self._pending[2] is loss:
            cap, key, _ = self._pending
            self._pending = None
            self._record_backward(cap, key, loss, seed)
            return None
        return self.step.backpropagate(loss, scale, x)

    def apply_gradients(self, loss_value: float = math.nan) -> None:
        folded, self._folded = self._folded, None
        if folded is not None and folded.checked and type(self.step).apply_gradients is Step.apply_gradients:
            if not folded.complete:  # NOTE: plain SGD skips what was updated already: nothing left, no call
                self.optimizer.step()  # no clipping (else nothing is folded) and the gradients were checked
        else:
            self.step.apply_gradients(loss_value)

    def epoch_weight(self, batch: Batch) -> float:
        return self.step.epoch_weight(batch)

    def reduce_metrics(self, metrics: Sequence[Any]) -> None:
        self.step.reduce_metrics(metrics)

    def context(self) -> Any:
        return self.step.context()

    def on_exception(self, error: BaseException) -> None:
        self.step.on_exception(error)

    @property
    def is_root(self) -> bool:
        return self.step.is_root


#: A model's dense steps compiled by earlier ``fit`` calls, by the step's guards and configuration (see
#: ``CapturedStep._kept_step``). NOTE: a weak key: a model that goes away takes its steps with it.
_KEPT: weakref.WeakKeyDictionary[Module, dict[Any, Any]] = weakref.WeakKeyDictionary()


def captured(step: Any, enabled: bool = True, fuse: bool = True) -> Any:
    """``step`` wrapped in :class:`CapturedStep` when ``enabled`` and its class allows it, else ``step``.
    ``fuse=False`` keeps every gradient (data parallelism sums them over the ranks before the update)."""
    return CapturedStep(step, fuse) if enabled and CapturedStep.supports(step) else step


# ------------------------------------------------------------------------------ threads per step
def _thread_policy(plan: Plan) -> None:
    """A step whose products are all small (Linear layers on fewer than ``SMALL_BATCH`` rows, no
    convolution) runs its BLAS on one thread: measured here, two threads are slower on such products
    (they mostly wait for each other), for NumPy, JAX and backprop alike. A step with convolutions or
    recurrent layers too: their loops over images (or blocks of sequences) use the threads instead
    (:mod:`backprop.engine.parallel`, :mod:`backprop.engine.kernels`, which the plan tells how many the BLAS
    was allowed). Other steps keep the BLAS's own choice (all the threads it is allowed)."""
    ops = [i for code, _ in plan.segments for i in code if i[0] == "op"]
    linear = [i for i in ops if i[1] is Linear]
    threaded = any(i[1] in (Conv1dFn, Conv2dFn, Recurrence) for i in ops)
    small = bool(linear) and all(math.prod(i[8][0][:-1]) < SMALL_BATCH for i in linear)
    if small or threaded:  # NOTE: convolutions' loops over images and LSTMs' blocks use the threads instead
        plan.single_threaded()


# ------------------------------------------------------------------------- plain SGD, folded in
#: Fold the update of weights this large or larger. NOTE: below, the one gemm saves less than the calls
#: around it cost (a 4-8-3 network's step was slower folded).
FUSE_MIN_WEIGHTS = 4096

def _plain(group: dict[str, Any]) -> bool:
    return not group["momentum"] and not group["weight_decay"] and not group["maximize"]


def _plain_sgd_step(plan: Plan) -> SGD | None:
    """The SGD optimizer whose whole step a captured function's plan makes, if it has this shape:
    ``opt.zero_grad()`` (to None), one backward, then ``opt.step()`` right after it."""
    code = plan.segments[0][0]
    kinds = [i[0] for i in code]
    if kinds.count("backward") != 1:
        return None
    k = kinds.index("backward")
    after = [i for i in code[k + 1:] if i[0] == "call"]
    if not after or after[0][1] is not SGD.__dict__["step"].__replayable__ or not isinstance(after[0][2][0], SGD):
        return None
    opt = after[0][2][0]
    zero = Optimizer.__dict__["zero_grad"].__replayable__
    cleared = any(i[0] == "call" and i[1] is zero and i[2][:1] == (opt,) and i[2][1:2] != (False,)
                  and i[3].get("set_to_none", True) for i in code[:k])
    return opt if cleared and len(after[0][2]) == 1 and not after[0][3] else None


def fuse_sgd(plan: Plan, segment: int, optimizer: Any, check_finite: bool = False) -> _FoldedUpdate | None:
    """Fold plain SGD's update of every large Linear weight into its weight-gradient product.

    Each Linear layer's backward then computes only its input gradient; once the walk is over (every
    gradient known, so with ``check_finite`` nothing has moved yet when a check fails), each weight gets
    ``W += -lr * g.T @ x`` in one ``gemm`` with ``beta=1`` (:func:`~backprop.engine.blas.gemm_update`)
    and its bias ``b -= lr * sum(g)``; their ``.grad`` is then a :class:`~backprop.nn.module.LazyGrad`
    (the eager backward's gradient, formed if someone reads it), which ``optimizer.step()`` skips.
    What is checked at every step, so that the result is always the optimizer's: the group is still
    plain SGD (no momentum, weight decay or maximize) and the weight has no gradient yet; otherwise that
    layer's gradients are formed as the eager backward forms them and the optimizer updates it.

    ``check_finite``: the gradients must be finite before anything moves. ``g.T @ x`` is finite when g and
    x are and ``B * max|g| * max|x|`` is below the dtype's largest value (no sum can overflow), checked on
    these small factors; if that fails, every gradient is formed and the step's own exact check decides.
    """
    instr = plan.backward_instruction(segment)
    if instr is None or type(optimizer) is not SGD:
        return None
    nodes = instr[3]
    uses: dict[int, int] = {}
    for _, _, specs, _, _ in nodes:
        for spec in specs:
            if spec is not None and spec[0] == "leaf":
                uses[id(spec[1])] = uses.get(id(spec[1]), 0) + 1
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}

    def fusable(spec: Any) -> bool:  # NOTE: a Parameter: only its .grad can be formed when read (LazyGrad)
        return (spec is not None and spec[0] == "leaf" and isinstance(spec[1], Parameter)
                and uses[id(spec[1])] == 1 and id(spec[1]) in group_of)

    update = _FoldedUpdate(optimizer, check_finite)
    hooks = {}
    for k, (_, _, specs, cls, shapes) in enumerate(nodes):
        # NOTE: a batch of rows (not of sequences: the product would need the rows flattened first)
        if cls is Linear and len(shapes[0]) == 2 and math.prod(shapes[1]) >= FUSE_MIN_WEIGHTS and fusable(specs[1]) and (
                len(specs) == 2 or specs[2] is None or fusable(specs[2])):
            w, bias = specs[1][1], specs[2][1] if len(specs) == 3 and specs[2] else None
            layer = _FoldedLayer(w, bias, group_of[id(w)], None if bias is None else group_of[id(bias)])
            hooks[k] = _linear_hook(layer, plan.op_instruction(nodes[k][0])[7], update.deferred)
    if not hooks:
        return None
    plan.specialise_backward(segment, hooks, update)
    return update


class _FoldedLayer:
    """A Linear layer whose plain-SGD update is folded: its weight and bias, and their parameter groups."""

    __slots__ = ("b", "bgroup", "group", "w")

    def __init__(self, w: Parameter, b: Parameter | None, group: dict[str, Any], bgroup: dict[str, Any] | None) -> None:
        self.w, self.b, self.group, self.bgroup = w, b, group, bgroup

    def plain(self) -> bool:
        """The update is still plain SGD's and nothing else has put a gradient on these parameters."""
        b = self.b
        return (raw_grad(self.w) is None and _plain(self.group)
                and (b is None or raw_grad(b) is None and _plain(self.bgroup)))


def _linear_hook(layer: _FoldedLayer, needs: tuple[bool, ...], deferred: list) -> Any:
    """A Linear node's backward that leaves its weight's (and bias's) update for later: only the input
    gradient is formed now, by the op's own kernel."""
    only_input = (needs[0],) + (False,) * (len(needs) - 1)
    backward = Linear.kernel_backward

    def hook(saved: tuple, g: np.ndarray) -> tuple:
        deferred.append((layer, saved[0], g))
        return backward(saved, g, only_input)
    return hook


def _form(layer: _FoldedLayer, x: np.ndarray, g: np.ndarray) -> None:
    """The eager backward's gradients of a Linear layer's weight and bias."""
    accumulate_grad(layer.w, weight_grad(g, x), g)
    if layer.b is not None:
        accumulate_grad(layer.b, g.sum(axis=0), g)


class _FoldedUpdate:
    """``finish()``: the updates the backward left for later, made once every gradient is known.

    ``checked`` says that the step's own check need not look again (this step's gradients were all found
    finite, or ``check_finite`` is off); ``complete`` that every parameter of the optimizer was updated
    here, so its ``step()`` has nothing left to do.
    """

    def __init__(self, optimizer: Any, check_finite: bool) -> None:
        self.deferred: list[tuple[_FoldedLayer, np.ndarray, np.ndarray]] = []
        self.check_finite = check_finite
        self.named = [("", p) for group in optimizer.param_groups for p in group["params"]]
        self.checked = self.complete = False
        self._others: dict[tuple[int, ...], list[tuple[str, Any]]] = {}  # folded layers -> the other parameters

    def _unfolded(self, items: list) -> list[tuple[str, Any]]:
        """The optimizer's parameters this step's items do not update (their gradients are checked exactly)."""
        key = tuple([id(layer) for layer, _, _ in items])
        others = self._others.get(key)
        if others is None:
            folded = {id(t) for layer, _, _ in items for t in (layer.w, layer.b)}
            others = self._others[key] = [(n, p) for n, p in self.named if id(p) not in folded]
        return others

    def __call__(self) -> None:
        items = self.deferred[:]
        self.deferred.clear()  # NOTE: the same list: the hooks hold it (see _linear_hook)
        others = self._unfolded(items)
        self.checked = not self.check_finite or _safe(items, others)  # NOTE: True: nothing more to check
        self.complete = False
        if not self.checked:  # the exact check decides, on formed gradients
            for item in items:
                _form(*item)
            return
        complete = not others
        for layer, x, g in items:
            if not layer.plain():
                _form(layer, x, g)
                complete = False
                continue
            w, b = layer.w, layer.b
            gemm_update(w.data, g, x, -float(layer.group["lr"]))
            gb = None
            if b is not None:
                gb = g.sum(axis=0)
                data = b.data
                data -= float(layer.bgroup["lr"]) * gb  # NOTE: SGD's own arithmetic, to the bit
            set_linear_grads(w, b, g, x, gb, applied=True)
        self.complete = complete


def _safe(items: list, others: list[tuple[str, Any]]) -> bool:
    """True when every gradient of this step is finite: the folded ones by their factors, the others exactly.

    NOTE: one dot product per factor (a single BLAS pass): ``|a|^2 = a.a`` is finite only if every entry is
    (and not huge), and ``max|a| <= |a|``, so ``B * |g| * |x| < max`` bounds every entry of ``g.T @ x``.
    """
    for _, x, g in items:
        gg, xx = float(np.vdot(g, g)), float(np.vdot(x, x))
        largest = _LARGEST.get(g.dtype.char) or float(np.finfo(g.dtype).max)
        if not g.shape[0] * math.sqrt(gg * xx) < largest:  # NOTE: False for inf and nan too
            return False
    return _nonfinite_gradient(others) is None


_LARGEST = {c: float(np.finfo(c).max) for c in "efd"}  # the largest value of each float dtype
