"""Data-parallel training over MPI (mpi4py): every rank holds the whole model and a shard of each batch.

Run a script under ``mpiexec -n P python script.py``. Each GLOBAL mini-batch of ``batch_size`` samples
(drawn from the same permutation on every rank, from the same seed) is split into P contiguous shards;
each rank back-propagates its shard's loss scaled by its share of the batch (its sample count, or its
sum of loss weights, over the batch's), :class:`GradientAllreduce` sums the gradients over the ranks
(one ``Allreduce`` per bucket of contiguous float32/float64 memory), and every rank takes the same
optimizer step. The model therefore follows the single-process run with the same ``batch_size`` and
``seed``, up to the rounding of the sums in another order (about 1e-6 relative in float32, 1e-15 in
float64 per step). With ``sync_batchnorm`` (:mod:`backprop.distributed.sync_batchnorm`) BatchNorm layers
use the statistics of the whole batch over the ranks; without it each rank normalises its own shard
(PyTorch DDP's default) and the ranks' running statistics differ (rank 0's are saved).

Documented limits:

* Dropout masks are drawn on each rank for its own shard (:meth:`Trainer.seed_ranks` decorrelates the
  ranks' streams), so models with dropout train equivalently in distribution, not bit for bit.
* A parameter without a gradient on every rank stays without one; if some ranks produce a gradient
  for it and others none, the missing ones count as zeros.
* MPICH's ``mpiexec`` reports a rank that died (SIGKILL, out of memory) by its PID and host only:
  :func:`rank_table` and :func:`explain_failure` map that back to the rank (``backprop train --workers``
  does it for you).

Data parallelism plugs into the one training loop (:mod:`backprop.training.loop`) from outside, as a
wrapper around its Step, the way Horovod's DistributedOptimizer wraps an optimizer::

    step = DataParallelStep(Step(model, opt, "cross_entropy"), batch_size)   # checks batch_size % size == 0
    step.start()                               # rank 0's weights, buffers and optimizer state everywhere
    history = Loop(step, batches(x, y, batch_size=batch_size, seed=seed), epochs=10).run()

Each step shards the global batch (:meth:`Trainer.shard`), runs the wrapped step's forward and cost on
this rank's rows, back-propagates its loss scaled by the rank's share, sums the gradients (and the loss)
over the ranks in one bucketed Allreduce, and makes the same update everywhere. ``fit(...,
distributed=True)`` and the scikit-learn estimators (``distributed=True``) build exactly this;
:func:`fit_distributed` is the same loop with a subset of fit's arguments. :class:`Trainer` holds the
collectives (shard, allreduce, reduce metrics, abort) for anyone writing their own Step.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from backprop import optim
from backprop.distributed.mpi import Context, _comm, _mpi, init, is_available, is_root, shared_seed
from backprop.distributed.sync_batchnorm import SyncBatchNormTrain, sync_batch_norm, sync_batchnorm
from backprop.engine.random import get_rng, manual_seed
from backprop.training import extensions as _extensions
from backprop.training.callbacks import DivergenceGuard
from backprop.training.history import History
from backprop.training.inputs import check_labels, check_xy
from backprop.training.jit import captured
from backprop.training.loop import CallbackList, Loop, Step, StepResult, batches
from backprop.training.metrics import resolve_metrics

__all__ = [
    "Context",
    "DataParallelStep",
    "GradientAllreduce",
    "SyncBatchNormTrain",
    "Trainer",
    "allreduce_metrics",
    "broadcast_optimizer_state",
    "broadcast_parameters",
    "explain_failure",
    "fit_distributed",
    "init",
    "is_available",
    "is_root",
    "rank_table",
    "reduce_metric_states",
    "shard_batch",
    "shard_bounds",
    "shared_seed",
    "sync_batch_norm",
    "sync_batchnorm",
]

DEFAULT_BUCKET_BYTES = 4 << 20  # 4 MiB: one Allreduce per 1M float32 gradients


# ------------------------------------------------------------------------------------------ who is who
def rank_table(comm: Any = None) -> list[tuple[int, int, str]]:
    """``[(rank, pid, host), ...]`` of every rank (a collective: every rank must call it).

    MPICH's launcher reports a process that died by its PID and host only; this table maps them back to
    a rank (see :func:`explain_failure`).
    """
    import os
    import socket

    comm = _comm(comm)
    return [tuple(row) for row in comm.allgather((comm.Get_rank(), os.getpid(), socket.gethostname()))]


_HYDRA_DEATH = re.compile(r"PID (\d+) RUNNING AT (\S+)\s*=*\s*EXIT CODE: (-?\d+)")


def explain_failure(launcher_output: str, table: Sequence[Sequence[Any]]) -> str | None:
    """A line naming the rank that ended a job, from mpiexec's output and the job's :func:`rank_table`.

    MPICH (hydra) prints ``PID 1234 RUNNING AT host ... EXIT CODE: 9`` for the first process that failed,
    and ``EXIT STRING: Killed (signal 9)`` when a signal ended it. None if nothing matches.

    >>> out = "=   PID 41 RUNNING AT node2\\n=   EXIT CODE: 9\\nEXIT STRING: Killed (signal 9)"
    >>> explain_failure(out, [(0, 40, "node1"), (1, 41, "node2")])
    'rank 1 of 2 (pid 41 on node2) died: killed by signal 9 (SIGKILL); mpiexec stopped the other ranks'
    """
    import signal as _signal

    m = _HYDRA_DEATH.search(launcher_output)
    if m is None:
        return None
    pid, host, code = int(m.group(1)), m.group(2), int(m.group(3))
    ranks = [int(r) for r, p, h in table if int(p) == pid and (h == host or h.split(".")[0] == host.split(".")[0])]
    if not ranks:
        ranks = [int(r) for r, p, _ in table if int(p) == pid]
    who = f"rank {ranks[0]} of {len(table)}" if len(ranks) == 1 else "a rank"
    how = f"exit code {code}"
    sig = re.search(r"EXIT STRING: .*\(signal (\d+)\)", launcher_output)
    if sig is not None:
        signum = int(sig.group(1))
        try:
            how = f"killed by signal {signum} ({_signal.Signals(signum).name})"
        except ValueError:
            how = f"killed by signal {signum}"
    return f"{who} (pid {pid} on {host}) died: {how}; mpiexec stopped the other ranks"


# -------------------------------------------------------------------------------------------- broadcast
def _bcast_array(comm: Any, arr: np.ndarray, root: int) -> None:
    """Broadcast ``arr`` in place (through a contiguous copy if it is not contiguous)."""
    if arr.flags.c_contiguous and arr.flags.writeable:
        comm.Bcast(arr, root=root)
    else:
        tmp = np.ascontiguousarray(arr)
        comm.Bcast(tmp, root=root)
        arr[...] = tmp


def broadcast_parameters(model: Any, root: int = 0, comm: Any = None) -> None:
    """Overwrite every rank's parameters and buffers (BatchNorm running statistics...) with root's, in place."""
    comm = _comm(comm)
    names = [n for n, _ in model.named_parameters()]
    if comm.bcast(names if comm.Get_rank() == root else None, root=root) != names:
        raise ValueError(f"broadcast_parameters: rank {comm.Get_rank()} has other parameters than rank {root}")
    for p in model.parameters():
        _bcast_array(comm, p.data, root)
    for _, buf in model.named_buffers():  # arrays, updated in place (BatchNorm's running statistics...)
        _bcast_array(comm, buf, root)


def broadcast_optimizer_state(opt: Any, root: int = 0, comm: Any = None) -> None:
    """Give every rank root's optimizer state (moments, step counts, hyperparameters such as lr)."""
    comm = _comm(comm)
    state = comm.bcast(opt.state_dict() if comm.Get_rank() == root else None, root=root)
    if comm.Get_rank() != root:
        opt.load_state_dict(state)


