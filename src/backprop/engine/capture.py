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

Each segment of the plan becomes the source of one Python function (``print(plan.source())`` shows it: a
learner can read the captured step as straight-line code), with the slots as local variables. An op that
has **kernels** (``kernel_forward``/``kernel_backward``, two plain functions; the op's own ``forward`` and
``backward`` call them too) costs two function calls; any other op runs on a fresh instance.

A plan holds several **segments** (entry points sharing what they keep): a training loop runs the
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
import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from backprop.engine import function as _function
from backprop.engine.blas import set_blas_threads
from backprop.engine.function import Function
from backprop.engine.parallel import set_budget
from backprop.engine.tensor import Tensor, _accumulate_leaf, _release, _toposort

__all__ = ["Capture", "CaptureError", "Plan", "accumulate_grad"]

accumulate_grad = _accumulate_leaf  # ``leaf.grad += g`` as the eager backward does it (for specialised plans)

_BACKWARD = Tensor.backward.__replayable__  # type: ignore[attr-defined]
_VALUE_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


class CaptureError(RuntimeError):
    """The step cannot be captured (the message says why); run it eagerly instead."""


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
                          getattr(ctx, "needs_grad", None), tuple(p.data.shape for p in parents)))

    def _argument(self, v: Any, what: str) -> tuple | None:
        """How a keyword argument is rebuilt from the slots at replay: ``("slot", s)``, or ``("seq", type,
        parts)`` for a tuple or list holding some (an index like ``(np.arange(n), target)``); None: a constant.

        Arrays of the step (inputs, results of ops) are followed; an array derived from them outside tensor
        ops cannot be.
        """
        if isinstance(v, np.ndarray):
            s = self.slot.get(id(v))
            if s is not None:
                return ("slot", s)
            if self._views_input(v):  # NOTE: not the shape test: buffers (running statistics) are arguments too
                self._fail(f"{what} is a view of an input made outside tensor ops: index the tensor instead")
            return None
        if isinstance(v, (tuple, list)) and v:
            parts = [self._argument(e, what) for e in v]
            if any(p is not None for p in parts):
                return ("seq", type(v), [("const", e) if p is None else p for e, p in zip(v, parts)])
        return None

    def _views_input(self, a: np.ndarray) -> bool:
        return any(x is not None and np.shares_memory(a, x) for x in self.inputs)

    def _check_foreign(self, a: np.ndarray, what: str) -> None:
        """A tensor made from an array outside tensor ops: refused if the array may come from an input (a view
        of one, or shaped like the batch), since a replay would keep its first value."""
        if self._views_input(a):
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
            elif inspect.isroutine(a) or isinstance(a, functools.partial):  # NOTE: not a callable object
                self._fail(f"{raw.__qualname__} is given a function (a closure re-evaluates the step): run eagerly")
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
        _run_backward(instr, self.ctxs, now)
        return None

    def _output_slot(self, t: Any) -> int:
        if not isinstance(t, Tensor) or id(t) not in self.slot:
            raise CaptureError(self.problem or  # NOTE: the first reason found explains this one too
                               f"a captured segment must return tensors computed in it, got {type(t).__name__}")
        return self.slot[id(t)]

    # ------------------------------------------------------------------------------------- the plan
    def plan(self) -> Plan:
        """The recorded segments as a replayable :class:`Plan`."""
        return Plan(self.segments, self.leaves)


def _run_backward(instr: tuple, c: list[Function | None], g0: np.ndarray | None) -> None:
    """The capture's own backward: the eager ``Tensor.backward`` walk in the order the plan will replay it
    (the generated code of :class:`Plan` does the same arithmetic, in the same order)."""
    _, root, seed, nodes, retain = instr
    if g0 is None:
        g0 = np.ones(seed[1], dtype=seed[2])
    grads = {root: g0}
    for cs, node, specs, _, _ in nodes:
        g = grads.pop(node, None)
        if g is None:
            continue
        ctx = c[cs]
        pgs = ctx.backward(g)
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


