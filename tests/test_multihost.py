"""A real 2-host MPI run: two network namespaces joined by a veth pair (``benchmarks/multihost.py``).

Needs root, ``ip``, mpi4py and mpiexec; skips (saying what is missing) where any of them, or the namespaces
and veth themselves, are not available. Every run tears its namespaces down; the tests check it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "multihost.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bp_benchmarks_multihost", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # NOTE: dataclasses look their module up in sys.modules
    spec.loader.exec_module(mod)
    return mod


mh = _load()
TIMEOUT = 60  # seconds for the MPI job (it takes ~1 s here); every other command has its own timeout


def _run_or_skip(timeout: float = TIMEOUT, **kw) -> object:
    """``multihost.run`` with a unique tag, skipping where this machine cannot set up the two hosts."""
    try:
        return mh.run(timeout=timeout, tag=f"t{os.getpid()}", **kw)
    except mh.Unavailable as e:
        pytest.skip(f"2-host run unavailable: {e}")


def _leftovers() -> list[str]:
    """This test process's namespaces and any rank of the script still running."""
    left = [ns for ns in mh.our_namespaces() if ns.startswith(f"{mh.NS_PREFIX}t{os.getpid()}")]
    for pid in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if pid.isdigit() and str(SCRIPT).encode() in cmd and b"--worker" in cmd:
            left.append(f"process {pid}: " + cmd.replace(b"\0", b" ").decode(errors="replace"))
    return left


@pytest.mark.parametrize("netmod, identity", [
    ("ucx", True),    # each host its own hostname + boot id: MPI's default transports, UCX picks TCP itself
    ("ucx", False),   # same boot id in both namespaces: UCX restricted to TCP (UCX_TLS=tcp,self)
    ("ofi", True),    # MPICH's libfabric netmod
])
def test_two_hosts_over_a_veth_match_single_process_fit(netmod, identity):
    r = _run_or_skip(netmod=netmod, identity=identity)
    try:
        assert r.passed, mh.report(r)
        # identity asked for but refused here (no unshare / bind mount): the run falls back to TCP-only MPI
        assert r.identity == identity or r.identity_problem, r.identity_problem
        assert r.tcp_only == (not r.identity)
        assert r.max_rel_weight_diff <= 1e-12 and r.max_rel_loss_diff <= 1e-12
        assert r.steps == 2 * 16 and r.min_bytes == r.steps * 8 * 12_740
        for key in ("A:tx_bytes", "A:rx_bytes", "B:tx_bytes", "B:rx_bytes"):  # the gradients crossed the veth
            assert r.veth[key] >= r.min_bytes, mh.report(r)
        assert [rank["netns"] for rank in r.ranks] == r.netns and r.netns[0] != r.netns[1]
        assert all(rank["node_size"] == 1 for rank in r.ranks)  # MPICH: one node per host, no shared memory
        if r.identity:
            assert {rank["hostname"] for rank in r.ranks} == {"host-a", "host-b"}
            assert r.ranks[0]["boot_id"] != r.ranks[1]["boot_id"]
    finally:
        assert _leftovers() == []


def test_the_veth_check_catches_the_shared_memory_shortcut():
    """Same boot id, MPI's default transports: UCX moves the gradients through shared memory, and the check fails."""
    r = _run_or_skip(netmod="ucx", identity=False, transports="any")
    assert _leftovers() == []
    if r.passed:  # another UCX build or kernel (e.g. no shared memory transport usable): nothing to show
        pytest.skip("UCX used the network between the namespaces even with one boot id: no shortcut to catch")
    assert not r.tcp_only and r.max_rel_weight_diff <= 1e-12  # the training itself is right...
    assert r.failures and all("did not cross the veth" in f for f in r.failures), mh.report(r)
    assert r.veth["A:tx_bytes"] < r.min_bytes / 10  # ...but hardly anything went over the network


