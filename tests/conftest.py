"""The suite's summary says what was skipped for want of a package: PyTorch first, then backprop's extras.

A quarter of the suite compares against PyTorch and skips without it (``pytest.importorskip("torch")``);
``pip install ".[test]"`` does not install it (see pyproject.toml). So that a run without it does not look
complete, the terminal summary adds one line, only when something was skipped for a missing package::

    71 skipped because PyTorch is not installed (whole files: test_conv.py, test_lr_scheduler.py): pip install
    torch==2.13.0 ...; 3 for other missing extras: onnx 2 (pip install "backprop[onnx]"), mpi 1 (...)

The counts are pytest's own "N skipped" (a test file skipped at import counts once, or twice with its
doctest module, whatever number of tests it holds: hence the files named). A skip is put in
a group by its reason: the module of ``No module named 'x'`` / ``could not import 'x'`` (what
``importorskip`` says), else a ``pip install ...`` in a reason of one's own (a ``skipif`` that names
``backprop[mpi]`` or ``mpich``); its extra comes from :mod:`backprop.extras`.

>>> missing_package("could not import 'torch': No module named 'torch'")
'torch'
>>> missing_package("mpiexec not found (pip install mpich)"), missing_package("Graphviz's dot is not installed")
('mpi', None)
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest

from backprop.extras import EXTRAS, TEST_PEERS, extra_for

# NOTE: "No module named" first: `importorskip("safetensors.torch")` without torch says both, and torch is
# what is missing
_NO_MODULE = re.compile(r"No module named '([\w.]+)'")
_NOT_IMPORTED = re.compile(r"could not import '([\w.]+)'")
_EXTRA = re.compile(r"backprop\[([\w,]+)\]")
_PIP = re.compile(r"pip install ([^)(;]+)")


def missing_package(reason: str) -> str | None:
    """What a skip's reason says is missing: a test peer's module (``"torch"``), an extra's name, another
    top-level module, or None when it is skipped for anything else (no data, no program, one core...)."""
    found = _NO_MODULE.search(reason) or _NOT_IMPORTED.search(reason)
    if found:
        module = found.group(1).partition(".")[0]
        if module in TEST_PEERS:
            return module
        extra = extra_for(module)
        return extra.name if extra is not None else module
    found = _EXTRA.search(reason)
    if found:
        return found.group(1).split(",")[0]
    found = _PIP.search(reason)
    if found:  # a reason of one's own naming what to install: the first word that an extra knows
        for word in re.split(r"[\s'\"]+", found.group(1)):
            extra = extra_for(re.split(r"[<>=!~\[]", word)[0]) if word else None
            if extra is not None:
                return extra.name
    return None


def _reason(report: Any) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: <reason>")
        return str(longrepr[2])
    return str(getattr(getattr(longrepr, "reprcrash", None), "message", longrepr))


def skip_summary(reports: Iterable[Any]) -> str | None:
    """The one summary line for the skipped ``reports`` (TestReport / CollectReport), or None."""
    skips: Counter[str] = Counter()
    files: dict[str, set[str]] = {}
    for report in reports:
        what = missing_package(_reason(report))
        if what is None:
            continue
        skips[what] += 1
        if isinstance(report, pytest.CollectReport):  # a whole file skipped at import
            files.setdefault(what, set()).add(str(report.nodeid).split("::")[0].rpartition("/")[2])
    if not skips:
        return None
    parts = []
    for peer, (title, install) in TEST_PEERS.items():
        if skips[peer]:
            whole = f" (whole files: {', '.join(sorted(files[peer]))})" if peer in files else ""
            parts.append(f"{skips[peer]} skipped because {title} is not installed{whole}: {install}")
    others = [(what, n) for what, n in skips.most_common() if what not in TEST_PEERS]
    if others:
        listed = ", ".join(f"{what} {n} ({EXTRAS[what].install if what in EXTRAS else f'pip install {what}'})"
                           for what, n in others)
        total = sum(n for _, n in others)
        kind = "extras" if all(what in EXTRAS for what, _ in others) else "packages"
        parts.append(f"{total} {'for other' if parts else 'skipped for'} missing {kind}: {listed}")
    return "; ".join(parts)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    line = skip_summary(terminalreporter.stats.get("skipped", []))
    if line:
        terminalreporter.write_line(line, yellow=True)
