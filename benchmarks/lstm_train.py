"""LSTM forward + backward: backprop vs PyTorch (CPU) and JAX, one library per process.

Run from the repository root::

    python benchmarks/lstm_train.py             # 5 rounds, about 2 minutes on 2 cores
    python benchmarks/lstm_train.py --quick     # 2 rounds, about 40 seconds
    python benchmarks/lstm_train.py --profile   # cProfile of backprop's steps (one worker), top 20 by tottime

The workload (issue 14's speed target): one LSTM layer, input 32, hidden 128, sequence 50, batch 32, float32,
sequence-first; one step is the forward of the layer on a fixed input and the backward of a fixed gradient of
its output (``out.backward(g)``, PyTorch's and backprop's alike; JAX: the gradient of ``sum(out * g)``), so
every weight gets its gradient; the input needs none (the first layer of a model). No optimizer.

Implementations, each at 1 thread pinned to one core and at 2 threads, each (implementation, threads) in its
own process (see ``_common.py`` for why), ``--rounds`` rounds in rotated order:

* ``backprop-loop``: the eager step, ``opt.zero_grad(); out, _ = lstm(x); out.backward(g)``, in a plain loop
  (malloc not tuned, as in any loop of the user's own);
* ``backprop-jit``: that step captured by ``bp.jit`` (which, as ``fit`` does, keeps the step's large arrays
  in memory the process already has: ``backprop.engine.memory``);
* ``torch``: ``torch.nn.LSTM`` (its CPU kernel is oneDNN's fused LSTM, forward and backward);
* ``jax`` (when installed): the LSTM cell in ``jax.numpy`` under ``lax.scan``, ``jax.jit(jax.grad(...))``.

It prints the step time (median and half the range of the rounds), each implementation at its best thread
count and its ratio to PyTorch's best (target >= 0.8x, PASS/FAIL), with the CPU time per step beside the
wall time (on a busy shared machine a process waits for a core; its CPU time does not count the wait), then
where backprop's step goes: the phases of its recurrence op (``backprop.nn.recurrence.PHASES``: weights and
inputs laid out, the forward time loop, whose one GEMM per step also projects the input, backpropagation
through time, the weight-gradient GEMM) and the rest (the graph, the views of the op's output,
``zero_grad``), and PyTorch's forward / backward split. Importing this module runs nothing.

>>> [a.shape for a in make_data()]      # the input (T, B, I) and the output's gradient (T, B, H)
[(50, 32, 32), (50, 32, 128)]
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import os
import pstats
import sys
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
    torch_threads,
    verdict,
)

SCRIPT = os.path.abspath(__file__)
IMPLS = ("backprop-loop", "backprop-jit", "torch", "jax")
BACKPROP = ("backprop-loop", "backprop-jit")
T, B, I, H = 50, 32, 32, 128
SPEED_TARGET = 0.8
PHASE_NAMES = {
    "input_projection": "weights and inputs laid out (GRU: + the input projection GEMM)",
    "recurrence_forward": "recurrence forward (time loop: one GEMM per step incl. W_ih x, gates)",
    "forward_rest": "forward: outputs, h_n, c_n",
    "backward_rest": "backward: output gradient taken apart",
    "backward_through_time": "backward through time (time loop: GEMMs per step, gates; compiled: + dW, dx)",
    "weight_gradients": "weight gradients (NumPy loops: one GEMM over all steps), dx, layouts",
}


def make_data() -> tuple[np.ndarray, np.ndarray]:
    """The fixed input (T, B, I) and output gradient (T, B, H), float32."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((T, B, I)).astype(np.float32), rng.standard_normal((T, B, H)).astype(np.float32)


# ------------------------------------------------------------------------------------------ the workers
def library(impl: str, threads: int) -> str:
    """Limit ``impl``'s library to ``threads`` threads; a line naming it."""
    if impl == "torch":
        return torch_threads(threads)
    if impl == "jax":
        import jax

        return f"jax {jax.__version__} (devices {jax.devices()})"
    blas = numpy_threads(threads)
    return f"backprop, {blas}, {compiled_kernels()}"  # NOTE: with the numba extra, an LSTM's loops run compiled


