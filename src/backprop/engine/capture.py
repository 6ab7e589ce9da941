"""Capture what a step does once, then replay it: the engine under ``backprop.jit``.

A training step in Python walks many objects each time: modules call modules, every op makes a Tensor
and links it into a graph, ``backward`` sorts that graph, the optimizer loops over its groups. For a
given input shape all of that is the same every step; only the numbers change. A :class:`Capture`
watches one step run eagerly and writes down what happened as a flat **plan** of instructions:

* ``input``: an array the caller passes in (the batch), by position;
* ``leaf``: a tensor that existed before the step (a parameter, a buffer), read live each step;
* ``const``: a tensor the step made from a Python number or a fixed array, kept as it was;
* ``op``: one :class:`~backprop.engine.function.Function` (its class, which slots feed it, its keyword
  arguments); replaying it calls the same ``forward`` on a fresh instance, so the arithmetic is the same;
* ``backward``: the reverse walk of ``Tensor.backward``, its order fixed at capture (the same topological
  order and the same accumulation as the eager walk, so the gradients are bit-identical);
* ``call``: a whole call of a function marked :func:`~backprop.engine.function.replayable` (an
  optimizer's ``step`` or ``zero_grad``, gradient clipping), replayed with the same arguments.

A plan holds several **segments** (entry points sharing one set of slots): a training loop runs the
forward segment, reads the loss, then runs the backward segment. Python between the ops (an ``if``, a
loop, a print) runs only while capturing, as in ``jax.jit``; reading a computed tensor's value inside a
captured segment (``loss.item()``, ``if loss > 0``) or making a tensor from a view of an input makes the
capture fail with a :class:`CaptureError` that says why, and the caller runs the step eagerly instead.

>>> import numpy as np, backprop as bp
>>> w = bp.tensor([1.0, 2.0], requires_grad=True)
>>> cap = Capture()
>>> with cap.segment(np.array([3.0, 4.0], dtype=np.float32)) as seg:
...     seg.outputs((bp.Tensor(seg.inputs[0]) * w).sum())
>>> plan = cap.plan()
>>> [float(v) for v in plan.run(0, np.array([1.0, 1.0], dtype=np.float32))]
[3.0]
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from backprop.engine import function as _function
from backprop.engine.function import Function
from backprop.engine.tensor import Tensor, _accumulate_leaf, _release, _toposort

__all__ = ["Capture", "CaptureError", "Plan", "accumulate_grad", "capturing"]

accumulate_grad = _accumulate_leaf  # ``leaf.grad += g`` as the eager backward does it (for specialised plans)

_BACKWARD = Tensor.backward.__replayable__  # type: ignore[attr-defined]
_VALUE_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


class CaptureError(RuntimeError):
    """The step cannot be captured (the message says why); run it eagerly instead."""


def capturing() -> bool:
    """True while a step is being captured."""
    return _function._recorder is not None


class _Segment:
    """What ``Capture.segment`` yields: the inputs as given, and where to say what the segment returns."""

    def __init__(self, recorder: Capture, inputs: tuple[Any, ...]) -> None:
        self.recorder, self.inputs, self.output_slots = recorder, inputs, []

    def outputs(self, *tensors: Any) -> None:
        """The segment's results, returned (as arrays) by ``Plan.run``: Tensors computed in the step."""
        self.output_slots = [self.recorder._output_slot(t) for t in tensors]