# --------------------------------------------------------------------------------------------- sharding
def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """[start, stop) of ``rank``'s slice of n samples split as evenly as possible (first ranks get 1 more)."""
    q, r = divmod(n, size)
    start = rank * q + min(rank, r)
    return start, start + q + (rank < r)


def check_batch_size(batch_size: int, size: int) -> None:
    if batch_size % size:
        raise ValueError(f"distributed training: the global batch size B={batch_size} is not divisible by the "
                         f"number of ranks ({size}); use a multiple of {size}, e.g. B={batch_size - batch_size % size or size}")


def shard_batch(xb: Any, yb: Any, rank: int, size: int, batch_size: int | None = None) -> tuple[Any, Any]:
    """This rank's slice of a GLOBAL batch ``(xb, yb)``.

    ``batch_size`` (default ``len(xb)``) is the global batch size B, which must be divisible by ``size``
    (ValueError otherwise). A smaller batch (the last of an epoch) is split as evenly as possible (each
    rank's loss then weighs by its sample count: see :meth:`Trainer.shard`). ``yb`` may be None.
    """
    check_batch_size(len(xb) if batch_size is None else batch_size, size)
    start, stop = shard_bounds(len(xb), rank, size)
    return xb[start:stop], (None if yb is None else yb[start:stop])


