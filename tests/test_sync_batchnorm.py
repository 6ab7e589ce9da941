"""Synchronised batch norm: one process (COMM_SELF) equals plain batch norm; ``mpiexec -n 2`` and ``-n 3``
runs (shards of 1 and 0 rows included) train exactly as one process on the global batches."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest

import backprop as bp
from backprop import distributed
from backprop.distributed.sync_batchnorm import (
    SyncBatchNormTrain,
    active_comm,
    sync_batch_norm,
    sync_batchnorm,
)
from backprop.nn import normalization

pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install mpi4py mpich)")
pytestmark = pytest.mark.skipif(not distributed.is_available(), reason="mpi4py cannot load an MPI library")


def _mpiexec() -> str | None:
    here = Path(sysconfig.get_path("scripts")) / "mpiexec"  # the mpich wheel's launcher, beside python
    return str(here) if here.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
needs_mpiexec = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found (pip install mpich)")

# The training loop of the contract, run by the ranks and (size 1, no communicator) by the reference.
COMMON = """
import numpy as np
import backprop as bp
from backprop.distributed import GradientAllreduce, shard_bounds


def make_model(kind, dtype=np.float64):
    bp.manual_seed(0)
    nn = bp.nn
    if kind == "mlp":  # the first BatchNorm's input needs no gradient: its backward makes no Allreduce
        # NOTE: Tanh after it: a bias followed by a BatchNorm gets a zero gradient, its updates are rounding noise
        m = nn.Sequential(nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(),
                          nn.Linear(8, 3))
    else:
        m = nn.Sequential(nn.Unflatten(1, (1, 6, 6)), nn.Conv2d(1, 4, 3, padding=1),
                          nn.BatchNorm2d(4, momentum=None), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(36, 3))
    return m.to(dtype)


def data(kind, n):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 6 if kind == "mlp" else 36)) * 3.0 + 1.0  # offset and scale: the statistics matter
    return x, rng.integers(0, 3, n)


def train(kind, n, batch, rank=0, size=1, comm=None, epochs=2):
    x, y = data(kind, n)
    m = make_model(kind).train()
    opt = bp.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    reduce = None if comm is None else GradientAllreduce(m.parameters(), comm=comm)
    order = np.random.default_rng(5)
    for _ in range(epochs):
        perm = order.permutation(n)
        for start in range(0, n, batch):
            idx = perm[start:start + batch]  # the global batch, the same on every rank
            lo, hi = shard_bounds(len(idx), rank, size)
            n_local, n_global = hi - lo, len(idx)
            opt.zero_grad()
            out = m(bp.tensor(x[idx[lo:hi]]))  # NOTE: also with 0 rows: every rank takes part in the collectives
            if n_local:
                loss = bp.nn.functional.cross_entropy(out, y[idx[lo:hi]]) * (n_local / n_global)
            else:
                loss = out.sum() * 0.0  # no rows, no loss, but a backward all the same
            loss.backward()
            if reduce is not None:
                reduce(n_local=1.0, n_global=1.0)  # a plain SUM of the scaled gradients
            opt.step()
    return m


def state(m):
    return {k: np.array(v) for k, v in m.state_dict().items()}
"""

RANKS = COMMON + """
import contextlib, sys
from mpi4py import MPI
from backprop.distributed.sync_batchnorm import sync_batchnorm

comm = MPI.COMM_WORLD
out, runs = sys.argv[1], sys.argv[2:]
saved = {}
for run in runs:  # kind:n:batch:sync
    kind, n, batch, sync = run.split(":")
    with sync_batchnorm(comm) if sync == "1" else contextlib.nullcontext():
        m = train(kind, int(n), int(batch), comm.Get_rank(), comm.Get_size(), comm)
    everyone = comm.gather(state(m), root=0)
    if comm.Get_rank() == 0:
        saved[f"{run}|same"] = all(np.array_equal(s[k], everyone[0][k]) for s in everyone for k in s)
        saved.update({f"{run}|{k}": v for k, v in everyone[0].items()})
if comm.Get_rank() == 0:
    np.savez(out, **saved)
