"""A real 2-host MPI training run on one machine: two network namespaces joined by a veth pair.

    python benchmarks/multihost.py                 # as root; needs ip (iproute2), mpi4py and mpiexec (mpich)
    python benchmarks/multihost.py --netmod ofi    # MPICH's libfabric netmod instead of UCX
    python benchmarks/multihost.py --no-identity --transports any   # the shortcut the checks catch: FAIL

Host A and host B are network namespaces ``bpmh<pid>a`` and ``bpmh<pid>b``; the only link between them is a
veth pair (10.250.0.1/24 in A, 10.250.0.2/24 in B). ``mpiexec -hosts 10.250.0.1:1,10.250.0.2:1 -n 2`` runs
inside A with hydra's ssh launcher replaced by a small script that runs hydra's proxy command inside the
namespace owning the address (``ip netns exec <ns> sh -c <command>``) instead of over ssh. The job trains a
float64 MLP with ``bp.fit(..., distributed=True)`` for 2 epochs; the script then checks that

* the weights and the History's loss match a single-process ``bp.fit`` (same seed, same global batch) within
  1e-12 relative, and both ranks ended with the same weights;
* each rank ran in its own namespace, hydra started B's proxy through the launcher, and MPICH put each rank
  on its own node (its ``COMM_TYPE_SHARED`` communicator has size 1);
* at least ``steps x gradient bytes`` crossed the veth in each direction (its byte counters, before/after):
  the gradients really went over the network, not through shared memory or loopback.

Everything is torn down in a ``finally`` (processes left in the namespaces killed, ``ip netns del``, which
also deletes the veth), on failure, Ctrl-C or SIGTERM too. Exit status: 0 PASS, 1 FAIL, 77 skipped (the
reason is printed). :func:`run` is what ``tests/test_multihost.py`` calls.

What it takes for MPI to treat the namespaces as two hosts (found by experiment, mpich 5.0.2 PyPI wheel:
ch4 with the ucx (default) and ofi netmods):

* MPICH's node detection: the node of each rank comes from hydra's PMI process mapping, one node per entry
  of the host list (each host gets its own ``hydra_pmi_proxy``), not from the hostname. Even with the same
  hostname (``vm``) in both namespaces each rank's node-local communicator has size 1, so MPICH's own
  shared-memory path is not used between them.
* UCX's: UCX decides "same machine" by itself, from the kernel's boot id (``/proc/sys/kernel/random/boot_id``,
  the same in every namespace of one kernel); a different hostname (UTS namespace) changes nothing. Seeing
  one machine, it moves the messages through SysV shared memory and cross-memory attach (process_vm_readv):
  only ~16-21 KB (wire-up) crossed the veth for an 8 MB Allreduce. Two remedies, both verified here:
  - host identity (default): each host runs in its own mount + UTS namespace with its own boot id
    (a bind mount over that file) and hostname, as two real machines have: MPI runs with its defaults, and
    UCX picks TCP over the veth by itself;
  - ``--transports tcp`` (used automatically when the identity cannot be set up): ``UCX_TLS=tcp,self``
    (``self``: a rank's messages to itself), or for ``--netmod ofi`` ``FI_PROVIDER=tcp``.
* libfabric (``--netmod ofi``, i.e. ``MPIR_CVAR_CH4_NETMOD=ofi``): MPICH picks the ``tcp;ofi_rxm`` provider
  here by itself (the wheel's libfabric also has the node-local ``shm``/``sm2`` providers, but MPICH wants a
  network one: node-local traffic is its own shared memory's job, off between two nodes), so the traffic
  crosses the veth with or without ``FI_PROVIDER=tcp``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import select
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Addresses exist only inside this run's two namespaces, so they cannot clash with anything else (another
# run's pair included): every pair is its own isolated network.
ADDR_A, ADDR_B, PREFIX = "10.250.0.1", "10.250.0.2", 24
NS_PREFIX = "bpmh"  # namespaces are bpmh<tag>a / bpmh<tag>b, tag = the pid by default
BOOT_ID = "/proc/sys/kernel/random/boot_id"
N_SAMPLES, FEATURES, CLASSES, BATCH, EPOCHS, SEED = 610, 32, 4, 40, 2, 5  # 16 steps/epoch, last one 10 samples
RTOL = 1e-12
CMD_TIMEOUT = 20  # seconds for each ip command, probe and check


class Unavailable(RuntimeError):
    """The run cannot happen here (not root, no ip/mpiexec/mpi4py, namespaces or veth refused): skip it."""


# ------------------------------------------------------------------------------------- data and model
def make_data() -> tuple[np.ndarray, np.ndarray]:
    """The training set: float64 Gaussian features, integer classes (the same on every rank)."""
    rng = np.random.default_rng(1)
    return rng.normal(size=(N_SAMPLES, FEATURES)), rng.integers(0, CLASSES, N_SAMPLES)


def make_model() -> Any:
    """A 32-128-64-4 tanh MLP in float64 (12,740 parameters), initialised from ``bp.manual_seed(0)``."""
    import backprop as bp

    bp.manual_seed(0)
    nn = bp.nn
    return nn.Sequential(nn.Linear(FEATURES, 128), nn.Tanh(), nn.Linear(128, 64), nn.Tanh(),
                         nn.Linear(64, CLASSES)).double()


def train(model: Any, distributed: bool) -> Any:
    """``bp.fit`` with the settings shared by the 2-host run and the single-process reference."""
    import backprop as bp

    x, y = make_data()
    return bp.fit(model, x, y, optimizer="adam", lr=0.01, batch_size=BATCH, epochs=EPOCHS, seed=SEED,
                  verbose=0, distributed=distributed)


def worker(out: str) -> None:
    """One rank of the MPI job (``multihost.py --worker OUT``): train, then rank 0 saves the results."""
    from mpi4py import MPI

    from backprop.distributed import init

    ctx = init()
    node = ctx.comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks MPICH considers on this rank's node
    me = {"rank": ctx.rank, "netns": os.readlink("/proc/self/ns/net"), "hostname": os.uname().nodename,
          "boot_id": Path(BOOT_ID).read_text().strip(), "node_size": node.Get_size(), "pid": os.getpid()}
    node.Free()
    model = make_model()
    ctx.comm.Barrier()
    t0 = time.perf_counter()
    h = train(model, distributed=True)
    seconds = time.perf_counter() - t0
    ranks = ctx.comm.gather(me, root=0)
    weights = ctx.comm.gather([p.data for p in model.parameters()], root=0)
    if ctx.rank == 0:
        same = all(np.array_equal(a, b) for w in weights[1:] for a, b in zip(weights[0], w))
        np.savez(out, loss=np.asarray(h.history["loss"]), iterations=h.iterations, samples=h.samples_seen,
                 seconds=seconds, same=same, ranks=json.dumps(ranks),
                 **{f"p{i}": w for i, w in enumerate(weights[0])})


# ------------------------------------------------------------------------------------------ the hosts
@dataclass
class Hosts:
    """Two namespaces joined by a veth pair: ``ns[i]`` owns interface ``ifname[i]`` with address ``addr[i]``."""

    ns: tuple[str, str]
    ifname: tuple[str, str]
    addr: tuple[str, str] = (ADDR_A, ADDR_B)
    created: list[str] = field(default_factory=list)  # namespaces created so far (what teardown deletes)


def _ip(*args: str) -> str:
    """Run ``ip ARGS``; raise :class:`Unavailable` with ip's message if it fails."""
    try:
        r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=CMD_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Unavailable(f"`ip {' '.join(args)}` failed: {e}") from e
    if r.returncode != 0:
        raise Unavailable(f"`ip {' '.join(args)}` failed: {(r.stderr or r.stdout).strip()}")
    return r.stdout


