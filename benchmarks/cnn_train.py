"""Training throughput and memory of LeNet-5: backprop vs PyTorch (CPU), one library per process.

Run from the repository root::

    python benchmarks/cnn_train.py             # the full comparison, a few minutes on 2 cores
    python benchmarks/cnn_train.py --quick     # ~1 minute

Network (both libraries, float32, NCHW)::

    Conv2d(1, 6, 5, padding=2) - ReLU - MaxPool2d(2) - Conv2d(6, 16, 5) - ReLU - MaxPool2d(2) - Flatten
    - Linear(400, 120) - ReLU - Linear(120, 84) - ReLU - Linear(84, 10)

trained with softmax cross-entropy and plain SGD (lr 0.05) at batch 128 on synthetic MNIST-shaped data
(28x28x1 float32 in [0, 1), 10 random classes, fixed seed), reshuffled every epoch.

It prints:

1. samples/second of a training epoch (``--samples`` samples) for ``backprop-loop`` (the idiomatic loop:
   ``DataLoader``, ``model(bp.Tensor(xb))``, ``cross_entropy``, ``zero_grad``/``backward``/``step``),
   ``backprop-jit`` (that loop's step captured by ``bp.jit``, while backprop has one), ``backprop-fit``
   (``bp.fit(..., epochs=1, verbose=0, metrics=())``) and ``torch`` (PyTorch's idiomatic loop), every one at
   1 thread pinned to one core and at 2 threads, each (implementation, threads) in its own process (see
   ``_common.py`` for why), ``--rounds`` rounds in rotated order: the median and half the range of the rounds,
   each library at its best thread count, and the ratio to PyTorch's best (target >= 1.0x, PASS/FAIL).
2. where backprop's time goes: one more epoch in a ``backprop-loop`` process (at that loop's best thread
   count) with every ``Function``'s forward and backward timed, per op and layer (the timing wrappers are
   installed on the classes of that process only).
3. the peak memory of one training epoch for each implementation, each in a fresh process: the growth of
   the peak resident set size over the resident size after imports, data and model creation (Linux: the
   peak is reset then and read from /proc/self/status VmHWM, because ru_maxrss is inherited across
   fork+exec; elsewhere ru_maxrss), and its ratio to PyTorch's (target <= 1.5x, PASS/FAIL). backprop's
   setup includes loading its compiled kernels (numba, when installed), as PyTorch's are in its import;
   the table prints their size apart.

A sanity line copies backprop's initial weights into PyTorch (through an .npz file, each library in its own
process) and compares the weights after 3 steps. Importing this module runs nothing.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import resource
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
    compiled_kernels,
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
N_TRAIN, N_CLASSES, SIDE = 60000, 10, 28
BATCH, LR = 128, 0.05
DATA_SEED = INIT_SEED = 0
SANITY_STEPS = 3
BACKPROP = ("backprop-loop", "backprop-jit", "backprop-fit")
IMPLS = (*BACKPROP, "torch")
SPEED_TARGET = 1.0  # backprop samples/s >= 1.0x PyTorch's, each at its best thread count
MEMORY_TARGET = 1.5  # backprop peak epoch memory growth <= 1.5x PyTorch's


# ------------------------------------------------------------------------------------------------ data
def make_data(n: int = N_TRAIN, seed: int = DATA_SEED) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-shaped synthetic data: x (n, 1, 28, 28) float32 in [0, 1), y int64 labels (no temporaries)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, SIDE, SIDE), dtype=np.float32)
    y = rng.integers(0, N_CLASSES, size=n, dtype=np.int64)
    return x, y


# -------------------------------------------------------------------------------------------- the models
def lenet(nn: Any) -> Any:
    """LeNet-5 from a module namespace with PyTorch's names (``bp.nn`` or ``torch.nn``)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )


