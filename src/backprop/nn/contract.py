"""What a layer declares about itself for export: the builder its ``onnx`` method writes through, and refusals.

Every layer class answers two questions where it is defined: how it is saved (its constructor arguments,
registered in :mod:`backprop.nn.registry`) and how it is exported to ONNX. The ONNX answer is the class
attribute ``onnx``: either a method ``onnx(self, g, x) -> str`` that adds the layer's nodes to the graph
through the builder ``g`` (:class:`OnnxGraph`, which :mod:`backprop.onnx` passes in) and returns the name
of its output, or :class:`NotExportable` with the reason. ``Module.onnx`` is ``None``: undecided, which the
completeness test refuses for every layer of ``backprop.nn``. A class that cannot be saved with its
architecture says so with :func:`not_saveable`.

This module imports nothing from ``backprop``: ``backprop.nn.module`` and every layer file use it, and the
exporter (``backprop.onnx``) implements the builder, so the ``nn`` package never imports ``onnx``.

>>> class Square:                               # a layer's export: one node, through the builder
...     def onnx(self, g, x):
...         return g.node("Mul", [x, x])
>>> NotExportable("it draws random numbers at inference")
NotExportable('it draws random numbers at inference')
>>> onnx_decision(Square).__name__, onnx_decision(int)
('onnx', None)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

__all__ = ["NOT_SAVEABLE", "NotExportable", "OnnxGraph", "not_saveable", "onnx_decision"]


class NotExportable:
    """The explicit answer "this layer has no ONNX form", with the reason the exporter reports.

    Assigned as the class attribute ``onnx``: ``onnx = NotExportable("a list of modules has no forward")``.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("NotExportable: give the reason (a non-empty string)")
        self.reason = reason

    def __repr__(self) -> str:
        return f"NotExportable({self.reason!r})"


class OnnxGraph(Protocol):
    """The builder a layer's ``onnx(self, g, x)`` method receives (implemented by :mod:`backprop.onnx`).

    ``x`` is the name of the layer's input in the graph; the method returns the name of its output (``x``
    itself for a layer that does nothing at inference). The shapes are those the example input has at this
    layer; names of nodes and weights are prefixed with the layer's position (``layer3/Conv``,
    ``layer3.weight``). A layer exported with several arguments (``MultiheadAttention``'s query, key, masks)
    receives the others as keywords (graph value names, or constants) and may return several names (a tuple).
    """

    opset: int  # the ONNX operator set being written
    dtype: Any  # the model's float dtype (np.float32 or np.float64); weights and constants are cast to it
    in_shape: tuple[int, ...]  # the example's shape at this layer's input
    out_shape: tuple[int, ...]  # ... and at its output
    dynamic_batch: bool  # the first dimension is a dynamic "batch" dimension

    def node(self, op: str, inputs: Sequence[str], **attrs: Any) -> str:
        """Add one ONNX node (``op`` of the default domain) and return the name of its output."""
        ...

    def weight(self, array: Any, name: str, dtype: Any = None) -> str:
        """An initializer holding ``array`` (cast to the model's dtype unless ``dtype``), named after the layer."""
        ...

    def const(self, value: Any, dtype: Any = None) -> str:
        """A constant shared across the graph (scalars of formulas, shapes for Reshape)."""
        ...

    def error(self, reason: str) -> ValueError:
        """The error to raise when this layer, as configured or for this input, cannot be exported."""
        ...

    def example(self, name: str) -> Any:
        """The example's value (an array) at the graph value ``name``: a graph input or a layer's output."""
        ...

    def need_batched(self, ndim: int, layout: str) -> None:
        """Raise :meth:`error` unless the input has ``ndim`` dimensions (``layout`` names them for the message)."""
        ...

    def pad(self, x: str, begin: Sequence[int], end: Sequence[int], value: float) -> str:
        """``x`` padded with ``value`` over its last ``len(begin)`` dimensions."""
        ...

    def reshape_to_output(self, x: str, keeps_batch: bool) -> str:
        """Reshape ``x`` to the layer's output shape (a kept dynamic batch dimension is copied)."""
        ...

    def layer(self, module: Any, x: str, name: str, inputs: Any = None, all_outputs: bool = False) -> Any:
        """Export the sub-layer ``module`` (attribute ``name`` of this one) on ``x``; for containers.

        ``inputs``: its keyword arguments (names of graph values, or constants); ``all_outputs``: return the
        names of all its outputs (a list), not only the first's.
        """
        ...


def onnx_decision(cls: type) -> Callable[..., str] | NotExportable | None:
    """The ONNX answer of layer class ``cls``: its ``onnx`` method, a NotExportable, or None (undecided).

    The method is taken from the class that defines it only if ``cls`` runs that class's ``forward``: a
    subclass with a forward of its own (``class MyReLU(nn.ReLU)``) computes something else, so it is
    undecided until it defines its own ``onnx``.
    """
    for base in cls.__mro__:
        if "onnx" in vars(base):
            found = vars(base)["onnx"]
            if found is None or isinstance(found, NotExportable):
                return found
            if callable(found) and getattr(cls, "forward", None) is getattr(base, "forward", None):
                return found
            return None
    return None


# Classes of backprop.nn that cannot be saved with their architecture, and why (see backprop.nn.registry).
NOT_SAVEABLE: dict[type, str] = {}


def not_saveable(reason: str) -> Callable[[type], type]:
    """Class decorator: this class has no save/load description on purpose, because of ``reason``."""
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("not_saveable: give the reason (a non-empty string)")

    def deco(cls: type) -> type:
        NOT_SAVEABLE[cls] = reason
        return cls

    return deco
