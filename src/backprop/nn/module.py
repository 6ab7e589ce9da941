"""Module: the container that finds its parameters, as in PyTorch.

A Module's parameters are the :class:`Parameter` attributes of it and of its submodules (attributes that
are Modules, or lists/tuples of Modules), named by their attribute path (``0.weight``, ``encoder.1.bias``),
in the order they were assigned. Names and layouts match PyTorch, so state dicts move between the two.

>>> import backprop as bp
>>> net = bp.nn.Sequential(bp.nn.Linear(4, 3), bp.nn.ReLU(), bp.nn.Linear(3, 2))
>>> [name for name, _ in net.named_parameters()]
['0.weight', '0.bias', '2.weight', '2.bias']
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from backprop.engine.tensor import Tensor


class Parameter(Tensor):
    """A Tensor that is a learnable weight: it requires grad and is found by ``Module.parameters()``."""

    __slots__ = ()

    def __init__(self, data: Any, requires_grad: bool = True, dtype: Any = None) -> None:
        super().__init__(data.data if isinstance(data, Tensor) else data, requires_grad=requires_grad, dtype=dtype)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


class Module:
    """Base class of layers and models: subclass it, assign layers and Parameters in ``__init__``, write ``forward``."""

    training: bool = True

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

    def num_parameters(self) -> int:
        """Total number of learnable scalars."""
        return int(sum(p.data.size for p in self.parameters()))

    # ------------------------------------------------------------------------------------------- state
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
        """A copy of every parameter (and buffer, such as running statistics), by name."""
        out = {name: p.data.copy() for name, p in self.named_parameters()}
        for mod_name, mod in self.named_modules():
            for name in getattr(mod, "_buffers", ()):
                out[f"{mod_name}.{name}" if mod_name else name] = np.array(getattr(mod, name))
        return out

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Copy arrays into the parameters in place. Everything is checked before anything is changed."""
        targets: dict[str, np.ndarray] = {name: p.data for name, p in self.named_parameters()}
        for mod_name, mod in self.named_modules():
            for name in getattr(mod, "_buffers", ()):
                targets[f"{mod_name}.{name}" if mod_name else name] = getattr(mod, name)
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
            for name in getattr(mod, "_buffers", ()):
                buf = getattr(mod, name)
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
            elif not _keeps_shape(child):
                width = None
            n = child.num_parameters()
            info = [f"-> {width}"] if width else []
            info += [f"{n:,} params"] if n else []
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}" + (f"   # {', '.join(info)}" if info else ""))
        total = self.num_parameters()
        lines.append(f"){'  # ' + f'{total:,} parameters' if total or own else ''}")
        return "\n".join(lines)


def _keeps_shape(m: Module) -> bool:
    """Layers whose output has the size of their input (activations, dropout, normalisation)."""
    from backprop.nn import layers, normalization  # NOTE: imported here, they import this module

    return isinstance(m, (layers.ReLU, layers.LeakyReLU, layers.Sigmoid, layers.Tanh, layers.GELU, layers.Softmax,
                          layers.LogSoftmax, layers.Dropout, layers.Identity, normalization.BatchNorm1d,
                          normalization.BatchNorm2d, normalization.LayerNorm))


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


class ModuleList(Module):
    """A list of modules whose parameters are registered (``0.weight``, ``1.weight``, ...)."""

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