def mpiexec() -> str | None:
    """The mpich wheel's launcher beside this python, else the one on PATH."""
    here = Path(sysconfig.get_path("scripts")) / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def _have_mpi4py() -> bool:
    return importlib.util.find_spec("mpi4py") is not None


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _which(name: str) -> str | None:
    return shutil.which(name)


def requirements_missing() -> str | None:
    """Why this run cannot happen here (a reason naming what is missing), or None."""
    if not _have_mpi4py():
        return "mpi4py is not installed (pip install mpi4py mpich)"
    if mpiexec() is None:
        return "mpiexec not found (pip install mpich)"
    if not _is_root():
        return "not root: creating network namespaces needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN)"
    if _which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


def create_hosts(tag: str | None = None) -> Hosts:
    """Create the two namespaces and the veth pair, bring lo and the veths up; :class:`Unavailable` on failure.

    What was created is deleted again before raising."""
    tag = tag or str(os.getpid())
    hosts = Hosts(ns=(f"{NS_PREFIX}{tag}a", f"{NS_PREFIX}{tag}b"), ifname=(f"mh{tag}a"[-15:], f"mh{tag}b"[-15:]))
    try:
        for ns in hosts.ns:
            _ip("netns", "add", ns)
            hosts.created.append(ns)
        # NOTE: both ends are created directly inside their namespaces, so the names never exist (and cannot
        # clash) in the root namespace.
        _ip("link", "add", hosts.ifname[0], "netns", hosts.ns[0], "type", "veth",
            "peer", "name", hosts.ifname[1], "netns", hosts.ns[1])
        for ns, ifname, addr in zip(hosts.ns, hosts.ifname, hosts.addr):
            _ip("-n", ns, "addr", "add", f"{addr}/{PREFIX}", "dev", ifname)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", ifname, "up")
    except BaseException:
        teardown(hosts)
        raise
    return hosts