def test_a_job_killed_at_its_timeout_leaves_nothing_behind():
    r = _run_or_skip(timeout=0.05)
    assert _leftovers() == []
    assert not r.passed and "did not finish within 0.05 s" in r.failures[0]


# ------------------------------------------------------------------------------------ the skip logic
@pytest.fixture
def all_present(monkeypatch):
    """Pretend every requirement is met (mpi4py, mpiexec, root, ip), whatever this machine has."""
    monkeypatch.setattr(mh, "_have_mpi4py", lambda: True)
    monkeypatch.setattr(mh, "mpiexec", lambda: "/usr/bin/mpiexec")
    monkeypatch.setattr(mh, "_is_root", lambda: True)
    monkeypatch.setattr(mh, "_which", lambda name: f"/usr/sbin/{name}")
    return monkeypatch


@pytest.mark.parametrize("missing, patch, words", [
    ("mpi4py", ("_have_mpi4py", lambda: False), "mpi4py"),
    ("mpiexec", ("mpiexec", lambda: None), "mpiexec"),
    ("root", ("_is_root", lambda: False), "not root"),
    ("ip", ("_which", lambda name: None), "`ip`"),
])
def test_skips_naming_what_is_missing(all_present, missing, patch, words):
    all_present.setattr(mh, *patch)
    all_present.setattr(mh, "create_hosts", lambda tag=None: pytest.fail("must not get as far as the namespaces"))
    with pytest.raises(pytest.skip.Exception, match=words):
        _run_or_skip()


def test_skips_when_a_namespace_cannot_be_created(all_present):
    calls = []

    def refuse(*args: str) -> str:
        calls.append(args)
        raise mh.Unavailable(f"`ip {' '.join(args)}` failed: mount --make-shared /run/netns failed: Operation "
                             "not permitted")

    all_present.setattr(mh, "_ip", refuse)
    with pytest.raises(pytest.skip.Exception, match="netns add .* not permitted"):
        _run_or_skip()
    assert calls[0][:2] == ("netns", "add") and len(calls) == 1


def _real_hosts_or_skip() -> None:
    reason = mh.requirements_missing()
    if reason:
        pytest.skip(reason)


def test_a_failed_veth_leaves_no_namespace_behind(monkeypatch):
    """The namespaces are created for real, the veth is refused: skip, and both namespaces are gone."""
    _real_hosts_or_skip()
    real_ip = mh._ip

    def no_veth(*args: str) -> str:
        if "veth" in args:
            raise mh.Unavailable(f"`ip {' '.join(args)}` failed: Operation not supported (simulated)")
        return real_ip(*args)

    monkeypatch.setattr(mh, "_ip", no_veth)
    with pytest.raises(pytest.skip.Exception) as skipped:
        _run_or_skip()
    assert _leftovers() == []
    if "veth" not in skipped.value.msg:  # refused earlier, at the namespaces themselves: nothing to check
        pytest.skip(skipped.value.msg)
    assert "Operation not supported (simulated)" in skipped.value.msg


def test_teardown_kills_what_runs_in_the_namespaces():
    _real_hosts_or_skip()
    try:
        hosts = mh.create_hosts(f"t{os.getpid()}k")
    except mh.Unavailable as e:
        pytest.skip(f"cannot create the namespaces: {e}")
    procs = []
    try:
        for ns in hosts.ns:  # a process in each namespace, in a session of its own (no group kill reaches it)
            procs.append(subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c",
                                           "import time; time.sleep(60)"], start_new_session=True))
        deadline = time.monotonic() + 10
        while not all(mh.ns_pids(ns) for ns in hosts.ns) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(mh.ns_pids(ns) for ns in hosts.ns)
    finally:
        problems = mh.teardown(hosts)
    for p in procs:
        assert p.wait(timeout=10) != 0  # killed
    assert problems == [] and hosts.created == []
    assert not any(ns in mh.our_namespaces() for ns in hosts.ns)