def backprop_step(jit: bool) -> Callable[[], None]:
    import backprop as bp

    bp.manual_seed(0)
    lstm = bp.nn.LSTM(I, H)
    opt = bp.optim.SGD(lstm.parameters(), lr=0.0)  # NOTE: its zero_grad, which a captured step replays
    x, g = make_data()

    def step(xb: np.ndarray, gb: np.ndarray) -> None:
        opt.zero_grad()
        out, _ = lstm(bp.Tensor(xb))
        out.backward(gb)

    if not jit:
        return lambda: step(x, g)
    captured = bp.jit(step, fallback="error")
    return lambda: captured(x, g)


def torch_step() -> Callable[[], None]:
    import torch

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(I, H)
    x, g = (torch.from_numpy(a) for a in make_data())

    def step() -> None:
        lstm.zero_grad()
        out, _ = lstm(x)
        out.backward(g)

    return step


def jax_step() -> Callable[[], None]:
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    k = 1 / np.sqrt(H)
    params = {name: jnp.asarray(rng.uniform(-k, k, shape).astype(np.float32)) for name, shape in
              (("w_ih", (4 * H, I)), ("w_hh", (4 * H, H)), ("b", (4 * H,)))}
    x, g = (jnp.asarray(a) for a in make_data())

    def loss(p: dict[str, Any], xs: Any, gs: Any) -> Any:
        proj = xs @ p["w_ih"].T + p["b"]  # (T, B, 4H)

        def cell(carry: Any, u: Any) -> Any:
            h, c = carry
            a = u + h @ p["w_hh"].T
            i, f, gg, o = jnp.split(a, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        zeros = jnp.zeros((B, H), jnp.float32)
        _, out = jax.lax.scan(cell, (zeros, zeros), proj)
        return jnp.sum(out * gs)

    grad = jax.jit(jax.grad(loss))

    def step() -> None:
        jax.block_until_ready(grad(params, x, g))

    return step


def make_step(impl: str) -> Callable[[], None]:
    if impl == "torch":
        return torch_step()
    if impl == "jax":
        return jax_step()
    return backprop_step(jit=impl == "backprop-jit")


def timed(step: Callable[[], None], steps: int) -> tuple[float, float]:
    """Seconds per step over ``steps`` steps (after a warm-up), and CPU seconds per step (all threads)."""
    for _ in range(max(5, steps // 5)):
        step()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    for _ in range(steps):
        step()
    wall = time.perf_counter() - t0
    return wall / steps, (cpu_seconds() - cpu0) / steps


def task_steps(args: argparse.Namespace) -> dict[str, Any]:
    lib = library(args.worker, args.threads)
    per_step, cpu = timed(make_step(args.worker), args.steps)
    return {"lib": lib, "step": per_step, "cpu": cpu, "cpu_per_wall": cpu / per_step}


def task_split(args: argparse.Namespace) -> dict[str, Any]:
    """backprop: the op's phases (PHASES) over timed steps; torch: its forward alone, then the whole step."""
    library(args.worker, args.threads)
    if args.worker == "torch":
        import torch

        torch.manual_seed(0)
        lstm = torch.nn.LSTM(I, H)
        x = torch.from_numpy(make_data()[0])
        forward, _ = timed(lambda: lstm(x), args.steps)
        step, _ = timed(torch_step(), args.steps)
        return {"forward": forward, "step": step}
    from backprop.nn import recurrence

    step_fn = make_step(args.worker)
    timed(step_fn, args.steps)  # warm-up
    recurrence.PHASES = {}
    step, _ = timed(step_fn, args.steps)
    n = args.steps + max(5, args.steps // 5)  # timed() warms up again: the phases count those steps too
    return {"step": step, "phases": {k: v / n for k, v in recurrence.PHASES.items()}}


def task_probe() -> dict[str, Any]:
    import backprop as bp

    return {"jit": hasattr(bp, "jit"), "torch": importlib.util.find_spec("torch") is not None,
            "jax": importlib.util.find_spec("jax") is not None}


def task_profile(args: argparse.Namespace) -> dict[str, Any]:
    library("backprop-loop", args.threads)
    step = make_step("backprop-loop")
    timed(step, 10)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.steps):
        step()
    prof.disable()
    pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(20)
    return {}


def run_worker(args: argparse.Namespace) -> None:
    run_task(args, {
        "probe": task_probe,
        "steps": lambda: task_steps(args),
        "split": lambda: task_split(args),
        "profile": lambda: task_profile(args),
    })


# ------------------------------------------------------------------------------------ the orchestrator
def report_speed(args: argparse.Namespace, names: Sequence[str], missing: dict[str, str],
                 results: dict[Key, list[dict]]) -> dict[Key, Spread]:
    stats = spreads(results, lambda r: r["step"])
    cpu = spreads(results, lambda r: r["cpu"])
    per_wall = spreads(results, lambda r: r["cpu_per_wall"])
    rows = [[impl, f"{t}", stats[(impl, t)].fmt(1e-3, digits=2), cpu[(impl, t)].fmt(1e-3, digits=2),
             f"{per_wall[(impl, t)].median:.2f}"] for impl in names for t in args.threads if (impl, t) in stats]
    rows += [[impl, "", why, "", ""] for impl, why in missing.items()]
    print_table("", ["implementation", "threads", "ms per step (median ±half-range)", "CPU ms per step",
                     "cpu/wall"], rows)
    print("cpu/wall: CPU seconds per second of the timed steps, all threads: the cores really used (under 1 at 1 "
          "thread: the process waited for a core, the machine is busy)")
    cpu_best = {impl: fastest(cpu, impl) for impl in names}
    if cpu_best.get("torch") is not None:
        t_cpu = cpu[cpu_best["torch"]].median
        print("CPU time per step, each at its least: " + ", ".join(
            f"{impl} {cpu[k].median * 1e3:.2f} ms ({t_cpu / cpu[k].median:.2f}x PyTorch)" if impl != "torch" else
            f"torch {t_cpu * 1e3:.2f} ms" for impl, k in cpu_best.items() if k is not None))
    return stats


def fastest(stats: dict[Key, Spread], impl: str) -> Key | None:
    """The (impl, threads) with the lowest median step time."""
    keys = [k for k in stats if k[0] == impl]
    return min(keys, key=lambda k: stats[k].median) if keys else None


def report_ratios(names: Sequence[str], missing: dict[str, str], stats: dict[Key, Spread]) -> None:
    torch_best = fastest(stats, "torch")
    print("\neach at its best thread count, and its speed relative to PyTorch at its best (time_torch / time):")
    for impl in names:
        k = fastest(stats, impl)
        if k is None:
            continue
        ratio = f"  {stats[torch_best].median / stats[k].median:.2f}x PyTorch" if torch_best and impl != "torch" \
            else ""
        print(f"  {impl:<13} {stats[k].median * 1e3:7.2f} ms/step at {k[1]} thread(s){ratio}")
    for impl in BACKPROP:
        k = fastest(stats, impl)
        if k is None or torch_best is None:
            print(f"  SKIP  {impl} >= {SPEED_TARGET:.1f}x PyTorch: {missing.get(impl, 'not measured')}")
            continue
        ratio = stats[torch_best].median / stats[k].median
        print(f"  {verdict(ratio >= SPEED_TARGET)}  {impl} >= {SPEED_TARGET:.1f}x PyTorch (each at its best thread "
              f"count, medians): {ratio:.2f}x")


def report_split(args: argparse.Namespace, stats: dict[Key, Spread], names: Sequence[str]) -> None:
    for impl in ("backprop-loop", "torch"):
        if impl not in names:
            continue
        threads = (fastest(stats, impl) or (impl, max(args.threads)))[1]
        res = launch(SCRIPT, ["--worker", impl, "--task", "split", "--steps", str(args.steps)], threads,
                     args.pin_core)
        if "error" in res:
            print(f"  ERROR {impl} split: {res['error']}")
            continue
        step = res["step"]
        if impl == "torch":
            print(f"\nPyTorch at {threads} thread(s): forward {res['forward'] * 1e3:.2f} ms, backward "
                  f"{(step - res['forward']) * 1e3:.2f} ms (the step less the forward), step {step * 1e3:.2f} ms")
            continue
        phases = res["phases"]
        rows = [[PHASE_NAMES.get(k, k), f"{v * 1e3:.2f}", f"{v / step * 100:.0f}%"] for k, v in phases.items()]
        rest = step - sum(phases.values())
        rows.append(["rest: graph, views of the output, zero_grad, Python", f"{rest * 1e3:.2f}",
                     f"{rest / step * 100:.0f}%"])
        rows.append(["step", f"{step * 1e3:.2f}", "100%"])
        print_table(f"\nwhere backprop's step goes (eager, {threads} thread(s), {args.steps} timed steps, ms per step):",
                    ["phase", "ms", "share"], rows)


def orchestrate(args: argparse.Namespace) -> int:
    t_start, load0 = time.perf_counter(), loadavg()
    print(f"LSTM forward + backward benchmark: sequence {T}, batch {B}, input {I}, hidden {H}, float32; one "
          "library per process")
    for line in env_lines():
        print(line)
    names, missing = available(SCRIPT, args.pin_core, IMPLS, lambda probe: {
        "backprop-jit": None if probe["jit"] else "n/a (bp.jit not available)",
        "torch": None if probe["torch"] else "skipped (torch not importable)",
        "jax": None if probe["jax"] and not args.no_jax else "skipped (jax not importable, or --no-jax)",
    }) if not args.impls else (args.impls, {})
    print(f"\n1. step time: {args.steps} timed steps per process after a warm-up; median ±half-range of "
          f"{args.rounds} rounds (processes in rotated order)", flush=True)
    jobs = [Job(impl, t, ("--worker", impl, "--task", "steps", "--steps", str(args.steps)))
            for impl in names for t in args.threads]
    results = run_rounds(SCRIPT, jobs, args.rounds, args.pin_core, "steps")
    print("libraries (as the workers reported them):")
    for line in library_lines(results):
        print(line)
    for line in errors(results):
        print(f"  ERROR {line}")
    stats = report_speed(args, names, missing, results)
    report_ratios(names, missing, stats)
    print("\n2. where the time goes", flush=True)
    report_split(args, stats, names)
    print(f"\ntotal benchmark time {time.perf_counter() - t_start:.0f}s, load average at the end {loadavg()} "
          f"(at the start {load0}); on a shared machine the spread says how far to trust a ratio near a target")
    return 0


# ------------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", default="1,2", help="thread counts, each in its own processes (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=None, help="rounds of processes (default 5, 2 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per process (default 50, 20 with --quick)")
    p.add_argument("--impls", default="", help="a comma-separated subset of " + ", ".join(IMPLS))
    p.add_argument("--no-jax", action="store_true", help="leave JAX out")
    p.add_argument("--pin-core", type=int, default=0, help="the core of the 1-thread processes (default 0)")
    p.add_argument("--quick", action="store_true", help="2 rounds of 20 steps")
    p.add_argument("--profile", action="store_true", help="cProfile of backprop's eager steps in one worker")
    p.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    p.add_argument("--task", choices=("probe", "steps", "split", "profile"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.steps = args.steps or (20 if args.quick else 50)
    args.impls = [i for i in args.impls.split(",") if i]
    if any(i not in IMPLS for i in args.impls):
        p.error(f"--impls: choose from {', '.join(IMPLS)}")
    try:
        args.threads = parse_threads(args.threads)
    except ValueError as e:
        p.error(str(e))
    if args.worker:
        args.threads = args.threads[0]
    if args.rounds < 1 or args.steps < 1:
        p.error("--rounds and --steps must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    if args.profile:
        launch(SCRIPT, ["--worker", "backprop-loop", "--task", "profile", "--steps", str(args.steps)], max(args.threads),
               args.pin_core, capture=False)
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
