"""Every bad input gets a clear error: the argument, what was expected and what was given, before any work.

Three tables: the training API (``fit``, ``evaluate``, ``predict``), Tensors, and the command line. Each row
is one bad input and the regular expressions its message must match. For the training API "before any
work" is checked too: no forward pass ran, no callback started and the weights did not change. Rows that
fail today are marked ``xfail(strict=True)`` with the reason (see tests/reliability/README.md).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import backprop as bp
from backprop import nn

# ===================================================================================== training API
N, FEATURES, OUTPUTS = 12, 3, 2


def _data() -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).normal(size=(N, FEATURES)).astype(np.float32)
    return x, np.arange(N) % OUTPUTS


class Probe(nn.Sequential):
    """A Sequential that counts its forward passes."""

    def forward(self, x: Any) -> Any:
        self.__dict__["calls"] = self.__dict__.get("calls", 0) + 1
        return super().forward(x)


class Began(bp.Callback):
    began = False

    def on_train_begin(self, logs=None):
        self.began = True


def _with(arr: np.ndarray, index: Any, value: Any, dtype: Any = None) -> np.ndarray:
    out = np.array(arr, dtype=dtype if dtype is not None else np.asarray(arr).dtype)
    out[index] = value
    return out


@dataclass
class Bad:
    """One bad call: ``fn(model, **args(x, y))`` raises ``exc`` whose message matches every pattern."""

    id: str
    fn: str
    args: Callable[[np.ndarray, np.ndarray], dict[str, Any]]
    exc: type | tuple[type, ...]
    patterns: list[str]
    xfail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


X = r"\bx\b"
Y = r"\by\b"
NUMERIC = r"numeric|number"

def _hyper(name: str, value: Any, expect: str) -> Bad:
    return Bad(f"fit-{name}={value!r}", "fit", lambda x, y: {name: value}, ValueError,
               [rf"\b{name}\b", expect, re.escape(repr(value))])


FIT_CASES: list[Bad] = [
    # lengths and emptiness
    Bad("fit-y-shorter", "fit", lambda x, y: {"y": y[:7]}, ValueError, [X, Y, r"\b12\b", r"\b7\b"]),
    Bad("fit-x-shorter", "fit", lambda x, y: {"x": x[:5]}, ValueError, [X, Y, r"\b12\b", r"\b5\b"]),
    Bad("fit-empty", "fit", lambda x, y: {"x": x[:0], "y": y[:0]}, ValueError, [X, "empty", r"\(0, 3\)"]),
    Bad("fit-empty-lists", "fit", lambda x, y: {"x": [], "y": []}, ValueError, [X, "empty", r"\(0,\)"]),
    Bad("fit-y-None", "fit", lambda x, y: {"y": None}, (TypeError, ValueError), [Y, "None"]),
    Bad("fit-ragged-x", "fit", lambda x, y: {"x": [[1.0, 2.0, 3.0], [1.0, 2.0]], "y": [0, 1]}, ValueError,
        [X, "inhomogeneous|ragged|same length"]),
    # features
    Bad("fit-features-2d", "fit", lambda x, y: {"x": np.zeros((N, 5), np.float32)}, ValueError,
        [X, r"\(5,\)", r"\b3\b", "'0'", "Linear"]),
    Bad("fit-features-3d", "fit", lambda x, y: {"x": np.zeros((N, 2, 2), np.float32)}, ValueError,
        [X, r"\(2, 2\)", r"\b3\b", "Linear"]),
    Bad("fit-features-1d", "fit", lambda x, y: {"x": np.zeros(N, np.float32)}, ValueError,
        [X, r"\(12,\)", r"\b3\b"]),
    Bad("fit-features-validation_data", "fit",
        lambda x, y: {"validation_data": (np.zeros((4, 5), np.float32), np.zeros(4, np.int64))}, ValueError,
        ["validation", r"\(5,\)", r"\b3\b", "Linear"]),
    Bad("fit-validation_data-not-a-pair", "fit", lambda x, y: {"validation_data": x}, (TypeError, ValueError),
        ["validation_data", "pair|tuple|\\(x, y\\)"]),
    # non-finite values
    Bad("fit-nan-x", "fit", lambda x, y: {"x": _with(x, (3, 1), np.nan)}, ValueError, [X, "NaN"]),
    Bad("fit-inf-x", "fit", lambda x, y: {"x": _with(x, (0, 0), np.inf)}, ValueError, [X, "inf"]),
    Bad("fit-neg-inf-x", "fit", lambda x, y: {"x": _with(x, (0, 2), -np.inf)}, ValueError, [X, "inf"]),
    Bad("fit-nan-y", "fit", lambda x, y: {"y": _with(y, 4, np.nan, np.float64)}, ValueError, [Y, "NaN"]),
    Bad("fit-inf-y-mse", "fit",
        lambda x, y: {"y": _with(np.eye(2, dtype=np.float32)[y], (1, 1), np.inf), "loss": "mse"},
        ValueError, [Y, "inf"]),
    Bad("fit-nan-validation-x", "fit",
        lambda x, y: {"validation_data": (_with(x, (1, 1), np.nan), y)}, ValueError, ["validation_data", X, "NaN"]),
    # class labels
    Bad("fit-label-negative", "fit", lambda x, y: {"y": _with(y, 5, -1)}, ValueError,
        [Y, r"-1\b", r"\[0, 1\]"]),
    Bad("fit-label-too-large", "fit", lambda x, y: {"y": _with(y, 0, 2)}, ValueError,
        [Y, r"\b2\b", r"\[0, 1\]"]),
    Bad("fit-label-huge", "fit", lambda x, y: {"y": _with(y, 0, 10**9)}, ValueError,
        [Y, r"\b1000000000\b", r"\[0, 1\]"]),
    Bad("fit-label-non-integer", "fit", lambda x, y: {"y": _with(y, 2, 0.5, np.float64)}, ValueError,
        [Y, "integer", r"0\.5"]),
    Bad("fit-label-nll-too-large", "fit", lambda x, y: {"y": _with(y, 0, 3), "loss": "nll"}, ValueError,
        [Y, r"\b3\b", r"\[0, 1\]"]),
    Bad("fit-label-validation-negative", "fit", lambda x, y: {"validation_data": (x, _with(y, 0, -1))}, ValueError,
        ["validation_data", Y, r"-1\b", r"\[0, 1\]"]),
    Bad("fit-label-mse-too-large", "fit", lambda x, y: {"y": _with(y, 0, 5), "loss": "mse"}, ValueError,
        [Y, r"\b5\b", r"\b2\b"]),
    Bad("fit-label-mse-negative", "fit", lambda x, y: {"y": _with(y, 0, -1), "loss": "mse"}, ValueError,
        [Y, r"-1\b"]),
    # one-hot targets
    Bad("fit-onehot-width-3-ce", "fit", lambda x, y: {"y": np.eye(3, dtype=np.float32)[y]}, ValueError,
        [Y, r"\b3\b", r"\b2\b"]),
    Bad("fit-onehot-width-3-mse", "fit", lambda x, y: {"y": np.eye(3, dtype=np.float32)[y], "loss": "mse"},
        ValueError, [Y, r"\b3\b", r"\b2\b"]),
    Bad("fit-onehot-width-1-ce", "fit", lambda x, y: {"y": y.reshape(-1, 1)}, ValueError,
        [Y, r"\b1\b", r"\b2\b"]),
    # hyper-parameters
    *[_hyper("batch_size", v, "positive integer") for v in (0, -3, 2.5, True, "4", None)],
    *[_hyper("epochs", v, "non-negative integer") for v in (-1, 1.5, "3", None)],
    *[_hyper("lr", v, "positive finite") for v in (float("nan"), float("inf"), float("-inf"), 0, -0.1, "0.1",
                                                   None, True)],
    *[_hyper("validation_split", v, r"\[0, 1\)") for v in (1.0, -0.1, 1.5, float("nan"), "0.2", True)],
    Bad("fit-validation_split-leaves-nothing", "fit", lambda x, y: {"validation_split": 0.01}, ValueError,
        ["validation_split", r"0\.01", r"\b0 validation"]),
    # dtypes
    *[Bad(f"fit-x-{kind}", "fit", lambda x, y, kind=kind: {"x": x.astype(kind)}, TypeError, [X, NUMERIC, kind])
      for kind in ("object", "complex128")],
    Bad("fit-x-str", "fit", lambda x, y: {"x": x.astype(str)}, TypeError, [X, NUMERIC, "<U"]),
    *[Bad(f"fit-y-{kind}", "fit", lambda x, y, kind=kind: {"y": y.astype(kind)}, TypeError, [Y, NUMERIC, kind])
      for kind in ("object", "complex128")],
    Bad("fit-y-str", "fit", lambda x, y: {"y": np.array(["cat", "dog"] * 6)}, TypeError, [Y, NUMERIC, "<U"]),
]

EVALUATE_CASES: list[Bad] = [
    Bad("evaluate-y-shorter", "evaluate", lambda x, y: {"y": y[:7]}, ValueError, [X, Y, r"\b12\b", r"\b7\b"]),
    Bad("evaluate-empty", "evaluate", lambda x, y: {"x": x[:0], "y": y[:0]}, ValueError, [X, "empty"]),
    Bad("evaluate-nan-x", "evaluate", lambda x, y: {"x": _with(x, (0, 0), np.nan)}, ValueError, [X, "NaN"]),
    Bad("evaluate-inf-y", "evaluate", lambda x, y: {"y": _with(np.eye(2)[y], (0, 0), np.inf), "loss": "mse"},
        ValueError, [Y, "inf"]),
    Bad("evaluate-features", "evaluate", lambda x, y: {"x": np.zeros((N, 5), np.float32)}, ValueError,
        [X, r"\(5,\)", r"\b3\b", "Linear"], extra={"prefix": "evaluate"}),
    Bad("evaluate-features-1d", "evaluate", lambda x, y: {"x": np.zeros(N, np.float32)}, ValueError,
        [X, r"\(12,\)", r"\b3\b"]),
    Bad("evaluate-label-too-large", "evaluate", lambda x, y: {"y": _with(y, 0, 2)}, ValueError,
        [Y, r"\b2\b", r"\[0, 1\]"]),
    Bad("evaluate-onehot-width-3", "evaluate", lambda x, y: {"y": np.eye(3, dtype=np.float32)[y]}, ValueError,
        [Y, r"\b3\b", r"\b2\b"]),
    Bad("evaluate-batch_size-0", "evaluate", lambda x, y: {"batch_size": 0}, ValueError,
        ["batch_size", "positive integer", r"\b0\b"], extra={"prefix": "evaluate"}),
    Bad("evaluate-x-object", "evaluate", lambda x, y: {"x": x.astype(object)}, TypeError, [X, NUMERIC, "object"]),
    Bad("evaluate-x-complex", "evaluate", lambda x, y: {"x": x.astype(complex)}, TypeError, [X, NUMERIC, "complex"]),
    Bad("evaluate-y-str", "evaluate", lambda x, y: {"y": y.astype(str)}, TypeError, [Y, NUMERIC, "<U"]),
]

PREDICT_CASES: list[Bad] = [
    Bad("predict-empty", "predict", lambda x, y: {"x": x[:0]}, ValueError, [X, "empty", r"\(0, 3\)"]),
    Bad("predict-features", "predict", lambda x, y: {"x": np.zeros((N, 5), np.float32)}, ValueError,
        [X, r"\(5,\)", r"\b3\b", "'0'", "Linear"]),
    Bad("predict-features-1d", "predict", lambda x, y: {"x": np.zeros(N, np.float32)}, ValueError,
        [X, r"\(12,\)", r"\b3\b"]),
    Bad("predict-nan-x", "predict", lambda x, y: {"x": _with(x, (0, 0), np.nan)}, ValueError, [X, "NaN"]),
    Bad("predict-batch_size-0", "predict", lambda x, y: {"batch_size": 0}, ValueError,
        ["batch_size", "positive integer", r"\b0\b"]),
    Bad("predict-x-object", "predict", lambda x, y: {"x": x.astype(object)}, TypeError, [X, NUMERIC, "object"]),
    Bad("predict-x-str", "predict", lambda x, y: {"x": x.astype(str)}, TypeError, [X, NUMERIC, "<U"]),
    Bad("predict-x-complex", "predict", lambda x, y: {"x": x.astype(complex)}, TypeError, [X, NUMERIC, "complex"]),
    Bad("predict-x-None", "predict", lambda x, y: {"x": None}, TypeError, [X, NUMERIC]),
]

API_CASES = FIT_CASES + EVALUATE_CASES + PREDICT_CASES


def _params(cases: list[Bad]) -> list[Any]:
    return [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
            for c in cases]


def _search_all(patterns: list[str], message: str) -> None:
    missing = [p for p in patterns if not re.search(p, message)]
    assert not missing, f"message {message!r} lacks {missing}"


@pytest.mark.parametrize("case", _params(API_CASES))
def test_training_api_rejects_bad_input_before_any_work(case: Bad) -> None:
    bp.manual_seed(0)
    model = Probe(nn.Linear(FEATURES, 4), nn.ReLU(), nn.Linear(4, OUTPUTS))
    before = {k: v.copy() for k, v in model.state_dict().items()}
    x, y = _data()
    args = {"x": x, "y": y}
    if case.fn == "fit":
        began = Began()
        args.update(epochs=1, batch_size=4, verbose=0, callbacks=[began])
    args.update(case.args(x, y))
    if case.fn == "predict":
        args.pop("y")
    fn = getattr(bp, case.fn)
    with np.errstate(all="ignore"), pytest.raises(case.exc) as err:
        fn(model, args.pop("x"), *([args.pop("y")] if "y" in args else []), **args)
    message = str(err.value)
    prefix = case.extra.get("prefix", case.fn)
    _search_all([rf"^{prefix}\b", *case.patterns], message)
    assert model.__dict__.get("calls", 0) == 0, f"a forward pass ran before the error: {message}"
    if case.fn == "fit":
        assert not began.began, f"training had begun (on_train_begin ran) before the error: {message}"
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"{k} changed before the error: {message}")


def test_every_hyperparameter_message_is_distinct() -> None:
    """batch_size, epochs, lr and validation_split each name themselves (not a shared generic message)."""
    x, y = _data()
    model = nn.Sequential(nn.Linear(FEATURES, OUTPUTS))
    messages = set()
    for kw in ({"batch_size": 0}, {"epochs": -1}, {"lr": -1.0}, {"validation_split": 2.0}):
        with pytest.raises(ValueError) as err:
            bp.fit(model, x, y, verbose=0, **kw)
        messages.add(str(err.value))
    assert len(messages) == 4


# =========================================================================================== Tensors
def _second_backward() -> None:
    a = bp.tensor([[1.0, 2.0]], requires_grad=True)
    loss = (a * a).sum()
    loss.backward()
    loss.backward()


def _backward_through_released_part() -> None:
    a = bp.tensor([[1.0, 2.0]], requires_grad=True)
    h = a.exp()
    h.sum().backward()
    (h * 2).sum().backward()


def _matmul(a_shape, b_shape) -> Callable[[], Any]:
    return lambda: bp.tensor(np.ones(a_shape)) @ bp.tensor(np.ones(b_shape))


TENSOR_CASES = [
    ("matmul-2d", _matmul((2, 3), (2, 3)), ValueError, ["matmul", r"\(2, 3\).*\(2, 3\)", r"\b3\b", r"\b2\b"]),
    ("matmul-1d", _matmul((3,), (4,)), ValueError, ["matmul", r"\(3,\).*\(4,\)"]),
    ("matmul-batched", _matmul((5, 2, 3), (4, 2)), ValueError, ["matmul", r"\(5, 2, 3\).*\(4, 2\)"]),
    ("matmul-function", lambda: bp.matmul(np.ones((2, 3)), np.ones((4, 5))), ValueError,
     ["matmul", r"\(2, 3\).*\(4, 5\)"]),
    ("add-broadcast", lambda: bp.tensor(np.ones((2, 3))) + bp.tensor(np.ones(4)), ValueError,
     [r"\(2, ?3\)", r"\(4,\)"]),
    ("backward-non-scalar", lambda: (bp.tensor(np.ones((2, 3)), requires_grad=True) * 2).backward(), RuntimeError,
     ["backward", r"\(2, 3\)", "one-element|scalar", "grad"]),
    ("backward-no-requires-grad", lambda: bp.tensor([1.0, 2.0]).sum().backward(), RuntimeError,
     ["backward", "does not require grad", "requires_grad"]),
    ("backward-in-no_grad", lambda: _no_grad_backward(), RuntimeError, ["backward", "does not require grad"]),
    ("backward-second-time", _second_backward, RuntimeError, ["second time", "retain_graph"]),
    ("backward-released-part", _backward_through_released_part, RuntimeError, ["second time", "retain_graph"]),
    ("backward-grad-shape", lambda: (bp.tensor(np.ones((2, 3)), requires_grad=True) * 2).backward(np.ones(3)),
     ValueError, ["backward", r"\(3,\)", r"\(2, 3\)"]),
    ("tensor-object", lambda: bp.tensor(np.array([1, "a"], dtype=object)), TypeError, ["tensor", "object"]),
    ("tensor-str", lambda: bp.tensor(["a", "b"]), TypeError, ["tensor", "<U1"]),
    ("tensor-complex", lambda: bp.tensor(np.ones(2, complex)), TypeError, ["tensor", "complex128"]),
    ("tensor-int-requires-grad", lambda: bp.tensor([1, 2], requires_grad=True), TypeError,
     ["floating point", "int64"]),
    ("item-of-many", lambda: bp.tensor([1.0, 2.0]).item(), ValueError, ["item", r"\(2,\)"]),
]


def _no_grad_backward() -> None:
    a = bp.tensor([1.0], requires_grad=True)
    with bp.no_grad():
        b = (a * 2).sum()
    b.backward()


@pytest.mark.parametrize("make, exc, patterns", [pytest.param(*c[1:], id=c[0]) for c in TENSOR_CASES])
def test_tensor_errors(make, exc, patterns) -> None:
    with pytest.raises(exc) as err:
        make()
    _search_all(patterns, str(err.value))


def test_the_three_backward_errors_have_their_own_messages() -> None:
    messages = []
    for name in ("backward-non-scalar", "backward-no-requires-grad", "backward-second-time"):
        make = next(c[1] for c in TENSOR_CASES if c[0] == name)
        with pytest.raises(RuntimeError) as err:
            make()
        messages.append(str(err.value))
    assert len(set(messages)) == 3, messages


def test_failed_backward_leaves_gradients_alone() -> None:
    a = bp.tensor([[1.0, 2.0]], requires_grad=True)
    (a * a).sum().backward()
    grad = a.grad.copy()
    with pytest.raises(RuntimeError):
        (a * 3).backward()  # non-scalar without grad
    np.testing.assert_array_equal(a.grad, grad)


# ====================================================================================== command line
def run_cli(*args: str, cwd: Any = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "backprop", *args], capture_output=True, text=True, cwd=cwd,
                          env=full_env, timeout=120, check=False)


# NOTE: no network in tests: a proxy that refuses at once makes the MNIST download fail in milliseconds
OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}


def _files(folder) -> dict[str, str]:
    """CSV files that are wrong in one way each; {name: path}."""
    texts: dict[str, bytes] = {
        "bad-number.csv": b"a,b,label\n1,2,0\n3,x,1\n",
        "short-row.csv": b"a,b,label\n1,2,0\n3,4\n1,1,1\n",
        "not-utf8.csv": b"a,b,label\n1,2,0\n\xff\xfe,1,1\n",
        "empty.csv": b"",
        "header-only.csv": b"a,b,label\n",
        "inf-feature.csv": b"a,b,label\n1,2,0\n3,inf,1\n",
        "float-label.csv": b"a,b,label\n1,2,0\n3,4,0.5\n",
        "unclosed-quote.csv": b"a,b,label\n1,2,0\n3,\"4,1\n5,6,0\n7,8,1\n",
        "one-column.csv": b"label\n1\n0\n",
    }
    out = {}
    for name, data in texts.items():
        (folder / name).write_bytes(data)
        out[name] = str(folder / name)
    return out


CLI_CASES: list[tuple] = [
    # (id, args ({name} stands for a file of _files), patterns the one stderr line must match[, xfail reason])
    ("unknown-dataset", ["train", "--dataset", "imagenet"], ["unknown dataset", "'imagenet'", "digits"]),
    ("csv-missing", ["train", "--dataset", "csv:{tmp}/nope.csv"], ["nope.csv", "not found|does not exist"]),
    ("csv-is-a-folder", ["train", "--dataset", "csv:{tmp}"], [r"{tmp}\b"]),
    ("csv-bad-number", ["train", "--dataset", "csv:{bad-number.csv}"],
     ["bad-number.csv", "line 3", "column 2", "'x'"]),
    ("csv-short-row", ["train", "--dataset", "csv:{short-row.csv}"],
     ["short-row.csv", "line 3", "3 columns", "got 2"]),
    ("csv-not-utf8", ["train", "--dataset", "csv:{not-utf8.csv}"], ["not-utf8.csv", "UTF-8"]),
    ("csv-empty", ["train", "--dataset", "csv:{empty.csv}"], ["empty.csv", "empty"]),
    ("csv-header-only", ["train", "--dataset", "csv:{header-only.csv}"], ["header-only.csv", "no data rows"]),
    ("csv-inf-feature", ["train", "--dataset", "csv:{inf-feature.csv}"],
     ["inf-feature.csv", "line 3", "column 2", "inf", "finite"]),
    ("csv-float-label", ["train", "--dataset", "csv:{float-label.csv}"],
     ["float-label.csv", "line 3", "column 3", "'0.5'", "integer"]),
    ("csv-unclosed-quote", ["train", "--dataset", "csv:{unclosed-quote.csv}"],
     ["unclosed-quote.csv", "line 3", "column 2", "quot", "never closed"]),
    ("csv-one-column", ["train", "--dataset", "csv:{one-column.csv}"], ["one-column.csv", "2 columns", "got 1"]),
    ("csv-label-column", ["train", "--dataset", "csv:{bad-number.csv}", "--label-column", "zzz"],
     ["'zzz'", "is not a column", "'label'"]),
    ("mnist-folder-missing", ["train", "--dataset", "mnist", "--data-dir", "{tmp}/no-such-folder"],
     ["no-such-folder", "no such folder", "train-images-idx3-ubyte.gz", "--data-dir"]),
    ("evaluate-model-missing", ["evaluate", "{tmp}/none.safetensors"], ["none.safetensors", "does not exist"]),
    ("evaluate-model-is-csv", ["evaluate", "{bad-number.csv}"], ["bad-number.csv", "not a valid backprop model"]),
    ("predict-csv-bad-number", ["predict", "{model}", "{bad-number.csv}"], ["bad-number.csv", "line 3", "column 2"]),
    ("predict-csv-missing", ["predict", "{model}", "{tmp}/nope.csv"], ["nope.csv", "does not exist"]),
    ("predict-csv-not-utf8", ["predict", "{model}", "{not-utf8.csv}"], ["not-utf8.csv", "UTF-8"]),
]


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("cli")
    files = _files(folder)
    files["tmp"] = str(folder)
    # a tiny model for predict: trained in-process (1 epoch), saved as `backprop train` does
    bp.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2))
    bp.io.save(model, folder / "model.safetensors", metadata={"n_features": 2, "classes": [0, 1]})
    files["model"] = str(folder / "model.safetensors")
    return files


def _fill(args: list[str], files: dict[str, str]) -> list[str]:
    return [re.sub(r"\{([^}]+)\}", lambda m: files[m.group(1)], a) for a in args]


def _one_clean_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{proc.stderr}"
    assert lines[0].startswith("backprop"), lines[0]
    return lines[0]


@pytest.mark.parametrize("args, patterns", [
    pytest.param(c[1], c[2], id=c[0], marks=[pytest.mark.xfail(strict=True, reason=c[3])] if len(c) > 3 else [])
    for c in CLI_CASES
])
def test_cli_bad_data_one_line_exit_2(args, patterns, cli_files, tmp_path) -> None:
    env = dict(OFFLINE, XDG_CACHE_HOME=str(tmp_path / "cache"), BACKPROP_DATA="")
    proc = run_cli(*_fill(args, cli_files), cwd=tmp_path, env=env)
    line = _one_clean_line(proc)
    _search_all(_fill(patterns, {k: re.escape(v) for k, v in cli_files.items()}), line)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir()), "a run folder was left"


BAD_OPTIONS = [
    ("--lr", "abc", "positive finite"), ("--lr", "-1", "positive finite"), ("--lr", "nan", "positive finite"),
    ("--lr", "inf", "positive finite"), ("--batch-size", "0", "positive integer"),
    ("--batch-size", "2.5", "positive integer"), ("--epochs", "-1", "positive integer"),
    ("--epochs", "1e3", "positive integer"), ("--validation-split", "1", r"\[0, 1\)"),
    ("--momentum", "nan", r"\[0, 1\)"), ("--weight-decay", "inf", "non-negative"),
    ("--clip-norm", "0", "positive finite"), ("--seed", "-1", "non-negative integer"),
    ("--hidden", "12,x", "layer sizes"), ("--hidden", "0,4", "positive"), ("--warmup", "x", "non-negative integer"),
]


@pytest.mark.parametrize("option, value, expect", BAD_OPTIONS)
def test_cli_bad_numbers_in_options(option, value, expect, tmp_path) -> None:
    proc = run_cli("train", option, value, "--epochs", "0", cwd=tmp_path) if option != "--epochs" else \
        run_cli("train", option, value, cwd=tmp_path)
    line = _one_clean_line(proc)
    _search_all([re.escape(option), re.escape(repr(value)), expect], line)
    assert not (tmp_path / "runs").exists()


def test_case_counts() -> None:
    """The number of bad inputs tried, for the report (kept here so that it stays true)."""
    total = len(API_CASES) + len(TENSOR_CASES) + len(CLI_CASES) + len(BAD_OPTIONS)
    assert total >= 100, total


def test_nonfinite_gradient_stops_before_the_update_and_names_the_parameter():
    from backprop.engine.tensor import Function

    class NaNGrad(Function):  # an op whose backward produces NaN (defined here, not registered)
        def forward(self, x):
            return x.copy()

        def backward(self, g):
            return g * np.nan

    class Poison(bp.nn.Module):
        def forward(self, x):
            return NaNGrad.apply(x)

    bp.manual_seed(0)
    model = bp.nn.Sequential(bp.nn.Linear(3, 4), Poison(), bp.nn.Linear(4, 2))
    before = [p.data.copy() for p in model.parameters()]
    x = np.random.default_rng(0).random((20, 3)).astype(np.float32)
    with pytest.raises(bp.TrainingDiverged, match=r"gradient of parameter '0\.weight'.*step 1"):
        bp.fit(model, x, np.arange(20) % 2, epochs=1, verbose=0)
    assert all(np.array_equal(a, p.data) for a, p in zip(before, model.parameters()))
