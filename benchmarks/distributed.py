"""Data-parallel throughput: 1 process x 2 threads vs 2 MPI ranks x 1 thread, Allreduce time, a scaling model.

    python benchmarks/distributed.py            # launches ``mpiexec -n 2`` itself (needs mpi4py + mpich)

Measures training steps (forward, backward, gradient Allreduce, SGD step) of the MLP 784-256-256-10 and
LeNet-5 at a global batch of 128 on random data, and the time of one gradient Allreduce per model. The
scaling model: a step on P ranks with b samples each takes ``b * c + T_ar(P)``, c the measured compute time
per sample (1 thread), ``T_ar = 2 (P-1)/P * bytes / bandwidth + 2 (P-1) * latency`` (ring allreduce).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

BATCH = 128
LATENCY = 10e-6  # seconds per ring hop (TCP over Ethernet; RDMA is ~2 us)


def build(kind: str):
    import backprop as bp

    bp.manual_seed(0)
    if kind == "mlp":
        return bp.nn.Sequential(bp.nn.Linear(784, 256), bp.nn.ReLU(), bp.nn.Linear(256, 256), bp.nn.ReLU(),
                                bp.nn.Linear(256, 10))
    return bp.nn.models.lenet5()


def measure(kind: str, steps: int, dist=None) -> dict:
    """Seconds per global step and per-phase times, on this process (a rank when ``dist`` is given)."""
    import backprop as bp
    from backprop.engine.tensor import Tensor
    from backprop.nn import functional as F

    model = build(kind)
    opt = bp.optim.SGD(model.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, 784)).astype(np.float32)
    y = rng.integers(0, 10, BATCH)
    if dist is not None:
        from backprop.distributed import Trainer

        dist = Trainer(model, opt, BATCH, comm=dist)
        dist.broadcast()
    compute = comm_t = 0.0
    for i in range(steps + 3):  # 3 warm-up steps
        if i == 3:
            if dist is not None:
                dist.comm.Barrier()
            t0, compute, comm_t = time.perf_counter(), 0.0, 0.0
        xb, yb = (x, y) if dist is None else dist.shard(x, y)
        a = time.perf_counter()
        opt.zero_grad()
        loss = F.cross_entropy(model(Tensor(xb)), yb)
        if dist is None:
            loss.backward()
        else:
            loss.backward(np.asarray(dist.share, dtype=loss.dtype))  # scaled by the rank's share of the batch
        b = time.perf_counter()
        if dist is not None:
            dist.allreduce_gradients()
        c = time.perf_counter()
        opt.step()
        compute += (b - a) + (time.perf_counter() - c)
        comm_t += c - b
    total = time.perf_counter() - t0
    out = {"kind": kind, "params": model.num_parameters(), "step_s": total / steps,
           "compute_s": compute / steps, "allreduce_in_step_s": comm_t / steps,
           "samples_per_s": BATCH * steps / total}
    if dist is not None:  # the Allreduce alone, the ranks synchronised first
        reps = 200
        for p in model.parameters():
            p.grad = np.ones_like(p.data)
        dist.comm.Barrier()
        t = time.perf_counter()
        for _ in range(reps):
            dist.allreduce()
        out["allreduce_s"] = (time.perf_counter() - t) / reps
        out["allreduce_bytes"] = dist.allreduce.nbytes
        out["allreduce_calls_per_step"] = len(dist.allreduce.buckets)
    return out


def worker(steps: int) -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    res = [measure(kind, steps, comm) for kind in ("mlp", "lenet")]
    if comm.Get_rank() == 0:
        print("RESULT " + json.dumps(res), flush=True)


def mpiexec() -> str:
    here = Path(sysconfig.get_path("scripts")) / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if found is None:
        sys.exit("mpiexec not found: pip install mpi4py mpich")
    return found


def ring_time(nbytes: int, p: int, gbit: float) -> float:
    return 2 * (p - 1) / p * nbytes / (gbit * 1e9 / 8) + 2 * (p - 1) * LATENCY


def main() -> None:
    steps = int(os.environ.get("STEPS", "100"))
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(steps)
        return
    from backprop.engine.threads import set_num_threads

    set_num_threads(2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "BACKPROP_NUM_THREADS": "1"}
    # NOTE: the two set-ups alternate, round after round, so that other load on a shared machine hits both
    # alike; each keeps its fastest round (load only ever slows a run down) and the median is shown too
    rounds = int(os.environ.get("REPEATS", "5"))
    runs: dict[str, dict[str, list[dict]]] = {"single": {"mlp": [], "lenet": []}, "ranks": {"mlp": [], "lenet": []}}
    for _ in range(rounds):
        for kind in ("mlp", "lenet"):
            runs["single"][kind].append(measure(kind, steps))
        out = subprocess.run([mpiexec(), "-n", "2", sys.executable, __file__, "--worker"], env=env,
                             capture_output=True, text=True, check=True).stdout
        line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
        for r in json.loads(line[7:]):
            runs["ranks"][r["kind"]].append(r)

    def fastest(rs: list[dict]) -> dict:
        return max(rs, key=lambda r: r["samples_per_s"])

    def median(rs: list[dict]) -> float:
        return float(np.median([r["samples_per_s"] for r in rs]))

    single = {k: fastest(v) for k, v in runs["single"].items()}
    ranks = {k: fastest(v) for k, v in runs["ranks"].items()}

    print(f"## Measured (global batch {BATCH}, float32, SGD; {os.cpu_count()} CPUs)\n")
    print(f"best of {rounds} alternating rounds of {steps} steps (median in brackets)\n")
    print("| model | params | 1 proc x 2 threads (samples/s) | 2 ranks x 1 thread (samples/s) | speed-up "
          "| Allreduce per step (ms) | Allreduce alone (ms) | buckets |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in ("mlp", "lenet"):
        s, r = single[kind], ranks[kind]
        ms, mr = median(runs["single"][kind]), median(runs["ranks"][kind])
        print(f"| {kind} | {r['params']:,} | {s['samples_per_s']:,.0f} ({ms:,.0f}) | {r['samples_per_s']:,.0f} "
              f"({mr:,.0f}) | {r['samples_per_s'] / s['samples_per_s']:.2f}x ({mr / ms:.2f}x) "
              f"| {1e3 * r['allreduce_in_step_s']:.3f} "
              f"| {1e3 * r['allreduce_s']:.3f} ({r['allreduce_bytes'] / 1e6:.2f} MB) "
              f"| {r['allreduce_calls_per_step']} |")
    print(f"\n## Scaling model (ring allreduce, {LATENCY * 1e6:.0f} us per hop; compute per sample from the "
          "2-rank run)\n")
    for kind in ("mlp", "lenet"):
        r = ranks[kind]
        c = r["compute_s"] / (BATCH / 2)  # seconds per sample on one rank, one thread
        print(f"### {kind}: {r['params']:,} parameters ({r['allreduce_bytes'] / 1e6:.2f} MB of gradients), "
              f"{c * 1e6:.1f} us per sample\n")
        print("| P | weak: 128/rank, 10 Gbit/s samples/s (eff.) | 100 Gbit/s | strong: global 1024, 10 Gbit/s "
              "| 100 Gbit/s |")
        print("|---|---|---|---|---|")
        for p in (2, 4, 8, 16, 32, 64):
            cells = []
            for per_rank in (BATCH, None):
                b = per_rank if per_rank else 1024 / p
                for gbit in (10, 100):
                    step = b * c + ring_time(r["allreduce_bytes"], p, gbit)
                    rate = p * b / step
                    cells.append(f"{rate:,.0f} ({b * c / step:.0%})")
            print(f"| {p} | " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main()