def ns_pids(ns: str) -> list[int]:
    """The processes living in namespace ``ns``."""
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=CMD_TIMEOUT,
                       check=False)
    return [int(p) for p in r.stdout.split() if p.isdigit()]


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back meanwhile (a second Ctrl-C must not cut the teardown short)."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a signal that came meanwhile is delivered now


def teardown(hosts: Hosts) -> list[str]:
    """Kill what still runs in the namespaces, delete them (and with them the veth); never raises.

    Returns the problems met (empty when everything went)."""
    with _signals_deferred():
        return _teardown(hosts)


def _teardown(hosts: Hosts) -> list[str]:
    problems = []
    for ns in list(hosts.created):
        try:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                pids = ns_pids(ns)
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                deadline = time.monotonic() + 3
                while pids and ns_pids(ns) and time.monotonic() < deadline:
                    time.sleep(0.05)
            r = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True, timeout=CMD_TIMEOUT,
                               check=False)
            if r.returncode != 0:
                problems.append(f"ip netns del {ns}: {r.stderr.strip()}")
            hosts.created.remove(ns)
        except Exception as e:  # noqa: BLE001 - teardown goes on with the other namespace
            problems.append(f"{ns}: {e!r}")
    return problems


def our_namespaces() -> list[str]:
    """Namespaces named like this script's (any run's), for the leak checks."""
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=CMD_TIMEOUT, check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.startswith(NS_PREFIX)]


