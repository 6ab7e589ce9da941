"""Synchronised batch norm: in data-parallel training, normalise with the statistics of the GLOBAL batch.

Each MPI rank holds a shard of the global mini-batch (possibly of 0 rows). Plain batch norm would
normalise each shard with its own mean and variance; :class:`SyncBatchNormTrain` normalises each
channel with the mean and biased variance of the rows of ALL the ranks, so the data-parallel run
computes the same function as one process on the whole batch, and updates the running statistics
identically on every rank (global mean, unbiased global variance N/(N-1) * var).

Contract with the training loop (no knowledge of the weights needed here):

* rank r scales its local loss L_r by its share a_r (e.g. n_local / n_global) BEFORE ``backward``, so
  the objective is T = sum_r a_r L_r and the upstream gradient of the layer is already dT/dy;
* after ``backward`` the parameter gradients are SUMMED over the ranks (``MPI.SUM``);
* every rank runs the forward AND the backward of every step, also with 0 rows: each synchronised
  layer makes one ``Allgather`` in its forward and one ``Allreduce`` in its backward, and a rank that
  skips them leaves the others waiting forever.

``sync_batchnorm(comm)`` switches it on for every BatchNorm1d/BatchNorm2d in training mode:

>>> import pytest, backprop as bp
>>> MPI = pytest.importorskip("mpi4py.MPI")                # the extra 'backprop[mpi]'
>>> bn = bp.nn.BatchNorm1d(2)
>>> x = bp.tensor([[1.0, 10.0], [3.0, 30.0]])
>>> with sync_batchnorm(MPI.COMM_SELF):                   # one rank: the same as plain batch norm
...     y = bn(x)
>>> y.data.round(3).tolist(), bn.running_mean.astype(float).round(3).tolist()
([[-1.0, -1.0], [1.0, 1.0]], [0.2, 2.0])
>>> active_comm() is None                                  # restored on exit
True
"""

from __future__ import annotations

import contextlib
import functools
import numbers
from collections.abc import Iterator
from typing import Any

import numpy as np

from backprop.distributed.mpi import _mpi, is_available
from backprop.engine.registry import Case, register, sample
from backprop.engine.tensor import Function, Tensor
from backprop.nn import normalization
from backprop.nn.normalization import (
    _affine_grads,
    _bn_arguments,
    _channel_view,
    _input_grad,
    _scale_shift,
    _stat_axes,
    _unpack_affine,
    _update_running,
)

__all__ = ["SyncBatchNormTrain", "active_comm", "sync_batch_norm", "sync_batchnorm"]


def _default_comm(comm: Any) -> Any:
    return _mpi().COMM_WORLD if comm is None else comm


# ------------------------------------------------------------------------------------------- the Function
def _sync_cases(rng: np.random.Generator) -> list[Case]:
    """BatchNormTrain's cases on a 1-rank communicator (where sync batch norm IS batch norm); none without MPI."""

    if not is_available():  # NOTE: no mpi4py: nothing to check, and test_ops_gradcheck collects no case
        return []
    comm = _mpi().COMM_SELF

    def case(label: str, shape: tuple[int, ...], affine: str, eps: float = 1e-5) -> Case:
        c = shape[1]
        x, w, b = sample(shape, seed=21), sample((c,), seed=22), sample((c,), seed=23)
        if affine == "wb":
            return Case(label, lambda x, w, b: sync_batch_norm(x, weight=w, bias=b, comm=comm), [x, w, b],
                        lambda T, x, w, b: T.nn.functional.batch_norm(x, None, None, w, b, training=True))
        if affine == "w":
            return Case(label, lambda x, w: sync_batch_norm(x, weight=w, eps=eps, comm=comm), [x, w],
                        lambda T, x, w: T.nn.functional.batch_norm(x, None, None, w, training=True, eps=eps))
        if affine == "b":
            return Case(label, lambda x, b: sync_batch_norm(x, bias=b, comm=comm), [x, b],
                        lambda T, x, b: T.nn.functional.batch_norm(x, None, None, None, b, training=True))
        return Case(label, lambda x: sync_batch_norm(x, comm=comm), [x],
                    lambda T, x: T.nn.functional.batch_norm(x, None, None, training=True))

    return [
        case("(N,C) COMM_SELF", (4, 3), "wb"),
        case("(N,C,L) COMM_SELF", (3, 2, 2), "wb"),
        case("(N,C,H,W) COMM_SELF", (2, 2, 2, 2), "wb"),
        case("weight only COMM_SELF", (3, 2), "w", eps=1e-3),
        case("bias only COMM_SELF", (3, 2), "b"),
        case("no affine COMM_SELF", (2, 2, 3), ""),
    ]


