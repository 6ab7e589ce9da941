"""Optimizers with PyTorch's API and exact update rules, on numpy arrays.

``SGD``, ``Adam``, ``AdamW`` and ``RMSprop`` update any objects with a
``.data`` array (in place) and a ``.grad`` array (or ``None``: skipped).
:func:`get` builds one from a name, for the fit loop and the command line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from backprop.optim import lr_scheduler

from .adam import Adam, AdamW
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

# (The ``lr_scheduler`` subpackage will live next to these modules.)

__all__ = ["OPTIMIZERS", "SGD", "Adam", "AdamW", "Optimizer", "RMSprop", "build", "get", "lr_scheduler"]

#: Optimizer classes by the (lower-case) names :func:`get` accepts.
OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "adam": Adam,
    "adamw": AdamW,
    "rmsprop": RMSprop,
}


def get(name_or_obj: str | Optimizer | Callable[..., Optimizer],
        params: Iterable[Any] | None = None, **kwargs: Any) -> Optimizer:
    """Return an optimizer.

    Args:
        name_or_obj: one of ``"sgd"``, ``"adam"``, ``"adamw"``, ``"rmsprop"``
            (case-insensitive), built as ``cls(params, **kwargs)``; an
            :class:`Optimizer` instance, returned unchanged (no ``kwargs``
            allowed: they would be silently ignored); or a callable
            ``params -> Optimizer`` (an optimizer class, ``functools.partial``,
            lambda...), called as ``fn(params, **kwargs)``.
        params: the parameters (or parameter groups) to optimize.
        **kwargs: hyperparameters, e.g. ``lr=0.01``.

    Raises:
        ValueError: unknown name (the message lists the valid ones), or
            ``kwargs`` given together with an optimizer instance.
        TypeError: anything else, or a callable that does not return an Optimizer.
    """
    if isinstance(name_or_obj, Optimizer):
        if kwargs:
            raise ValueError(
                f"cannot apply {sorted(kwargs)} to an existing optimizer instance; "
                "pass a name or a factory instead, or set them on the optimizer"
            )
        return name_or_obj
    if isinstance(name_or_obj, str):
        key = name_or_obj.strip().lower()
        cls = OPTIMIZERS.get(key)
        if cls is None:
            valid = ", ".join(repr(n) for n in OPTIMIZERS)
            raise ValueError(f"Unknown optimizer {name_or_obj!r}; valid names are: {valid}")
        if params is None:
            raise ValueError(f"optimizer {key!r} needs the parameters to optimize (params is None)")
        return cls(params, **kwargs)
    if callable(name_or_obj):
        opt = name_or_obj(params, **kwargs)
        if not isinstance(opt, Optimizer):
            raise TypeError(
                f"optimizer factory {name_or_obj!r} returned {type(opt).__name__}, not an Optimizer"
            )
        return opt
    raise TypeError(
        "optimizer must be a name (" + ", ".join(OPTIMIZERS) + "), an Optimizer instance "
        f"or a callable params -> Optimizer, got {type(name_or_obj).__name__}"
    )


def build(spec: str | Optimizer | Callable[..., Optimizer], params: Iterable[Any], lr: float) -> Optimizer:
    """The optimizer a training front end (``fit``, the command line) asks for, with ``lr`` where it applies.

    NOTE: ``lr`` goes to names and Optimizer classes; an Optimizer instance or a factory carries its own.

    >>> import numpy as np
    >>> from backprop.nn import Parameter
    >>> build("adam", [Parameter(np.zeros(2))], lr=0.01).param_groups[0]["lr"]
    0.01
    """
    if isinstance(spec, str) or (isinstance(spec, type) and issubclass(spec, Optimizer)):
        return get(spec, params, lr=lr)
    return get(spec, params)
