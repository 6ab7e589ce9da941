"""scikit-learn's own MLP tests run against backprop.sklearn, with only the import changed.

The installed ``sklearn/neural_network/tests/test_mlp.py`` is copied to a temporary folder, its one line
``from sklearn.neural_network import MLPClassifier, MLPRegressor`` becomes
``from backprop.sklearn import MLPClassifier, MLPRegressor``, and pytest runs the copy in a subprocess
(with scikit-learn's conftest as a plugin, for its ``global_random_seed`` fixture). The script prints the
numbers of passed, failed and skipped tests and the failing tests' names; it exits 0 whatever they are
(``tests/test_sklearn.py::test_sklearn_own_mlp_tests`` compares the failures with a documented allow-list).

Run it from the repository root (about a minute or two)::

    python tests/peers/sklearn_test_mlp.py            # counts and failing names
    python tests/peers/sklearn_test_mlp.py -x -k lbfgs  # extra arguments go to pytest

>>> swap_import("import numpy as np\\nfrom sklearn.neural_network import MLPClassifier, MLPRegressor\\n")
'import numpy as np\\nfrom backprop.sklearn import MLPClassifier, MLPRegressor\\n'
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

SKLEARN_IMPORT = "from sklearn.neural_network import MLPClassifier, MLPRegressor\n"
BACKPROP_IMPORT = "from backprop.sklearn import MLPClassifier, MLPRegressor\n"


@dataclass
class Outcome:
    """The tests of one run by outcome (pytest node names within the file, e.g. ``test_gradient``)."""

    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # failures and errors
    skipped: list[str] = field(default_factory=list)
    returncode: int = 0
    output: str = ""

    def summary(self) -> str:
        return f"{len(self.passed)} passed, {len(self.failed)} failed, {len(self.skipped)} skipped"


def sklearn_test_file() -> Path | None:
    """The installed scikit-learn's ``neural_network/tests/test_mlp.py``, or None where it is not shipped."""
    try:
        import sklearn
    except ImportError:
        return None
    path = Path(sklearn.__file__).parent / "neural_network" / "tests" / "test_mlp.py"
    return path if path.is_file() else None


def swap_import(source: str) -> str:
    """``source`` with scikit-learn's MLP import replaced by backprop's: the only change made to the file."""
    count = source.count(SKLEARN_IMPORT)
    if count != 1:
        raise ValueError(f"expected the line {SKLEARN_IMPORT.strip()!r} exactly once in scikit-learn's "
                         f"test_mlp.py, found it {count} times: the file changed, update this script")
    return source.replace(SKLEARN_IMPORT, BACKPROP_IMPORT)


def _outcomes(junit_xml: Path) -> Outcome:
    result = Outcome()
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        name = case.get("name", "")
        if case.find("failure") is not None or case.find("error") is not None:
            result.failed.append(name)
        elif case.find("skipped") is not None:
            result.skipped.append(name)
        else:
            result.passed.append(name)
    return result


def run(pytest_args: list[str] | None = None, source: Path | None = None, timeout: float = 1800.0) -> Outcome:
    """Run the swapped copy of scikit-learn's test_mlp.py (``source``: the installed one) under pytest."""
    source = source or sklearn_test_file()
    if source is None:
        raise FileNotFoundError("scikit-learn's neural_network/tests/test_mlp.py is not installed")
    with tempfile.TemporaryDirectory(prefix="sklearn_test_mlp_") as tmp:
        folder = Path(tmp)
        (folder / "test_mlp.py").write_text(swap_import(source.read_text()))
        # NOTE: an ini file of its own keeps this repository's pytest options (doctests, testpaths) out
        (folder / "pytest.ini").write_text("[pytest]\n")
        junit = folder / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "sklearn.conftest",
               f"--junitxml={junit}", "-o", "junit_family=xunit2", "test_mlp.py", *(pytest_args or [])]
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        # NOTE: check=False: failing tests make pytest exit 1, which is what is being counted
        proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        if not junit.exists():
            raise RuntimeError(f"pytest wrote no report (exit status {proc.returncode}):\n"
                               f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        result = _outcomes(junit)
    result.returncode, result.output = proc.returncode, proc.stdout + proc.stderr
    return result


def main(argv: list[str]) -> int:
    result = run(argv)
    print(f"scikit-learn's test_mlp.py against backprop.sklearn: {result.summary()}")
    for name in result.failed:
        print(f"FAILED {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