"""

ns: dict = {}
exec(compile(COMMON, "common", "exec"), ns)  # noqa: S102 - the very loop the ranks run


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)) if b.size else 0.0


def _mpirun(tmp_path: Path, n: int, *runs: str) -> dict:
    (tmp_path / "ranks.py").write_text(textwrap.dedent(RANKS))
    out = tmp_path / f"n{n}.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # NOTE: `python -m mpi4py` aborts the whole job when a rank raises, instead of leaving the others
    # waiting forever in a collective
    r = subprocess.run([MPIEXEC, "-n", str(n), sys.executable, "-m", "mpi4py", str(tmp_path / "ranks.py"), str(out),
                        *runs], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    with np.load(out) as f:
        return dict(f)


def _compare(got: dict, run: str, rtol: float = 1e-12) -> float:
    """The largest relative error of the run's weights and buffers against one process on the global batches."""
    kind, n, batch, _ = run.split(":")
    ref = ns["state"](ns["train"](kind, int(n), int(batch)))
    worst = 0.0
    for k, v in ref.items():
        err = _relative_error(got[f"{run}|{k}"], v)
        assert err <= rtol, f"{run} {k}: relative error {err:.3g} > {rtol}"
        worst = max(worst, err)
    return worst


# ------------------------------------------------------------------------------------- several ranks
@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    # n=21, batch 8: shards 4+4, 4+4 and a last batch of 5 split 3+2
    return _mpirun(tmp_path_factory.mktemp("two"), 2, "mlp:21:8:1", "cnn:21:8:1", "mlp:21:8:0")


@needs_mpiexec
@pytest.mark.parametrize("run", ["mlp:21:8:1", "cnn:21:8:1"])
def test_two_ranks_match_one_process(two_ranks, run):
    assert bool(two_ranks[f"{run}|same"]), "the ranks ended with different weights or running statistics"
    _compare(two_ranks, run)


@needs_mpiexec
def test_three_ranks_with_shards_of_one_and_zero_rows(tmp_path):
    # n=10, batch 4: shards 2+1+1 (a rank with 1 row: only the global count allows it), last batch 1+1+0
    got = _mpirun(tmp_path, 3, "mlp:10:4:1", "cnn:10:4:1")
    for run in ("mlp:10:4:1", "cnn:10:4:1"):
        assert bool(got[f"{run}|same"]), f"{run}: the ranks ended with different weights or running statistics"
        _compare(got, run)


@needs_mpiexec
def test_without_sync_the_ranks_use_their_own_statistics(two_ranks):
    """The check above can fail: per-rank batch norm trains another model."""
    with pytest.raises(AssertionError, match="relative error"):
        _compare(two_ranks, "mlp:21:8:0", rtol=1e-6)


# --------------------------------------------------------------------------------------- one process
def _one_step(model: bp.nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    xt = bp.tensor(x, requires_grad=True)
    out = model(xt)
    bp.nn.functional.cross_entropy(out, y).backward()
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}
    return out.data.copy(), xt.grad.copy(), grads


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_comm_self_equals_plain_batch_norm(kind, dtype):
    from mpi4py import MPI

    x, y = ns["data"](kind, 7)
    x = x.astype(dtype)
    plain, synced = ns["make_model"](kind, dtype).train(), ns["make_model"](kind, dtype).train()
    want = _one_step(plain, x, y)
    with sync_batchnorm(MPI.COMM_SELF):
        got = _one_step(synced, x, y)
    # the same operations in the same order: equal bit for bit (values, input and parameter gradients)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    for name, g in want[2].items():
        np.testing.assert_array_equal(got[2][name], g, err_msg=name)
    for k, v in ns["state"](plain).items():
        np.testing.assert_array_equal(ns["state"](synced)[k], v, err_msg=k)


def test_comm_self_training_equals_plain_training():
    from mpi4py import MPI

    for kind in ("mlp", "cnn"):
        want = ns["state"](ns["train"](kind, 21, 8))
        with sync_batchnorm(MPI.COMM_SELF):
            got = ns["state"](ns["train"](kind, 21, 8, comm=MPI.COMM_SELF))
        for k, v in want.items():
            np.testing.assert_array_equal(got[k], v, err_msg=f"{kind} {k}")