class Capture:
    """Records segments of a step as it runs eagerly; :meth:`plan` turns them into a :class:`Plan`."""

    def __init__(self) -> None:
        self.slot: dict[int, int] = {}  # id(Tensor or ndarray) -> value slot
        self.computed: set[int] = set()  # slots whose value depends on the inputs (not const, not leaf)
        self.keep: list[Any] = []  # NOTE: every object whose id is a key stays alive, so no id is reused
        self.nslots = 0
        self.ctx_slot: dict[int, int] = {}  # id(Function) -> ctx slot
        self.ctxs: list[Function | None] = []
        self.code: list[tuple] = []
        self.segments: list[tuple[list[tuple], list[int]]] = []
        self.leaves: list[Tensor] = []
        self.inputs: list[np.ndarray] = []
        self.calls: list[Callable] = []  # hooks: called with each recorded call (fn, args, kwargs)
        self.problem: str | None = None
        self._depth = 0

    # --------------------------------------------------------------------------------- recording
    @contextlib.contextmanager
    def segment(self, *inputs: Any) -> Iterator[_Segment]:
        """Record one segment: ``inputs`` (arrays or Tensors) are what later runs pass by position."""
        if _function._recorder is not None:
            raise CaptureError("a step is already being captured (captures do not nest)")
        self.code, self.inputs = [], []
        for i, x in enumerate(inputs):
            self._add_input(i, x)
        seg = _Segment(self, inputs)
        _function._recorder = self
        saved = _patch(self)
        try:
            yield seg
        finally:
            _function._recorder = None
            _unpatch(saved)
        if self.problem is not None:
            raise CaptureError(self.problem)
        self.segments.append((self.code, seg.output_slots))

    def _new_slot(self, obj: Any) -> int:
        s = self.nslots
        self.nslots += 1
        self.slot[id(obj)] = s
        self.keep.append(obj)
        return s

    def _add_input(self, i: int, x: Any) -> None:
        if isinstance(x, Tensor):
            if x.requires_grad:
                self.problem = f"input {i} is a tensor that requires grad: pass its array, or run eagerly"
            arr = x.data
            s = self._new_slot(x)
            self.slot[id(arr)] = s
            self.keep.append(arr)
        elif isinstance(x, np.ndarray):
            arr, s = x, self._new_slot(x)
        else:
            self.inputs.append(None)  # type: ignore[arg-type]
            return
        self.inputs.append(arr)
        self.computed.add(s)
        self.code.append(("input", s, i, isinstance(x, Tensor)))

    def _fail(self, why: str) -> None:
        if self.problem is None:
            self.problem = why

    def _source(self, t: Tensor) -> int:
        """The slot of a tensor used by an op: known already, or a leaf that existed before the step."""
        s = self.slot.get(id(t))
        if s is None:
            s = self._new_slot(t)
            self.leaves.append(t)
            self.code.append(("leaf", s, t))
        return s

    def op(self, ctx: Function, parents: Sequence[Tensor], kwargs: dict[str, Any], out: Tensor) -> None:
        """Called by ``Function.apply`` for every op while capturing."""
        if self._depth:
            return
        srcs = tuple(self._source(p) for p in parents)
        static, dynamic = {}, []
        for k, v in kwargs.items():
            build = self._argument(v, f"{type(ctx).__name__}'s argument {k!r}")
            if build is None:
                static[k] = v
            else:
                dynamic.append((k, build))
        s = self._new_slot(out)
        self.slot[id(out.data)] = s
        self.keep.append(out.data)
        if any(p in self.computed for p in srcs) or dynamic:
            self.computed.add(s)
        c = None
        if out._ctx is ctx:
            c = len(self.ctxs)
            self.ctxs.append(ctx)
            self.ctx_slot[id(ctx)] = c
        self.code.append(("op", type(ctx), srcs, static, tuple(dynamic), s, c,
                          getattr(ctx, "needs_grad", None)))

    def _argument(self, v: Any, what: str) -> Callable[[list], Any] | None:
        """How to rebuild a keyword argument from the slots at replay (None: it is a constant).

        Arrays of the step (inputs, results of ops) are followed, also inside tuples and lists (an index
        like ``(np.arange(n), target)``); an array derived from them outside tensor ops cannot be.
        """
        if isinstance(v, np.ndarray):
            s = self.slot.get(id(v))
            if s is not None:
                def get(values: list) -> Any:
                    return values[s]
                get.slots = {s}  # type: ignore[attr-defined]
                return get
            self._check_foreign(v, what)
            return None
        if isinstance(v, (tuple, list)) and v:
            parts = [self._argument(e, what) for e in v]
            if any(p is not None for p in parts):
                kind, fixed = type(v), list(v)
                pairs = [(i, p) for i, p in enumerate(parts) if p is not None]

                def build(values: list) -> Any:
                    out = list(fixed)
                    for i, p in pairs:
                        out[i] = p(values)
                    return kind(out)
                build.slots = set().union(*(p.slots for _, p in pairs))  # type: ignore[attr-defined]
                return build
        return None

    def _check_foreign(self, a: np.ndarray, what: str) -> None:
        """An array the step made outside tensor ops: refused if it may come from an input (a view of one, or
        shaped like the batch), since a replay would keep its first value."""
        if any(x is not None and np.shares_memory(a, x) for x in self.inputs):
            self._fail(f"{what} is a view of an input made outside tensor ops (e.g. bp.Tensor(x[:, :3])); make "
                       "the tensor first and index it, or run eagerly")
        elif a.ndim and any(x is not None and x.ndim and x.shape[0] > 1 and a.shape[0] == x.shape[0]
                            for x in self.inputs):
            self._fail(f"{what} is an array shaped like the batch {a.shape} computed outside tensor ops (with "
                       "NumPy, from an input?): a replay would reuse its first value; compute it with tensor "
                       "ops, pass it as an argument, or run eagerly")

    def created(self, t: Tensor, data: Any) -> None:
        """Called when a Tensor is made while capturing (not by an op): find where its values come from."""
        if self._depth:
            return
        src = data.data if isinstance(data, Tensor) else data
        s = self.slot.get(id(src)) if isinstance(src, np.ndarray) else None
        if s is not None:
            if t.data is src:  # the same array: the same slot
                self.slot[id(t)] = s
                self.keep.append(t)
            else:  # a conversion (dtype) of an input or a computed array
                n = self._new_slot(t)
                self.slot[id(t.data)] = n
                self.keep.append(t.data)
                self.computed.add(n)
                self.code.append(("cast", n, s, t.data.dtype))
        else:
            if isinstance(src, np.ndarray):
                self._check_foreign(src, "a tensor")
            n = self._new_slot(t)
            self.code.append(("const", n, t.data))

    def read(self, t: Tensor, how: str) -> None:
        """Called when a tensor's value is read into Python while capturing."""
        if not self._depth and self.slot.get(id(t)) in self.computed:
            self._fail(f"the step reads a computed tensor's value ({how}), so its Python control flow may "
                       "depend on the data: return the tensor instead, or run the step eagerly")

    def call(self, fn: Callable, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Called for a ``replayable`` function while capturing: record it and run it (nothing inside recorded)."""
        raw = fn  # NOTE: the function itself, not the replayable wrapper
        if self._depth:
            return raw(*args, **kwargs)
        if raw is _BACKWARD:
            return self._backward(*args, **kwargs)
        args = tuple(list(a) if isinstance(a, Iterator) else a for a in args)  # NOTE: a generator runs once
        for a in (*args, *kwargs.values()):
            if isinstance(a, Tensor) and self.slot.get(id(a)) in self.computed:
                self._fail(f"{raw.__qualname__} is given a tensor computed in the step")
            elif callable(a) and not isinstance(a, type):
                self._fail(f"{raw.__qualname__} is given a function (a closure re-evaluates the step): run eagerly")
        for hook in self.calls:
            hook(raw, args, kwargs)
        self.code.append(("call", raw, args, kwargs))
        self._depth += 1
        try:
            return raw(*args, **kwargs)
        finally:
            self._depth -= 1

    def _backward(self, root: Tensor, grad: Any = None, retain_graph: bool = False) -> None:
        if not root.requires_grad or root._ctx is None or id(root) not in self.slot:
            self._depth += 1
            try:  # a leaf or a tensor from outside the step: eager, with its usual errors
                return _BACKWARD(root, grad, retain_graph)
            finally:
                self._depth -= 1
        if grad is None:
            if root.data.size != 1:
                _BACKWARD(root, grad)  # raises the eager error
            seed: tuple = ("ones", root.data.shape, root.data.dtype)
            now = None
        else:
            g = grad.data if isinstance(grad, Tensor) else grad
            s = self.slot.get(id(g)) if isinstance(g, np.ndarray) else None
            now = np.asarray(g, dtype=root.dtype)
            if now.shape != root.shape:
                raise ValueError(f"backward(): grad has shape {now.shape} but the tensor has shape {root.shape}")
            seed = ("slot", s, root.data.dtype) if s is not None else ("const", now)
        nodes = []
        for node in reversed(_toposort(root)):
            ctx = node._ctx
            if ctx.retains:
                self._fail("retain_grad() on a tensor inside a captured step is not supported")
            specs = tuple(None if not p.requires_grad else (("leaf", p) if p._ctx is None else ("node", self.slot[id(p)]))
                          for p in ctx.parents)
            nodes.append((self.ctx_slot[id(ctx)], self.slot[id(node)], specs, type(ctx),
                          tuple(p.data.shape for p in ctx.parents)))
        instr = ("backward", self.slot[id(root)], seed, tuple(nodes), retain_graph)
        self.code.append(instr)
        _run_backward(instr, None, self.ctxs, now)
        return None

    def _output_slot(self, t: Any) -> int:
        if not isinstance(t, Tensor) or id(t) not in self.slot:
            raise CaptureError(f"a captured segment must return tensors computed in it, got {type(t).__name__}")
        return self.slot[id(t)]

    # ------------------------------------------------------------------------------------- the plan
    def plan(self) -> Plan:
        """The recorded segments as a replayable :class:`Plan`."""
        return Plan(self.segments, self.nslots, len(self.ctxs), self.leaves)


def _run_backward(instr: tuple, v: Any, c: list[Function | None], g0: np.ndarray | None = None,
                  hooks: dict[int, Callable] | None = None, finish: Callable[[], None] | None = None) -> None:
    """The eager ``Tensor.backward`` walk, in the order fixed at capture: same arithmetic, same accumulation.

    ``hooks`` (node index -> ``hook(ctx, g)``) replace some nodes' ``backward`` (a fused update takes the
    gradients of its leaves itself and returns None for them); ``finish`` runs after the walk.
    """
    _, root, seed, nodes, retain = instr
    if g0 is not None:
        pass
    elif seed[0] == "ones":
        g0 = np.ones(seed[1], dtype=seed[2])
    elif seed[0] == "slot":
        g0 = np.asarray(v[seed[1]], dtype=seed[2])
    else:
        g0 = seed[1]
    grads = {root: g0}
    for k, (cs, node, specs, _, _) in enumerate(nodes):
        g = grads.pop(node, None)
        if g is None:
            continue
        ctx = c[cs]
        hook = hooks.get(k) if hooks else None
        pgs = ctx.backward(g) if hook is None else hook(ctx, g)
        if len(specs) == 1:
            pgs = (pgs,)
        for spec, pg in zip(specs, pgs):
            if pg is None or spec is None:
                continue
            if spec[0] == "leaf":
                _accumulate_leaf(spec[1], pg, g)
            else:
                key = spec[1]
                old = grads.get(key)
                grads[key] = pg if old is None else old + pg
        if not retain:
            _release(ctx)
            c[cs] = None
    if finish is not None:
        finish()


class Plan:
    """A captured step: ``run(segment, *inputs)`` replays one segment and returns its outputs (arrays).

    The slots are shared between segments (a backward segment uses what the forward segment saved), and
    values a later segment does not need are dropped at the end of each segment, so an idle plan holds no
    activations.
    """

    def __init__(self, segments: list[tuple[list[tuple], list[int]]], nslots: int, nctx: int,
                 leaves: list[Tensor]) -> None:
        self.segments = segments
        self.leaves = leaves
        self.values: list[Any] = [None] * nslots
        self.ctxs: list[Function | None] = [None] * nctx
        self._programs = []
        for k, (code, outs) in enumerate(segments):
            later = {s for c2, o2 in segments[k + 1:] for s in _slots_used(c2)} | set(outs)
            drop = sorted(s for s in _slots_written(code) if s not in later)
            self._programs.append((_compile(code, self.values), outs, drop))

    def backward_instruction(self, segment: int) -> tuple | None:
        """The segment's backward instruction (``("backward", root, seed, nodes, retain)``), if it has one;
        ``nodes`` lists ``(ctx slot, value slot, parent specs, Function class, parent shapes)`` in the order
        they run."""
        found = [i for i in self.segments[segment][0] if i[0] == "backward"]
        return found[0] if len(found) == 1 else None

    def specialise_backward(self, segment: int, hooks: dict[int, Callable], finish: Callable[[], None]) -> None:
        """Run the segment's backward with ``hooks`` and ``finish`` (see ``_run_backward``) from now on."""
        code = self.segments[segment][0]
        k = next(n for n, i in enumerate(code) if i[0] == "backward")
        instr = code[k]
        position = sum(1 for i in code[:k] if i[0] != "const")
        self._programs[segment][0][position] = lambda v, c, inputs: _run_backward(instr, v, c, None, hooks, finish)

    def run(self, segment: int, *inputs: Any) -> list[np.ndarray]:
        program, outs, drop = self._programs[segment]
        v, c = self.values, self.ctxs
        for step in program:
            step(v, c, inputs)
        result = [v[s] for s in outs]
        for s in drop:
            v[s] = None
        return result

    def __repr__(self) -> str:
        lines = [f"<Plan: {len(self.segments)} segment(s), {len(self.values)} slots, {len(self.leaves)} leaves>"]
        for k, (code, outs) in enumerate(self.segments):
            lines.append(f"segment {k} -> slots {outs}")
            lines.extend("  " + _describe(i) for i in code)
        return "\n".join(lines)