# ------------------------------------------------------------------------------------------- allreduce
class GradientAllreduce:
    """Sum (or average) the gradients of ``params`` over the ranks: one ``Allreduce`` per bucket of contiguous memory.

    The parameters are grouped by dtype (float32, float64) into flat preallocated buffers of at most
    ``bucket_bytes`` each (a larger parameter gets a bucket to itself); the last one also carries a flag per
    parameter (has this rank a gradient for it?) and one number that travels with the gradients (the loss).
    A call copies the gradients in, reduces each bucket in place (``MPI.IN_PLACE``, SUM): one collective
    per bucket and nothing else, scales if asked, and copies the result back. All ranks must build it over
    the same parameters in the same order. :meth:`sum` is what :class:`Trainer` uses.
    """

    def __init__(self, params: Iterable[Any], bucket_bytes: int = DEFAULT_BUCKET_BYTES, comm: Any = None) -> None:
        self.comm = _comm(comm)
        self.size = self.comm.Get_size()
        seen: set[int] = set()
        self.params = [p for p in params if not (id(p) in seen or seen.add(id(p)))]
        if bucket_bytes < 1:
            raise ValueError(f"GradientAllreduce: bucket_bytes must be >= 1, got {bucket_bytes}")
        groups: list[tuple[np.dtype, list[tuple[int, int, int]], int]] = []  # (dtype, [(param, start, stop)], size)
        for dtype in (np.dtype(np.float32), np.dtype(np.float64)):
            pending: list[tuple[int, int, int]] = []
            offset = 0
            for i, p in enumerate(self.params):
                if p.data.dtype != dtype:
                    continue
                n = p.data.size
                if pending and (offset + n) * dtype.itemsize > bucket_bytes:
                    groups.append((dtype, pending, offset))
                    pending, offset = [], 0
                pending.append((i, offset, offset + n))
                offset += n
            if pending:
                groups.append((dtype, pending, offset))
        if not groups:  # no parameters: a bucket for the tail alone
            groups.append((np.dtype(np.float64), [], 0))
        # NOTE: the last bucket carries a tail that travels in the same Allreduce: one flag per parameter
        # (1 if this rank has a gradient for it) and one number (the loss), so a step makes no other call
        tail = len(self.params) + 1
        self.buckets = [(np.empty(n + (tail if j == len(groups) - 1 else 0), dtype), items, n)
                        for j, (dtype, items, n) in enumerate(groups)]
        self._tail = self.buckets[-1][0][self.buckets[-1][2]:]
        other = {str(p.data.dtype) for p in self.params} - {"float32", "float64"}
        if other:
            raise TypeError(f"GradientAllreduce: parameters must be float32 or float64, got {sorted(other)}")
        self.calls = 0  # Allreduce calls made (for tests and benchmarks)

    @property
    def nbytes(self) -> int:
        """The bytes of gradients reduced per call (the tail left out)."""
        return sum(n * buf.itemsize for buf, _, n in self.buckets)

    def __call__(self, n_local: float | None = None, n_global: float | None = None) -> None:
        """Replace every gradient by the average over the ranks.

        Without arguments: the plain mean of the ranks' gradients (equal shards). With ``n_local`` (this
        rank's samples) and ``n_global`` (their sum over the ranks): ``sum_r n_r * grad_r / n_global``, the
        mean gradient of the global batch when each rank's gradient is the mean over its own shard.
        """
        if n_local is None:
            if self.size > 1:
                self._reduce(post=1.0 / self.size)
            return
        if n_global is None:
            raise ValueError("GradientAllreduce: pass n_global with n_local")
        self._reduce(pre=float(n_local), post=1.0 / n_global if n_global else 1.0)

    def sum(self, extra: float = 0.0) -> float:
        """Replace every gradient by its SUM over the ranks (each rank's loss already scaled by its share).

        ``extra`` (a number, e.g. the rank's share of the loss) is summed in the same Allreduce, in the
        last bucket's dtype: the sum over the ranks is returned.
        """
        return self._reduce(extra=extra)

    def _reduce(self, pre: float | None = None, post: float | None = None, extra: float = 0.0) -> float:
        """grad <- post * sum_r (pre_r * grad_r), one in-place Allreduce per bucket; returns sum_r extra_r."""
        MPI = _mpi()
        params, tail = self.params, self._tail
        for buf, items, n in self.buckets:
            grads = buf[:n]
            for i, start, stop in items:
                g = params[i].grad
                if g is None:
                    grads[start:stop] = 0
                else:
                    grads[start:stop].reshape(g.shape)[...] = g
            if pre is not None and pre != 1.0:
                grads *= pre
        for i, p in enumerate(params):
            tail[i] = p.grad is not None
        tail[-1] = extra
        for buf, _, _ in self.buckets:
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            self.calls += 1
        for buf, items, n in self.buckets:
            grads = buf[:n]
            if post is not None and post != 1.0:
                grads *= post
            for i, start, stop in items:
                if not tail[i]:  # no rank has a gradient for it: it stays without one
                    continue
                p = params[i]
                view = grads[start:stop].reshape(p.data.shape)
                if p.grad is None or p.grad.shape != p.data.shape or not p.grad.flags.writeable:
                    p.grad = view.copy()
                else:
                    p.grad[...] = view
        return float(tail[-1])


