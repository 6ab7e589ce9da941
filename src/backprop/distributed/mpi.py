"""MPI itself, loaded only when used: is it there, the communicator, this process's rank, a shared seed.

mpi4py is an optional dependency (``pip install 'backprop[mpi]'``): importing this module loads nothing;
:func:`init` imports mpi4py (which initialises MPI) at its first call.

>>> isinstance(is_available(), bool)
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from backprop.extras import available, require


def is_available() -> bool:
    """True if mpi4py imports and its MPI library loads (a missing libmpi is mpi4py's RuntimeError/OSError)."""
    return available("mpi4py.MPI")


def _mpi() -> Any:
    """mpi4py.MPI, or :class:`~backprop.extras.MissingExtra` naming ``pip install "backprop[mpi]"``."""
    return require("mpi4py.MPI", needed_by="backprop.distributed")


@dataclass(frozen=True)
class Context:
    """The communicator and this process's place in it."""

    comm: Any
    rank: int
    size: int

    @property
    def is_root(self) -> bool:
        return self.rank == 0


def init(comm: Any = None) -> Context:
    """Import MPI (initialising it) and describe ``comm`` (default ``MPI.COMM_WORLD``)."""
    MPI = _mpi()
    comm = MPI.COMM_WORLD if comm is None else comm
    return Context(comm, comm.Get_rank(), comm.Get_size())


def _comm(comm: Any) -> Any:
    return init(comm).comm


def shared_seed(comm: Any = None) -> int:
    """Fresh entropy drawn on rank 0 and sent to every rank (for ``seed=None``: all ranks need the same seed)."""
    comm = _comm(comm)
    return comm.bcast(np.random.SeedSequence().entropy if comm.Get_rank() == 0 else None, root=0)


def is_root(comm: Any = None) -> bool:
    """True on rank 0 (and when MPI is not available: a single process is its own root)."""
    if comm is None and not is_available():
        return True
    return _comm(comm).Get_rank() == 0