class Trainer:
    """One implementation: ``epoch(n)`` trains on the first n samples (reshuffled), returns seconds."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y
        self.rng = np.random.default_rng(0)  # the epochs' shuffles
        self.loss = float("nan")

    def epoch(self, n: int) -> float:
        raise NotImplementedError


class BackpropLoop(Trainer):
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        super().__init__(x, y)
        import backprop as bp

        self.bp = bp
        bp.manual_seed(INIT_SEED)
        self.model = lenet(bp.nn)
        self.step = self.make_step(
            backprop_train_step(bp, self.model, bp.optim.SGD(self.model.parameters(), lr=LR))
        )

    def make_step(self, train_step: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        return train_step

    def epoch(self, n: int) -> float:
        seconds, self.loss = backprop_epoch(self.bp, self.step, self.x[:n], self.y[:n], BATCH, self.rng)
        return seconds


class BackpropJit(BackpropLoop):
    def make_step(self, train_step: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        return self.bp.jit(train_step)


class BackpropFit(Trainer):
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        super().__init__(x, y)
        import backprop as bp

        self.bp = bp
        bp.manual_seed(INIT_SEED)
        self.model = lenet(bp.nn)

    def epoch(self, n: int) -> float:
        t0 = time.perf_counter()
        history = self.bp.fit(
            self.model, self.x[:n], self.y[:n], lr=LR, batch_size=BATCH, epochs=1, verbose=0, metrics=()
        )
        seconds = time.perf_counter() - t0
        self.loss = float(history.history["loss"][-1])
        return seconds


class TorchLoop(Trainer):
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        super().__init__(x, y)
        import torch

        self.torch = torch
        self.X, self.Y = torch.from_numpy(x), torch.from_numpy(y)
        torch.manual_seed(INIT_SEED)
        self.model = lenet(torch.nn)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR)

    def epoch(self, n: int) -> float:
        seconds, self.loss = torch_epoch(self.torch, self.model, self.opt, self.X[:n], self.Y[:n], BATCH)
        return seconds


TRAINERS: dict[str, type[Trainer]] = {
    "backprop-loop": BackpropLoop,
    "backprop-jit": BackpropJit,
    "backprop-fit": BackpropFit,
    "torch": TorchLoop,
}


def library(impl: str, threads: int) -> str:
    """Import and thread-limit the library ``impl`` measures (and only it); a line describing it."""
    if impl == "torch":
        return torch_threads(threads)
    blas = numpy_threads(threads)
    import backprop as bp
    # NOTE: with the numba extra, convolutions, pooling and ReLU run compiled
    return f"backprop {bp.__version__} on {blas}, {compiled_kernels()}"


# ------------------------------------------------------------------------------------------ sanity check
def task_sanity(args: argparse.Namespace) -> dict[str, Any]:
    """3 SGD steps from the same initial weights: backprop writes them (and its result) to ``args.dir``, then
    the torch worker reads them and returns max |w_torch - w_backprop|."""
    library(args.worker, args.threads)
    x, y = make_data(SANITY_STEPS * BATCH)
    batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(x), BATCH)]
    init_path, final_path = os.path.join(args.dir, "init.npz"), os.path.join(args.dir, "final.npz")
    if args.worker != "torch":
        import backprop as bp

        bp.manual_seed(INIT_SEED)
        model = lenet(bp.nn)
        np.savez(init_path, **{k: p.data for k, p in model.named_parameters()})
        step = backprop_train_step(bp, model, bp.optim.SGD(model.parameters(), lr=LR))
        for xb, yb in batches:
            step(xb, yb)
        np.savez(final_path, **{k: p.data for k, p in model.named_parameters()})
        return {}
    import torch

    model = lenet(torch.nn)
    with np.load(init_path) as init, torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(torch.from_numpy(init[k]))
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for xb, yb in batches:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.from_numpy(xb)), torch.from_numpy(yb)).backward()
        opt.step()
    with np.load(final_path) as ref:
        return {
            "diff": max(float(np.abs(p.detach().numpy() - ref[k]).max()) for k, p in model.named_parameters())
        }


# ------------------------------------------------------------------------------------ per-layer split
class OpTimer:
    """Times every Function subclass's forward and backward, by layer (op type and input shape).

    Installs wrappers on the classes of this process (``install``) and removes them (``remove``); the
    library is not changed. Each wrapper costs ~1 us, negligible next to these ops.
    """

    def __init__(self) -> None:
        self.seconds: dict[tuple[str, str], float] = collections.defaultdict(float)
        self.calls: dict[tuple[str, str], int] = collections.defaultdict(int)
        self._saved: list[tuple[type, str, Any]] = []

    def install(self) -> None:
        from backprop import Function

        seen: set[type] = set()
        stack = list(Function.__subclasses__())
        while stack:
            cls = stack.pop()
            if cls in seen:
                continue
            seen.add(cls)
            stack.extend(cls.__subclasses__())
            for meth in ("forward", "backward"):
                if meth in cls.__dict__:
                    self._saved.append((cls, meth, cls.__dict__[meth]))
                    setattr(cls, meth, self._wrap(cls.__dict__[meth], meth))

    def remove(self) -> None:
        for cls, meth, fn in reversed(self._saved):
            setattr(cls, meth, fn)
        self._saved.clear()

    def _wrap(self, fn: Any, meth: str) -> Any:
        seconds, calls, perf = self.seconds, self.calls, time.perf_counter

        if meth == "forward":

            def forward(ctx: Any, *args: Any, **kwargs: Any) -> Any:
                t0 = perf()
                out = fn(ctx, *args, **kwargs)
                key = _layer_key(ctx, args)
                ctx._bench_key = key  # so backward is filed under the same layer
                seconds[(key, "forward")] += perf() - t0
                calls[(key, "forward")] += 1
                return out

            return forward

        def backward(ctx: Any, grad: Any) -> Any:
            key = getattr(ctx, "_bench_key", type(ctx).__name__)  # read before: backward may clear ctx
            t0 = perf()
            out = fn(ctx, grad)
            seconds[(key, "backward")] += perf() - t0
            calls[(key, "backward")] += 1
            return out

        return backward


def _layer_key(ctx: Any, args: Sequence[Any]) -> str:
    name = type(ctx).__name__
    shapes = [a.shape for a in args if isinstance(a, np.ndarray)]
    if name in ("Conv2dFn", "Conv1dFn", "Linear") and len(shapes) >= 2:
        return f"{name} w{tuple(shapes[1])}"
    if shapes:
        return f"{name} {'x'.join(map(str, shapes[0]))}"
    return name


def task_split(args: argparse.Namespace) -> dict[str, Any]:
    """A warm-up epoch, then one epoch with every op timed: seconds and per-(layer, direction) totals."""
    library("backprop-loop", args.threads)
    x, y = make_data(args.split_samples)
    trainer = BackpropLoop(x, y)
    trainer.epoch(warmup_samples(args.split_samples, BATCH))
    timer = OpTimer()
    timer.install()
    try:
        seconds = trainer.epoch(args.split_samples)
    finally:
        timer.remove()
    return {
        "seconds": seconds,
        "ops": [[k, d, s, timer.calls[(k, d)]] for (k, d), s in timer.seconds.items()],
    }


def report_split(res: dict[str, Any], n: int, threads: int) -> None:
    """The per-layer table of a split worker's result (ms per step, slowest first)."""
    seconds, steps = res["seconds"], -(-n // BATCH)
    fwd: dict[str, float] = collections.defaultdict(float)
    bwd: dict[str, float] = collections.defaultdict(float)
    calls: dict[str, int] = collections.defaultdict(int)
    for key, direction, s, c in res["ops"]:
        (fwd if direction == "forward" else bwd)[key] += s
        calls[key] += c if direction == "forward" else 0
    layers = sorted(set(fwd) | set(bwd), key=lambda k: -(fwd[k] + bwd[k]))

    def ms(v: float) -> str:
        return f"{v / steps * 1e3:.3f}"

    rows = [
        [
            k,
            f"{calls[k] / steps:.0f}",
            ms(fwd[k]),
            ms(bwd[k]),
            ms(fwd[k] + bwd[k]),
            f"{(fwd[k] + bwd[k]) / seconds * 100:.1f}%",
        ]
        for k in layers
    ]
    rest = seconds - sum(fwd.values()) - sum(bwd.values())
    rows.append(
        ["(rest: graph, optimizer, data, Python)", "", "", "", ms(rest), f"{rest / seconds * 100:.1f}%"]
    )
    rows.append(["total", "", "", "", ms(seconds), "100.0%"])
    print_table(
        f"ms per step (batch {BATCH}), slowest first; backprop-loop at {threads} thread(s), {n} samples, "
        f"{n / seconds:,.0f} samples/s with the timers on",
        ["op (layer)", "calls/step", "forward", "backward", "total", "share"],
        rows,
    )
    by_type: dict[str, float] = collections.defaultdict(float)
    for k in layers:
        by_type[k.split()[0]] += fwd[k] + bwd[k]
    print(
        "by op type: "
        + ", ".join(
            f"{k} {v / steps * 1e3:.2f} ms ({v / seconds * 100:.0f}%)"
            for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])
        )
    )


