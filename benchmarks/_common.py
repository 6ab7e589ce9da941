"""What the speed benchmarks share: one library per process, its threads and cores, rounds, medians, tables.

Why a process per measurement: after a BLAS call, OpenBLAS's worker threads keep spinning (busy-waiting for
the next call) for a while. On a 2-core machine they starve whatever runs next in the same process: PyTorch's
MLP epoch at batch 512 ran at 158k samples/s alone and at 71-87k right after NumPy products in the same
process. So the parent script (the orchestrator, which measures nothing and imports no numerical library)
starts every (implementation, thread count) as its own child, ``python <script> --worker IMPL --threads T
...``, which imports only the library it measures and prints one JSON line on stdout.

A child's threads and cores are fixed before its libraries load: its environment has ``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` set to T (plus ``XLA_FLAGS`` that turn off XLA's
multi-threaded Eigen at T = 1), and its CPU affinity is set with ``os.sched_setaffinity`` in the child between
fork and exec, so every thread any library starts later inherits it: one core at T = 1, T cores otherwise.
The worker then also calls ``threadpoolctl.threadpool_limits(T)`` or ``torch.set_num_threads(T)``.
``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` are removed from the children's environment: set on this
machine for an old OpenBLAS, they make a current NumPy's OpenBLAS run older, slower kernels.

Rounds: every child runs once per round, the order rotated from round to round, so that a noisy moment on a
shared machine falls on different implementations each time; the tables give the median of the rounds and
their spread. Importing this module runs nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
MEASURED_LIBRARIES = ("backprop", "torch", "jax")  # a worker reports which of these it imported
WORKER_TIMEOUT_S = 900.0

Key = tuple[str, int]  # (implementation, threads)


# ------------------------------------------------------------------------------ the parent: launching
def worker_env(threads: int) -> dict[str, str]:
    """The environment of a child that measures with ``threads`` threads (see the module docstring)."""
    env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_VARS}
    env.update({k: str(threads) for k in THREAD_VARS})
    if threads == 1:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {XLA_ONE_THREAD}".strip()
    return env


def cores_for(threads: int, pin_core: int) -> list[int]:
    """The cores of a child with ``threads`` threads: ``pin_core`` alone at 1 thread, else the first T."""
    allowed = sorted(os.sched_getaffinity(0))
    if threads == 1:
        return [pin_core if pin_core in allowed else allowed[0]]
    return allowed[:threads]


def parse_threads(text: str) -> list[int]:
    """``"1,2"`` -> [1, 2]; ValueError unless every count is an integer >= 1."""
    counts = [int(t) for t in text.split(",") if t.strip()]
    if not counts or min(counts) < 1:
        raise ValueError(f"thread counts must be integers >= 1, got {text!r}")
    return counts


def launch(
    script: str, argv: Sequence[str], threads: int, pin_core: int, *, capture: bool = True
) -> dict[str, Any]:
    """Run ``script --worker ... --threads T`` in a fresh process; its last stdout line, parsed as JSON.

    With ``capture=False`` the child's output goes straight to this terminal (the profile) and the result is
    ``{}``. A child that fails gives ``{"error": <the end of its stderr>}`` instead of stopping the benchmark.
    """
    cores = cores_for(threads, pin_core)
    cmd = [sys.executable, script, *argv, "--threads", str(threads)]
    proc = subprocess.run(
        cmd,
        env=worker_env(threads),
        capture_output=capture,
        text=True,
        check=False,
        timeout=WORKER_TIMEOUT_S,
        preexec_fn=lambda: os.sched_setaffinity(0, cores),
    )
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-3:]  # None when not captured
        return {"error": " | ".join(tail) or f"exit status {proc.returncode}"}
    if not capture:
        return {}
    return json.loads(proc.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Job:
    """One child per round: implementation ``impl`` at ``threads`` threads, started with ``argv``."""

    impl: str
    threads: int
    argv: tuple[str, ...]

    @property
    def key(self) -> Key:
        return self.impl, self.threads


def run_rounds(
    script: str, jobs: Sequence[Job], rounds: int, pin_core: int, label: str
) -> dict[Key, list[dict]]:
    """Every job once per round, the order rotated each round; the children's results by (impl, threads)."""
    results: dict[Key, list[dict]] = {job.key: [] for job in jobs}
    for r in range(rounds):
        t0 = time.perf_counter()
        shift = r * len(jobs) // rounds
        for job in [*jobs[shift:], *jobs[:shift]]:
            results[job.key].append(launch(script, job.argv, job.threads, pin_core))
        print(
            f"  {label}: round {r + 1}/{rounds}, {len(jobs)} processes, {time.perf_counter() - t0:.0f}s",
            file=sys.stderr,
            flush=True,
        )
    return results


