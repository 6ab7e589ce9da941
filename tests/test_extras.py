"""backprop.extras against pyproject.toml, its messages with a module made absent, and the skip summary.

The registry (:data:`backprop.extras.EXTRAS`) and ``[project.optional-dependencies]`` must list the same
extras with the same requirements; ``all`` is the union of those marked ``in_all``; ``test`` holds all of
them. Absence is simulated by ``sys.modules[name] = None`` (the import then raises ModuleNotFoundError), so
these tests pass whether or not the extras are installed.

>>> from backprop.extras import EXTRAS
>>> sorted(EXTRAS)
['mpi', 'numba', 'onnx', 'playground', 'plot', 'sklearn', 'tensorboard']
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import pickle
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from backprop import extras
from backprop.extras import EXTRAS, TEST_PEERS, MissingExtra, _dist_name, available, extra_for, require

try:
    import tomllib
except ModuleNotFoundError:  # NOTE: Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
OPTIONAL = PYPROJECT["optional-dependencies"]
SPECIAL = {"all", "test"}  # extras made of the others


def _absent(monkeypatch: pytest.MonkeyPatch, top: str) -> None:
    """Make ``top`` and its submodules unimportable for the test (restored afterwards)."""
    for name in [m for m in sys.modules if m == top or m.startswith(f"{top}.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, top, None)


# ------------------------------------------------------------------------------ the registry vs pyproject
def test_the_registry_lists_every_extra_of_pyproject():
    assert set(EXTRAS) == set(OPTIONAL) - SPECIAL


@pytest.mark.parametrize("name", sorted(EXTRAS))
def test_an_extras_requirements_are_pyprojects(name):
    assert list(EXTRAS[name].requirements) == OPTIONAL[name]
    assert EXTRAS[name].install == f'pip install "backprop[{name}]"'


def test_all_is_every_extra_marked_in_all():
    wanted = [r for e in EXTRAS.values() if e.in_all for r in e.requirements]
    assert sorted(OPTIONAL["all"]) == sorted(wanted)
    assert not EXTRAS["mpi"].in_all  # the choice pyproject.toml's comment explains


def test_the_test_extra_holds_every_extra_and_the_test_tools():
    names = {_dist_name(r) for r in OPTIONAL["test"]}
    missing = {_dist_name(r) for e in EXTRAS.values() for r in e.requirements} - names
    assert not missing, f"the test extra lacks {missing}: the suite would skip their tests"
    assert {"pytest", "hypothesis"} <= names
    assert not names & set(TEST_PEERS), "PyTorch is documented, not installed, by the test extra"


def test_the_core_needs_no_extra():
    core = {_dist_name(r) for r in PYPROJECT["dependencies"]}
    assert core == {"numpy", "scipy", "safetensors", "tqdm", "threadpoolctl"}
    assert not core & {_dist_name(r) for e in EXTRAS.values() for r in e.requirements}


@pytest.mark.parametrize("name", sorted(EXTRAS))
def test_an_extras_modules_come_from_its_distributions(name):
    """Where installed, each module of an extra is provided by one of the extra's distributions."""
    provided = importlib.metadata.packages_distributions()
    for module in EXTRAS[name].modules:
        if module not in provided:
            continue  # not installed here: nothing to check
        dists = {_dist_name(d) for d in provided[module]}
        assert dists & {_dist_name(r) for r in EXTRAS[name].requirements}, (module, dists)


def test_extra_for_finds_modules_extras_and_distributions():
    assert extra_for("matplotlib.figure").name == "plot"
    assert extra_for("plot").name == "plot"
    assert extra_for("scikit-learn").name == "sklearn" and extra_for("Scikit_Learn").name == "sklearn"
    assert extra_for("onnxruntime").name == extra_for("onnx").name == "onnx"
    assert extra_for("numpy") is None and extra_for("torch") is None


# ---------------------------------------------------------------------------------------------- require
def test_require_of_an_absent_module_says_what_needs_it_and_how_to_install(monkeypatch):
    _absent(monkeypatch, "matplotlib")
    with pytest.raises(MissingExtra) as info:
        require("matplotlib.figure", needed_by="plot_confusion_matrix")
    message = str(info.value)
    assert message == ('plot_confusion_matrix needs matplotlib, which is not installed: '
                       'pip install "backprop[plot]" (or: pip install matplotlib)')
    assert "\n" not in message
    e = info.value
    assert (e.module, e.extra, e.name, e.install, e.reason) == (
        "matplotlib.figure", "plot", "matplotlib", 'pip install "backprop[plot]"', None)
    assert not available("plot") and not available("matplotlib")