# -------------------------------------------------------------------------------------------- memory
def _proc_status_mb(key: str) -> float | None:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MB, or None where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_mb() -> float:
    """ru_maxrss in MB (KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def task_memory(args: argparse.Namespace) -> dict[str, Any]:
    """In a fresh process: one epoch of ``args.worker``, no warm-up; the peak RSS growth over the setup's RSS.

    NOTE: on Linux ru_maxrss survives fork+exec, so a child reports at least its parent's peak: useless here.
    The child therefore resets its own peak (VmHWM, through /proc/self/clear_refs) after setup and reads it
    after the epoch; ru_maxrss is the fallback elsewhere.
    """
    library(args.worker, args.threads)
    x, y = make_data(args.samples)
    trainer = TRAINERS[args.worker](x, y)
    code_mb = _load_kernels() if args.worker in BACKPROP else 0.0
    if _reset_peak() and _proc_status_mb("VmHWM") is not None:
        method, base = "VmHWM", _proc_status_mb("VmRSS")
        seconds = trainer.epoch(args.samples)
        peak = _proc_status_mb("VmHWM")
    else:
        method, base = "ru_maxrss", _maxrss_mb()
        seconds = trainer.epoch(args.samples)
        peak = _maxrss_mb()
    return {
        "base_mb": base,
        "peak_mb": peak,
        "delta_mb": peak - base,
        "method": method,
        "rate": args.samples / seconds,
        "code_mb": code_mb,
    }


def _load_kernels() -> float:
    """Load backprop's compiled kernels (numba and the machine code of the ones LeNet-5 uses), as setup: the
    growth of the RSS, in MB (0 without the numba extra).

    NOTE: code, not training memory: PyTorch's kernels are loaded by ``import torch`` (its RSS after setup
    is ~250 MB above backprop's), backprop's on first use; counted in the epoch, numba's import and LLVM's
    code (~110 MB) would make the epoch's growth 3.6x PyTorch's. The report prints this figure beside it."""
    from backprop.engine import elementwise_kernels, kernels
    from backprop.nn import conv_kernels, pooling_kernels

    before = _proc_status_mb("VmRSS") or _maxrss_mb()
    if kernels.enabled():
        for module in (conv_kernels, pooling_kernels, elementwise_kernels):
            module.ready()
    return (_proc_status_mb("VmRSS") or _maxrss_mb()) - before


# ------------------------------------------------------------------------------------- the worker tasks
def task_epochs(args: argparse.Namespace) -> dict[str, Any]:
    """A warm-up, then one timed epoch of ``args.samples`` samples: samples/s, CPU use and the last loss."""
    lib = library(args.worker, args.threads)
    x, y = make_data(args.samples)
    trainer = TRAINERS[args.worker](x, y)
    trainer.epoch(warmup_samples(args.samples, BATCH))
    cpu0 = cpu_seconds()
    seconds = trainer.epoch(args.samples)
    return {
        "lib": lib,
        "rate": args.samples / seconds,
        "cpu_per_wall": (cpu_seconds() - cpu0) / seconds,
        "loss": trainer.loss,
    }


def task_probe() -> dict[str, Any]:
    """What this machine can measure: bp.jit, and PyTorch (found, not imported)."""
    import backprop as bp

    return {"jit": hasattr(bp, "jit"), "torch": importlib.util.find_spec("torch") is not None}


def run_worker(args: argparse.Namespace) -> None:
    """In a worker process: run ``args.task`` and print its JSON line."""
    run_task(args, {
        "probe": task_probe,
        "epochs": lambda: task_epochs(args),
        "sanity": lambda: task_sanity(args),
        "split": lambda: task_split(args),
        "memory": lambda: task_memory(args),
    })


# ------------------------------------------------------------------------------------ the orchestrator
def available_impls(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The implementations to measure, and why each other one is left out."""
    return available(SCRIPT, args.pin_core, IMPLS, lambda probe: {
        "backprop-jit": None if probe["jit"] else "n/a (bp.jit not available)",
        "torch": None if probe["torch"] else "skipped (torch not importable)",
    })


