"""Training throughput of an MLP: backprop vs PyTorch (CPU) vs a hand-written NumPy MLP.

Run from the repository root::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/mlp_train.py          # the fair comparison
    python benchmarks/mlp_train.py --quick                                              # ~15-30 s
    python benchmarks/mlp_train.py --profile                                            # where backprop's time goes

Table 1: samples/second of one training epoch on MNIST-shaped synthetic data (60000 x 784 float32 in
[0, 1], 10 classes, fixed seed), network 784-256-256-10 (ReLU, softmax cross-entropy, plain SGD lr 0.1,
float32, reshuffled every epoch) at several batch sizes, for

* backprop, the idiomatic loop (``DataLoader``, ``model(bp.Tensor(xb))``, ``cross_entropy``, ``zero_grad`` /
  ``backward`` / ``step``), and ``bp.fit(..., epochs=1)`` (which adds fit's own per-step bookkeeping);
* PyTorch CPU, the idiomatic loop (preloaded tensors, ``torch.randperm``, ``F.cross_entropy``);
* a minimal hand-written NumPy MLP (the same maths written out with numpy matmuls).

Table 2: microseconds per training step of a 4-8-3 MLP at batch 1 (pre-made batches, so only the step
is timed: zero_grad, forward, loss, backward, step), i.e. the framework's fixed per-step overhead.

All implementations run with the same thread count (``--threads``, default all cores): the NumPy BLAS
through ``threadpoolctl.threadpool_limits``, PyTorch through ``torch.set_num_threads``. Each configuration
is warmed up, then timed ``--repeats`` times with the implementations interleaved inside every repeat
(their order rotated from repeat to repeat) and the best repeat is kept, so a noisy moment on a shared
machine does not hit only one of them. Importing this module runs nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import math
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared helpers beside this script
from _common import (
    _loadavg,
    _torch,
    backprop_epoch,
    environment_lines,
    print_table,
    thread_limits,
    torch_epoch,
    verdict,
)

N_TRAIN, N_FEATURES, N_CLASSES = 60000, 784, 10
SIZES = (N_FEATURES, 256, 256, N_CLASSES)
SMALL_SIZES = (4, 8, 3)
LR = 0.1
DATA_SEED = 0
INIT_SEED = 0
FAIR_COMMAND = "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/mlp_train.py"

# Targets: backprop (idiomatic loop) vs PyTorch at a batch size, and vs the hand-written NumPy MLP.
TORCH_TARGETS = ((10, 1.4), (32, 1.0), (128, 1.0), (512, 0.9))
NUMPY_TARGET = 0.85
STEP_TARGET_US = 60.0


# ------------------------------------------------------------------------------------------------ data
def make_data(n: int = N_TRAIN, n_features: int = N_FEATURES, n_classes: int = N_CLASSES,
              seed: int = DATA_SEED) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-shaped synthetic data: x float32 in [0, 1), y int64 class labels."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, n_features), dtype=np.float32)
    y = rng.integers(0, n_classes, size=n, dtype=np.int64)
    return x, y


# -------------------------------------------------------------------------------------- implementations
def backprop_mlp(sizes: Sequence[int], seed: int = INIT_SEED):
    import backprop as bp

    bp.manual_seed(seed)
    layers: list[Any] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        if i:
            layers.append(bp.nn.ReLU())
        layers.append(bp.nn.Linear(fan_in, fan_out))
    return bp.nn.Sequential(*layers)


def torch_mlp(sizes: Sequence[int], seed: int = INIT_SEED):
    torch = _torch()
    torch.manual_seed(seed)
    layers: list[Any] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        if i:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(fan_in, fan_out))
    return torch.nn.Sequential(*layers)


class NumpyMLP:
    """A minimal hand-written MLP: ReLU hidden layers, softmax cross-entropy, plain SGD, float32.

    Initialised like PyTorch's Linear, W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)). ``layout="in_out"`` (the
    natural hand-written choice) stores W as (in, out), so the forward pass is ``h @ W + b``;
    ``layout="out_in"`` stores it as (out, in) like PyTorch and backprop, so it is ``h @ W.T + b``. The two
    differ only in which BLAS transposition each matmul uses, which matters at small batch sizes.
    """

    def __init__(self, sizes: Sequence[int], seed: int = INIT_SEED, dtype: Any = np.float32,
                 layout: str = "in_out") -> None:
        if layout not in ("in_out", "out_in"):
            raise ValueError(f"layout must be 'in_out' or 'out_in', got {layout!r}")
        self.out_in = layout == "out_in"
        rng = np.random.default_rng(seed)
        self.W: list[np.ndarray] = []
        self.b: list[np.ndarray] = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            bound = 1.0 / math.sqrt(fan_in)
            w = rng.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype)
            self.W.append(np.ascontiguousarray(w.T) if self.out_in else w)
            self.b.append(rng.uniform(-bound, bound, fan_out).astype(dtype))

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


class Impl:
    """One implementation at one batch size: ``epoch(n)`` trains on the first n samples, returns seconds."""

    name = "?"

    def __init__(self, batch_size: int, x: np.ndarray, y: np.ndarray) -> None:
        self.batch_size, self.x, self.y = batch_size, x, y
        self.loss = float("nan")

    def epoch(self, n: int) -> float:
        raise NotImplementedError


class BackpropLoop(Impl):
    name = "backprop (loop)"

    def __init__(self, batch_size: int, x: np.ndarray, y: np.ndarray) -> None:
        super().__init__(batch_size, x, y)
        import backprop as bp

        self.bp = bp
        self.model = backprop_mlp(SIZES)
        self.opt = bp.optim.SGD(self.model.parameters(), lr=LR)

    def epoch(self, n: int) -> float:
        seconds, self.loss = backprop_epoch(self.bp, self.model, self.opt, self.x[:n], self.y[:n], self.batch_size)
        return seconds


class BackpropFit(Impl):
    name = "backprop (fit)"

    def __init__(self, batch_size: int, x: np.ndarray, y: np.ndarray) -> None:
        super().__init__(batch_size, x, y)
        import backprop as bp

        self.bp = bp
        self.model = backprop_mlp(SIZES)

    def epoch(self, n: int) -> float:
        t0 = time.perf_counter()
        history = self.bp.fit(self.model, self.x[:n], self.y[:n], lr=LR, batch_size=self.batch_size, epochs=1,
                              verbose=0, metrics=())
        seconds = time.perf_counter() - t0
        self.loss = float(history.history["loss"][-1])
        return seconds


class TorchLoop(Impl):
    name = "PyTorch"

    def __init__(self, batch_size: int, x: np.ndarray, y: np.ndarray) -> None:
        super().__init__(batch_size, x, y)
        torch = self.torch = _torch()
        self.X, self.Y = torch.from_numpy(x), torch.from_numpy(y)
        self.model = torch_mlp(SIZES)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR)

    def epoch(self, n: int) -> float:
        seconds, self.loss = torch_epoch(self.torch, self.model, self.opt, self.X[:n], self.Y[:n], self.batch_size)
        return seconds


class NumpyLoop(Impl):
    name = "NumPy (by hand)"

    def __init__(self, batch_size: int, x: np.ndarray, y: np.ndarray, layout: str = "in_out") -> None:
        super().__init__(batch_size, x, y)
        self.net = NumpyMLP(SIZES, layout=layout)
        self.rng = np.random.default_rng(0)

    def epoch(self, n: int) -> float:
        net, B, x, y = self.net, self.batch_size, self.x, self.y
        t0 = time.perf_counter()
        order = self.rng.permutation(n)
        for start in range(0, n, B):
            idx = order[start:start + B]
            loss = net.step(x[idx], y[idx], LR)
        seconds = time.perf_counter() - t0
        self.loss = float(loss)
        return seconds


IMPLS: dict[str, type[Impl]] = {"loop": BackpropLoop, "fit": BackpropFit, "torch": TorchLoop, "numpy": NumpyLoop}


# ------------------------------------------------------------------------------------ table 2: one step
def step_timers(n_steps: int, seed: int = DATA_SEED, numpy_layout: str = "in_out") -> dict[str, Callable[[], float]]:
    """For each implementation a function that runs ``n_steps`` batch-1 steps of a 4-8-3 MLP, returns seconds."""
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((n_steps, 1, SMALL_SIZES[0])).astype(np.float32)
    ys = rng.integers(0, SMALL_SIZES[-1], size=(n_steps, 1), dtype=np.int64)
    batches = list(zip(list(xs), list(ys)))  # pre-made (1, 4) / (1,) batches
    timers: dict[str, Callable[[], float]] = {}

    import backprop as bp

    model = backprop_mlp(SMALL_SIZES)
    opt = bp.optim.SGD(model.parameters(), lr=LR)

    def run_backprop() -> float:
        cross_entropy = bp.nn.functional.cross_entropy
        t0 = time.perf_counter()
        for xb, yb in batches:
            opt.zero_grad()
            loss = cross_entropy(model(bp.Tensor(xb)), yb)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    timers["loop"] = run_backprop

    torch = _torch()
    if torch is not None:
        tmodel = torch_mlp(SMALL_SIZES)
        topt = torch.optim.SGD(tmodel.parameters(), lr=LR)
        tbatches = [(torch.from_numpy(xb), torch.from_numpy(yb)) for xb, yb in batches]

        def run_torch() -> float:
            F = torch.nn.functional
            t0 = time.perf_counter()
            for xb, yb in tbatches:
                topt.zero_grad()
                loss = F.cross_entropy(tmodel(xb), yb)
                loss.backward()
                topt.step()
            return time.perf_counter() - t0

        timers["torch"] = run_torch

    net = NumpyMLP(SMALL_SIZES, layout=numpy_layout)

    def run_numpy() -> float:
        t0 = time.perf_counter()
        for xb, yb in batches:
            net.step(xb, yb, LR)
        return time.perf_counter() - t0

    timers["numpy"] = run_numpy
    return timers


# ------------------------------------------------------------------------------------------ consistency
def consistency_check(x: np.ndarray, y: np.ndarray, steps: int = 3, batch_size: int = 32,
                      numpy_layout: str = "in_out") -> dict[str, float]:
    """Same initial weights, same batches: max |w_backprop - w_other| after a few SGD steps (sanity check)."""
    import backprop as bp

    model = backprop_mlp(SIZES)
    linears = [m for m in model.modules() if isinstance(m, bp.nn.Linear)]
    net = NumpyMLP(SIZES, layout=numpy_layout)
    net.set_weights_out_in([lin.weight.data for lin in linears], [lin.bias.data for lin in linears])
    torch = _torch()
    tmodel = None
    if torch is not None:
        tmodel = torch_mlp(SIZES)
        tlin = [m for m in tmodel.modules() if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            for t, lin in zip(tlin, linears):
                t.weight.copy_(torch.from_numpy(lin.weight.data))
                t.bias.copy_(torch.from_numpy(lin.bias.data))
        topt = torch.optim.SGD(tmodel.parameters(), lr=LR)
    opt = bp.optim.SGD(model.parameters(), lr=LR)
    for s in range(steps):
        xb, yb = x[s * batch_size:(s + 1) * batch_size], y[s * batch_size:(s + 1) * batch_size]
        opt.zero_grad()
        bp.nn.functional.cross_entropy(model(bp.Tensor(xb)), yb).backward()
        opt.step()
        net.step(xb, yb, LR)
        if tmodel is not None:
            topt.zero_grad()
            torch.nn.functional.cross_entropy(tmodel(torch.from_numpy(xb)), torch.from_numpy(yb)).backward()
            topt.step()
    out = {"numpy": max(float(np.abs(lin.weight.data - w).max()) for lin, w in zip(linears, net.weights_out_in()))}
    if tmodel is not None:
        out["torch"] = max(float(np.abs(lin.weight.data - t.weight.detach().numpy()).max())
                           for lin, t in zip(linears, tlin))
    return out


# ---------------------------------------------------------------------------------------------- output
def _fmt_rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


# ------------------------------------------------------------------------------------------------- runs
def samples_for(batch_size: int, samples: int, small_batch_samples: int) -> int:
    """Samples per measured epoch: ``samples``, capped at ``small_batch_samples`` for batch sizes below 32."""
    n = min(samples, N_TRAIN)
    if batch_size < 32:
        n = min(n, small_batch_samples)
    return max(n, batch_size)


def run_table1(x: np.ndarray, y: np.ndarray, batch_sizes: Sequence[int], samples: int, small_batch_samples: int,
               repeats: int, names: Sequence[str], numpy_layout: str = "in_out") -> tuple[dict, dict, dict]:
    """Times every (implementation, batch size); returns best and median samples/s and the final losses."""
    impls: dict[tuple[str, int], Impl] = {}
    for B in batch_sizes:
        for name in names:
            kwargs = {"layout": numpy_layout} if name == "numpy" else {}
            impl = impls[(name, B)] = IMPLS[name](B, x, y, **kwargs)
            impl.epoch(min(N_TRAIN, max(min(200 * B, 10000), 20 * B)))  # warm-up: a few hundred steps (<=10000 samples)
    rates: dict[tuple[str, int], list[float]] = {k: [] for k in impls}
    for r in range(repeats):
        t0 = time.perf_counter()
        for B in batch_sizes:
            n = samples_for(B, samples, small_batch_samples)
            order = list(names[r % len(names):]) + list(names[:r % len(names)])  # rotate the order each repeat
            for name in order:
                rates[(name, B)].append(n / impls[(name, B)].epoch(n))
        sys.stdout.flush()
        print(f"  repeat {r + 1}/{repeats} done in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    best = {k: max(v) for k, v in rates.items()}
    median = {k: statistics.median(v) for k, v in rates.items()}
    losses = {k: impl.loss for k, impl in impls.items()}
    return best, median, losses


def run_table2(n_steps: int, repeats: int, numpy_layout: str = "in_out") -> dict[str, float]:
    timers = step_timers(n_steps, numpy_layout=numpy_layout)
    for run in timers.values():  # warm-up
        run()
    seconds: dict[str, list[float]] = {k: [] for k in timers}
    names = list(timers)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds[name].append(timers[name]())
    return {k: min(v) / n_steps * 1e6 for k, v in seconds.items()}


def run_profile(x: np.ndarray, y: np.ndarray, samples: int, batch_size: int = 32, top: int = 25) -> None:
    impl = BackpropLoop(batch_size, x, y)
    impl.epoch(min(N_TRAIN, 200 * batch_size))  # warm-up
    n = min(samples, N_TRAIN)
    plain = impl.epoch(n)
    prof = cProfile.Profile()
    prof.enable()
    profiled = impl.epoch(n)
    prof.disable()
    steps = math.ceil(n / batch_size)
    print(f"\ncProfile of one backprop epoch (idiomatic loop), batch {batch_size}, {n} samples = {steps} steps: "
          f"{plain / steps * 1e6:.1f} us/step unprofiled, {profiled / steps * 1e6:.1f} us/step under cProfile")
    stats = pstats.Stats(prof)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # by tottime
    header = ("function", "ncalls", "calls/step", "tottime s", "us/step", "cumtime s")
    table = []
    for (path, lineno, func), (_cc, nc, tt, ct, _callers) in rows:
        table.append((_short(path, lineno, func), f"{nc}", f"{nc / steps:.1f}", f"{tt:.3f}",
                      f"{tt / steps * 1e6:.1f}", f"{ct:.3f}"))
    print_table(f"top {top} functions by tottime", header, table)


def _short(path: str, lineno: int, func: str) -> str:
    if path == "~":
        return func  # a builtin, e.g. <method 'reduce' of 'numpy.ufunc' objects>
    for marker in ("/src/", "/site-packages/", "/lib/python"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{lineno}({func})"


# ------------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"Fair comparison: {FAIR_COMMAND}")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads for the NumPy BLAS and for PyTorch (default: all cores, %(default)s)")
    p.add_argument("--batch-sizes", default="10,32,128,512", help="comma-separated (default: %(default)s)")
    p.add_argument("--samples", type=int, default=None,
                   help="samples per measured epoch (default 60000, 12000 with --quick); rates are per sample")
    p.add_argument("--small-batch-samples", type=int, default=None,
                   help="cap on samples per epoch for batch sizes below 32 (default 20000, 6000 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats, best kept (default 3, 2 with --quick)")
    p.add_argument("--steps", type=int, default=None,
                   help="batch-1 steps per repeat in table 2 (default 20000, 5000 with --quick)")
    p.add_argument("--numpy-layout", choices=("in_out", "out_in"), default="in_out",
                   help="weight layout of the hand-written NumPy MLP: (in, out), the natural hand-written "
                        "choice, or (out, in) like PyTorch and backprop (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="fewer samples, steps and repeats (~15-30 s)")
    p.add_argument("--profile", action="store_true",
                   help="only cProfile one backprop epoch (idiomatic loop, --samples samples, batch "
                        "--profile-batch-size) and print the top 25 functions by tottime")
    p.add_argument("--profile-batch-size", type=int, default=32, help="batch size for --profile (default 32)")
    args = p.parse_args(argv)
    quick = args.quick
    args.samples = args.samples or (12000 if quick else N_TRAIN)
    args.small_batch_samples = args.small_batch_samples or (6000 if quick else 20000)
    args.repeats = args.repeats or (2 if quick else 3)
    args.steps = args.steps or (5000 if quick else 20000)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
    if not args.batch_sizes or min(args.batch_sizes) < 1 or args.threads < 1 or args.samples < 1 or args.repeats < 1:
        p.error("batch sizes, --threads, --samples and --repeats must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with thread_limits(args.threads) as torch:
        return _main(args, torch)


def _main(args: argparse.Namespace, torch: Any) -> int:
    t_start = time.perf_counter()
    load0 = _loadavg()
    print("MLP training benchmark: backprop vs PyTorch (CPU) vs hand-written NumPy")
    for line in environment_lines(args.threads, FAIR_COMMAND):
        print(line)
    x, y = make_data()

    if args.profile:
        run_profile(x, y, args.samples, args.profile_batch_size)
        return 0

    names = ["loop", "fit", "torch", "numpy"] if torch is not None else ["loop", "fit", "numpy"]
    diffs = consistency_check(x, y, numpy_layout=args.numpy_layout)
    print("sanity: same init, 3 SGD steps at batch 32, max |w_backprop - w_other| = "
          + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))

    B_list = args.batch_sizes
    n_list = [samples_for(B, args.samples, args.small_batch_samples) for B in B_list]
    print(f"\nTable 1: training throughput, 784-256-256-10 MLP, SGD lr {LR}, float32, shuffled every epoch; "
          f"best of {args.repeats} repeats (implementations interleaved, order rotated each repeat), "
          "after a warm-up of a few hundred steps", flush=True)
    best, median, losses = run_table1(x, y, B_list, args.samples, args.small_batch_samples, args.repeats, names,
                                      args.numpy_layout)
    labels = {k: IMPLS[k].name for k in names}
    labels["numpy"] += "" if args.numpy_layout == "in_out" else " W(out,in)"
    header = ["samples/s (best)", *[f"B={B}" for B in B_list]]
    rows = [["samples per epoch", *[f"{n}" for n in n_list]]]
    rows += [[labels[k], *[_fmt_rate(best[(k, B)]) for B in B_list]] for k in names]
    print_table("", header, rows)
    rows = [[labels[k], *[_fmt_rate(median[(k, B)]) for B in B_list]] for k in names]
    print_table("\nmedian of the repeats (for the noise):", ["samples/s (median)", *[f"B={B}" for B in B_list]],
                rows)
    noisy = [f"{labels[k]} B={B}" for k in names for B in B_list if median[(k, B)] < 0.85 * best[(k, B)]]
    if noisy:
        print(f"NOTE noisy: median more than 15% below best for {', '.join(noisy)}; "
              "if the verdicts are close, rerun with more --repeats on a quieter machine")
    print("final-batch loss per implementation (all should be ~2.3 on random labels): "
          + "; ".join(f"{labels[k]} " + " ".join(f"{losses[(k, B)]:.2f}" for B in B_list) for k in names))

    ratio_rows = []
    for k, label in (("torch", "backprop / PyTorch"), ("numpy", "backprop / NumPy")):
        if k in names:
            ratio_rows.append([label, *[f"{best[('loop', B)] / best[(k, B)]:.2f}x" for B in B_list]])
            ratio_rows.append([f"  (fit) {label}", *[f"{best[('fit', B)] / best[(k, B)]:.2f}x" for B in B_list]])
    print_table("\nratios (best rates; targets use the idiomatic loop, not fit):",
                ["ratio", *[f"B={B}" for B in B_list]], ratio_rows)

    print("\ntargets (backprop idiomatic loop, best rates):")
    by_ratio: dict[float, list[int]] = {}
    for B, need in TORCH_TARGETS:
        by_ratio.setdefault(need, []).append(B)
    for need, bs in sorted(by_ratio.items(), key=lambda kv: -kv[0]):
        measured = [B for B in bs if B in B_list]
        if torch is None or not measured:
            print(f"  SKIP  backprop >= {need:.2f}x PyTorch at batch {', '.join(map(str, bs))} (not measured)")
            continue
        got = {B: best[("loop", B)] / best[("torch", B)] for B in measured}
        ok = all(v >= need for v in got.values())
        missing = [B for B in bs if B not in B_list]
        print(f"  {verdict(ok)}  backprop >= {need:.2f}x PyTorch at batch {', '.join(map(str, bs))}: "
              + ", ".join(f"B={B} {v:.2f}x" for B, v in got.items())
              + (f" (batch {', '.join(map(str, missing))} not measured)" if missing else ""))
    got = {B: best[("loop", B)] / best[("numpy", B)] for B in B_list}
    print(f"  {verdict(all(v >= NUMPY_TARGET for v in got.values()))}  backprop >= {NUMPY_TARGET:.2f}x "
          "hand-written NumPy at every batch size: " + ", ".join(f"B={B} {v:.2f}x" for B, v in got.items()))

    print(f"\nTable 2: microseconds per training step, {'-'.join(map(str, SMALL_SIZES))} MLP, batch 1, "
          f"{args.steps} pre-made batches per repeat, best of {args.repeats} (interleaved)", flush=True)
    us = run_table2(args.steps, args.repeats, args.numpy_layout)
    step_names = [k for k in ("loop", "torch", "numpy") if k in us]
    print_table("", ["us/step (best)", *[IMPLS[k].name.replace(" (loop)", "") for k in step_names]],
                [["", *[f"{us[k]:.1f}" for k in step_names]]])
    print(f"  {verdict(us['loop'] <= STEP_TARGET_US)}  backprop <= {STEP_TARGET_US:.0f} us/step: "
          f"{us['loop']:.1f} us")
    print(f"\ntotal benchmark time {time.perf_counter() - t_start:.0f}s, load average at the end "
          f"{_loadavg()} (at the start {load0}); timings on a shared machine are noisy: the best of the "
          "repeats is reported, and the implementations are interleaved so noise hits them all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