def errors(results: dict[Key, list[dict]]) -> list[str]:
    """One line per (impl, threads) whose child failed in some round, with the first failure."""
    out = []
    for (impl, threads), rs in results.items():
        failed = [r["error"] for r in rs if "error" in r]
        if failed:
            out.append(f"{impl} {threads}T failed in {len(failed)} of {len(rs)} rounds: {failed[0]}")
    return out


def env_lines() -> list[str]:
    """The machine, and what the parent changed in its children's environment."""
    unset = [f"{k}={os.environ[k]}" for k in OPENBLAS_VARS if k in os.environ]
    machine = (
        f"python {platform.python_version()}, cpu: {platform.machine()} {_cpu_model()}, "
        f"os.cpu_count() = {os.cpu_count()}, cores allowed = {sorted(os.sched_getaffinity(0))}, "
        f"load average {loadavg()}"
    )
    what = (
        f"unset {', '.join(unset)}"
        if unset
        else f"{' and '.join(OPENBLAS_VARS)} were not set; they stay unset"
    )
    workers = (
        f"workers: one process per (implementation, thread count); {', '.join(THREAD_VARS)} = T; at T = 1 "
        f"XLA_FLAGS += '{XLA_ONE_THREAD}' and pinned to one core, else on T cores (sched_setaffinity)"
    )
    return [machine, f"parent: {what} in the workers' environment (they pin old OpenBLAS kernels)", workers]


def loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ------------------------------------------------------------------------------ the parent: statistics
@dataclass(frozen=True)
class Spread:
    """The median of a few measurements and their range."""

    median: float
    lo: float
    hi: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        vs = list(values)
        return cls(statistics.median(vs), min(vs), max(vs))

    @property
    def pct(self) -> float:
        """Half the range, in percent of the median."""
        return 50.0 * (self.hi - self.lo) / self.median if self.median else 0.0

    def fmt(self, scale: float = 1.0, unit: str = "", digits: int = 1) -> str:
        return f"{self.median / scale:,.{digits}f}{unit} ±{self.pct:.0f}%"


def spreads(results: dict[Key, list[dict]], value: Callable[[dict], float | None]) -> dict[Key, Spread]:
    """Spread of ``value(result)`` over the rounds, for every (impl, threads) that has values."""
    out = {}
    for key, rs in results.items():
        vs = [v for r in rs if "error" not in r and (v := value(r)) is not None]
        if vs:
            out[key] = Spread.of(vs)
    return out


def best_threads(stats: dict[Key, Spread], impl: str) -> Key | None:
    """The (impl, threads) with the highest median, or None when ``impl`` was not measured."""
    keys = [k for k in stats if k[0] == impl]
    return max(keys, key=lambda k: stats[k].median) if keys else None


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    if title:
        print(title)
    line = "  ".join(
        str(h).rjust(w) if i else str(h).ljust(w) for i, (h, w) in enumerate(zip(header, widths))
    )
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))))


def verdict(ok: bool | None) -> str:
    return "SKIP" if ok is None else ("PASS" if ok else "FAIL")


def library_lines(results: dict[Key, list[dict]]) -> list[str]:
    """What each implementation's child reported about its library, once per implementation."""
    seen: dict[str, str] = {}
    for (impl, _), rs in results.items():
        for r in rs:
            if "lib" in r and impl not in seen:
                imported = ", ".join(r["imported"]) or "none"
                seen[impl] = f"{r['lib']}; imported {imported} of {', '.join(MEASURED_LIBRARIES)}"
    return [f"  {impl}: {lib}" for impl, lib in seen.items()]


# ------------------------------------------------------------------------------ the child: workers
def run_task(args: Any, tasks: dict[str, Callable[[], dict[str, Any]]]) -> None:
    """In a worker process: run ``args.task`` and print its JSON line with the worker's name and threads."""
    emit({"impl": args.worker, "threads": args.threads, **tasks[args.task]()})


