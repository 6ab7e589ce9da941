"""MLP training throughput: backprop vs PyTorch, JAX and hand-written NumPy (CPU), a process per library.

Run from the repository root::

    python benchmarks/mlp_train.py             # the full comparison, a few minutes on 2 cores
    python benchmarks/mlp_train.py --quick     # ~1.5 minutes
    python benchmarks/mlp_train.py --profile   # cProfile of one backprop epoch at batch 32, top 25 by tottime

Table 1: samples/second of a training epoch on MNIST-shaped synthetic data (up to 60000 x 784 float32 in
[0, 1), 10 random classes, fixed seed; an epoch is ``--samples`` of them), network 784-256-256-10 (ReLU,
softmax cross-entropy, plain SGD lr 0.1, float32, reshuffled every epoch) at batch sizes 10, 32, 128, 512, for

* ``backprop-loop``: the idiomatic loop (``DataLoader``, ``model(bp.Tensor(xb))``, ``cross_entropy``,
  ``zero_grad`` / ``backward`` / ``step``);
* ``backprop-jit``: the same loop with its step captured by ``bp.jit`` (a row "n/a" while backprop has none);
* ``backprop-fit``: ``bp.fit(model, x, y, lr=0.1, batch_size=B, epochs=1, verbose=0, metrics=())`` (fit's own
  bookkeeping included; it uses ``bp.jit`` by default once that exists) and ``backprop-fit-eager``, the
  same with ``jit=False`` (only where ``fit`` takes that keyword);
* ``torch``: PyTorch's idiomatic loop (preloaded tensors, ``torch.randperm``, ``F.cross_entropy``);
* ``jax``: a ``jax.jit``-compiled SGD step (parameters a pytree, donated; ``jax.value_and_grad``; the batch
  gathered inside the compiled step from a fresh permutation every epoch); skipped when JAX is absent;
* ``numpy``: a minimal hand-written NumPy MLP (the same maths written out).

Every (implementation, thread count) runs in its own process, at 1 thread pinned to one core and at 2
threads (``--threads``), ``--rounds`` times in rotated order: see ``_common.py`` for why and how. Each
process builds a fresh model per batch size, warms it up (a few hundred steps), then times one epoch of
``--samples`` samples (``--small-batch-samples`` below batch 32; rates are per sample). The table gives the
median of the rounds and half their range; then each library at its best thread count, and the ratios of
every backprop variant to the best peer (the faster of PyTorch and JAX, each at its own best thread count)
and to NumPy.

Table 2: microseconds per training step of a 4-8-3 MLP at batch 1 (pre-made batches, only the step timed),
every implementation in its own process, 1 thread pinned: the fixed per-step overhead.

A sanity line checks that the implementations compute the same update (the same initial weights, three SGD
steps, each library in its own process; the weights travel through .npz files). Importing this module runs
nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.metadata
import importlib.util
import inspect
import itertools
import math
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared helpers beside this script
from _common import (
    Job,
    Key,
    Spread,
    available,
    backprop_epoch,
    backprop_train_step,
    best_threads,
    cpu_seconds,
    env_lines,
    errors,
    launch,
    library_lines,
    loadavg,
    numpy_threads,
    parse_threads,
    print_table,
    run_rounds,
    run_task,
    spreads,
    torch_epoch,
    torch_threads,
    verdict,
    warmup_samples,
)

SCRIPT = os.path.abspath(__file__)
N_TRAIN, N_FEATURES, N_CLASSES = 60000, 784, 10
SIZES = (N_FEATURES, 256, 256, N_CLASSES)
SMALL_SIZES = (4, 8, 3)
LR = 0.1
DATA_SEED = INIT_SEED = 0
SANITY_STEPS, SANITY_BATCH = 3, 32

BACKPROP = ("backprop-loop", "backprop-jit", "backprop-fit", "backprop-fit-eager")
PEERS = ("torch", "jax")
IMPLS = (*BACKPROP, *PEERS, "numpy")
STEP_IMPLS = ("backprop-loop", "backprop-jit", "torch", "jax", "numpy")
# Targets against the best peer at its best thread count: (batch sizes, minimum ratio).
PEER_TARGETS = (((10, 32, 128), 1.0), ((512,), 0.95))
STEP_TARGET_US = 25.0

Batches = list[tuple[np.ndarray, np.ndarray]]  # (x, y) pairs


# ------------------------------------------------------------------------------------------------ data
def make_data(
    n: int = N_TRAIN, n_features: int = N_FEATURES, n_classes: int = N_CLASSES, seed: int = DATA_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-shaped synthetic data: x float32 in [0, 1), y int64 class labels."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, n_features), dtype=np.float32)
    y = rng.integers(0, n_classes, size=n, dtype=np.int64)
    return x, y


def init_weights(sizes: Sequence[int], seed: int = INIT_SEED) -> list[tuple[np.ndarray, np.ndarray]]:
    """(W (in, out), b) per layer, W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as PyTorch's Linear, float32."""
    rng = np.random.default_rng(seed)
    out = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        bound = 1.0 / math.sqrt(fan_in)
        w = rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32)
        out.append((w, rng.uniform(-bound, bound, fan_out).astype(np.float32)))
    return out