# --------------------------------------------------------------------------------------------- metrics
def allreduce_metrics(logs: dict[str, float], weight: float = 1.0, comm: Any = None) -> dict[str, float]:
    """Weighted means over the ranks: ``sum_r weight_r * logs_r[k] / sum_r weight_r`` for every key.

    Give each rank's per-sample means with its sample count as ``weight``; every rank gets the same figures.
    """
    MPI = _mpi()
    comm = _comm(comm)
    keys = sorted(logs)
    if comm.allgather(keys) != [keys] * comm.Get_size():
        raise ValueError("allreduce_metrics: the ranks log different keys")
    buf = np.array([float(logs[k]) * weight for k in keys] + [float(weight)], dtype=np.float64)
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    total = buf[-1]
    return {k: (v / total if total else math.nan) for k, v in zip(keys, buf[:-1])}


def reduce_metric_states(metrics: Sequence[Any], comm: Any = None) -> None:
    """Merge the accumulated states of ``fit``'s Metric objects over the ranks, in place.

    Afterwards ``m.result()`` is the figure over the samples of all the ranks. Known states: ``total`` /
    ``count`` (MeanMetric), ``hits`` / ``count`` (accuracy, top-k), ``cm`` (precision / recall / F1); a
    metric with a ``merge(others)`` method merges itself. Anything else: TypeError.
    """
    if not metrics:
        return
    comm = _comm(comm)
    everyone = comm.allgather([vars(m) for m in metrics])
    for j, m in enumerate(metrics):
        states = [ranks[j] for ranks in everyone]
        if hasattr(m, "merge"):
            m.merge(states)
        elif "cm" in states[0]:
            n = max(s["cm"].shape[0] for s in states)
            cm = np.zeros((n, n), dtype=np.int64)
            for s in states:
                k = s["cm"].shape[0]
                cm[:k, :k] += s["cm"]
            m.cm = cm
        elif "count" in states[0] and ("hits" in states[0] or "total" in states[0]):
            for attr in ("hits", "total", "count"):
                if attr in states[0]:
                    setattr(m, attr, sum(s[attr] for s in states))
        else:
            raise TypeError(f"reduce_metric_states: cannot merge the metric {getattr(m, 'name', m)!r} over ranks; "
                            "give it a merge(states) method")