def test_require_by_extra_name_imports_all_its_modules(monkeypatch):
    fake_onnx, fake_ort = types.ModuleType("onnx"), types.ModuleType("onnxruntime")
    monkeypatch.setitem(sys.modules, "onnx", fake_onnx)
    monkeypatch.setitem(sys.modules, "onnxruntime", fake_ort)
    assert require("onnx") is fake_onnx  # a module of that name: that module alone
    assert available("onnx")
    _absent(monkeypatch, "onnxruntime")
    assert require("onnx") is fake_onnx  # the module onnx needs no onnxruntime...
    assert not available("onnxruntime")
    with pytest.raises(MissingExtra, match=r'^ONNX export needs onnxruntime, .*backprop\[onnx\]'):
        require("onnxruntime")
    fake_mpl = types.ModuleType("matplotlib")
    monkeypatch.setitem(sys.modules, "matplotlib", fake_mpl)
    assert require("plot") is fake_mpl and available("plot")  # an extra's name: its first module


def test_a_broken_install_is_told_apart_from_an_absent_one(monkeypatch):
    real = importlib.import_module

    def broken(name, package=None):
        if name == "tensorboard":
            raise ImportError("libfoo.so: cannot open shared object file\nsecond line")
        if name == "onnxruntime":
            raise ModuleNotFoundError("No module named 'flatbuffers'", name="flatbuffers")
        return real(name, package)

    monkeypatch.setattr(extras.importlib, "import_module", broken)
    with pytest.raises(MissingExtra) as info:
        require("tensorboard", needed_by="the TensorBoard callback")
    assert str(info.value).startswith("the TensorBoard callback needs tensorboard, which failed to import "
                                      "(ImportError: libfoo.so: cannot open shared object file): ")
    with pytest.raises(MissingExtra, match=r"onnxruntime, which failed to import \(ModuleNotFoundError: "
                                           r"No module named 'flatbuffers'\)"):
        require("onnxruntime")
    assert not available("tensorboard")


def test_an_mpi_library_that_does_not_load_is_unavailable_and_its_error_passes(monkeypatch):
    real = importlib.import_module

    def no_libmpi(name, package=None):
        if name == "mpi4py.MPI":
            raise RuntimeError("cannot load MPI library")
        return real(name, package)

    monkeypatch.setattr(extras.importlib, "import_module", no_libmpi)
    assert not available("mpi4py.MPI")
    with pytest.raises(RuntimeError, match="cannot load MPI library"):  # as before: not an ImportError
        require("mpi4py.MPI")


def test_a_name_no_extra_knows_is_a_programming_error():
    with pytest.raises(ValueError, match="neither an extra nor a module of one"):
        require("numpy")
    with pytest.raises(ValueError, match="neither an extra nor a module of one"):
        available("scikit-learn")  # a distribution, not a module


def test_missing_extra_is_an_import_error_the_cli_does_not_take_for_bad_input():
    assert issubclass(MissingExtra, ImportError) and issubclass(MissingExtra, ModuleNotFoundError)
    # NOTE: the CLI reports these as bad input (cli/main.py); a missing extra is not one
    for cls in (ValueError, TypeError, KeyError, OSError, RuntimeError):
        assert not issubclass(MissingExtra, cls)


def test_missing_extra_pickles():
    e = MissingExtra("mpi4py.MPI", "mpi", needed_by="backprop.distributed", reason="ImportError: x")
    copy = pickle.loads(pickle.dumps(e))
    assert type(copy) is MissingExtra and str(copy) == str(e) and copy.needed_by == "backprop.distributed"


# ------------------------------------------------------------------------- the library's optional imports
def test_plot_confusion_matrix_without_matplotlib(monkeypatch, tmp_path):
    from backprop.training.metrics import plot_confusion_matrix

    _absent(monkeypatch, "matplotlib")
    with pytest.raises(MissingExtra, match=r'^plot_confusion_matrix needs matplotlib, .*"backprop\[plot\]"'):
        plot_confusion_matrix(np.eye(2, dtype=int), tmp_path / "cm.png")
    assert not (tmp_path / "cm.png").exists()


def test_onnx_export_without_onnx(monkeypatch, tmp_path):
    import backprop as bp
    import backprop.onnx

    _absent(monkeypatch, "onnx")
    model = bp.nn.Sequential(bp.nn.Linear(2, 2))
    with pytest.raises(MissingExtra, match=r'^backprop.onnx needs onnx, .*"backprop\[onnx\]"'):
        backprop.onnx.export(model, tmp_path / "m.onnx", example_input=np.zeros((1, 2), np.float32))


def test_tensorboard_without_tensorboard(monkeypatch):
    from backprop.training.tensorboard import require_tensorboard, tensorboard_available

    _absent(monkeypatch, "tensorboard")
    assert not tensorboard_available()
    with pytest.raises(MissingExtra, match=r'^the TensorBoard callback needs tensorboard, .*pip install tensorboard'):
        require_tensorboard()


