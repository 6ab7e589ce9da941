"""Does a change to the training plumbing cost speed? ``fit`` and the hand-written loop, two source trees compared.

Run from the repository root (compare this tree with another checkout, e.g. a ``git worktree`` of main)::

    git worktree add /tmp/before <commit>
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/loop_speed.py --before /tmp/before/src

Every measurement runs in its own process (one library, one source tree, one thread count per process:
after a BLAS call, OpenBLAS's threads keep spinning and disturb whatever runs next in the same process);
1-thread runs are pinned to one core. The trees alternate, round after round, so that a noisy moment on the
machine hits both; the table gives the median samples/s of the rounds and their spread (min-max), and the
ratio after/before. Workloads: MLP 784-256-256-10 on 20,000 MNIST-shaped samples at B=32 and B=128 (one
epoch of ``bp.fit`` and of the idiomatic loop ``zero_grad / forward / loss / backward / step``), and
LeNet-5 at B=128 on 6,000 28x28 samples (``bp.fit``); each process times the best of 3 epochs after one
warm-up epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKLOADS = [("mlp", "fit", 32), ("mlp", "loop", 32), ("mlp", "fit", 128), ("mlp", "loop", 128),
             ("lenet", "fit", 128)]


def child(kind: str, how: str, batch: int, threads: int) -> None:
    """One measurement in this process: the best of 3 timed epochs after a warm-up epoch; prints samples/s."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    import numpy as np

    import backprop as bp
    from backprop.nn import functional as F

    rng = np.random.default_rng(0)
    n = 20000 if kind == "mlp" else 6000
    x = rng.random((n, 784), dtype=np.float32)  # LeNet-5 unflattens its 784 inputs to 1x28x28
    y = rng.integers(0, 10, n)
    bp.manual_seed(0)
    model = (bp.nn.Sequential(bp.nn.Linear(784, 256), bp.nn.ReLU(), bp.nn.Linear(256, 256), bp.nn.ReLU(),
                              bp.nn.Linear(256, 10)) if kind == "mlp" else bp.nn.models.lenet5())
    opt = bp.optim.SGD(model.parameters(), lr=0.01)

    def epoch() -> float:
        t = time.perf_counter()
        if how == "fit":
            bp.fit(model, x, y, optimizer=opt, batch_size=batch, epochs=1, verbose=0, metrics=())
        else:
            for xb, yb in bp.DataLoader(x, y, batch_size=batch):
                opt.zero_grad()
                loss = F.cross_entropy(model(bp.Tensor(xb)), yb)
                loss.backward()
                opt.step()
        return time.perf_counter() - t

    epoch()  # NOTE: the first epoch pays for first touches of memory and the allocator's warm-up
    best = min(epoch() for _ in range(3))
    print(json.dumps({"samples_per_s": n / best, "file": bp.__file__}))


def measure(src: str, kind: str, how: str, batch: int, threads: int) -> float:
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "BACKPROP_MALLOC_TUNING": "1"}
    cmd = [sys.executable, __file__, "--child", kind, how, str(batch), str(threads)]
    if threads == 1:
        cmd = ["taskset", "-c", "0", *cmd]
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout.splitlines()[-1])
    if not Path(out["file"]).resolve().is_relative_to(Path(src).resolve()):  # the tree asked for, not another
        raise RuntimeError(f"{src}: the child imported backprop from {out['file']}")
    return out["samples_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", help="the src/ folder of the other checkout (required)")
    ap.add_argument("--after", default=str(HERE.parent / "src"), help="the src/ folder to test (default: this tree)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--only", default="", help="run the workloads whose name contains this, e.g. 'fit B=32'")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, how, batch, threads = args.child
        child(kind, how, int(batch), int(threads))
        return
    if not args.before:
        ap.error("--before SRC is required: the src/ folder of the checkout to compare with")
    results: dict[tuple, dict[str, list[float]]] = {}
    for r in range(args.rounds):
        for kind, how, batch in WORKLOADS:
            if args.only not in f"{kind} {how} B={batch}":
                continue
            for threads in map(int, args.threads.split(",")):
                order = ("before", "after") if r % 2 == 0 else ("after", "before")
                for which in order:
                    src = args.before if which == "before" else args.after
                    v = measure(src, kind, how, batch, threads)
                    results.setdefault((kind, how, batch, threads), {}).setdefault(which, []).append(v)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"{'workload':<24} {'threads':>7} {'before (median, min-max)':>30} {'after (median, min-max)':>30} "
          f"{'after/before':>12}")
    for (kind, how, batch, threads), d in results.items():
        b, a = d["before"], d["after"]
        cell = lambda v: f"{statistics.median(v):>10,.0f} ({min(v):,.0f}-{max(v):,.0f})"  # noqa: E731
        print(f"{kind + ' ' + how + ' B=' + str(batch):<24} {threads:>7} {cell(b):>30} {cell(a):>30} "
              f"{statistics.median(a) / statistics.median(b):>11.3f}x")


if __name__ == "__main__":
    main()