# ------------------------------------------------------------------------------------------ the models
def backprop_mlp(bp: Any, sizes: Sequence[int], seed: int = INIT_SEED) -> Any:
    bp.manual_seed(seed)
    layers: list[Any] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers += [bp.nn.ReLU()] if i else []
        layers.append(bp.nn.Linear(fan_in, fan_out))
    return bp.nn.Sequential(*layers)


def torch_mlp(torch: Any, sizes: Sequence[int], seed: int = INIT_SEED) -> Any:
    torch.manual_seed(seed)
    layers: list[Any] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers += [torch.nn.ReLU()] if i else []
        layers.append(torch.nn.Linear(fan_in, fan_out))
    return torch.nn.Sequential(*layers)


def jax_steps(lr: float = LR) -> tuple[Callable, Callable]:
    """Compiled SGD steps of an MLP whose params are [(W (in, out), b), ...]: on a batch, and gathering one.

    ``batch_step(params, xb, yb) -> (params, loss)``; ``gather_step(params, xs, ys, idx)`` trains on
    ``xs[idx], ys[idx]``. Both donate ``params`` (updated in place where XLA can).
    """
    import jax
    import jax.numpy as jnp

    def loss_fn(params: Any, xb: Any, yb: Any) -> Any:
        h = xb
        for w, b in params[:-1]:
            h = jax.nn.relu(h @ w + b)
        w, b = params[-1]
        logp = jax.nn.log_softmax(h @ w + b)
        return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))

    def sgd(params: Any, xb: Any, yb: Any) -> tuple[Any, Any]:
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
        return jax.tree.map(lambda p, g: p - lr * g, params, grads), loss

    batch_step = jax.jit(sgd, donate_argnums=0)
    gather_step = jax.jit(lambda params, xs, ys, idx: sgd(params, xs[idx], ys[idx]), donate_argnums=0)
    return batch_step, gather_step


class NumpyMLP:
    """A minimal hand-written MLP: ReLU hidden layers, softmax cross-entropy, plain SGD, float32.

    Initialised by :func:`init_weights`. ``layout="in_out"`` (the natural hand-written choice) stores W as
    (in, out), so the forward pass is ``h @ W + b``; ``layout="out_in"`` stores it as (out, in) like
    PyTorch and backprop, so it is ``h @ W.T + b``. The two differ only in which BLAS transposition each
    matmul uses, which matters at small batch sizes.
    """

    def __init__(self, sizes: Sequence[int], layout: str = "in_out") -> None:
        if layout not in ("in_out", "out_in"):
            raise ValueError(f"layout must be 'in_out' or 'out_in', got {layout!r}")
        self.out_in = layout == "out_in"
        weights = init_weights(sizes)
        self.set_weights_out_in([w.T for w, _ in weights], [b for _, b in weights])

    def weights_out_in(self) -> list[np.ndarray]:
        return list(self.W) if self.out_in else [w.T for w in self.W]

    def set_weights_out_in(self, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray]) -> None:
        self.W = [np.array(w if self.out_in else w.T, order="C") for w in weights]
        self.b = [np.array(b) for b in biases]

    def step(self, xb: np.ndarray, yb: np.ndarray, lr: float) -> np.floating:
        """One SGD step on a batch; returns the batch's mean loss."""
        W, b, out_in = self.W, self.b, self.out_in
        last = len(W) - 1
        hs = [xb]  # the input of every layer
        h = xb
        for i in range(last + 1):
            z = h @ W[i].T if out_in else h @ W[i]
            z += b[i]
            if i < last:
                np.maximum(z, 0, out=z)
            hs.append(z)
            h = z
        # softmax cross-entropy from the logits h, and its gradient (p - onehot) / n
        n = len(yb)
        rows = np.arange(n)
        shifted = h - h.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        s = e.sum(axis=1, keepdims=True)
        loss = np.log(s[:, 0]).mean() - shifted[rows, yb].mean()
        g = e / s
        g[rows, yb] -= 1
        g /= n
        for i in range(last, -1, -1):
            a = hs[i]
            gw = g.T @ a if out_in else a.T @ g
            gb = g.sum(axis=0)
            if i:
                g = g @ W[i] if out_in else g @ W[i].T
                g *= a > 0  # ReLU's gradient, from its output
            W[i] -= lr * gw
            b[i] -= lr * gb
        return loss