def _slots_used(code: list[tuple]) -> set[int]:
    used: set[int] = set()
    for i in code:
        if i[0] == "op":
            used.update(i[2])
            for _, build in i[4]:
                used.update(build.slots)
        elif i[0] == "cast":
            used.add(i[2])
        elif i[0] == "backward" and i[2][0] == "slot":
            used.add(i[2][1])
    return used


def _slots_written(code: list[tuple]) -> set[int]:
    return {i[5] if i[0] == "op" else i[1] for i in code if i[0] in ("op", "input", "leaf", "cast")}


def _describe(i: tuple) -> str:
    kind = i[0]
    if kind == "op":
        return f"v{i[5]} = {i[1].__name__}({', '.join(f'v{s}' for s in i[2])})"
    if kind == "input":
        return f"v{i[1]} = input {i[2]}"
    if kind == "leaf":
        return f"v{i[1]} = leaf {tuple(i[2].shape)}"
    if kind == "const":
        return f"v{i[1]} = const {tuple(np.shape(i[2]))}"
    if kind == "cast":
        return f"v{i[1]} = v{i[2]} as {i[3]}"
    if kind == "backward":
        return f"backward from v{i[1]} through {len(i[3])} ops"
    return f"call {i[1].__qualname__}"


def _compile(code: list[tuple], values: list[Any]) -> list[Callable]:
    """Each instruction as a small closure ``step(values, ctxs, inputs)``."""
    program = []
    for i in code:
        kind = i[0]
        if kind == "const":
            values[i[1]] = i[2]  # NOTE: set once; no instruction needed at run time
        elif kind == "input":
            program.append(_input(i[1], i[2], i[3]))
        elif kind == "leaf":
            program.append(_leaf(i[1], i[2]))
        elif kind == "cast":
            program.append(_cast(i[1], i[2], i[3]))
        elif kind == "op":
            program.append(_op(*i[1:]))
        elif kind == "backward":
            program.append(lambda v, c, inputs, i=i: _run_backward(i, v, c))
        else:
            program.append(lambda v, c, inputs, fn=i[1], a=i[2], kw=i[3]: fn(*a, **kw))
    return program