# ---------------------------------------------------------------------------------------------- trainer
class Trainer:
    """The per-step hooks that make a training loop data-parallel (see the module docstring).

    Args:
        model, optimizer: the model and its optimizer (same construction on every rank).
        batch_size: the GLOBAL batch size B (divisible by the number of ranks).
        comm: the communicator (default ``MPI.COMM_WORLD``).
        bucket_bytes: the size of the gradient buckets.
        sync_batchnorm: BatchNorm over all the ranks inside :meth:`synchronised`.
    """

    def __init__(self, model: Any, optimizer: Any, batch_size: int, comm: Any = None,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES, sync_batchnorm: bool = False) -> None:
        ctx = init(comm)
        self.comm, self.rank, self.size = ctx.comm, ctx.rank, ctx.size
        check_batch_size(batch_size, self.size)
        self.model, self.optimizer, self.batch_size = model, optimizer, batch_size
        self.allreduce = GradientAllreduce(model.parameters(), bucket_bytes=bucket_bytes, comm=self.comm)
        self.n_local, self.n_global, self.share, self.bounds = 0, 0, 0.0, (0, 0)
        self.ranks = rank_table(self.comm)  # [(rank, pid, host)]: mpiexec names a dead process by pid
        self.sync_batchnorm = bool(sync_batchnorm)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        """One line naming every rank's pid and host."""
        return (f"data-parallel on {self.size} MPI ranks: "
                + ", ".join(f"rank {r} = pid {pid} on {host}" for r, pid, host in self.ranks))

    def synchronised(self) -> contextlib.AbstractContextManager:
        """``with trainer.synchronised():`` BatchNorm over all the ranks if ``sync_batchnorm`` was set."""
        if not self.sync_batchnorm:
            return contextlib.nullcontext()
        return sync_batchnorm(self.comm)

    def broadcast(self, root: int = 0) -> None:
        """Start from root's weights, buffers and optimizer state on every rank."""
        broadcast_parameters(self.model, root, self.comm)
        broadcast_optimizer_state(self.optimizer, root, self.comm)

    def seed_ranks(self) -> None:
        """Give each rank its own stream of the global generator (dropout masks), derived from the current one."""
        draw = int(get_rng().integers(2**63))
        manual_seed(int(np.random.SeedSequence([draw, self.rank]).generate_state(1)[0]))

    def shard(self, xb: Any, yb: Any = None, weights: Any = None) -> tuple[Any, Any]:
        """This rank's slice of the global batch; sets :attr:`share`, this rank's part of the batch's loss,
        and :attr:`bounds`, the slice's [start, stop) in the batch.

        ``weights`` (optional): the loss weights of the GLOBAL batch's samples (class/sample weights, when
        the batch loss is ``sum(w * loss) / sum(w)``); the share is then this rank's weight over the
        batch's, else its sample count over the batch's.
        """
        self.n_global = len(xb)
        start, stop = self.bounds = shard_bounds(self.n_global, self.rank, self.size)
        self.n_local = stop - start
        if weights is None:
            self.share = self.n_local / self.n_global if self.n_global else 0.0
        else:
            total = float(np.sum(weights))
            self.share = float(np.sum(weights[start:stop])) / total if total > 0 else 0.0
        return xb[start:stop], (None if yb is None else yb[start:stop])

    def allreduce_gradients(self, loss: float = 0.0) -> float:
        """The gradient of the global batch on every rank: the SUM of the ranks' (share-scaled) gradients.

        Call after the backward pass of ``share * loss`` (every rank, an empty shard's too: see
        :meth:`backprop.training.loop.Step.backpropagate`), before ``optimizer.step()``.
        ``loss``, this rank's loss, rides along in the same Allreduce: the return value is
        ``sum_r share_r * loss_r``, the global batch's loss, the same on every rank (so that a loss that
        is not finite on any rank stops them all at the same step).
        """
        return self.allreduce.sum(self.share * loss)

    def reduce_sums(self, *values: float) -> tuple[float, ...]:
        """Sums over the ranks of each value (epoch loss sums, weights, sample counts)."""
        MPI = _mpi()
        buf = np.array(values, dtype=np.float64)
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        return tuple(float(v) for v in buf)

    def reduce_metrics(self, metrics: Sequence[Any]) -> None:
        reduce_metric_states(metrics, self.comm)

    def abort(self, exc: BaseException | None = None, code: int = 1) -> None:
        """Print the rank and the error, then end the whole job (no rank is left waiting in a collective)."""
        if self.size == 1:
            return
        _abort(self.comm, self.rank, self.size, exc, code)

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """``with trainer.guard():`` an exception inside aborts every rank (``comm.Abort``) after printing it."""
        try:
            yield
        except BaseException as e:
            self.abort(e)
            raise