# ------------------------------------------------------------------------- the workers' implementations
class Trainer:
    """One implementation at one batch size: ``epoch(n)`` trains on the first n samples, returns seconds."""

    def __init__(self, batch_size: int, x: np.ndarray, y: np.ndarray) -> None:
        self.batch_size, self.x, self.y = batch_size, x, y
        self.rng = np.random.default_rng(0)  # the epochs' shuffles
        self.loss = float("nan")

    def epoch(self, n: int) -> float:
        raise NotImplementedError


class BackpropLoop(Trainer):
    def __init__(self, batch_size: int, x: np.ndarray, y: np.ndarray) -> None:
        super().__init__(batch_size, x, y)
        import backprop as bp

        self.bp = bp
        self.model = backprop_mlp(bp, SIZES)
        self.step = self.make_step(
            backprop_train_step(bp, self.model, bp.optim.SGD(self.model.parameters(), lr=LR))
        )

    def make_step(self, train_step: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        return train_step

    def epoch(self, n: int) -> float:
        seconds, self.loss = backprop_epoch(
            self.bp, self.step, self.x[:n], self.y[:n], self.batch_size, self.rng
        )
        return seconds


class BackpropJit(BackpropLoop):
    def make_step(self, train_step: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        return self.bp.jit(train_step)


class BackpropFit(Trainer):
    def __init__(self, batch_size: int, x: np.ndarray, y: np.ndarray) -> None:
        super().__init__(batch_size, x, y)
        import backprop as bp

        self.bp = bp
        self.model = backprop_mlp(bp, SIZES)
        self.fit_kwargs: dict[str, Any] = {}

    def epoch(self, n: int) -> float:
        t0 = time.perf_counter()
        history = self.bp.fit(
            self.model,
            self.x[:n],
            self.y[:n],
            lr=LR,
            batch_size=self.batch_size,
            epochs=1,
            verbose=0,
            metrics=(),
            **self.fit_kwargs,
        )
        seconds = time.perf_counter() - t0
        self.loss = float(history.history["loss"][-1])
        return seconds


class BackpropFitEager(BackpropFit):
    def __init__(self, batch_size: int, x: np.ndarray, y: np.ndarray) -> None:
        super().__init__(batch_size, x, y)
        self.fit_kwargs = {"jit": False}


class TorchLoop(Trainer):
    def __init__(self, batch_size: int, x: np.ndarray, y: np.ndarray) -> None:
        super().__init__(batch_size, x, y)
        import torch

        self.torch = torch
        self.X, self.Y = torch.from_numpy(x), torch.from_numpy(y)
        self.model = torch_mlp(torch, SIZES)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR)

    def epoch(self, n: int) -> float:
        seconds, self.loss = torch_epoch(
            self.torch, self.model, self.opt, self.X[:n], self.Y[:n], self.batch_size
        )
        return seconds


class JaxLoop(Trainer):
    def __init__(self, batch_size: int, x: np.ndarray, y: np.ndarray) -> None:
        super().__init__(batch_size, x, y)
        import jax

        self.jax = jax
        self.params = jax.device_put(init_weights(SIZES))
        self.xs, self.ys = jax.device_put(x), jax.device_put(y.astype(np.int32))
        _, self.step = jax_steps()

    def epoch(self, n: int) -> float:
        B, step = self.batch_size, self.step
        t0 = time.perf_counter()
        order = self.rng.permutation(n).astype(np.int32)
        params = self.params
        for start in range(0, n, B):
            params, loss = step(params, self.xs, self.ys, order[start : start + B])
        self.params = self.jax.block_until_ready(params)
        seconds = time.perf_counter() - t0
        self.loss = float(loss)
        return seconds


class NumpyLoop(Trainer):
    def __init__(self, batch_size: int, x: np.ndarray, y: np.ndarray, layout: str = "in_out") -> None:
        super().__init__(batch_size, x, y)
        self.net = NumpyMLP(SIZES, layout=layout)

    def epoch(self, n: int) -> float:
        net, B, x, y = self.net, self.batch_size, self.x, self.y
        t0 = time.perf_counter()
        order = self.rng.permutation(n)
        for start in range(0, n, B):
            idx = order[start : start + B]
            loss = net.step(x[idx], y[idx], LR)
        seconds = time.perf_counter() - t0
        self.loss = float(loss)
        return seconds


TRAINERS: dict[str, type[Trainer]] = {
    "backprop-loop": BackpropLoop,
    "backprop-jit": BackpropJit,
    "backprop-fit": BackpropFit,
    "backprop-fit-eager": BackpropFitEager,
    "torch": TorchLoop,
    "jax": JaxLoop,
    "numpy": NumpyLoop,
}


def library(impl: str, threads: int) -> str:
    """Import and thread-limit the library ``impl`` measures (and only it); a line describing it."""
    if impl == "torch":
        return torch_threads(threads)
    if impl == "jax":
        import jax

        flags = os.environ.get("XLA_FLAGS", "")
        return f"jax {jax.__version__} ({jax.devices()[0].platform}, XLA_FLAGS={flags!r})"
    blas = numpy_threads(threads)
    if impl.startswith("backprop"):
        import backprop as bp

        # NOTE: with numba (the numba extra), bp.jit compiles the step of a small dense network (table 2)
        numba = f", numba {importlib.metadata.version('numba')}" if bp.extras.available("numba") else ", no numba"
        return f"backprop {bp.__version__} on {blas}{numba}"
    return blas


# ------------------------------------------------------------------------------------- the worker tasks
def samples_for(batch_size: int, samples: int, small_batch_samples: int) -> int:
    """Samples per measured epoch: ``samples``, capped at ``small_batch_samples`` for batch sizes below 32."""
    n = min(samples, N_TRAIN)
    if batch_size < 32:
        n = min(n, small_batch_samples)
    return max(n, batch_size)


def task_epochs(args: argparse.Namespace) -> dict[str, Any]:
    """A warm-up and one timed epoch per batch size, a fresh model each: samples/s and the last loss."""
    lib = library(args.worker, args.threads)
    x, y = make_data(max(samples_for(B, args.samples, args.small_batch_samples) for B in args.batch_sizes))
    kwargs = {"layout": args.numpy_layout} if args.worker == "numpy" else {}
    rates, losses, cpu, wall = {}, {}, 0.0, 0.0
    for B in args.batch_sizes:
        n = samples_for(B, args.samples, args.small_batch_samples)
        trainer = TRAINERS[args.worker](B, x, y, **kwargs)
        trainer.epoch(warmup_samples(n, B))
        cpu0 = cpu_seconds()
        seconds = trainer.epoch(n)
        cpu, wall = cpu + cpu_seconds() - cpu0, wall + seconds
        rates[B], losses[B] = n / seconds, trainer.loss
    return {"lib": lib, "rates": rates, "losses": losses, "cpu_per_wall": cpu / wall}


def step_runner(impl: str, batches: Batches) -> Callable[[], float]:
    """A function that runs one SGD step of the 4-8-3 MLP per pre-made batch and returns the seconds."""
    runners = {"torch": _torch_runner, "jax": _jax_runner, "numpy": _numpy_runner}
    return runners.get(impl, _backprop_runner)(impl, batches)


def _backprop_runner(impl: str, batches: Batches) -> Callable[[], float]:
    import backprop as bp

    model = backprop_mlp(bp, SMALL_SIZES)
    train_step = backprop_train_step(bp, model, bp.optim.SGD(model.parameters(), lr=LR))
    step = bp.jit(train_step) if impl == "backprop-jit" else train_step

    def run() -> float:
        t0 = time.perf_counter()
        for xb, yb in batches:
            step(xb, yb)
        return time.perf_counter() - t0

    return run


def _torch_runner(impl: str, batches: Batches) -> Callable[[], float]:
    import torch

    model = torch_mlp(torch, SMALL_SIZES)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    tbatches = [(torch.from_numpy(xb), torch.from_numpy(yb)) for xb, yb in batches]
    cross_entropy = torch.nn.functional.cross_entropy

    def run() -> float:
        t0 = time.perf_counter()
        for xb, yb in tbatches:
            opt.zero_grad()
            loss = cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    return run


def _jax_runner(impl: str, batches: Batches) -> Callable[[], float]:
    import jax

    step, _ = jax_steps()
    state = {"params": jax.device_put(init_weights(SMALL_SIZES))}
    jbatches = jax.device_put([(xb, yb.astype(np.int32)) for xb, yb in batches])

    def run() -> float:
        params = state["params"]
        t0 = time.perf_counter()
        for xb, yb in jbatches:
            params, _loss = step(params, xb, yb)
        state["params"] = jax.block_until_ready(params)
        return time.perf_counter() - t0

    return run


def _numpy_runner(impl: str, batches: Batches) -> Callable[[], float]:
    net = NumpyMLP(SMALL_SIZES)

    def run() -> float:
        t0 = time.perf_counter()
        for xb, yb in batches:
            net.step(xb, yb, LR)
        return time.perf_counter() - t0

    return run


def task_step(args: argparse.Namespace) -> dict[str, Any]:
    """Microseconds per step of the 4-8-3 MLP at batch 1, after a warm-up run of the same steps."""
    lib = library(args.worker, args.threads)
    x, y = make_data(args.steps, SMALL_SIZES[0], SMALL_SIZES[-1])
    run = step_runner(args.worker, [(x[i : i + 1], y[i : i + 1]) for i in range(args.steps)])
    run()
    return {"lib": lib, "us": run() / args.steps * 1e6}


def task_sanity(args: argparse.Namespace) -> dict[str, Any]:
    """Three SGD steps from the same initial weights; max |w - w_backprop| after them.

    The backprop worker writes the initial weights (out, in) and its weights after the steps to
    ``args.dir`` and compares the hand-written NumPy MLP and ``bp.jit`` there; the torch and jax workers
    read the initial weights from there and compare with backprop's final ones.
    """
    library(args.worker, args.threads)
    x, y = make_data(SANITY_STEPS * SANITY_BATCH)
    batches = [(x[i : i + SANITY_BATCH], y[i : i + SANITY_BATCH]) for i in range(0, len(x), SANITY_BATCH)]
    init_path, final_path = os.path.join(args.dir, "init.npz"), os.path.join(args.dir, "final.npz")
    if args.worker == "backprop-loop":
        init, finals = _sanity_backprop(batches)
        np.savez(init_path, *init)
        np.savez(final_path, *finals["backprop-loop"])
    else:
        with np.load(init_path) as f:
            init = [f[f"arr_{i}"] for i in range(len(f.files))]
        finals = {args.worker: _sanity_peer(args.worker, init, batches)}
    with np.load(final_path) as f:
        ref = [f[f"arr_{i}"] for i in range(len(f.files))]
    diffs = {k: max(float(np.abs(a - b).max()) for a, b in zip(ws, ref)) for k, ws in finals.items()}
    return {"diffs": {k: v for k, v in diffs.items() if k != "backprop-loop"}}


def _sanity_backprop(batches: Batches) -> tuple[list[np.ndarray], dict[str, list]]:
    """backprop's initial parameters [W0, b0, W1, ...] (W as (out, in)), and the finals of every variant."""
    import backprop as bp

    def params(model: Any) -> list[np.ndarray]:
        return [p.data.copy() for p in model.parameters()]

    model = backprop_mlp(bp, SIZES)
    init = params(model)
    finals: dict[str, list[np.ndarray]] = {}
    for name in ("backprop-loop", "backprop-jit") if hasattr(bp, "jit") else ("backprop-loop",):
        model = backprop_mlp(bp, SIZES)
        step = backprop_train_step(bp, model, bp.optim.SGD(model.parameters(), lr=LR))
        step = bp.jit(step) if name == "backprop-jit" else step
        for xb, yb in batches:
            step(xb, yb)
        finals[name] = params(model)
    finals["numpy"] = _sanity_peer("numpy", init, batches)
    return init, finals


def _sanity_peer(impl: str, init: list[np.ndarray], batches: Batches) -> list:
    """Parameters [W0, b0, ...] (W as (out, in)) of ``impl`` after SGD steps on ``batches`` from ``init``."""
    ws, bs = init[0::2], init[1::2]
    if impl == "numpy":
        net = NumpyMLP(SIZES)
        net.set_weights_out_in(ws, bs)
        for xb, yb in batches:
            net.step(xb, yb, LR)
        return [a for w, b in zip(net.weights_out_in(), net.b) for a in (w, b)]
    if impl == "jax":
        import jax

        step, _ = jax_steps()
        params = jax.device_put([(w.T.copy(), b) for w, b in zip(ws, bs)])
        for xb, yb in batches:
            params, _loss = step(params, xb, yb.astype(np.int32))
        return [a for w, b in params for a in (np.asarray(w).T, np.asarray(b))]
    import torch

    model = torch_mlp(torch, SIZES)
    with torch.no_grad():
        for p, v in zip(model.parameters(), init):
            p.copy_(torch.from_numpy(v))
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for xb, yb in batches:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.from_numpy(xb)), torch.from_numpy(yb)).backward()
        opt.step()
    return [p.detach().numpy().copy() for p in model.parameters()]