@register(_sync_cases)
class SyncBatchNormTrain(Function):
    """Training-mode batch norm over axis 1 with the statistics of the rows of every rank of ``comm``.

    Parents and keywords as :class:`~backprop.nn.normalization.BatchNormTrain`, plus ``comm`` (an mpi4py
    communicator). Every rank of ``comm`` must call forward, and backward, the same number of times.

    Forward. Rank r has n_r values per channel (n_r may be 0) with mean m_r and sum of squared deviations
    M2_r. One ``Allgather`` of (n_r, m_r, M2_r) gives every rank the same global statistics, merged in the
    same order (Chan, Golub & LeVeque's parallel formula, with no E[x^2] - E[x]^2 cancellation):

        N = sum_r n_r,   mean = sum_r (n_r / N) m_r,   M2 = sum_r [M2_r + n_r (m_r - mean)^2],   var = M2 / N

    and then y = gamma * x^ + beta with x^ = (x - mean) * inv_std, inv_std = 1 / sqrt(var + eps).

    Backward. Let G = dT/dy on this rank (the rank's loss already scaled by its share), g = gamma * G the
    gradient reaching x^ and sums S over ALL rows of ALL ranks. mean and var depend on every rank's rows,
    so with x^_j = (x_j - mean) inv_std, d mean / d x_i = 1/N and d var / d x_i = 2 (x_i - mean) / N:

        dx^_j / dx_i = inv_std (delta_ij - 1/N - x^_i x^_j / N)

        dT/dx_i = sum_j g_j dx^_j/dx_i = gamma * inv_std * (G_i - S1 / N - x^_i * S2 / N),
        S1 = sum_all G,   S2 = sum_all G * x^

    S1 and S2 (2C numbers) are summed by one ``Allreduce``. dT/dgamma = sum G x^ and dT/dbeta = sum G are
    returned as this rank's LOCAL sums: the SUM-allreduce of the parameter gradients completes them.

    On a 1-rank communicator every step is the single-process one, in the same order: it equals
    :class:`BatchNormTrain` bit for bit (as registered, it is gradchecked and compared with PyTorch there).
    """

    def forward(self, x, *params, comm, has_weight=True, has_bias=True, eps=1e-5, running_mean=None,
                running_var=None, momentum=0.1, counter=None):
        w, b = _unpack_affine(params, has_weight, has_bias)
        axes = _stat_axes(x.ndim)
        c = x.shape[1]
        n_local = x.size // c
        # NOTE: float64 rows [n_r, m_r (C), M2_r (C)]; a rank with 0 rows sends zeros and still takes part
        local = np.zeros(1 + 2 * c)
        local[0] = n_local
        if n_local:
            m_r = x.mean(axis=axes, keepdims=True)
            local[1:c + 1] = m_r.reshape(-1)
            local[c + 1:] = np.square(x - m_r).sum(axis=axes).reshape(-1)
        stats = np.empty((comm.Get_size(), 1 + 2 * c))
        comm.Allgather(local, stats)
        n_r, m_r, m2_r = stats[:, :1], stats[:, 1:c + 1], stats[:, c + 1:]
        n = int(n_r.sum())
        if n <= 1:  # the global count: every rank raises together, after the collective
            raise ValueError(f"Expected more than 1 value per channel when training, got {n} over the "
                             f"{comm.Get_size()} ranks (input size {x.shape} on this rank)")
        # NOTE: weights n_r / N (not sum(n_r m_r) / N): on one rank the merge is exact, mean = 1.0 * m_r
        mean = ((n_r / n) * m_r).sum(axis=0)
        var = (m2_r + n_r * np.square(m_r - mean)).sum(axis=0) / n  # biased: normalises the batch
        mean = _channel_view(mean.astype(x.dtype), x.ndim)
        var = _channel_view(var.astype(x.dtype), x.ndim)
        xhat = x - mean
        inv_std = 1.0 / np.sqrt(var + eps)
        xhat *= inv_std
        _update_running(running_mean, running_var, mean, var, n, momentum, counter)
        self.xhat, self.inv_std, self.n, self.axes, self.comm = xhat, inv_std, n, axes, comm
        self.w, self.has_weight, self.has_bias = w, has_weight, has_bias
        return _scale_shift(xhat, w, b)

    def backward(self, g):
        # dx = gamma * inv_std * (G - S1/N - x^ * S2/N), S1 = sum G and S2 = sum G*x^ over all the ranks
        xhat, axes, n = self.xhat, self.axes, self.n
        g_sum = g.sum(axis=axes, keepdims=True)
        gx_sum = (g * xhat).sum(axis=axes, keepdims=True)
        gx = None
        # NOTE: needs_grad[0] is the same on every rank (the model's structure), so either all ranks make
        # this Allreduce or none; the weight and bias gradients need none (their sums are local).
        if self.needs_grad[0]:
            c = g_sum.size
            s = np.empty(2 * c)
            s[:c], s[c:] = g_sum.reshape(-1), gx_sum.reshape(-1)
            MPI = _mpi()
            self.comm.Allreduce(MPI.IN_PLACE, s, op=MPI.SUM)
            s1 = s[:c].astype(g.dtype).reshape(g_sum.shape)
            s2 = s[c:].astype(g.dtype).reshape(g_sum.shape)
            gx = _input_grad(g, xhat, s1, s2, n, self.inv_std, self.w)
        rest = _affine_grads(self.needs_grad, self.has_weight, self.has_bias,
                             lambda: gx_sum.reshape(-1), lambda: g_sum.reshape(-1))
        return (gx, *rest) if rest else gx


