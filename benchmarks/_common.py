"""What the benchmarks share: the machine and library versions they ran on, tables and verdicts."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import threadpoolctl

OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _torch():
    """PyTorch, or None when it is not installed (its rows are then skipped)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


@contextlib.contextmanager
def thread_limits(threads: int) -> Iterator[Any]:
    """NumPy's BLAS (threadpoolctl) and PyTorch's pool on ``threads`` threads; yields torch, or None without it."""
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(threads)
    with threadpoolctl.threadpool_limits(limits=threads):
        yield torch


def environment_lines(threads: int, fair_command: str) -> list[str]:

    import backprop as bp

    torch = _torch()
    lines = [
        (f"python {platform.python_version()}, numpy {np.__version__}, "
         f"torch {torch.__version__ if torch else 'not installed'}, backprop {bp.__version__}, "
         f"threadpoolctl {threadpoolctl.__version__}"),
        (f"cpu: {platform.machine()} {_cpu_model()}, os.cpu_count() = {os.cpu_count()}, "
         f"threads used = {threads}, load average {_loadavg()}"),
    ]
    for info in sorted(threadpoolctl.threadpool_info(), key=lambda i: i.get("user_api") != "blas"):
        if info.get("user_api") == "blas":
            lines.append(f"numpy BLAS: {info.get('internal_api')} {info.get('version')}, "
                         f"architecture={info.get('architecture')}, num_threads={info.get('num_threads')} "
                         f"({os.path.basename(info.get('filepath', ''))})")
        else:
            lines.append(f"thread pool: {info.get('internal_api')} ({info.get('user_api')}), "
                         f"num_threads={info.get('num_threads')} ({os.path.basename(info.get('filepath', ''))})")
    if torch is not None:
        lines.append(f"torch: num_threads={torch.get_num_threads()}, mkl={torch.backends.mkl.is_available()}, "
                     f"mkldnn={torch.backends.mkldnn.is_available()}")
    set_vars = {k: os.environ[k] for k in OPENBLAS_VARS if k in os.environ}
    if set_vars:
        lines.append("environment: " + ", ".join(f"{k}={v}" for k, v in set_vars.items())
                     + " are SET: they pin old-OpenBLAS tuning and slow a current NumPy (not PyTorch).")
        lines.append(f"  for the fair comparison run: {fair_command}")
    else:
        lines.append("environment: " + " and ".join(OPENBLAS_VARS) + " are unset (the fair comparison)")
    return lines


def _loadavg() -> str:
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


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    if title:
        print(title)
    line = "  ".join(str(h).rjust(w) if i else str(h).ljust(w) for i, (h, w) in enumerate(zip(header, widths)))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))))


def verdict(ok: bool | None) -> str:
    return "SKIP" if ok is None else ("PASS" if ok else "FAIL")


# ---------------------------------------------------------------------------------- the timed epochs
def backprop_epoch(bp: Any, model: Any, opt: Any, x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[float, float]:
    """One epoch of the idiomatic backprop loop over (x, y): (seconds, the last batch's loss)."""
    cross_entropy = bp.nn.functional.cross_entropy
    t0 = time.perf_counter()
    loader = bp.DataLoader(x, y, batch_size=batch_size, shuffle=True, seed=0)
    for xb, yb in loader:
        opt.zero_grad()
        loss = cross_entropy(model(bp.Tensor(xb)), yb)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0, float(loss.item())


def torch_epoch(torch: Any, model: Any, opt: Any, X: Any, Y: Any, batch_size: int) -> tuple[float, float]:
    """One epoch of the usual PyTorch loop over tensors (X, Y), shuffled with randperm: (seconds, last loss)."""
    F = torch.nn.functional
    t0 = time.perf_counter()
    perm = torch.randperm(len(X))
    for start in range(0, len(X), batch_size):
        idx = perm[start:start + batch_size]
        opt.zero_grad()
        loss = F.cross_entropy(model(X[idx]), Y[idx])
        loss.backward()
        opt.step()
    return time.perf_counter() - t0, float(loss.item())