class Plan:
    """A captured step: ``run(segment, *inputs)`` replays one segment and returns its outputs (arrays).

    Each segment is generated as the source of one Python function (``print(plan.source(k))``): a line per
    instruction, slots as local variables, so a replay costs a function call per op and nothing else. An op
    with kernels (``Function.kernel_forward``/``kernel_backward``) is two plain calls; any other op runs its
    ``forward`` and ``backward`` on a fresh instance. Values and saved state a later segment needs (the
    forward's for the backward) are kept in ``self.values`` between segments, and let go by the last
    segment that reads them, so an idle plan holds no activations.
    """

    def __init__(self, segments: list[tuple[list[tuple], list[int]]], leaves: list[Tensor]) -> None:
        self.segments = segments
        self.leaves = leaves
        self.values: dict[str, Any] = {}
        self._hooks: dict[int, tuple[dict[int, Callable], Callable[[], None]]] = {}
        self._one_thread = False
        self._sources: list[str] = []
        self._functions: list[Callable] | None = None  # NOTE: generated on first use, after any specialising

    def backward_instruction(self, segment: int) -> tuple | None:
        """The segment's backward instruction (``("backward", root, seed, nodes, retain)``), if it has one;
        ``nodes`` lists ``(ctx slot, value slot, parent specs, Function class, parent shapes)`` in the order
        they run."""
        found = [i for i in self.segments[segment][0] if i[0] == "backward"]
        return found[0] if len(found) == 1 else None

    def op_instruction(self, ctx_slot: int) -> tuple:
        """The ``("op", cls, input slots, static kwargs, dynamic kwargs, out slot, ctx slot, needs, input shapes)``
        of an op."""
        return next(i for code, _ in self.segments for i in code if i[0] == "op" and i[6] == ctx_slot)

    def single_threaded(self) -> None:
        """Run every segment with NumPy's BLAS on one thread (restored after): for a step made of small
        products, which two threads compute slower than one (they mostly wait for each other)."""
        self._one_thread = True
        self._functions = None

    def specialise_backward(self, segment: int, hooks: dict[int, Callable], finish: Callable[[], None]) -> None:
        """From now on run the segment's backward with ``hooks`` (node index -> ``hook(saved, g)``, in place
        of a kernel op's ``kernel_backward``) and call ``finish()`` after the walk."""
        self._hooks[segment] = (hooks, finish)
        self._functions = None

    def run(self, segment: int, *inputs: Any) -> list[np.ndarray]:
        functions = self._functions
        if functions is None:
            functions = self._generate()
        return functions[segment](self.values, inputs)

    def source(self, segment: int = 0) -> str:
        """The generated Python of one segment."""
        if self._functions is None:
            self._generate()
        return self._sources[segment]

    def __repr__(self) -> str:
        lines = [f"<Plan: {len(self.segments)} segment(s), {len(self.leaves)} leaves>"]
        for k, (code, outs) in enumerate(self.segments):
            lines.append(f"segment {k} -> slots {outs}")
            lines.extend("  " + _describe(i) for i in code)
        return "\n".join(lines)

    # ------------------------------------------------------------------------------ code generation
    def _generate(self) -> list[Callable]:
        bodies = [_SegmentSource(self, k, code, outs) for k, (code, outs) in enumerate(self.segments)]
        # which persistent names (values, saved state) each segment reads and writes: kept in between
        last_read: dict[str, int] = {}
        for k, b in enumerate(bodies):
            for name in b.reads_outside:
                last_read[name] = k
        self._sources, self._functions = [], []
        for k, b in enumerate(bodies):
            keep = sorted(n for n in b.defined if last_read.get(n, -1) > k)
            done = sorted(n for n, last in last_read.items() if last == k)
            src, fn = b.finish(keep, done)
            self._sources.append(src)
            self._functions.append(fn)
        return self._functions