def run_sanity(args: argparse.Namespace) -> str:
    """The sanity line: PyTorch's weights after 3 steps from backprop's initial ones, against backprop's."""
    with tempfile.TemporaryDirectory() as tmp:
        for impl in ("backprop-loop", "torch"):
            res = launch(SCRIPT, ["--worker", impl, "--task", "sanity", "--dir", tmp], 1, args.pin_core)
            if "error" in res:
                return f"sanity: {impl} failed: {res['error']}"
    return (
        f"sanity: same initial weights, {SANITY_STEPS} SGD steps at batch {BATCH}, each library in its own "
        f"process, max |w_torch - w_backprop| = {res['diff']:.1e}"
    )


def report_speed(
    args: argparse.Namespace, names: Sequence[str], missing: dict[str, str], results: dict[Key, list[dict]]
) -> dict[Key, Spread]:
    """The throughput table; returns the spreads of samples/s by (impl, threads)."""
    stats = spreads(results, lambda r: r["rate"])
    cpu = spreads(results, lambda r: r["cpu_per_wall"])
    rows = [
        [
            impl,
            f"{t}",
            stats[(impl, t)].fmt(digits=0),
            f"{BATCH / stats[(impl, t)].median * 1e3:.2f}",
            f"{cpu[(impl, t)].median:.2f}",
        ]
        for impl in names
        for t in args.threads
        if (impl, t) in stats
    ]
    rows += [[impl, "", why, "", ""] for impl, why in missing.items()]
    print_table(
        "", ["implementation", "threads", "samples/s (median ±half-range)", "ms/step", "cpu/wall"], rows
    )
    print("cpu/wall: CPU seconds per second of the timed epoch, all threads: the cores really used")
    return stats