def probe(hosts: Hosts, timeout: float = 10.0) -> float:
    """Send 64 KiB over TCP from namespace A to B (a listener in B); return the seconds it took.

    Also waits for the veth to come up (its carrier can lag ``link set up``). :class:`Unavailable` if it fails."""
    server = ("import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
              f"s.bind(('{hosts.addr[1]}', 0)); s.listen(1); s.settimeout({timeout}); "
              "print(s.getsockname()[1], flush=True); c, _ = s.accept(); n = 0\n"
              "while (d := c.recv(65536)): n += len(d)\nprint(n, flush=True)")
    client = ("import socket, sys, time\nt = time.monotonic()\nwhile True:\n try:\n"
              f"  c = socket.create_connection(('{hosts.addr[1]}', int(sys.argv[1])), timeout=1); break\n"
              f" except OSError:\n  if time.monotonic() - t > {timeout}: raise\n  time.sleep(0.1)\n"
              "c.sendall(b'x' * 65536); c.close()")
    t0 = time.perf_counter()
    srv = subprocess.Popen(["ip", "netns", "exec", hosts.ns[1], sys.executable, "-c", server],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if not select.select([srv.stdout], [], [], timeout)[0]:
            raise Unavailable(f"TCP probe: the listener in {hosts.ns[1]} did not start within {timeout} s")
        port = srv.stdout.readline().strip()
        if not port.isdigit():
            raise Unavailable(f"TCP probe: the listener in {hosts.ns[1]} failed: {srv.communicate()[1][-300:]}")
        c = subprocess.run(["ip", "netns", "exec", hosts.ns[0], sys.executable, "-c", client, port],
                           capture_output=True, text=True, timeout=timeout + 5, check=False)
        got = srv.communicate(timeout=timeout)[0].strip()
        if c.returncode != 0 or got != "65536":
            raise Unavailable(f"TCP probe {hosts.addr[0]} -> {hosts.addr[1]} over the veth failed: "
                              f"{c.stderr.strip()[-300:]} (received {got!r})")
    except subprocess.TimeoutExpired as e:
        raise Unavailable(f"TCP probe over the veth timed out: {e}") from e
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.communicate()
    return time.perf_counter() - t0


def counters(ns: str, ifname: str) -> dict[str, int]:
    """The byte and packet counters of ``ifname`` in ``ns`` (``ip -s -j link show``)."""
    stats = json.loads(_ip("-n", ns, "-s", "-j", "link", "show", "dev", ifname))[0]
    s = stats.get("stats64") or stats["stats"]
    return {"tx_bytes": s["tx"]["bytes"], "rx_bytes": s["rx"]["bytes"],
            "tx_packets": s["tx"]["packets"], "rx_packets": s["rx"]["packets"]}


def all_counters(hosts: Hosts) -> dict[str, dict[str, int]]:
    """Counters of both veth ends and both loopbacks, keyed ``A:veth``, ``A:lo``, ``B:veth``, ``B:lo``."""
    out = {}
    for side, ns, ifname in zip("AB", hosts.ns, hosts.ifname):
        out[f"{side}:veth"] = counters(ns, ifname)
        out[f"{side}:lo"] = counters(ns, "lo")
    return out


def _sh(argv: list[str]) -> str:
    """``argv`` quoted for sh."""
    return " ".join(shlex.quote(a) for a in argv)


def identity_prefix(hostname: str, boot_id_file: Path) -> list[str]:
    """argv prefix giving the command its own hostname and kernel boot id, as on a host of its own.

    ``unshare --mount`` makes a private mount namespace (util-linux's default propagation is private), so the
    bind mount over the boot id file is seen by that command and its children only."""
    script = f'hostname {_sh([hostname])} && mount --bind {_sh([str(boot_id_file)])} {BOOT_ID} && exec "$0" "$@"'
    return ["unshare", "--mount", "--uts", "sh", "-c", script]


def identity_works(hosts: Hosts, workdir: Path) -> str | None:
    """Try :func:`identity_prefix` in namespace A: None if it works, else why not."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) not found"
    f = workdir / "probe-boot-id"
    f.write_text(str(uuid.uuid4()) + "\n")
    cmd = ["ip", "netns", "exec", hosts.ns[0], *identity_prefix("bpmh-probe", f), "cat", BOOT_ID]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=CMD_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return "unshare --mount --uts timed out"
    if r.returncode != 0 or r.stdout != f.read_text():
        return f"unshare --mount --uts + bind mount over {BOOT_ID} failed: {r.stderr.strip()[-200:]}"
    return None


LAUNCHER = """#!/bin/sh
# hydra's "ssh" for the 2-namespace run. hydra calls:  <this> -x <host> <proxy command words...>
# NOTE: the words are meant for a remote shell (hydra wraps the proxy's path in literal double quotes), so
# they are joined and handed to sh -c, as sshd would do; exec'ing them as an argv would fail.
while [ $# -gt 0 ]; do case "$1" in -*) shift;; *) break;; esac; done
host=$1; shift
printf '%s\\n' "$host $*" >> {log}
case "$host" in
  {addr_a}) exec ip netns exec {ns_a} {prefix_a} sh -c "$*";;
  {addr_b}) exec ip netns exec {ns_b} {prefix_b} sh -c "$*";;
esac
echo "multihost launcher: unknown host $host" >&2
exit 255
"""


def write_launcher(hosts: Hosts, workdir: Path, prefixes: tuple[list[str], list[str]]) -> Path:
    """The launcher script given to hydra (``-launcher ssh -launcher-exec``); it logs its calls beside it."""
    path = workdir / "netns-launcher.sh"
    path.write_text(LAUNCHER.format(addr_a=hosts.addr[0], addr_b=hosts.addr[1], ns_a=hosts.ns[0],
                                    ns_b=hosts.ns[1], prefix_a=_sh(prefixes[0]), prefix_b=_sh(prefixes[1]),
                                    log=workdir / "launcher.log"))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def mpi_env(netmod: str, tcp_only: bool) -> dict[str, str]:
    """The environment of the ranks: one thread each, the netmod, and with ``tcp_only`` TCP transports only."""
    env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "BACKPROP_NUM_THREADS": "1",
           "MPIR_CVAR_CH4_NETMOD": netmod}
    if tcp_only and netmod == "ucx":
        # NOTE: without this (or a boot id per host) UCX sees one machine and uses SysV shared memory and
        # cross-memory attach between the "hosts": almost nothing would cross the veth.
        env["UCX_TLS"] = "tcp,self"
    elif tcp_only:
        env["FI_PROVIDER"] = "tcp"
    return env


@contextlib.contextmanager
def _started(cmd: list[str], env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen]:
    """Popen in a new session; on the way out (error or Ctrl-C included) kill its whole process group."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # mpiexec if still there, and what it left in its group
        # NOTE: no communicate() here: hydra's proxies call setsid (out of reach of killpg) and could keep the
        # pipes open for ever; teardown() kills them by namespace.
        for pipe in (proc.stdout, proc.stderr):
            pipe.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=CMD_TIMEOUT)