def task_profile(args: argparse.Namespace, top: int = 25) -> None:
    """cProfile of one epoch of the idiomatic backprop loop; prints the top functions by tottime."""
    lib = library("backprop-loop", args.threads)
    x, y = make_data()
    B, n = args.profile_batch_size, min(args.samples, N_TRAIN)
    trainer = BackpropLoop(B, x, y)
    trainer.epoch(warmup_samples(n, B))
    plain = trainer.epoch(n)
    prof = cProfile.Profile()
    prof.enable()
    profiled = trainer.epoch(n)
    prof.disable()
    steps = math.ceil(n / B)
    print(f"{lib}, {args.threads} thread(s), cores {sorted(os.sched_getaffinity(0))}")
    print(
        f"cProfile of one backprop epoch (idiomatic loop), batch {B}, {n} samples = {steps} steps: "
        f"{plain / steps * 1e6:.1f} us/step unprofiled, {profiled / steps * 1e6:.1f} us/step under cProfile"
    )
    stats = pstats.Stats(prof)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # by tottime
    table = [
        (
            _short(path, lineno, func),
            f"{nc}",
            f"{nc / steps:.1f}",
            f"{tt:.3f}",
            f"{tt / steps * 1e6:.1f}",
            f"{ct:.3f}",
        )
        for (path, lineno, func), (_cc, nc, tt, ct, _callers) in rows
    ]
    print_table(
        f"top {top} functions by tottime",
        ("function", "ncalls", "calls/step", "tottime s", "us/step", "cumtime s"),
        table,
    )