def _abort(comm: Any, rank: int, size: int, exc: BaseException | None, code: int) -> None:
    what = "" if exc is None else f": {type(exc).__name__}: {exc}"
    with contextlib.suppress(Exception):
        if exc is not None:
            traceback.print_exception(exc, file=sys.stderr)
        print(f"backprop.distributed: rank {rank} of {size} failed{what}; aborting all ranks",
              file=sys.stderr, flush=True)
    # NOTE: MPI_Abort tears the job down at once; without a pause mpiexec may drop this output unforwarded
    time.sleep(0.5)
    comm.Abort(code)


# ------------------------------------------------------------------------------------- the Step wrapper
class DataParallelStep:
    """A :class:`~backprop.training.loop.Step` made data-parallel: each rank a shard of every global batch.

    ``train_step`` shards the batch (and its loss weights), runs the wrapped step's ``compute_loss`` on this
    rank's rows, back-propagates ``share * loss`` with its ``backpropagate``, sums the gradients and the
    loss over the ranks in one bucketed Allreduce (:class:`GradientAllreduce`), and, if the global loss is
    finite, lets its ``apply_gradients`` clip and update: the same update on every rank. A rank whose
    shard is empty (a last batch smaller than the number of ranks) still joins every collective. The
    result is the whole batch's loss, the same on every rank, so they all stop at the same step.

    ``count_samples``: keep ``sample_counts``, this rank's uses of each training sample (for tests).
    """

    def __init__(self, step: Any, batch_size: int, comm: Any = None, bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                 sync_batchnorm: bool = False, count_samples: int | None = None) -> None:
        self.step, self.model, self.optimizer = step, step.model, step.optimizer
        self.trainer = Trainer(step.model, step.optimizer, batch_size, comm=comm, bucket_bytes=bucket_bytes,
                               sync_batchnorm=sync_batchnorm)
        self.sample_counts = None if count_samples is None else np.zeros(count_samples, dtype=np.int64)

    @property
    def is_root(self) -> bool:
        return self.trainer.is_root

    def start(self, verbose: int = 0) -> None:
        """Before training: the rank table on rank 0 (if verbose), each rank its own dropout stream, and
        rank 0's weights, buffers and optimizer state on every rank."""
        if verbose and self.is_root:
            print(self.trainer.describe(), file=sys.stderr, flush=True)
        self.trainer.seed_ranks()
        self.trainer.broadcast()

    def train_step(self, batch: Any) -> Any:
        step, trainer = self.step, self.trainer
        x, y = trainer.shard(batch.x, batch.y, batch.w)
        start, stop = trainer.bounds
        local = batch._replace(x=x, y=y, w=None if batch.w is None else batch.w[start:stop],
                               index=batch.index[start:stop])
        if self.sample_counts is not None:
            self.sample_counts[local.index] += 1
        step.optimizer.zero_grad()
        if stop > start:
            out, loss = step.compute_loss(local)
            value = float(loss.data)
            step.backpropagate(loss, scale=trainer.share)
        else:  # nothing of this batch on this rank: no loss of its own, the same update as the others
            out, value = None, 0.0
            step.backpropagate(None, x=x if trainer.sync_batchnorm else None)
        # NOTE: the GLOBAL batch's loss rides in the gradients' Allreduce: every rank sees the same value
        total = trainer.allreduce_gradients(value)
        applied = math.isfinite(total) or not getattr(step, "skip_nonfinite", True)
        if applied:
            step.apply_gradients(total)
        return StepResult(total, batch.n, step.epoch_weight(batch), None if out is None else out.data, y, applied)

    def reduce_metrics(self, metrics: Sequence[Any]) -> None:
        self.trainer.reduce_metrics(metrics)

    def context(self) -> contextlib.AbstractContextManager:
        return self.trainer.synchronised()

    def on_exception(self, error: BaseException) -> None:
        self.trainer.abort(error)  # a failing rank must not leave the others waiting in an Allreduce