def run_job(hosts: Hosts, workdir: Path, netmod: str = "ucx", tcp_only: bool = False, identity: bool = True,
            timeout: float = 120) -> dict[str, Any]:
    """mpiexec started inside namespace A, one rank per host; returns the output, exit status and wall time."""
    prefixes: tuple[list[str], list[str]] = ([], [])
    if identity:
        boot = []
        for side in "ab":
            f = workdir / f"boot_id_{side}"
            f.write_text(str(uuid.uuid4()) + "\n")
            boot.append(f)
        prefixes = (identity_prefix("host-a", boot[0]), identity_prefix("host-b", boot[1]))
    launcher = write_launcher(hosts, workdir, prefixes)
    out = workdir / "rank0.npz"
    # NOTE: hydra starts the proxy of a host it finds local (A's address: mpiexec runs in A) by fork, without
    # the launcher, so mpiexec itself gets host A's identity prefix; B's proxy comes through the launcher.
    cmd = ["ip", "netns", "exec", hosts.ns[0], *prefixes[0], mpiexec(),
           "-launcher", "ssh", "-launcher-exec", str(launcher),
           # NOTE: -localhost: the address the proxy on B dials back to (hydra's control port). Without it hydra
           # uses the host-list entry it finds local (A's address, here) or else the machine's hostname, which
           # /etc/hosts maps to 127.0.0.1: B's own loopback, inside B. Explicit is safer.
           "-localhost", hosts.addr[0],
           "-hosts", f"{hosts.addr[0]}:1,{hosts.addr[1]}:1", "-n", "2"]
    env = mpi_env(netmod, tcp_only)
    for k, v in env.items():
        cmd += ["-genv", k, v]
    cmd += [sys.executable, str(Path(__file__).resolve()), "--worker", str(out)]
    t0 = time.perf_counter()
    with _started(cmd, {**os.environ, **env}, workdir) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stdout, stderr = "", f"mpiexec did not finish within {timeout} s (killed)"
    log = workdir / "launcher.log"
    return {"returncode": proc.returncode, "stdout": stdout, "stderr": stderr, "wall_s": time.perf_counter() - t0,
            "out": out, "launcher_calls": log.read_text().splitlines() if log.exists() else [], "cmd": cmd}


# ----------------------------------------------------------------------------------------------- the run
@dataclass
class Result:
    """What a 2-host run measured, and its verdicts (``failures`` empty = PASS)."""

    netmod: str = "ucx"
    identity: bool = False  # the hosts had their own hostname and boot id
    identity_problem: str | None = None  # why they did not, when asked for
    tcp_only: bool = False  # MPI restricted to TCP transports
    steps: int = 0
    grad_bytes: int = 0
    wall_s: float = 0.0
    fit_s: float = 0.0
    probe_s: float = 0.0
    max_rel_weight_diff: float = float("nan")
    max_rel_loss_diff: float = float("nan")
    veth: dict[str, int] = field(default_factory=dict)  # counter deltas: "A:tx_bytes", "B:rx_packets"...
    loopback: dict[str, int] = field(default_factory=dict)  # tx byte deltas of lo in A and B
    ranks: list[dict] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)  # the namespaces' ids (net:[inode]), A then B
    launcher_calls: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    log: str = ""

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def min_bytes(self) -> int:
        """What the gradient Allreduces alone must move in each direction: steps x gradient bytes."""
        return self.steps * self.grad_bytes