def report_ratios(names: Sequence[str], missing: dict[str, str], stats: dict[Key, Spread]) -> None:
    """Each implementation at its best thread count, its ratio to PyTorch's best, and the targets."""
    torch_best = best_threads(stats, "torch")
    print("\neach at its best thread count, and the ratio to PyTorch at its best:")
    for impl in names:
        k = best_threads(stats, impl)
        if k is None:
            continue
        ratio = (
            f"  {stats[k].median / stats[torch_best].median:.2f}x PyTorch"
            if torch_best and impl != "torch"
            else ""
        )
        print(f"  {impl:<14} {stats[k].median:>9,.0f} samples/s at {k[1]} thread(s){ratio}")
    for impl in BACKPROP:
        k = best_threads(stats, impl)
        if k is None or torch_best is None:
            print(f"  SKIP  {impl} >= {SPEED_TARGET:.1f}x PyTorch: {missing.get(impl, 'not measured')}")
            continue
        ratio = stats[k].median / stats[torch_best].median
        print(
            f"  {verdict(ratio >= SPEED_TARGET)}  {impl} >= {SPEED_TARGET:.1f}x PyTorch (each at its best "
            f"thread count, medians): {ratio:.2f}x"
        )


def report_memory(args: argparse.Namespace, names: Sequence[str]) -> None:
    """Peak epoch memory, each implementation in a fresh process, and its ratio to PyTorch's."""
    threads = max(args.threads)
    print(
        f"\n3. peak memory of one training epoch ({args.samples} samples, {threads} thread(s)), each "
        "implementation in a fresh process: growth of the peak RSS over the RSS after imports, data and "
        "model creation",
        flush=True,
    )
    argv = ["--task", "memory", "--samples", str(args.samples)]
    mem = {impl: launch(SCRIPT, ["--worker", impl, *argv], threads, args.pin_core) for impl in names}
    rows = [
        [
            k,
            f"{m['base_mb']:.1f}",
            f"{m['peak_mb']:.1f}",
            f"{m['delta_mb']:.1f}",
            m["method"],
            f"{m['rate']:,.0f}",
            f"{m.get('code_mb', 0.0):.1f}" if k in BACKPROP else "(in import)",
        ]
        for k, m in mem.items()
        if "error" not in m
    ]
    print_table(
        "",
        [
            "implementation",
            "RSS after setup MB",
            "peak MB",
            "epoch peak growth MB",
            "peak from",
            "samples/s (this run)",
            "kernels loaded in setup MB",
        ],
        rows,
    )
    print("  (backprop loads its compiled kernels, numba's import and their machine code, in setup, as PyTorch's "
          "are loaded by its import; the last column is their size)")
    for k, m in mem.items():
        if "error" in m:
            print(f"  ERROR {k}: {m['error']}")
    t = mem.get("torch", {}).get("delta_mb")
    for impl in [k for k in BACKPROP if k in mem and "error" not in mem[k]]:
        b = mem[impl]["delta_mb"]
        if t is None:
            print(f"  SKIP  {impl} peak epoch memory <= {MEMORY_TARGET}x PyTorch: PyTorch not measured")
            continue
        print(
            f"  {verdict(b <= MEMORY_TARGET * max(t, 1e-9))}  {impl} peak epoch memory <= {MEMORY_TARGET}x "
            f"PyTorch: {b:.1f} MB vs {t:.1f} MB ({b / max(t, 1e-9):.2f}x)"
        )