class _SegmentSource:
    """The source of one segment's function ``run(V, inputs)`` (V: what segments pass each other)."""

    def __init__(self, plan: Plan, k: int, code: list[tuple], outs: list[int]) -> None:
        self.plan, self.k, self.outs = plan, k, outs
        self.ns: dict[str, Any] = {"_np": np, "_asarray": np.asarray, "_ndarray": np.ndarray, "_new": Function.__new__,
                                   "_accumulate": _accumulate_leaf}
        self.lines: list[str] = []
        self.defined: set[str] = set()
        self.reads_outside: set[str] = set()
        hooks, self.finish_fn = plan._hooks.get(k, ({}, None))
        self.hooks = hooks
        emit = {"input": self._input, "leaf": self._leaf, "const": self._const, "cast": self._cast, "op": self._op,
                "call": self._call, "backward": self._backward}
        for n, i in enumerate(code):
            emit[i[0]](n, *i[1:])

    def _name(self, obj: Any, prefix: str) -> str:
        name = f"{prefix}{len(self.ns)}"
        self.ns[name] = obj
        return name

    def _use(self, var: str) -> str:
        if var not in self.defined:
            self.reads_outside.add(var)
        return var

    def _define(self, var: str) -> str:
        self.defined.add(var)
        return var

    # one method per instruction kind
    def _input(self, n: int, s: int, i: int, is_tensor: bool) -> None:
        self.lines.append(f"{self._define(f'v{s}')} = inputs[{i}]{'.data' if is_tensor else ''}")

    def _leaf(self, n: int, s: int, t: Tensor) -> None:
        self.lines.append(f"{self._define(f'v{s}')} = {self._name(t, 'leaf')}.data")

    def _const(self, n: int, s: int, value: np.ndarray) -> None:
        self.lines.append(f"{self._define(f'v{s}')} = {self._name(value, 'const')}")

    def _cast(self, n: int, s: int, src: int, dtype: np.dtype) -> None:
        self.lines.append(f"{self._define(f'v{s}')} = _asarray({self._use(f'v{src}')}, dtype={self._name(dtype, 'dt')})")

    def _expr(self, spec: tuple) -> str:
        """A keyword argument rebuilt at replay (see ``Capture._argument``)."""
        if spec[0] == "slot":
            return self._use(f"v{spec[1]}")
        if spec[0] == "const":
            return self._name(spec[1], "k")
        items = ", ".join(self._expr(p) for p in spec[2])
        return f"{self._name(spec[1], 'seq')}(({items}{',' if len(spec[2]) == 1 else ''}))"

    def _op(self, n: int, cls: type[Function], srcs: tuple[int, ...], static: dict[str, Any],
            dynamic: tuple[tuple[str, Any], ...], s: int, cs: int | None, needs: tuple[bool, ...] | None,
            shapes: tuple[tuple[int, ...], ...]) -> None:
        args = [self._use(f"v{j}") for j in srcs]
        args += [f"{k}={self._name(v, 'k')}" for k, v in static.items()]
        args += [f"{k}={self._expr(spec)}" for k, spec in dynamic]
        call = ", ".join(args)
        out = self._define(f"v{s}")
        if _has_kernels(cls):
            fn = self._name(cls.kernel_forward, "fwd")
            if cs is None:
                self.lines.append(f"{out} = {fn}({call})[0]")
            else:
                self.lines.append(f"{out}, {self._define(f's{cs}')} = {fn}({call})")
        else:
            ctx = f"c{cs}" if cs is not None else "_c"
            self.lines.append(f"{ctx} = _new({self._name(cls, 'cls')})")
            self.lines.append(f"{out} = {ctx}.forward({call})")
            self.lines.append(f"if type({out}) is not _ndarray: {out} = _asarray({out})")
            if cs is not None:
                self.lines.append(f"{ctx}.needs_grad = {self._name(needs, 'needs')}")
                self._define(ctx)

    def _call(self, n: int, fn: Callable, args: tuple, kwargs: dict) -> None:
        self.lines.append(f"{self._name(fn, 'call')}(*{self._name(args, 'a')}, **{self._name(kwargs, 'kw')})")

    def _backward(self, n: int, root: int, seed: tuple, nodes: tuple, retain: bool) -> None:
        L = self.lines
        if seed[0] == "ones":
            L.append(f"g{root} = _np.ones({seed[1]!r}, dtype={self._name(seed[2], 'dt')})")
        elif seed[0] == "slot":
            L.append(f"g{root} = _asarray({self._use(f'v{seed[1]}')}, dtype={self._name(seed[2], 'dt')})")
        else:
            L.append(f"g{root} = {self._name(seed[1], 'seed')}")
        receives = sorted({spec[1] for node in nodes for spec in node[2] if spec is not None and spec[0] == "node"})
        if receives:
            L.append(" = ".join(f"g{s}" for s in receives) + " = None")
        for k, (cs, slot, specs, cls, _) in enumerate(nodes):
            g = f"g{slot}"
            body: list[str] = []
            kernel = _has_kernels(cls)
            saved = self._use(f"s{cs}") if kernel else self._use(f"c{cs}")
            hook = self.hooks.get(k)
            if hook is not None:
                body.append(f"r = {self._name(hook, 'hook')}({saved}, {g})")
            elif kernel:
                body.append(f"r = {self._name(cls.kernel_backward, 'bwd')}({saved}, {g}, "
                            f"{self._name(self.plan.op_instruction(cs)[7], 'needs')})")
            else:
                body.append(f"r = {saved}.backward({g})")
            parts = ["r"] if len(specs) == 1 else [f"r[{i}]" for i in range(len(specs))]
            for spec, part in zip(specs, parts):
                if spec is None:
                    continue
                check = "" if kernel and hook is None else f"if {part} is not None: "
                if spec[0] == "leaf":
                    body.append(f"{check}_accumulate({self._name(spec[1], 'leaf')}, {part}, {g})")
                else:
                    p = f"g{spec[1]}"
                    body.append(f"{check}{p} = {part} if {p} is None else {p} + {part}")
            if not retain:  # NOTE: let go of what the op saved as soon as its gradient is out, as the eager walk
                body.append(f"{saved} = None")
            if slot == root:
                L.extend(body)
            else:
                L.append(f"if {g} is not None:")
                L.extend("    " + b for b in body)
            L.append(f"{g} = None")
        if self.finish_fn is not None:
            L.append(f"{self._name(self.finish_fn, 'finish')}()")

    def finish(self, keep: list[str], done: list[str]) -> tuple[str, Callable]:
        """The function's source and the function: load what earlier segments kept, run, keep, return."""
        head = [f"{name} = V[{name!r}]" for name in sorted(self.reads_outside)]
        tail = [f"V[{name!r}] = {name}" for name in keep]
        tail += [f"V.pop({name!r}, None)" for name in done if name not in keep]
        outs = ", ".join(f"v{s}" for s in self.outs)
        body = [*head, *self.lines, *tail, f"return [{outs}]"]
        setter = set_blas_threads() if self.plan._one_thread else None
        if setter is not None:  # NOTE: our own splits (engine/parallel.py) may still use the threads there were
            self.ns["_set_threads"], self.ns["_set_budget"] = setter, set_budget
            body = ["_n = _set_threads(1)", "_b = _set_budget(_n)", "try:", *("    " + b for b in body), "finally:",
                    "    _set_budget(_b)", "    _set_threads(_n)"]
        src = "\n".join([f"def segment_{self.k}(V, inputs):", *("    " + b for b in body)])
        exec(_compiled(src, self.k), self.ns)  # noqa: S102 - our own generated code
        return src, self.ns[f"segment_{self.k}"]


@functools.lru_cache(maxsize=256)
def _compiled(src: str, k: int) -> Any:
    """The code object of a segment's source. NOTE: cached: a step captured again (the next ``fit`` call on the
    same model, the last partial batch of every epoch's shape) generates the same source, and compiling it
    costs more than the rest of a capture's bookkeeping."""
    return compile(src, f"<captured segment {k}>", "exec")


def _has_kernels(cls: type[Function]) -> bool:
    return cls.kernel_forward is not None and cls.kernel_backward is not None


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