class CountingComm:
    """COMM_SELF that counts the collectives."""

    def __init__(self) -> None:
        from mpi4py import MPI

        self.comm, self.calls = MPI.COMM_SELF, {"Allgather": 0, "Allreduce": 0}

    def Get_size(self) -> int:
        return 1

    def Allgather(self, *args, **kw):
        self.calls["Allgather"] += 1
        return self.comm.Allgather(*args, **kw)

    def Allreduce(self, *args, **kw):
        self.calls["Allreduce"] += 1
        return self.comm.Allreduce(*args, **kw)


def test_one_collective_per_forward_and_per_backward():
    comm = CountingComm()
    m = ns["make_model"]("mlp").train()  # two BatchNorms; the first one's input needs no gradient
    with sync_batchnorm(comm):
        out = m(bp.tensor(ns["data"]("mlp", 5)[0]))
        assert comm.calls == {"Allgather": 2, "Allreduce": 0}
        out.sum().backward()
    assert comm.calls == {"Allgather": 2, "Allreduce": 1}
    m.eval()
    with sync_batchnorm(comm):  # evaluation: running statistics, no communication
        m(bp.tensor(ns["data"]("mlp", 5)[0]))
    assert comm.calls == {"Allgather": 2, "Allreduce": 1}


def test_context_nests_restores_and_survives_exceptions():
    from mpi4py import MPI

    assert active_comm() is None and normalization._sync_forward is None
    with sync_batchnorm() as world:
        assert world is MPI.COMM_WORLD and active_comm() is world
        with pytest.raises(RuntimeError, match="inner"), sync_batchnorm(MPI.COMM_SELF):
            assert active_comm() is MPI.COMM_SELF
            raise RuntimeError("inner")
        assert active_comm() is world
    assert active_comm() is None and normalization._sync_forward is None


def test_eval_mode_is_unchanged():
    bn = bp.nn.BatchNorm2d(3, dtype=np.float64)
    bn.running_mean[...], bn.running_var[...] = [0.5, -1.0, 2.0], [1.0, 4.0, 0.25]
    bn.eval()
    x = bp.tensor(np.random.default_rng(0).normal(size=(2, 3, 2, 2)))
    want = bn(x).data
    with sync_batchnorm(object()):  # NOTE: any use of this "communicator" would raise
        np.testing.assert_array_equal(bn(x).data, want)


def test_the_count_check_is_global_and_counts_nothing_on_failure():
    from mpi4py import MPI

    bn = bp.nn.BatchNorm1d(3, dtype=np.float64)
    with sync_batchnorm(MPI.COMM_SELF):
        for rows in (1, 0):  # one rank alone: 1 value per channel, then none at all
            with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
                bn(bp.tensor(np.ones((rows, 3))))
        assert int(bn.num_batches_tracked) == 0 and np.array_equal(bn.running_mean, np.zeros(3))
        bn(bp.tensor(np.ones((2, 3))))
    assert int(bn.num_batches_tracked) == 1


def test_functional_form_and_errors():
    from mpi4py import MPI

    x = np.random.default_rng(3).normal(size=(5, 2, 3))
    rm, rv = np.zeros(2), np.ones(2)
    rm2, rv2 = np.zeros(2), np.ones(2)
    y = sync_batch_norm(bp.tensor(x), rm, rv, momentum=0.3, comm=MPI.COMM_SELF)
    z = normalization.batch_norm(bp.tensor(x), rm2, rv2, training=True, momentum=0.3)
    np.testing.assert_array_equal(y.data, z.data)
    np.testing.assert_array_equal(rm, rm2)
    np.testing.assert_array_equal(rv, rv2)
    with pytest.raises(ValueError, match=r"shape \(N, C, \*\)"):
        sync_batch_norm(bp.tensor(np.ones(3)), comm=MPI.COMM_SELF)
    with pytest.raises(ValueError, match="running_mean has shape"):
        sync_batch_norm(bp.tensor(x), np.zeros(3), comm=MPI.COMM_SELF)
    assert SyncBatchNormTrain in bp.REGISTRY


def test_zero_rows_pass_through_lenet5():
    """A rank may hold 0 rows of the last batch: the layers (Flatten included) must take an empty batch."""
    m = bp.nn.models.lenet5().double().train()
    out = m(bp.tensor(np.zeros((0, 784))))
    assert out.shape == (0, 10)
    (out.sum() * 0.0).backward()
    assert all(p.grad is not None and not p.grad.any() for p in m.parameters())
