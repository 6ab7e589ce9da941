"""``backprop --workers N``: the same command run data-parallel on N MPI ranks under ``mpiexec``.

The launcher re-runs the command line without ``--workers`` under ``mpiexec -n N``, streams the ranks' output
as it comes, and on failure names the rank (and host) that died, from the table rank 0 wrote.

>>> world_size() >= 1
True
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path
from typing import Any

from backprop import distributed
from backprop.cli.options import CLIError

RANK_TABLE_ENV = "BACKPROP_RANK_TABLE"  # where rank 0 writes [(rank, pid, host)] for --workers


def world_size() -> int:
    """The number of ranks when started by mpiexec (MPICH, Open MPI or PMIx set these), else 1."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def launch(n: int) -> int:
    """``--workers N``: run this same command under ``mpiexec -n N`` (the MPI extra) and return its exit code."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise CLIError("--workers needs MPI: pip install 'backprop[mpi]' (mpi4py and an MPI library)") from None
    beside = Path(sysconfig.get_path("scripts")) / "mpiexec"
    mpiexec = str(beside) if beside.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        raise CLIError("--workers needs an mpiexec launcher: pip install mpich (or install MPI) and retry")
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        elif not a.startswith("--workers="):
            argv.append(a)
    with tempfile.TemporaryDirectory(prefix="backprop-workers-") as tmp:
        table_file = Path(tmp) / "ranks.json"
        env = {**os.environ, RANK_TABLE_ENV: str(table_file)}
        proc = subprocess.Popen([mpiexec, "-n", str(n), sys.executable, "-m", "backprop", *argv], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        tails = [_Tail(), _Tail()]
        pumps = [threading.Thread(target=_pump, args=(stream, out, tail), daemon=True)
                 for stream, out, tail in ((proc.stdout, sys.stdout, tails[0]), (proc.stderr, sys.stderr, tails[1]))]
        for t in pumps:
            t.start()
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))  # pass it on
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # Ctrl-C reached mpiexec too (same process group): let it stop the ranks
            code = proc.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
        for t in pumps:
            t.join()
        if code != 0 and table_file.exists():
            why = distributed.explain_failure(tails[0].text() + tails[1].text(), json.loads(table_file.read_text()))
            if why is not None:
                print(f"backprop: {why}", file=sys.stderr, flush=True)
    return code


class _Tail:
    """The last bytes written to a stream (mpiexec's failure report is at the end)."""

    def __init__(self, keep: int = 1 << 16) -> None:
        self.keep, self.data = keep, b""

    def add(self, chunk: bytes) -> None:
        self.data = (self.data + chunk)[-self.keep:]

    def text(self) -> str:
        return self.data.decode(errors="replace")


def _pump(stream: Any, out: Any, tail: _Tail) -> None:
    """Copy a child's output to ours as it comes (progress lines stay live), keeping its tail."""
    while chunk := os.read(stream.fileno(), 1 << 14):
        tail.add(chunk)
        out.buffer.write(chunk) if hasattr(out, "buffer") else out.write(chunk.decode(errors="replace"))
        out.flush()


