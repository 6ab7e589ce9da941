"""Training throughput and memory of a LeNet-5-like CNN: backprop vs PyTorch (CPU).

Run from the repository root::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/cnn_train.py              # the fair comparison
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/cnn_train.py --quick      # ~30 s

Network (both libraries, float32, NCHW)::

    Conv2d(1, 6, 5, padding=2) - ReLU - MaxPool2d(2) - Conv2d(6, 16, 5) - ReLU - MaxPool2d(2) - Flatten
    - Linear(400, 120) - ReLU - Linear(120, 84) - ReLU - Linear(84, 10)

trained with softmax cross-entropy and plain SGD (lr 0.05) at batch 128 on synthetic MNIST-shaped data
(28x28x1 float32 in [0, 1), 10 random classes, fixed seed), reshuffled every epoch.

It prints:

1. samples/second of a training epoch (``--samples`` samples, default 60000) for backprop's idiomatic loop
   (``DataLoader``, ``model(bp.Tensor(xb))``, ``cross_entropy``, ``zero_grad``/``backward``/``step``) and
   PyTorch's, with the same thread count (``threadpoolctl`` for NumPy's BLAS, ``torch.set_num_threads``),
   best of ``--repeats`` epochs, the two interleaved (order alternating) so that a noisy moment on a shared
   machine hits both; then the ratio and a PASS/FAIL line for backprop >= 0.5x PyTorch.
2. where backprop's time goes: one more epoch with every ``Function``'s forward and backward timed, per op
   and layer (the timing wrappers are installed on the classes in this process only, and removed after).
3. the peak memory of one training epoch for each library, each measured in a fresh subprocess as the
   growth of the peak resident set size over the resident size after imports, data and model creation
   (Linux: the peak is reset then and read from /proc/self/status VmHWM, because ru_maxrss is inherited
   across fork+exec from this process; elsewhere ru_maxrss); a PASS/FAIL line for backprop <= 2x PyTorch.

Importing this module runs nothing.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
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

N_TRAIN, N_CLASSES, SIDE = 60000, 10, 28
BATCH, LR = 128, 0.05
DATA_SEED, INIT_SEED = 0, 0
SPEED_TARGET = 0.5  # backprop samples/s >= 0.5x PyTorch's
MEMORY_TARGET = 2.0  # backprop peak epoch memory <= 2x PyTorch's
FAIR_COMMAND = "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/cnn_train.py"


# ------------------------------------------------------------------------------------------------ data
def make_data(n: int = N_TRAIN, seed: int = DATA_SEED) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-shaped synthetic data: x (n, 1, 28, 28) float32 in [0, 1), y int64 labels (made without temporaries)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, SIDE, SIDE), dtype=np.float32)
    y = rng.integers(0, N_CLASSES, size=n, dtype=np.int64)
    return x, y


# -------------------------------------------------------------------------------------------- the models
def backprop_lenet(seed: int = INIT_SEED):
    import backprop as bp
    from backprop.nn.conv import Conv2d
    from backprop.nn.pooling import MaxPool2d

    nn = bp.nn
    bp.manual_seed(seed)
    return nn.Sequential(
        Conv2d(1, 6, 5, padding=2), nn.ReLU(), MaxPool2d(2),
        Conv2d(6, 16, 5), nn.ReLU(), MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )


def torch_lenet(seed: int = INIT_SEED):
    torch = _torch()
    nn = torch.nn
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )


class BackpropLoop:
    name = "backprop"

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int = BATCH) -> None:
        import backprop as bp

        self.bp, self.x, self.y, self.batch_size = bp, x, y, batch_size
        self.model = backprop_lenet()
        self.opt = bp.optim.SGD(self.model.parameters(), lr=LR)
        self.loss = float("nan")

    def epoch(self, n: int) -> float:
        seconds, self.loss = backprop_epoch(self.bp, self.model, self.opt, self.x[:n], self.y[:n], self.batch_size)
        return seconds


class TorchLoop:
    name = "PyTorch"

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int = BATCH) -> None:
        torch = self.torch = _torch()
        self.X, self.Y, self.batch_size = torch.from_numpy(x), torch.from_numpy(y), batch_size
        self.model = torch_lenet()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR)
        self.loss = float("nan")

    def epoch(self, n: int) -> float:
        seconds, self.loss = torch_epoch(self.torch, self.model, self.opt, self.X[:n], self.Y[:n], self.batch_size)
        return seconds


IMPLS = {"backprop": BackpropLoop, "torch": TorchLoop}


# ------------------------------------------------------------------------------------------ sanity check
def consistency_check(x: np.ndarray, y: np.ndarray, steps: int = 3) -> float:
    """Same initial weights, same batches, a few SGD steps: max |w_backprop - w_torch| (float32 rounding only)."""
    import backprop as bp

    torch = _torch()
    model, tmodel = backprop_lenet(), torch_lenet()
    with torch.no_grad():
        for name, p in tmodel.named_parameters():
            p.copy_(torch.from_numpy(dict(model.named_parameters())[name].data))
    opt, topt = bp.optim.SGD(model.parameters(), lr=LR), torch.optim.SGD(tmodel.parameters(), lr=LR)
    for s in range(steps):
        xb, yb = x[s * BATCH:(s + 1) * BATCH], y[s * BATCH:(s + 1) * BATCH]
        opt.zero_grad()
        bp.nn.functional.cross_entropy(model(bp.Tensor(xb)), yb).backward()
        opt.step()
        topt.zero_grad()
        torch.nn.functional.cross_entropy(tmodel(torch.from_numpy(xb)), torch.from_numpy(yb)).backward()
        topt.step()
    theirs = dict(tmodel.named_parameters())
    return max(float(np.abs(p.data - theirs[name].detach().numpy()).max()) for name, p in model.named_parameters())


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
        from backprop.engine.tensor import Function

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
            def forward(ctx, *args, **kwargs):
                t0 = perf()
                out = fn(ctx, *args, **kwargs)
                key = _layer_key(ctx, args)
                ctx._bench_key = key  # so backward is filed under the same layer
                seconds[(key, "forward")] += perf() - t0
                calls[(key, "forward")] += 1
                return out

            return forward

        def backward(ctx, grad):
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


def run_split(impl: BackpropLoop, n: int) -> tuple[float, dict, dict]:
    timer = OpTimer()
    timer.install()
    try:
        seconds = impl.epoch(n)
    finally:
        timer.remove()
    return seconds, dict(timer.seconds), dict(timer.calls)


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


def memory_child(name: str, samples: int, threads: int) -> None:
    """Run in a fresh subprocess: one epoch of ``name``; print JSON with the peak RSS growth.

    NOTE: on Linux ru_maxrss survives fork+exec, so a child started by this (400 MB) process reports at
    least the parent's peak: useless here. The child therefore resets its own peak (VmHWM, through
    /proc/self/clear_refs) after setup and reads it after the epoch; ru_maxrss is the fallback elsewhere.
    """
    from threadpoolctl import threadpool_limits

    torch = _torch() if name == "torch" else None
    if torch is not None:
        torch.set_num_threads(threads)
    with threadpool_limits(limits=threads):
        x, y = make_data(samples)
        impl = IMPLS[name](x, y)
        if _reset_peak() and _proc_status_mb("VmHWM") is not None:
            method, base = "VmHWM", _proc_status_mb("VmRSS")
            seconds = impl.epoch(samples)
            peak = _proc_status_mb("VmHWM")
        else:
            method, base = "ru_maxrss", _maxrss_mb()
            seconds = impl.epoch(samples)
            peak = _maxrss_mb()
    print(json.dumps({"name": name, "base_mb": base, "peak_mb": peak, "delta_mb": peak - base, "method": method,
                      "seconds": seconds, "samples": samples}))


def measure_memory(name: str, samples: int, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", name, "--samples", str(samples),
           "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory measurement of {name} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- output
# ------------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"Fair comparison: {FAIR_COMMAND}")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads for NumPy's BLAS and for PyTorch (default: all cores, %(default)s)")
    p.add_argument("--samples", type=int, default=None,
                   help=f"samples per epoch (default {N_TRAIN}, 12800 with --quick); rates are per sample")
    p.add_argument("--repeats", type=int, default=None, help="timed epochs per library, best kept (default 3, 2 with --quick)")
    p.add_argument("--split-samples", type=int, default=None,
                   help="samples of the epoch timed op by op (default: min(--samples, 12800))")
    p.add_argument("--quick", action="store_true", help="12800 samples, 2 repeats (~30 s)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement (two subprocesses)")
    p.add_argument("--memory-child", choices=tuple(IMPLS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.samples = args.samples or (12800 if args.quick else N_TRAIN)
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.split_samples = args.split_samples or min(args.samples, 12800)
    if min(args.samples, args.repeats, args.threads, args.split_samples) < 1:
        p.error("--samples, --repeats, --split-samples and --threads must be positive")
    if args.samples < BATCH:
        p.error(f"--samples must be at least the batch size {BATCH}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child, args.samples, args.threads)
        return 0
    with thread_limits(args.threads) as torch:
        return _main(args, torch)


def _main(args: argparse.Namespace, torch: Any) -> int:
    t_start, load0 = time.perf_counter(), _loadavg()
    print("CNN (LeNet-5-like) training benchmark: backprop vs PyTorch (CPU)")
    for line in environment_lines(args.threads, FAIR_COMMAND):
        print(line)
    x, y = make_data(max(args.samples, args.split_samples))
    names = ["backprop", "torch"] if torch is not None else ["backprop"]
    if torch is not None:
        print(f"sanity: same init, 3 SGD steps at batch {BATCH}, max |w_backprop - w_torch| = "
              f"{consistency_check(x, y):.2e}")

    n = args.samples
    print(f"\n1. training throughput: batch {BATCH}, SGD lr {LR}, float32, {n} samples per epoch, best of "
          f"{args.repeats} epochs (libraries interleaved, order alternating), after a warm-up", flush=True)
    impls = {name: IMPLS[name](x, y) for name in names}
    for impl in impls.values():
        impl.epoch(min(n, 20 * BATCH))  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            rates[name].append(n / impls[name].epoch(n))
        print(f"  repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()),
              file=sys.stderr, flush=True)
    best = {k: max(v) for k, v in rates.items()}
    median = {k: statistics.median(v) for k, v in rates.items()}
    rows = [[impls[k].name, f"{best[k]:,.0f}", f"{median[k]:,.0f}", f"{BATCH / best[k] * 1e3:.2f}",
             f"{impls[k].loss:.3f}"] for k in names]
    print_table("", ["library", "samples/s (best)", "samples/s (median)", "ms/step (best)", "last loss"], rows)
    noisy = [k for k in names if median[k] < 0.85 * best[k]]
    if noisy:
        print(f"NOTE noisy: median more than 15% below best for {', '.join(noisy)}; on a shared machine "
              "rerun with more --repeats before trusting a close verdict")
    speed_ok = None
    if torch is not None:
        ratio = best["backprop"] / best["torch"]
        speed_ok = ratio >= SPEED_TARGET
        print(f"ratio backprop / PyTorch = {ratio:.2f}x (median {median['backprop'] / median['torch']:.2f}x)")
        print(f"  {verdict(speed_ok)}  backprop >= {SPEED_TARGET}x PyTorch: {ratio:.2f}x")

    ns = args.split_samples
    print(f"\n2. where backprop's time goes: one epoch of {ns} samples with every op's forward and backward timed",
          flush=True)
    seconds, op_seconds, op_calls = run_split(impls["backprop"], ns)
    steps = -(-ns // BATCH)
    layers = sorted({k for k, _ in op_seconds}, key=lambda k: -(op_seconds.get((k, "forward"), 0)
                                                                   + op_seconds.get((k, "backward"), 0)))
    total_ops = sum(op_seconds.values())
    rows = []
    for k in layers:
        f, b = op_seconds.get((k, "forward"), 0.0), op_seconds.get((k, "backward"), 0.0)
        rows.append([k, f"{op_calls.get((k, 'forward'), 0) / steps:.0f}", f"{f / steps * 1e3:.3f}",
                     f"{b / steps * 1e3:.3f}", f"{(f + b) / steps * 1e3:.3f}", f"{(f + b) / seconds * 100:.1f}%"])
    rest = seconds - total_ops
    rows.append(["(rest: graph, optimizer, data, Python)", "", "", "", f"{rest / steps * 1e3:.3f}",
                 f"{rest / seconds * 100:.1f}%"])
    rows.append(["total", "", "", "", f"{seconds / steps * 1e3:.3f}", "100.0%"])
    print_table(f"ms per step (batch {BATCH}), slowest first; this epoch ran at {ns / seconds:,.0f} samples/s "
                "with the timers on", ["op (layer)", "calls/step", "forward", "backward", "total", "share"], rows)
    by_type: dict[str, float] = collections.defaultdict(float)
    for (k, _), v in op_seconds.items():
        by_type[k.split()[0]] += v
    print("by op type: " + ", ".join(f"{k} {v / steps * 1e3:.2f} ms ({v / seconds * 100:.0f}%)"
                                      for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])))
    if layers:
        print(f"slowest layer: {layers[0]}")

    memory_ok = None
    if not args.no_memory:
        print(f"\n3. peak memory of one training epoch ({n} samples), each library in a fresh subprocess: growth of "
              "the peak RSS over the RSS after imports, data and model creation", flush=True)
        mem = {name: measure_memory(name, n, args.threads) for name in names}
        rows = [[impls[k].name, f"{mem[k]['base_mb']:.1f}", f"{mem[k]['peak_mb']:.1f}", f"{mem[k]['delta_mb']:.1f}",
                 mem[k]["method"], f"{mem[k]['samples'] / mem[k]['seconds']:,.0f}"] for k in names]
        print_table("", ["library", "RSS after setup MB", "peak MB", "epoch peak growth MB", "peak from",
                         "samples/s (this run)"], rows)
        if torch is not None:
            b, t = mem["backprop"]["delta_mb"], mem["torch"]["delta_mb"]
            memory_ok = b <= MEMORY_TARGET * max(t, 1e-9)
            print(f"  {verdict(memory_ok)}  backprop peak epoch memory <= {MEMORY_TARGET}x PyTorch: "
                  f"{b:.1f} MB vs {t:.1f} MB ({b / max(t, 1e-9):.2f}x)")

    print(f"\ntotal benchmark time {time.perf_counter() - t_start:.0f}s, load average at the end {_loadavg()} "
          f"(at the start {load0}); timings on a shared machine are noisy: the best epoch is reported")
    return 0


if __name__ == "__main__":
    sys.exit(main())