def netns_id(ns: str) -> str:
    """The id of namespace ``ns`` as a process inside it sees it (``net:[inode]``)."""
    r = subprocess.run(["ip", "netns", "exec", ns, "readlink", "/proc/self/ns/net"], capture_output=True,
                       text=True, timeout=CMD_TIMEOUT, check=False)
    return r.stdout.strip()


def check(result: Result, got: dict[str, Any], hosts: Hosts, hist: Any, ref: Any) -> None:
    """Fill in the comparisons and append a message to ``result.failures`` for each check that fails."""
    fail = result.failures
    result.ranks = json.loads(str(got["ranks"]))
    result.fit_s = float(got["seconds"])
    errs = []
    for i, p in enumerate(ref.parameters()):
        a = got.get(f"p{i}")
        ok = a is not None and a.shape == p.data.shape
        errs.append(float(np.max(np.abs(a - p.data)) / np.max(np.abs(p.data))) if ok else float("inf"))
    result.max_rel_weight_diff = max(errs)
    if not result.max_rel_weight_diff <= RTOL:
        fail.append(f"weights: max relative difference {result.max_rel_weight_diff:.3g} > {RTOL}")
    loss, ref_loss = np.asarray(got["loss"]), np.asarray(hist.history["loss"])
    if loss.shape != ref_loss.shape:
        fail.append(f"History loss: {loss} vs single-process {ref_loss}")
    else:
        result.max_rel_loss_diff = float(np.max(np.abs(loss - ref_loss) / np.abs(ref_loss)))
        if not result.max_rel_loss_diff <= RTOL:
            fail.append(f"History loss: max relative difference {result.max_rel_loss_diff:.3g} > {RTOL}")
    if not bool(got["same"]):
        fail.append("the two ranks ended with different weights")
    if int(got["iterations"]) != hist.iterations or int(got["samples"]) != hist.samples_seen:
        fail.append(f"steps/samples {int(got['iterations'])}/{int(got['samples'])} vs single-process "
                    f"{hist.iterations}/{hist.samples_seen}")
    if len(result.ranks) != 2:
        fail.append(f"expected 2 ranks, got {len(result.ranks)}")
    for rank, ns, inode in zip(result.ranks, hosts.ns, result.netns):
        if rank["netns"] != inode:
            fail.append(f"rank {rank['rank']} ran in {rank['netns']}, not in {ns} ({inode})")
        if rank["node_size"] != 1:
            fail.append(f"MPICH put rank {rank['rank']} on a node with {rank['node_size']} ranks (shared memory)")
    if not any(call.startswith(hosts.addr[1] + " ") for call in result.launcher_calls):
        fail.append(f"hydra never called the launcher for {hosts.addr[1]}")
    for key in ("A:tx_bytes", "A:rx_bytes", "B:tx_bytes", "B:rx_bytes"):
        if result.veth.get(key, 0) < result.min_bytes:
            fail.append(f"veth {key} = {result.veth.get(key, 0):,} bytes < steps x gradient bytes = "
                        f"{result.min_bytes:,}: the gradients did not cross the veth")


def run(netmod: str = "ucx", transports: str = "auto", identity: bool = True, timeout: float = 120,
        tag: str | None = None) -> Result:
    """Set up the two hosts, run the 2-host job and the single-process reference, compare, tear down.

    ``transports``: "tcp" restricts MPI to TCP, "any" never does, "auto" does when the hosts have no identity
    of their own. Raises :class:`Unavailable` (nothing left behind) when this machine cannot do it."""
    reason = requirements_missing()
    if reason:
        raise Unavailable(reason)
    result = Result(netmod=netmod)
    got = None
    hosts = create_hosts(tag)
    try:
        with tempfile.TemporaryDirectory(prefix="bp-multihost-") as tmp:
            result.netns = [netns_id(ns) for ns in hosts.ns]
            result.probe_s = probe(hosts)
            if identity:
                result.identity_problem = identity_works(hosts, Path(tmp))
            result.identity = identity and result.identity_problem is None
            result.tcp_only = transports == "tcp" or (transports == "auto" and not result.identity)
            before = all_counters(hosts)
            job = run_job(hosts, Path(tmp), netmod, result.tcp_only, result.identity, timeout)
            after = all_counters(hosts)
            for side in "AB":
                for c, v in after[f"{side}:veth"].items():
                    result.veth[f"{side}:{c}"] = v - before[f"{side}:veth"][c]
                result.loopback[f"{side}:lo"] = after[f"{side}:lo"]["tx_bytes"] - before[f"{side}:lo"]["tx_bytes"]
            result.wall_s, result.launcher_calls = job["wall_s"], job["launcher_calls"]
            result.log = (job["stdout"] + job["stderr"])[-4000:]
            if job["returncode"] == 0 and job["out"].exists():
                with np.load(job["out"]) as f:
                    got = dict(f)
            else:
                result.failures.append(f"mpiexec exited with {job['returncode']}: {result.log[-2000:]}")
    finally:
        problems = teardown(hosts)
    if problems:
        result.failures.append("teardown: " + "; ".join(problems))
    if got is not None:
        model = make_model()
        result.grad_bytes = sum(p.data.nbytes for p in model.parameters())
        hist = train(model, distributed=False)
        result.steps = hist.iterations
        check(result, got, hosts, hist, model)
    return result