def sync_batch_norm(input: Tensor, running_mean: Any = None, running_var: Any = None, weight: Any = None,
                    bias: Any = None, momentum: float = 0.1, eps: float = 1e-5, comm: Any = None) -> Tensor:
    """Training-mode batch norm of (N, C, *) with the statistics of the global batch over ``comm``'s ranks.

    As ``batch_norm(..., training=True)``, with ``comm`` (default ``MPI.COMM_WORLD``): ``running_mean`` and
    ``running_var`` (arrays or Tensors of shape (C,)), when given, are updated in place with the global
    mean and unbiased variance, identically on every rank. Every rank must call it (N may be 0 on some).
    """
    x, rm, rv, params, flags = _bn_arguments("sync_batch_norm", input, running_mean, running_var, weight, bias,
                                             eps)
    if momentum is None or not isinstance(momentum, numbers.Real):
        raise TypeError(f"sync_batch_norm: momentum must be a number, got {momentum!r}")
    return SyncBatchNormTrain.apply(x, *params, comm=_default_comm(comm), running_mean=rm, running_var=rv,
                                    momentum=float(momentum), **flags)


# ----------------------------------------------------------------------------------- the module hook
def _synced_forward(bn: Any, x: Tensor, comm: Any) -> Tensor:
    """The training-mode forward of a BatchNorm1d/2d ``bn`` over ``comm`` (what ``sync_batchnorm`` installs)."""
    if not bn.track_running_stats:
        return sync_batch_norm(x, None, None, bn.weight, bn.bias, 0.0, bn.eps, comm)
    x, rm, rv, params, flags = _bn_arguments("sync_batch_norm", x, bn.running_mean, bn.running_var, bn.weight,
                                             bn.bias, bn.eps)
    # NOTE: the op counts the batch (once the global check has passed) and takes momentum=None as the
    # cumulative average, so a captured step replays both
    return SyncBatchNormTrain.apply(x, *params, comm=_default_comm(comm), running_mean=rm, running_var=rv,
                                    momentum=bn.momentum, counter=bn.num_batches_tracked, **flags)


def active_comm() -> Any:
    """The communicator of the innermost active :func:`sync_batchnorm`, or None when batch norm is per process."""
    hook = normalization._sync_forward
    return None if hook is None else hook.keywords["comm"]


@contextlib.contextmanager
def sync_batchnorm(comm: Any = None) -> Iterator[Any]:
    """While active, every BatchNorm1d/BatchNorm2d in training mode normalises over all the ranks of ``comm``.

    ``comm`` defaults to ``MPI.COMM_WORLD``; the context yields it. Evaluation mode is unchanged (running
    statistics). On exit, also through an exception, the previous state comes back, so the contexts nest.
    See the module docstring for what the training loop must do (every rank steps, 0 rows included).

    NOTE: the switch is process-wide (a module variable read by ``_BatchNorm.forward``), not per thread.
    """
    comm = _default_comm(comm)
    previous = normalization._sync_forward
    normalization._sync_forward = functools.partial(_synced_forward, comm=comm)
    try:
        yield comm
    finally:
        normalization._sync_forward = previous
