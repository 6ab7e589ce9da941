"""Extension points of training that the layers above it fill in: saving files and data parallelism.

Imports point downward only (engine <- nn <- optim <- data <- training <- io <- distributed ...), so the
training loop may not import :mod:`backprop.io` (model files, checkpoints, atomic writes) or
:mod:`backprop.distributed` (MPI). Each of them registers itself here when it is imported, and ``import
backprop`` imports both: ``fit(checkpoint=...)``, ``ModelCheckpoint`` and ``fit(distributed=True)`` then
find them with :func:`get`. A test checks that every name in :data:`EXTENSIONS` is provided.

>>> import backprop
>>> sorted(EXTENSIONS) == sorted(PROVIDED)
True
>>> get("io").__name__
'backprop.io'
"""

from __future__ import annotations

from typing import Any

#: name -> what it provides (the modules register themselves under these names).
EXTENSIONS: dict[str, str] = {
    "io": "backprop.io: model files, training checkpoints and atomic file writes",
    "distributed": "backprop.distributed: data-parallel training over MPI (DataParallelStep)",
}

PROVIDED: dict[str, Any] = {}


def provide(name: str, provider: Any) -> None:
    """Register ``provider`` (a module) as extension ``name``; done by that module when it is imported."""
    if name not in EXTENSIONS:
        raise ValueError(f"provide: unknown extension {name!r}; expected one of {', '.join(EXTENSIONS)}")
    PROVIDED[name] = provider


def get(name: str) -> Any:
    """The provider of extension ``name``; a clear error if its module was never imported."""
    try:
        return PROVIDED[name]
    except KeyError:
        raise RuntimeError(f"training needs {EXTENSIONS[name]}, which is not loaded: import backprop "
                           f"(or backprop.{name}) first") from None