def report(r: Result) -> str:
    """The human summary of a run."""
    mode = ("own hostname + boot id per host" if r.identity
            else f"no host identity ({r.identity_problem})" if r.identity_problem else "no host identity")
    transports = "TCP transports only" if r.tcp_only else "default transports"
    lines = [(f"2-host run: {ADDR_A} (namespace A) + {ADDR_B} (namespace B), netmod {r.netmod}, {mode}, "
              f"{transports}; {EPOCHS} epochs, batch {BATCH}, float64")]
    for rank in r.ranks:
        lines.append(f"  rank {rank['rank']}: netns {rank['netns']}, hostname {rank['hostname']}, boot id "
                     f"{rank['boot_id'][:8]}..., ranks on its MPI node: {rank['node_size']}")
    for call in r.launcher_calls:
        lines.append(f"  launcher called for: {call[:150]}{'...' if len(call) > 150 else ''}")
    v = r.veth
    lines += [
        f"  TCP probe A -> B: {r.probe_s:.2f} s",
        (f"  mpiexec wall time {r.wall_s:.2f} s, bp.fit on rank 0 {r.fit_s:.3f} s "
         f"({r.steps} steps, {r.grad_bytes:,} gradient bytes per step)"),
        (f"  veth A: tx {v.get('A:tx_bytes', 0):,} B ({v.get('A:tx_packets', 0):,} packets), "
         f"rx {v.get('A:rx_bytes', 0):,} B; veth B: tx {v.get('B:tx_bytes', 0):,} B, rx {v.get('B:rx_bytes', 0):,} B"),
        (f"  needed in each direction (steps x gradient bytes): {r.min_bytes:,} B; crossed A->B "
         f"{v.get('A:tx_bytes', 0) / max(r.min_bytes, 1):.2f}x, B->A {v.get('B:tx_bytes', 0) / max(r.min_bytes, 1):.2f}x"),
        f"  loopback tx during the job: A {r.loopback.get('A:lo', 0):,} B, B {r.loopback.get('B:lo', 0):,} B",
        f"  max relative weight difference vs single process: {r.max_rel_weight_diff:.3g} (limit {RTOL:g})",
        f"  max relative History loss difference: {r.max_rel_loss_diff:.3g}",
    ]
    lines += [f"  FAIL: {f}" for f in r.failures]
    lines.append("PASS" if r.passed else "FAIL")
    return "\n".join(lines)


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # so that the finally clauses tear everything down


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--netmod", choices=("ucx", "ofi"), default="ucx", help="MPICH ch4 netmod (default ucx)")
    ap.add_argument("--transports", choices=("auto", "tcp", "any"), default="auto",
                    help="tcp: restrict MPI to TCP; any: never; auto (default): only if the hosts get no identity")
    ap.add_argument("--no-identity", action="store_true",
                    help="do not give each host its own hostname and boot id (mount + UTS namespace)")
    ap.add_argument("--timeout", type=float, default=120, help="seconds before the MPI job is killed")
    ap.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)  # a rank of the job
    args = ap.parse_args()
    if args.worker:
        worker(args.worker)
        return 0
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        r = run(args.netmod, args.transports, not args.no_identity, args.timeout)
    except Unavailable as e:
        print(f"SKIPPED: {e}")
        return 77
    print(report(r))
    if not r.passed and r.log:
        print("--- job output (tail) ---\n" + r.log)
    return 0 if r.passed else 1


if __name__ == "__main__":
    sys.exit(main())