def _input(s: int, k: int, is_tensor: bool) -> Callable:
    if is_tensor:
        def step(v, c, inputs):
            v[s] = inputs[k].data
    else:
        def step(v, c, inputs):
            v[s] = inputs[k]
    return step


def _leaf(s: int, t: Tensor) -> Callable:
    def step(v, c, inputs):
        v[s] = t.data
    return step


def _cast(s: int, src: int, dtype: np.dtype) -> Callable:
    def step(v, c, inputs):
        v[s] = np.asarray(v[src], dtype=dtype)
    return step


def _op(cls: type[Function], srcs: tuple[int, ...], static: dict[str, Any], dynamic: tuple[tuple[str, Callable], ...],
        s: int, cs: int | None, needs: tuple[bool, ...] | None) -> Callable:
    """One op: the same ``forward`` on a fresh instance; kept for ``backward`` when it is differentiated."""
    new, asarray, ndarray = Function.__new__, np.asarray, np.ndarray

    def step(v, c, inputs):
        ctx = new(cls)
        kw = dict(static)
        for k, build in dynamic:
            kw[k] = build(v)
        out = ctx.forward(*[v[j] for j in srcs], **kw)
        v[s] = out if type(out) is ndarray else asarray(out)
        if cs is not None:
            ctx.needs_grad = needs
            c[cs] = ctx

    if dynamic:
        return step
    a = srcs[0] if len(srcs) == 1 else None

    # NOTE: the common cases without the dict copy and the argument list (a few hundred ns an op)
    def step_fast(v, c, inputs):
        ctx = new(cls)
        out = ctx.forward(v[a], **static) if a is not None else ctx.forward(*[v[j] for j in srcs], **static)
        v[s] = out if type(out) is ndarray else asarray(out)
        if cs is not None:
            ctx.needs_grad = needs
            c[cs] = ctx

    return step_fast


# ------------------------------------------------------------------------- what capturing patches
def _patch(cap: Capture) -> list[tuple[type, str, Any]]:
    """While capturing: see tensors being made and values being read (class attributes, restored after)."""
    saved = [(Tensor, "__init__", Tensor.__dict__["__init__"])]
    init = Tensor.__dict__["__init__"]

    def __init__(self, data, requires_grad=False, dtype=None):
        init(self, data, requires_grad, dtype)
        cap.created(self, data)

    Tensor.__init__ = __init__
    for name in _VALUE_READS:
        orig = Tensor.__dict__.get(name)
        if orig is None:
            continue
        saved.append((Tensor, name, orig))
        setattr(Tensor, name, _reading(cap, orig, name))
    return saved


def _reading(cap: Capture, orig: Callable, name: str) -> Callable:
    def read(self, *args, **kwargs):
        cap.read(self, name)
        return orig(self, *args, **kwargs)
    return read


def _unpatch(saved: list[tuple[type, str, Any]]) -> None:
    for cls, name, value in saved:
        setattr(cls, name, value)
