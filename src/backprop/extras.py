"""The optional extras: which modules each one provides, how to install it, and one way to ask for them.

The core of backprop needs NumPy, SciPy, safetensors, tqdm and threadpoolctl only. Everything else is an
extra of the distribution (``pip install "backprop[plot]"``), listed once here in :data:`EXTRAS` (a test
checks it against ``pyproject.toml``'s ``[project.optional-dependencies]``):

=============  ===============================  ===================================================
extra          modules                          for
=============  ===============================  ===================================================
plot           matplotlib                       ``backprop train``'s training.png, confusion matrices
sklearn        sklearn                          the scikit-learn estimators (``backprop.sklearn``)
onnx           onnx, onnxruntime                ONNX export (onnxruntime checks the exported graph)
tensorboard    tensorboard                      TensorBoard event files
playground     starlette, uvicorn, websockets   ``backprop playground``, the local web page
mpi            mpi4py (and the mpich wheel)     data-parallel training over MPI
all            every extra above except mpi
=============  ===============================  ===================================================

Code that needs an optional module asks :func:`require` for it, which imports and returns the module or
raises :class:`MissingExtra` (an ImportError) whose one-line message names what needs it and the install
command; :func:`available` answers whether it can be imported. Both take a module name (dotted names too:
``"matplotlib.figure"``, ``"mpi4py.MPI"``) or an extra's name. This module imports nothing from backprop,
so every layer may use it.

>>> from backprop.extras import EXTRAS, MissingExtra, available, require
>>> EXTRAS["plot"].install
'pip install "backprop[plot]"'
>>> e = MissingExtra("matplotlib", "plot", needed_by="plot_confusion_matrix")
>>> str(e).split(": ")[0], e.install
('plot_confusion_matrix needs matplotlib, which is not installed', 'pip install "backprop[plot]"')
>>> isinstance(available("plot"), bool), issubclass(MissingExtra, ImportError)
(True, True)
>>> if available("onnx"):
...     onnx = require("onnx", needed_by="backprop.onnx")
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from types import MappingProxyType, ModuleType
from typing import Any

__all__ = ["EXTRAS", "TEST_PEERS", "Extra", "MissingExtra", "available", "extra_for", "require"]


@dataclass(frozen=True)
class Extra:
    """One extra of the distribution: ``pip install "backprop[<name>]"``.

    Attributes:
        name: the extra's name in ``pyproject.toml``.
        modules: the top-level modules it makes importable, the first one being its main module.
        requirements: its requirement strings, exactly as in ``pyproject.toml``.
        purpose: what in backprop needs it, as the subject of "... needs <module>".
        in_all: whether ``backprop[all]`` includes it.
    """

    name: str
    modules: tuple[str, ...]
    requirements: tuple[str, ...]
    purpose: str
    in_all: bool = True

    @property
    def install(self) -> str:
        """The command that installs this extra: ``pip install "backprop[<name>]"`` (quoted for zsh)."""
        return f'pip install "backprop[{self.name}]"'

    @property
    def install_direct(self) -> str:
        """The same without backprop's metadata: ``pip install <distribution> ...`` (the latest versions)."""
        # NOTE: names without their lower bounds: a fresh install gets a newer version anyway, and bare names
        # need no shell quoting
        return "pip install " + " ".join(_dist_name(r) for r in self.requirements)


_EXTRAS = (
    Extra("plot", ("matplotlib",), ("matplotlib>=3.6",), "drawing plots"),
    Extra("sklearn", ("sklearn",), ("scikit-learn>=1.6",), "backprop.sklearn (the scikit-learn estimators)"),
    Extra("onnx", ("onnx", "onnxruntime"), ("onnx>=1.14", "onnxruntime>=1.16"), "ONNX export"),
    Extra("tensorboard", ("tensorboard",), ("tensorboard>=2.10",), "TensorBoard logging"),
    Extra("playground", ("starlette", "uvicorn", "websockets"), ("starlette>=0.37", "uvicorn>=0.29", "websockets>=12"),
          "backprop playground"),
    Extra("numba", ("numba",), ("numba>=0.60",), "compiled kernels: dense steps (bp.jit, fit), convolutions, pooling, ReLU, LSTMs"),
    # NOTE: not in `all`: the mpich wheel ships its own libmpi and mpiexec, which on a cluster would shadow
    # the site's MPI (mpi4py then loads the wheel's library, unaware of the cluster's network and launcher),
    # and it has no Windows build, so `pip install "backprop[all]"` would fail there. Clusters install mpi4py
    # against their own MPI; everyone else asks for `backprop[all,mpi]`.
    Extra("mpi", ("mpi4py",), ("mpi4py>=4", "mpich>=4"), "data-parallel training over MPI", in_all=False),
)

#: Every extra by name (read-only). ``all`` is not an entry: it is the union of those with ``in_all``.
EXTRAS: MappingProxyType[str, Extra] = MappingProxyType({e.name: e for e in _EXTRAS})

#: Test-only reference implementations the suite compares against, skipped without them: module ->
#: (name, install command). NOTE: not an extra: PyTorch's default Linux wheel pulls in gigabytes of CUDA
#: libraries; the CPU-only wheel from PyTorch's own index is the one to install for the tests, at the
#: version the comparisons were last checked with.
TEST_PEERS: MappingProxyType[str, tuple[str, str]] = MappingProxyType({
    "torch": ("PyTorch", "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"),
})

