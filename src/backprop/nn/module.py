"""Module: the container that finds its parameters, as in PyTorch.

A Module's parameters are the :class:`Parameter` attributes of it and of its submodules (attributes that
are Modules, or lists/tuples of Modules), named by their attribute path (``0.weight``, ``encoder.1.bias``),
in the order they were assigned. Names and layouts match PyTorch, so state dicts move between the two.

Buffers are the other arrays a module keeps and saves (batch norm's running statistics): declared with
:meth:`Module.register_buffer`, as in PyTorch, found by :meth:`Module.named_buffers`, saved by
``state_dict`` when persistent and cast by :meth:`Module.to`. They stay plain attributes (``bn.running_mean``
is the NumPy array); assigning to one keeps it a buffer.

What a layer declares about itself is a class attribute, so no other file keeps a list of layers:
``keeps_shape`` (its output has its input's shape: the repr carries the width through it), ``input_kind``
(what ONNX export feeds it) and ``onnx`` (its ONNX export, see :mod:`backprop.nn.contract`).

>>> import backprop as bp
>>> net = bp.nn.Sequential(bp.nn.Linear(4, 3), bp.nn.ReLU(), bp.nn.Linear(3, 2))
>>> [name for name, _ in net.named_parameters()]
['0.weight', '0.bias', '2.weight', '2.bias']
>>> m = Module()
>>> m.register_buffer("steps", np.zeros((), dtype=np.int64))
>>> m.steps += 1
>>> [(name, int(b)) for name, b in m.named_buffers()], list(m.state_dict())
([('steps', 1)], ['steps'])
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import numpy as np

from backprop.engine.blas import weight_grad
from backprop.engine.function import replayable
from backprop.engine.tensor import Tensor
from backprop.nn.contract import NotExportable, OnnxGraph, not_saveable
from backprop.nn.summary import summary as _summary

_GRAD = Tensor.__dict__["grad"]  # the slot that holds every Tensor's gradient


class LazyGrad:
    """A gradient formed when it is first read, from what was kept to form it (``form()``).

    A captured step that folds plain SGD's update into the weight-gradient product never forms the
    gradient; it leaves one of these on the weight, so that ``p.grad`` still gives the gradient (the
    eager backward's own product) to whoever reads it, while the optimizer knows the update is done.
    """

    __slots__ = ("form",)

    def __init__(self, form: Any) -> None:
        self.form = form


def set_linear_grads(w: Tensor, b: Tensor | None, g: np.ndarray, x: np.ndarray, gb: np.ndarray | None,
                     applied: bool) -> None:
    """The ``.grad`` of a Linear layer's weight (``g^T x``: output gradients g (B, out), inputs x (B, in)) and
    bias (``gb``) after a step that computed them its own way (a folded SGD update, compiled kernels).

    ``applied``: the update was made already: each ``.grad`` is a :class:`LazyGrad` (the weight's product is
    formed only if read), which the optimizer skips; else the gradients themselves, for the optimizer.
    """
    if applied:
        _GRAD.__set__(w, LazyGrad(functools.partial(weight_grad, g, x)))
        if b is not None:
            _GRAD.__set__(b, LazyGrad(functools.partial(_formed, gb)))
    else:
        _GRAD.__set__(w, weight_grad(g, x))
        if b is not None:
            _GRAD.__set__(b, gb)


def _formed(a: np.ndarray) -> np.ndarray:
    return a


def raw_grad(t: Tensor) -> Any:
    """``t.grad`` as stored: a :class:`LazyGrad` stays one (``t.grad`` would form it). Optimizers take any
    object with ``.data`` and ``.grad``; those that are not Tensors are read as they are."""
    return _GRAD.__get__(t, Tensor) if isinstance(t, Tensor) else t.grad


class Parameter(Tensor):
    """A Tensor that is a learnable weight: it requires grad and is found by ``Module.parameters()``."""

    __slots__ = ()

    def __init__(self, data: Any, requires_grad: bool = True, dtype: Any = None) -> None:
        super().__init__(data.data if isinstance(data, Tensor) else data, requires_grad=requires_grad, dtype=dtype)

    @property  # type: ignore[override]
    def grad(self) -> np.ndarray | None:
        g = _GRAD.__get__(self, Parameter)
        if type(g) is LazyGrad:
            g = g.form()
            _GRAD.__set__(self, g)
        return g

    @grad.setter
    def grad(self, value: Any) -> None:
        _GRAD.__set__(self, value)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


def _buffer_value(name: str, value: Any) -> np.ndarray | None:
    """What a buffer holds: a NumPy array of numbers (a Tensor's array itself, not a copy), or None."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        value = value.data
    if not isinstance(value, (np.ndarray, np.generic, int, float)) or isinstance(value, bool):
        raise TypeError(f"cannot assign a {type(value).__name__} to buffer {name!r} (an array, a Tensor or None "
                        "expected)")
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"buffer {name!r} must hold numbers, got dtype {arr.dtype}")
    return arr


class Module:
    """Base class of layers and models: subclass it, assign layers and Parameters in ``__init__``, write ``forward``."""

    training: bool = True
    # NOTE: declarations of the layer classes, read by the repr, the ONNX exporter and the completeness test
    # (tests/test_layer_registry.py); the defaults are those of a custom Module.
    keeps_shape: ClassVar[bool] = False  # the output has the input's shape (activations, dropout, normalisation)
    input_kind: ClassVar[str] = "float"  # "float", "indices" (integer input, Embedding) or "any" (passes through)
    onnx: ClassVar[Any] = None  # a method onnx(self, g, x) -> str, or NotExportable(reason); None: undecided

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # ---------------------------------------------------------------------------------------- traversal
    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Module) for v in value):
                # NOTE: unlike PyTorch, a plain list of layers is registered too (a common surprise there)
                for i, v in enumerate(value):
                    yield f"{name}.{i}", v

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        seen: set[int] = set()
        for mod_name, mod in self.named_modules(prefix):
            for name, value in vars(mod).items():
                if isinstance(value, Parameter) and id(value) not in seen:
                    seen.add(id(value))
                    yield (f"{mod_name}.{name}" if mod_name else name), value

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    # ----------------------------------------------------------------------------------------- buffers
    def register_buffer(self, name: str, tensor: Any, persistent: bool = True) -> None:
        """Declare the array ``tensor`` (a NumPy array, a Tensor's array, or None) as the buffer ``name``.

        As in PyTorch: it becomes the attribute ``name``, is listed by :meth:`named_buffers`, saved by
        ``state_dict`` unless ``persistent=False``, and cast by :meth:`to`. None (a buffer not in use) is
        listed nowhere until an array is assigned to it.
        """
        if not isinstance(name, str):
            raise TypeError(f"register_buffer: the name must be a string, got {type(name).__name__}")
        if not name.isidentifier():
            raise KeyError(f"register_buffer: the name must be an identifier (no '.', not empty), got {name!r}")
        specs: dict[str, bool] = self.__dict__.setdefault("_buffer_specs", {})
        if name not in specs and hasattr(self, name):
            raise KeyError(f"register_buffer: attribute {name!r} already exists")
        value = _buffer_value(name, tensor)
        specs[name] = bool(persistent)
        object.__setattr__(self, name, value)

    def named_buffers(self, prefix: str = "", recurse: bool = True, *,
                      persistent_only: bool = False) -> Iterator[tuple[str, np.ndarray]]:
        """(name, array) of every buffer (of this module only if ``recurse=False``); ``persistent_only``:
        those ``state_dict`` saves."""
        seen: set[int] = set()
        modules = self.named_modules(prefix) if recurse else iter([(prefix, self)])
        for mod_name, mod in modules:
            for name, persistent in mod.__dict__.get("_buffer_specs", {}).items():
                value = mod.__dict__.get(name)
                if value is None or (persistent_only and not persistent) or id(value) in seen:
                    continue
                seen.add(id(value))
                yield (f"{mod_name}.{name}" if mod_name else name), value

    def buffers(self, recurse: bool = True) -> Iterator[np.ndarray]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def __setattr__(self, name: str, value: Any) -> None:
        specs = self.__dict__.get("_buffer_specs")
        if specs is not None and name in specs:
            if isinstance(value, (Parameter, Module)):
                del specs[name]  # NOTE: as in PyTorch, a Parameter or Module assigned to a buffer's name replaces it
            else:
                value = _buffer_value(name, value)  # stays a buffer (an array), as .to() and loading expect
        elif isinstance(self.__dict__.get(name), Parameter) and not (value is None or isinstance(value, Parameter)):
            # NOTE: PyTorch's rule: a plain array or Tensor in place of a Parameter would silently stop training it
            raise TypeError(f"cannot assign a {type(value).__name__} as parameter {name!r} (a Parameter or None "
                            "expected; to change its values, write into .data)")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name)
        self.__dict__.get("_buffer_specs", {}).pop(name, None)

    @property
    def _buffers(self) -> tuple[str, ...]:
        """The names of this module's buffers in use. NOTE: the pre-``register_buffer`` interface, kept for
        code that reads ``getattr(mod, "_buffers", ())``: use ``named_buffers()``."""
        return tuple(name for name, _ in self.named_buffers(recurse=False))

    @_buffers.setter
    def _buffers(self, names: Iterable[str]) -> None:
        # NOTE: the old way to declare buffers (assigning their names) still declares them
        for name in names:
            self.register_buffer(name, self.__dict__.get(name))

    def num_parameters(self) -> int:
        """Total number of learnable scalars."""
        return int(sum(p.data.size for p in self.parameters()))

    def summary(self, input_shape: Any = None, *, example_input: Any = None, print_fn: Any = print) -> str:
        """A Keras-style table of the layers, their output shapes and parameter counts: printed and returned.

        ``input_shape``: one sample's shape without the batch dimension (the model runs once on a batch of one
        zeros, in eval mode under ``no_grad``; nothing of the model or the random generator is changed), or
        ``example_input``: a batch. Without either, no shapes. ``print_fn`` is called on each line (``None``:
        no printing). Total, trainable and non-trainable (``requires_grad=False``) parameters; buffers apart.
        See :mod:`backprop.nn.summary`.

        >>> import backprop as bp
        >>> net = bp.nn.Sequential(bp.nn.Linear(3, 2), bp.nn.Tanh())
        >>> _ = net.summary((3,))
        Model: Sequential
        =============================================================
        Layer (type)                Output Shape              Param #
        =============================================================
        0 (Linear)                  (None, 2)                       8
        1 (Tanh)                    (None, 2)                       0
        =============================================================
        Total params: 8 (32 B)
        Trainable params: 8 (32 B)
        Non-trainable params: 0 (0 B)
        Input shape: (None, 3)
        Output shape: (None, 2)
        -------------------------------------------------------------
        """
        return _summary(self, input_shape, example_input=example_input, print_fn=print_fn)

    # ------------------------------------------------------------------------------------------- state
    @replayable
    def zero_grad(self) -> None:
        """Forget accumulated gradients (sets every ``p.grad`` to None, as PyTorch's default)."""
        for p in self.parameters():
            p.grad = None

    def train(self, mode: bool = True) -> Module:
        """Training mode (dropout active, batch statistics); returns self."""
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> Module:
        """Evaluation mode (dropout off); returns self."""
        return self.train(False)

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of every parameter (and persistent buffer, such as running statistics), by name."""
        out = {name: p.data.copy() for name, p in self.named_parameters()}
        for name, buf in self.named_buffers(persistent_only=True):
            out[name] = np.array(buf)
        return out

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Copy arrays into the parameters in place. Everything is checked before anything is changed."""
        targets: dict[str, np.ndarray] = {name: p.data for name, p in self.named_parameters()}
        targets.update(self.named_buffers(persistent_only=True))
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        arrays = {}
        for k, v in state.items():
            if k not in targets:
                continue
            arr = np.asarray(v.data if isinstance(v, Tensor) else v)
            if arr.shape != targets[k].shape:
                raise ValueError(
                    f"load_state_dict: {k} has shape {arr.shape} in the state dict but {targets[k].shape} in the model"
                )
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"load_state_dict: {k} has dtype {arr.dtype}, expected numbers")
            arrays[k] = arr
        for k, arr in arrays.items():
            targets[k][...] = arr  # NOTE: in place, so optimizers holding these parameters see the new values

    def to(self, dtype: Any) -> Module:
        """Cast every parameter to ``dtype`` (e.g. ``np.float64``); returns self."""
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"Module.to: parameters must be floating point, got {dtype}")
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = None if p.grad is None else p.grad.astype(dtype)
        for mod in self.modules():
            for name, buf in list(mod.named_buffers(recurse=False)):
                if buf.dtype.kind == "f":
                    setattr(mod, name, buf.astype(dtype))
        return self

    def double(self) -> Module:
        return self.to(np.float64)

    def float(self) -> Module:
        return self.to(np.float32)

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the first parameter (float32 unless cast)."""
        for p in self.parameters():
            return p.data.dtype
        return np.dtype(np.float32)

    # --------------------------------------------------------------------------------------------- repr
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        children = list(self.named_children())
        own = sum(p.data.size for p in vars(self).values() if isinstance(p, Parameter))
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not children:
            return head + ")"
        lines = [head]
        width = None  # the output size, carried through layers that keep it (activations, dropout)
        for name, child in children:
            if getattr(child, "out_features", None) is not None:
                width = f"{child.out_features} features"
            elif getattr(child, "out_channels", None) is not None:
                width = f"{child.out_channels} channels"
            elif not child.keeps_shape:
                width = None
            n = child.num_parameters()
            info = [f"-> {width}"] if width else []
            info += [f"{n:,} params"] if n else []
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}" + (f"   # {', '.join(info)}" if info else ""))
        total = self.num_parameters()
        lines.append(f"){'  # ' + f'{total:,} parameters' if total or own else ''}")
        return "\n".join(lines)


class Sequential(Module):
    """Layers applied one after the other; parameters named ``0.weight``, ``0.bias``, ... as in PyTorch.

    >>> import backprop as bp
    >>> net = bp.nn.Sequential(bp.nn.Linear(2, 4), bp.nn.Tanh(), bp.nn.Linear(4, 1))
    >>> net(bp.tensor([[1.0, 2.0]])).shape
    (1, 1)
    """

    def __init__(self, *layers: Module) -> None:
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: layer {i} is a {type(layer).__name__}, not a Module")
            setattr(self, str(i), layer)

    @property
    def layers(self) -> list[Module]:
        return [m for m in vars(self).values() if isinstance(m, Module)]

    def forward(self, x: Any) -> Any:
        for layer in self.layers:
            x = layer(x)
        return x

    def __getitem__(self, i: int) -> Module:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Module]:
        return iter(self.layers)

    def append(self, layer: Module) -> Sequential:
        setattr(self, str(len(self)), layer)
        return self

    @property
    def input_kind(self) -> str:  # type: ignore[override]
        """That of its first layer that does not merely pass its input on."""
        for layer in self.layers:
            if layer.input_kind != "any":
                return layer.input_kind
        return "any"

    def onnx(self, g: OnnxGraph, x: str) -> str:
        """Its layers' exports, one after the other (saving: the file format's own container)."""
        for name, layer in vars(self).items():
            if isinstance(layer, Module):
                x = g.layer(layer, x, name)
        return x


@not_saveable("a list of modules has no forward of its own: the Module that uses it is a custom one "
              "(save_weights saves its weights)")
class ModuleList(Module):
    """A list of modules whose parameters are registered (``0.weight``, ``1.weight``, ...)."""

    onnx = NotExportable("a list of modules has no forward of its own; the Module that uses it decides")

    def __init__(self, modules: Iterable[Module] = ()) -> None:
        for m in modules:
            self.append(m)

    def append(self, m: Module) -> ModuleList:
        if not isinstance(m, Module):
            raise TypeError(f"ModuleList: expected a Module, got {type(m).__name__}")
        setattr(self, str(len(self)), m)
        return self

    def __getitem__(self, i: int) -> Module:
        return [m for m in vars(self).values() if isinstance(m, Module)][i]

    def __len__(self) -> int:
        return sum(1 for m in vars(self).values() if isinstance(m, Module))

    def __iter__(self) -> Iterator[Module]:
        return iter([m for m in vars(self).values() if isinstance(m, Module)])