def orchestrate(args: argparse.Namespace) -> int:
    """The parent: launch every worker, print the tables and the verdicts."""
    t_start, load0 = time.perf_counter(), loadavg()
    print("CNN (LeNet-5) training benchmark: backprop vs PyTorch (CPU), one library per process")
    for line in env_lines():
        print(line)
    names, missing = available_impls(args)
    for impl, why in missing.items():
        print(f"  {impl}: {why}")
    if "torch" in names:
        print(run_sanity(args), flush=True)

    print(
        f"\n1. training throughput: batch {BATCH}, SGD lr {LR}, float32, {args.samples} samples per epoch; "
        f"per process a warm-up then one timed epoch; median ±half-range of {args.rounds} rounds (processes "
        "in rotated order)",
        flush=True,
    )
    jobs = [
        Job(impl, t, ("--worker", impl, "--task", "epochs", "--samples", str(args.samples)))
        for impl in names
        for t in args.threads
    ]
    results = run_rounds(SCRIPT, jobs, args.rounds, args.pin_core, "throughput")
    print("libraries (as the workers reported them):")
    for line in library_lines(results):
        print(line)
    for line in errors(results):
        print(f"  ERROR {line}")
    stats = report_speed(args, names, missing, results)
    report_ratios(names, missing, stats)

    split_threads = (best_threads(stats, "backprop-loop") or ("", max(args.threads)))[1]
    print(
        f"\n2. where backprop's time goes: one epoch of {args.split_samples} samples with every op's forward "
        f"and backward timed, in a backprop-loop process at {split_threads} thread(s)",
        flush=True,
    )
    res = launch(
        SCRIPT,
        ["--worker", "backprop-loop", "--task", "split", "--split-samples", str(args.split_samples)],
        split_threads,
        args.pin_core,
    )
    if "error" in res:
        print(f"  ERROR {res['error']}")
    else:
        report_split(res, args.split_samples, split_threads)

    if not args.no_memory:
        report_memory(args, names)
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
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        help="samples per epoch (default 30000, 6400 with --quick); rates are per sample",
    )
    p.add_argument(
        "--split-samples",
        type=int,
        default=None,
        help="samples of the epoch timed op by op (default: min(--samples, 12800))",
    )
    p.add_argument("--pin-core", type=int, default=0, help="the core of the 1-thread processes (default 0)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--quick", action="store_true", help="6400 samples, 2 rounds (~1 minute)")
    p.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    p.add_argument("--task", choices=("probe", "epochs", "sanity", "split", "memory"), help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.samples = args.samples or (6400 if args.quick else 30000)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.split_samples = args.split_samples or min(args.samples, 12800)
    try:
        args.threads = parse_threads(args.threads)
    except ValueError as e:
        p.error(str(e))
    if args.worker:
        args.threads = args.threads[0]
    if min(args.samples, args.split_samples) < BATCH or args.rounds < 1:
        p.error(f"--samples and --split-samples must be at least the batch size {BATCH}, --rounds positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