_BY_MODULE: dict[str, Extra] = {m: e for e in _EXTRAS for m in e.modules}


class MissingExtra(ModuleNotFoundError):
    """An optional module is missing: the message names what needs it and how to install it, on one line.

    A ModuleNotFoundError (so an ImportError, as the bare import it replaces raised) and nothing else: a
    command line that reports ValueError/OSError as bad input does not mistake it for that. Attributes:
    ``module`` (the module asked for), ``extra`` (the extra's name), ``needed_by``, ``install`` (the
    command), ``reason`` (None when the module is not installed, else why its import failed) and ``name``
    (the top-level module, as ImportError's).
    """

    def __init__(self, module: str, extra: str, needed_by: str | None = None, reason: str | None = None):
        spec = EXTRAS[extra]
        self.module, self.extra, self.reason = module, extra, reason
        self.needed_by = needed_by or spec.purpose
        self.install = spec.install
        if reason is None:  # the package itself is missing: name it, not the submodule asked for
            what = f"{module.partition('.')[0]}, which is not installed"
        else:
            what = f"{module}, which failed to import ({reason})"
        message = f"{self.needed_by} needs {what}: {spec.install} (or: {spec.install_direct})"
        super().__init__(message, name=module.partition(".")[0])

    def __reduce__(self) -> tuple[Any, ...]:
        # NOTE: exceptions unpickle as cls(*args); args here is the message, so say how to rebuild it
        # (MPI ranks and worker processes send exceptions pickled).
        return (type(self), (self.module, self.extra, self.needed_by, self.reason))


def extra_for(name: str) -> Extra | None:
    """The extra an extra name, a module (dotted or not) or a distribution name belongs to, else None.

    >>> extra_for("mpi4py.MPI").name, extra_for("scikit-learn").name, extra_for("numpy")
    ('mpi', 'sklearn', None)
    """
    top = name.partition(".")[0]
    if top in _BY_MODULE:  # NOTE: modules first: "onnx" is a module and an extra, and names the module
        return _BY_MODULE[top]
    if name in EXTRAS:
        return EXTRAS[name]
    for extra in _EXTRAS:
        if any(_dist_name(r) == _dist_name(name) for r in extra.requirements):
            return extra
    return None


def _dist_name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (PEP 503: lower case, runs of -_. as -)."""
    name = requirement.split(";")[0].strip()
    for i, ch in enumerate(name):
        if not (ch.isalnum() or ch in "-_."):
            name = name[:i]
            break
    return "-".join(part for part in name.lower().replace("_", "-").replace(".", "-").split("-") if part)


def _modules_of(name: str) -> tuple[Extra, tuple[str, ...]]:
    """The extra of ``name`` and the modules to import for it: the module itself, or all of an extra's."""
    extra = extra_for(name)
    if extra is None or (name not in EXTRAS and name.partition(".")[0] not in extra.modules):
        known = ", ".join(sorted({*EXTRAS, *_BY_MODULE}))
        raise ValueError(f"{name!r} is neither an extra nor a module of one (known: {known}); "
                         "add it to backprop.extras.EXTRAS and pyproject.toml")
    return extra, (name,) if name.partition(".")[0] in extra.modules else extra.modules


def _absent(module: str, e: ImportError) -> bool:
    """Whether ``e``, raised importing ``module``, means its top-level package is not there.

    NOTE: only then is "not installed" the truth; a missing submodule (too old a version), a missing
    dependency of the package or a broken binary is reported with the import's own message. A package
    blocked by ``sys.modules[name] = None`` (how tests and some sandboxes hide one) counts as absent.
    """
    top = module.partition(".")[0]
    if not isinstance(e, ModuleNotFoundError):
        return False
    return e.name == top or (top in sys.modules and sys.modules[top] is None)


def require(name: str, needed_by: str | None = None) -> ModuleType:
    """Import and return module ``name`` (or, for an extra's name, all its modules and return the first).

    Raises :class:`MissingExtra` when the import fails with an ImportError, its message saying that
    ``needed_by`` (default: the extra's purpose) needs the module and how to install it. Other errors of
    the import (mpi4py's RuntimeError when no MPI library loads) pass through unchanged. A name that is no
    extra's is a ValueError: every optional module is listed in :data:`EXTRAS`.

    >>> require("onnx") if available("onnx") else None  # doctest: +ELLIPSIS
    <module 'onnx'...>
    """
    extra, modules = _modules_of(name)
    loaded = []
    for module in modules:
        try:
            loaded.append(importlib.import_module(module))
        except ImportError as e:
            reason = None if _absent(module, e) else f"{type(e).__name__}: {(str(e) or '?').splitlines()[0]}"
            raise MissingExtra(module, extra.name, needed_by, reason) from e
    return loaded[0]


def available(name: str) -> bool:
    """True when module ``name`` (or every module of the extra ``name``) imports.

    An import that fails in any of the ways a missing or broken optional library fails (ImportError, and
    the RuntimeError/OSError of a binary that does not load, as mpi4py's without an MPI library) is False.

    >>> available("tensorboard") in (True, False)
    True
    """
    _, modules = _modules_of(name)
    for module in modules:
        try:
            importlib.import_module(module)
        except (ImportError, RuntimeError, OSError):
            return False
    return True