def available(script: str, pin_core: int, impls: Sequence[str],
              reasons: Callable[[dict[str, Any]], dict[str, str | None]]) -> tuple[list[str], dict[str, str]]:
    """The implementations to measure, and why each other one is left out: ``reasons(probe)`` maps an
    implementation to why it cannot run (None: it can), from what a backprop worker's probe found."""
    probe = launch(script, ["--worker", "backprop-loop", "--task", "probe"], 1, pin_core)
    if "error" in probe:
        raise RuntimeError(f"backprop cannot be imported: {probe['error']}")
    why = reasons(probe)
    return [k for k in impls if why.get(k) is None], {k: w for k in impls if (w := why.get(k))}


def emit(result: dict[str, Any]) -> None:
    """A worker's answer to its parent: one JSON line, with its cores and the libraries it imported."""
    imported = [m for m in MEASURED_LIBRARIES if m in sys.modules]
    print(json.dumps({**result, "cores": sorted(os.sched_getaffinity(0)), "imported": imported}), flush=True)


def numpy_threads(threads: int) -> str:
    """Limit NumPy's BLAS to ``threads`` threads in this process; a line naming the BLAS and its kernels."""
    import numpy as np
    import threadpoolctl

    threadpoolctl.threadpool_limits(limits=threads)
    blas = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    desc = ", ".join(
        f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} "
        f"num_threads={i.get('num_threads')}"
        for i in blas
    )
    return f"numpy {np.__version__} ({desc or 'no BLAS found'})"


def torch_threads(threads: int) -> str:
    """Limit PyTorch to ``threads`` threads in this process; a line naming it."""
    import torch

    torch.set_num_threads(threads)
    mkl = torch.backends.mkl.is_available()
    return f"torch {torch.__version__} (num_threads={torch.get_num_threads()}, mkl={mkl})"


def compiled_kernels() -> str:
    """Whether backprop's compiled kernels (the numba extra) can run in this process, without importing numba
    (the memory benchmark counts what loading them costs)."""
    if os.environ.get("BACKPROP_NUMBA", "1") == "0":
        return "compiled kernels off (BACKPROP_NUMBA=0)"
    return "compiled kernels (numba)" if importlib.util.find_spec("numba") else "no compiled kernels (no numba)"


def backprop_train_step(bp: Any, model: Any, opt: Any) -> Callable[[Any, Any], Any]:
    """The training step of the idiomatic loop, as a function (what ``bp.jit`` captures)."""
    cross_entropy = bp.nn.functional.cross_entropy

    def train_step(xb: Any, yb: Any) -> Any:
        opt.zero_grad()
        loss = cross_entropy(model(bp.Tensor(xb)), yb)
        loss.backward()
        opt.step()
        return loss

    return train_step


def backprop_epoch(
    bp: Any, step: Callable[[Any, Any], Any], x: Any, y: Any, batch_size: int, rng: Any
) -> tuple[float, float]:
    """One epoch of ``step`` over a ``DataLoader`` of (x, y) shuffled by ``rng``: (seconds, last loss)."""
    t0 = time.perf_counter()
    for xb, yb in bp.DataLoader(x, y, batch_size=batch_size, shuffle=True, seed=rng):
        loss = step(xb, yb)
    return time.perf_counter() - t0, float(loss.item())


def torch_epoch(torch: Any, model: Any, opt: Any, X: Any, Y: Any, batch_size: int) -> tuple[float, float]:
    """One epoch of the usual PyTorch loop over tensors (X, Y), shuffled by randperm: (seconds, last loss)."""
    F = torch.nn.functional
    t0 = time.perf_counter()
    perm = torch.randperm(len(X))
    for start in range(0, len(X), batch_size):
        idx = perm[start : start + batch_size]
        opt.zero_grad()
        loss = F.cross_entropy(model(X[idx]), Y[idx])
        loss.backward()
        opt.step()
    return time.perf_counter() - t0, float(loss.item())


def cpu_seconds() -> float:
    """CPU time (user + system) this process used so far, all its threads together."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def warmup_samples(n: int, batch_size: int) -> int:
    """Samples of a warm-up epoch before timing ``n``: a few hundred steps, and the same last-batch size."""
    full = max(min(200 * batch_size, 10000), 20 * batch_size) // batch_size * batch_size
    return min(n, full + n % batch_size)