def _short(path: str, lineno: int, func: str) -> str:
    if path == "~":
        return func  # a builtin, e.g. <method 'reduce' of 'numpy.ufunc' objects>
    for marker in ("/src/", "/site-packages/", "/lib/python"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{lineno}({func})"


def task_probe() -> dict[str, Any]:
    """What this machine can measure: bp.jit, fit(jit=...), PyTorch, JAX (found, not imported)."""
    import backprop as bp

    return {
        "jit": hasattr(bp, "jit"),
        "fit_jit": "jit" in inspect.signature(bp.fit).parameters,
        "torch": importlib.util.find_spec("torch") is not None,
        "jax": importlib.util.find_spec("jax") is not None,
    }


def run_worker(args: argparse.Namespace) -> None:
    """In a worker process: run ``args.task`` and print its JSON line (the profile prints a table)."""
    if args.task == "profile":
        task_profile(args)
        return
    run_task(args, {
        "probe": task_probe,
        "epochs": lambda: task_epochs(args),
        "step": lambda: task_step(args),
        "sanity": lambda: task_sanity(args),
    })


# ------------------------------------------------------------------------------------ the orchestrator
def available_impls(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The implementations to measure, and why each other one asked for is left out."""
    return available(SCRIPT, args.pin_core, args.impls, lambda probe: {
        "backprop-jit": None if probe["jit"] else "n/a (bp.jit not available)",
        "backprop-fit-eager": None if probe["fit_jit"] else "n/a (bp.fit has no jit= keyword)",
        "torch": None if probe["torch"] else "skipped (torch not importable)",
        "jax": None if probe["jax"] else "skipped (jax not importable: pip install 'jax[cpu]')",
    })


def run_sanity(args: argparse.Namespace, names: Sequence[str]) -> str:
    """The sanity line: each implementation's weights after 3 steps against backprop's, each in a process."""
    with tempfile.TemporaryDirectory() as tmp:
        base = ["--task", "sanity", "--dir", tmp]
        diffs: dict[str, float] = {}
        for impl in ["backprop-loop", *[k for k in PEERS if k in names]]:
            res = launch(SCRIPT, ["--worker", impl, *base], 1, args.pin_core)
            if "error" in res:
                return f"sanity: {impl} failed: {res['error']}"
            diffs.update(res["diffs"])
    return (
        f"sanity: same initial weights, {SANITY_STEPS} SGD steps at batch {SANITY_BATCH}, each library in "
        "its own process, max |w - w_backprop| = " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
    )


def epoch_jobs(args: argparse.Namespace, names: Sequence[str]) -> list[Job]:
    """Table 1's workers: every implementation at every thread count."""
    options = {
        "--batch-sizes": ",".join(map(str, args.batch_sizes)),
        "--samples": args.samples,
        "--small-batch-samples": args.small_batch_samples,
        "--numpy-layout": args.numpy_layout,
    }
    argv = ("--task", "epochs", *[str(v) for item in options.items() for v in item])
    return [Job(impl, t, ("--worker", impl, *argv)) for impl in names for t in args.threads]


def _rate(v: Spread | None) -> str:
    return "-" if v is None else v.fmt(1e3, "k")


def report_table1(
    args: argparse.Namespace, names: Sequence[str], missing: dict[str, str], results: dict[Key, list[dict]]
) -> dict[int, dict[Key, Spread]]:
    """Table 1 and the best thread count per library; returns the spreads by batch size."""
    Bs = args.batch_sizes
    stats = {B: spreads(results, lambda r, B=B: r["rates"].get(str(B))) for B in Bs}
    cpu = spreads(results, lambda r: r["cpu_per_wall"])
    cols = [f"B={B}" for B in Bs]
    rows = [
        [
            impl,
            f"{t}",
            *[_rate(stats[B].get((impl, t))) for B in Bs],
            f"{cpu[(impl, t)].median:.2f}" if (impl, t) in cpu else "-",
        ]
        for impl in names
        for t in args.threads
    ]
    rows += [[impl, "", why, *[""] * len(Bs)] for impl, why in missing.items()]
    rows.append(
        [
            "samples per epoch",
            "",
            *[f"{samples_for(B, args.samples, args.small_batch_samples)}" for B in Bs],
            "",
        ]
    )
    print_table("", ["samples/s (median ±half-range)", "threads", *cols, "cpu/wall"], rows)
    print("cpu/wall: CPU seconds per second of the timed epochs, all threads: the cores really used")
    best_rows = []
    for impl in names:
        cells = []
        for B in Bs:
            k = best_threads(stats[B], impl)
            cells.append("-" if k is None else f"{stats[B][k].median / 1e3:,.1f}k ({k[1]}T)")
        best_rows.append([impl, *cells])
    print_table("\neach library at its best thread count (median samples/s):", ["library", *cols], best_rows)
    return stats


def best_of(stats: dict[Key, Spread], impls: Sequence[str]) -> Key | None:
    """The fastest (impl, threads) among ``impls``, each at its own best thread count."""
    keys = [k for k in stats if k[0] in impls]
    return max(keys, key=lambda k: stats[k].median) if keys else None


def report_ratios(
    args: argparse.Namespace, names: Sequence[str], stats: dict[int, dict[Key, Spread]]
) -> dict[str, dict[int, float]]:
    """The ratio table, every library at its best thread count; returns each backprop variant / best peer."""
    Bs = args.batch_sizes
    peers = {B: best_of(stats[B], [k for k in PEERS if k in names]) for B in Bs}
    numpy = {B: best_threads(stats[B], "numpy") for B in Bs}

    def ratio(B: int, mine: Key | None, other: Key | None) -> float | None:
        return stats[B][mine].median / stats[B][other].median if mine and other else None

    def cells(values: Sequence[float | None]) -> list[str]:
        return ["-" if v is None else f"{v:.2f}x" for v in values]

    rows = [["best peer (PyTorch, JAX)", *[f"{p[0]} {p[1]}T" if p else "-" for p in peers.values()]]]
    to_peer: dict[str, dict[int, float]] = {}
    for impl in [k for k in BACKPROP if k in names]:
        mine = {B: best_threads(stats[B], impl) for B in Bs}
        vs_peer = [ratio(B, mine[B], peers[B]) for B in Bs]
        rows.append([f"{impl} / best peer", *cells(vs_peer)])
        rows.append([f"{impl} / numpy", *cells([ratio(B, mine[B], numpy[B]) for B in Bs])])
        to_peer[impl] = {B: v for B, v in zip(Bs, vs_peer) if v is not None}
    title = "\nratios of medians, every library at its own best thread count:"
    print_table(title, ["ratio", *[f"B={B}" for B in Bs]], rows)
    return to_peer


def report_targets(
    names: Sequence[str], missing: dict[str, str], to_peer: dict[str, dict[int, float]]
) -> None:
    """The PASS/FAIL lines of backprop-fit and backprop-jit against the best peer."""
    print("\ntargets (against the best peer at its best thread count):")
    for impl, note in (("backprop-fit", ""), ("backprop-jit", " (informative)")):
        for bs, need in PEER_TARGETS:
            what = f"{impl} >= {need:.2f}x best peer at batch {', '.join(map(str, bs))}{note}"
            got = {B: to_peer[impl][B] for B in bs if B in to_peer.get(impl, {})}
            if not got:
                why = "no peer measured" if impl in names else missing.get(impl, "not measured")
                print(f"  SKIP  {what}: {why}")
                continue
            ok = all(v >= need for v in got.values())
            print(f"  {verdict(ok)}  {what}: " + ", ".join(f"B={B} {v:.2f}x" for B, v in got.items()))


def report_table2(args: argparse.Namespace, names: Sequence[str]) -> None:
    impls = [k for k in STEP_IMPLS if k in names]
    jobs = [Job(impl, 1, ("--worker", impl, "--task", "step", "--steps", str(args.steps))) for impl in impls]
    print(
        f"\nTable 2: microseconds per training step, {'-'.join(map(str, SMALL_SIZES))} MLP, batch 1, "
        f"{args.steps} pre-made batches after as many warm-up steps; each implementation in its own process, "
        f"1 thread pinned to core {args.pin_core}; median ±half-range of {args.rounds} rounds",
        flush=True,
    )
    results = run_rounds(SCRIPT, jobs, args.rounds, args.pin_core, "table 2")
    for line in errors(results):
        print(f"  ERROR {line}")
    us = spreads(results, lambda r: r["us"])
    print_table(
        "", ["us/step", *impls], [["", *[us[(k, 1)].fmt(digits=1) if (k, 1) in us else "-" for k in impls]]]
    )
    key = ("backprop-jit", 1) if ("backprop-jit", 1) in us else ("backprop-loop", 1)
    got = us.get(key)
    ok = None if got is None else got.median <= STEP_TARGET_US
    print(
        f"  {verdict(ok)}  {key[0]} 4-8-3 step at batch 1 <= {STEP_TARGET_US:.0f} us: "
        + ("not measured" if got is None else f"{got.median:.1f} us")
    )


def orchestrate(args: argparse.Namespace) -> int:
    """The parent: launch every worker, print the tables and the verdicts."""
    t_start, load0 = time.perf_counter(), loadavg()
    print("MLP training benchmark: backprop vs PyTorch, JAX, hand-written NumPy (CPU), a process each")
    for line in env_lines():
        print(line)
    if args.profile:
        argv = ["--worker", "backprop-loop", "--task", "profile", "--samples", str(args.samples)]
        argv += ["--profile-batch-size", str(args.profile_batch_size)]
        launch(SCRIPT, argv, max(args.threads), args.pin_core, capture=False)
        return 0
    names, missing = available_impls(args)
    for impl, why in missing.items():
        print(f"  {impl}: {why}")
    print(run_sanity(args, names), flush=True)

    print(
        f"\nTable 1: training throughput, {'-'.join(map(str, SIZES))} MLP, SGD lr {LR}, float32, reshuffled "
        "every epoch; per process a warm-up then one timed epoch per batch size; median ±half-range of "
        f"{args.rounds} rounds (processes in rotated order)",
        flush=True,
    )
    results = run_rounds(SCRIPT, epoch_jobs(args, names), args.rounds, args.pin_core, "table 1")
    print("libraries (as the workers reported them):")
    for line in library_lines(results):
        print(line)
    for line in errors(results):
        print(f"  ERROR {line}")
    stats = report_table1(args, names, missing, results)
    report_targets(names, missing, report_ratios(args, names, stats))
    if not args.no_steps:
        report_table2(args, names)
    print(
        f"\ntotal benchmark time {time.perf_counter() - t_start:.0f}s, load average at the end {loadavg()} "
        f"(at the start {load0}); on a shared machine the spread says how far to trust a ratio near a target"
    )
    return 0


# ------------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--threads", default="1,2", help="thread counts, each in its own processes (default: %(default)s)"
    )
    p.add_argument("--rounds", type=int, default=None, help="rounds of processes (default 3, 2 with --quick)")
    p.add_argument("--batch-sizes", default="10,32,128,512", help="comma-separated (default: %(default)s)")
    p.add_argument("--impls", default=",".join(IMPLS), help="implementations to measure (default: all)")
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        help="samples per measured epoch (default 20000, 6000 with --quick); rates are per sample",
    )
    p.add_argument(
        "--small-batch-samples",
        type=int,
        default=None,
        help="cap on samples per epoch for batch sizes below 32 (default 6000, 2000 with --quick)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="batch-1 steps per process in table 2 (default 5000, 2000 with --quick)",
    )
    p.add_argument("--no-steps", action="store_true", help="skip table 2")
    p.add_argument("--pin-core", type=int, default=0, help="the core of the 1-thread processes (default 0)")
    p.add_argument(
        "--numpy-layout",
        choices=("in_out", "out_in"),
        default="in_out",
        help="weight layout of the hand-written NumPy MLP: (in, out), the natural hand-written "
        "choice, or (out, in) like PyTorch and backprop (default: %(default)s)",
    )
    p.add_argument("--quick", action="store_true", help="fewer samples, steps and rounds (~1.5 minutes)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="only cProfile one backprop epoch (idiomatic loop, --samples samples, batch "
        "--profile-batch-size, the largest --threads) and print the top 25 functions by tottime",
    )
    p.add_argument("--profile-batch-size", type=int, default=32, help="batch size for --profile (default 32)")
    p.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    p.add_argument("--task", choices=("probe", "epochs", "step", "sanity", "profile"), help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = args.quick
    args.samples = args.samples or (6000 if quick else 20000)
    args.small_batch_samples = args.small_batch_samples or (2000 if quick else 6000)
    args.rounds = args.rounds or (2 if quick else 3)
    args.steps = args.steps or (2000 if quick else 5000)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
        args.threads = parse_threads(args.threads)
    except ValueError as e:
        p.error(str(e))
    args.impls = [k.strip() for k in args.impls.split(",") if k.strip()]
    if unknown := set(args.impls) - set(IMPLS):
        p.error(f"unknown --impls {sorted(unknown)}; choose from {', '.join(IMPLS)}")
    if args.worker:
        args.threads = args.threads[0]
    if not args.batch_sizes or min(args.batch_sizes) < 1 or min(args.samples, args.rounds, args.steps) < 1:
        p.error("batch sizes, --samples, --rounds and --steps must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