def fit_distributed(model: Any, x: Any, y: Any, *, loss: Any = "cross_entropy", optimizer: Any = "sgd",
                    lr: float = 0.1, batch_size: int = 32, epochs: int = 10, seed: int | None = None,
                    shuffle: bool = True, metrics: Sequence[Any] = ("accuracy",), verbose: int = 0,
                    comm: Any = None, bucket_bytes: int = DEFAULT_BUCKET_BYTES, jit: bool = True) -> Any:
    """Data-parallel training with a subset of ``fit``'s arguments, the one loop written out in a few lines.

    ``bp.fit(..., distributed=True)`` is the full-featured version. Same seeds and batches as ``bp.fit``:
    the returned History (identical on every rank) and the weights match a single-process ``fit`` with the
    same ``batch_size`` and ``seed``. ``history.sample_counts`` (this rank's uses of each training sample)
    lets tests check that each sample is used once per epoch over the ranks. ``jit``: capture and replay
    each rank's forward and backward (:class:`~backprop.training.jit.CapturedStep`), as ``fit`` does.
    """
    ctx = init(comm)
    x, y = check_xy(x, y, "fit_distributed", True, model.dtype)
    y = check_labels(model, y, loss, "fit_distributed")
    if seed is None:  # every rank must draw the same permutations
        seed = shared_seed(ctx.comm)
    loader_seed, global_seed, _ = np.random.SeedSequence(seed).spawn(3)  # as fit: [loader, global, split]
    manual_seed(int(global_seed.generate_state(1)[0]))
    opt = optim.build(optimizer, model.parameters(), lr)
    step = DataParallelStep(captured(Step(model, opt, loss), jit, fuse=False), batch_size, comm=ctx.comm,
                            bucket_bytes=bucket_bytes, count_samples=len(x))
    step.start()
    data = batches(x, y, batch_size=batch_size, shuffle=shuffle, seed=loader_seed)
    history = History()
    callbacks = CallbackList(history=history, add_progbar=2 if verbose and step.is_root else 0,
                             after=[DivergenceGuard(history)], model=model, optimizer=opt,
                             params={"epochs": epochs, "batch_size": batch_size, "steps": len(data),
                                     "samples": len(x), "ranks": ctx.size})
    Loop(step, data, epochs=epochs, callbacks=callbacks, metrics=resolve_metrics(metrics, y)).run()
    history.sample_counts = step.sample_counts
    return history


# NOTE: training may not import distributed (imports point downward): fit(distributed=True) finds it here
_extensions.provide("distributed", sys.modules[__name__])