def test_distributed_without_mpi4py(monkeypatch):
    from backprop.distributed import mpi

    _absent(monkeypatch, "mpi4py")
    assert not mpi.is_available() and mpi.is_root()
    with pytest.raises(MissingExtra, match=r'^backprop.distributed needs mpi4py, .*"backprop\[mpi\]"'):
        mpi.init()


def test_the_digits_need_no_extra(monkeypatch):
    import backprop as bp

    for top in ("sklearn", "matplotlib"):
        _absent(monkeypatch, top)
    (x_train, _), (x_test, _) = bp.datasets.load_digits()
    assert x_train.shape == (1437, 64) and x_test.shape == (360, 64)


def test_the_digits_are_package_data():
    """The data file is in the package (and pyproject.toml's package-data ships it in the wheel)."""
    spec = importlib.util.find_spec("backprop.data")
    folder = Path(spec.origin).parent
    assert (folder / "digits.npz").stat().st_size < 64_000 and (folder / "DIGITS_NOTICE.txt").is_file()
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert set(data["tool"]["setuptools"]["package-data"]["backprop.data"]) == {"digits.npz", "DIGITS_NOTICE.txt"}


# --------------------------------------------------------------------------------- the skip summary line
def _conftest() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("_tests_conftest", Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("reason, group", [
    ("Skipped: could not import 'torch': No module named 'torch'", "torch"),
    ("could not import 'safetensors.torch': No module named 'torch'", "torch"),
    ("could not import 'sklearn.neural_network._base': No module named 'sklearn'", "sklearn"),
    ("could not import 'onnxruntime': DLL load failed", "onnx"),
    ("mpi4py is not installed (pip install mpi4py mpich)", "mpi"),
    ("mpiexec not found (pip install mpich)", "mpi"),
    ("needs mpi4py and mpiexec (pip install 'backprop[mpi]')", "mpi"),
    ("could not import 'pandas': No module named 'pandas'", "pandas"),
    ("no PyTorch equivalent", None),
    ("Graphviz's dot is not installed", None),
    ("MNIST files not found", None),
])
def test_skip_reasons_are_grouped_by_what_is_missing(reason, group):
    assert _conftest().missing_package(reason) == group


def test_the_summary_line_counts_tests_and_whole_files():
    conftest = _conftest()

    def report(reason: str, collect: bool = False):
        cls = pytest.CollectReport if collect else pytest.TestReport
        r = cls.__new__(cls)
        r.longrepr = ("tests/x.py", 1, f"Skipped: {reason}")
        r.nodeid = "tests/test_x.py" if collect else "tests/test_y.py::test_y"
        return r

    torch, onnx = "could not import 'torch': No module named 'torch'", "could not import 'onnx': No module named 'onnx'"
    reports = [report(torch), report(torch, collect=True), report(torch, collect=True), report(onnx),
               report("no data")]  # NOTE: a file skipped at import is two reports: its module, its doctests
    line = conftest.skip_summary(reports)
    assert line == ("3 skipped because PyTorch is not installed (whole files: test_x.py): "
                    f"{TEST_PEERS['torch'][1]}; 1 for other missing extras: onnx 1 (pip install \"backprop[onnx]\")")
    assert conftest.skip_summary([report(onnx)]) == '1 skipped for missing extras: onnx 1 (pip install "backprop[onnx]")'
    assert conftest.skip_summary([report("no data")]) is None


def test_a_run_prints_the_line_only_when_something_was_skipped_for_a_package(tmp_path):
    (tmp_path / "conftest.py").write_text(Path(__file__).with_name("conftest.py").read_text(encoding="utf-8"))
    (tmp_path / "test_peer.py").write_text(textwrap.dedent("""
        import pytest
        pytest.importorskip("no_such_module_torch_stand_in")

        def test_never():
            pass
    """))
    (tmp_path / "test_some.py").write_text(textwrap.dedent("""
        import pytest

        def test_torch():
            pytest.skip("could not import 'torch': No module named 'torch'")

        def test_onnx():
            pytest.importorskip("onnx_absent_for_this_test", reason="No module named 'onnx'")

        def test_other():
            pytest.skip("no data")

        def test_runs():
            pass
    """))
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)]
    out = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False).stdout
    assert ("1 skipped because PyTorch is not installed: pip install torch==2.13.0" in out
            and '; 2 for other missing packages: no_such_module_torch_stand_in 1 (pip install '
                'no_such_module_torch_stand_in), onnx 1 (pip install "backprop[onnx]")' in out), out
    (tmp_path / "test_peer.py").unlink()
    (tmp_path / "test_some.py").write_text("def test_runs():\n    pass\n")
    out = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False).stdout
    assert "not installed" not in out and "missing" not in out, out
