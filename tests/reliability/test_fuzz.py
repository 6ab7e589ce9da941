"""Property-based fuzzing (Hypothesis) of the engine's gradients and of the file loaders.

(a) Random compositions of 1 to 4 engine ops on random shapes with random broadcasting: the gradients agree
    with central finite differences (``bp.gradcheck``, float64) and, where PyTorch is installed, values and
    gradients agree with PyTorch's.
(b) Random and malformed IDX (raw and gzip) and CSV files: ``read_idx`` and ``load_csv`` return a valid
    result or raise ValueError naming the file, never another exception, and never hang (each example
    runs under a hard time limit).

Profiles (tests/reliability/conftest.py): "ci" by default, ``HYPOTHESIS_PROFILE=long`` for 2,000 examples.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import math
import operator
import os
import signal
import string
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import backprop as bp
from backprop.data import load_csv, read_idx

PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
TIME_LIMIT_S = 10  # per example: generous for a loaded 2-core machine, short for a hang

try:
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None


@contextlib.contextmanager
def time_limit(seconds: int):
    """Fail (not hang) if the block runs longer than ``seconds`` (SIGALRM: main thread, POSIX)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ============================================================================= (a) the engine's gradients
@dataclass
class Op:
    """One step of a program: ``name`` with ``params``; ``extra`` indexes its second input, if any."""

    name: str
    params: dict[str, Any]
    extra: int | None = None


def _shape_after(name: str, params: dict[str, Any], shape: tuple[int, ...], other: tuple[int, ...] | None):
    """The output shape, computed by NumPy on empty arrays of these shapes."""
    a = np.zeros(shape)
    if name in ("add", "sub", "mul", "div"):
        return np.broadcast_shapes(shape, other)
    if name == "matmul":
        return (np.zeros(other) @ a).shape if params["left"] else (a @ np.zeros(other)).shape
    if name in ("sum", "mean", "logsumexp"):
        return a.sum(axis=params["axis"], keepdims=params["keepdims"]).shape
    if name == "reshape":
        return a.reshape(params["shape"]).shape
    if name == "transpose":
        return a.transpose(params["axes"]).shape
    return shape  # elementwise, softmax, log_softmax


@st.composite
def programs(draw):
    """(input shapes, ops, bound): x0 of a random shape and 1-4 ops, each perhaps with a second input."""
    shapes = [draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3))]
    domains = ["real"]
    ops: list[Op] = []
    shape, bound = shapes[0], 2.0  # |values| <= bound: exp is only applied where it stays modest
    for _ in range(draw(st.integers(1, 4))):
        nd = len(shape)
        names = ["add", "sub", "mul", "div", "tanh", "sigmoid", "relu", "sum", "mean", "reshape"]
        if bound <= 3:
            names.append("exp")
        if nd >= 1:
            names += ["matmul", "softmax", "log_softmax", "logsumexp"]
        if nd >= 2:
            names.append("transpose")
        name = draw(st.sampled_from(names))
        params: dict[str, Any] = {}
        other = None
        if name in ("add", "sub", "mul", "div"):
            other = draw(hnp.broadcastable_shapes(shape, min_dims=0, max_dims=3, min_side=1, max_side=3))
            params["swap"] = name != "div" and draw(st.booleans())
            domains.append("nonzero" if name == "div" else "real")
        elif name == "matmul":
            params["left"] = nd >= 2 and draw(st.booleans())
            k = draw(st.integers(1, 3))
            inner = shape[-2] if params["left"] else shape[-1]
            other = draw(st.sampled_from([(k, inner)] if params["left"] else [(inner, k), (inner,)]))
            domains.append("real")
        elif name in ("sum", "mean", "logsumexp"):
            axes = st.none()
            if nd:
                axes = st.one_of(st.none(), st.integers(-nd, nd - 1),
                                 st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True).map(tuple))
            params = {"axis": draw(axes), "keepdims": draw(st.booleans())}
        elif name in ("softmax", "log_softmax"):
            params["axis"] = draw(st.integers(-nd, nd - 1))
        elif name == "reshape":
            size = math.prod(shape)
            squeezed = tuple(s for s in shape if s != 1)
            params["shape"] = draw(st.sampled_from([(-1,), (1, *shape), tuple(reversed(shape)), squeezed, (size, 1)]))
        elif name == "transpose":
            params["axes"] = tuple(draw(st.permutations(range(nd))))
        if other is not None:
            shapes.append(tuple(other))
            ops.append(Op(name, params, len(shapes) - 1))
        else:
            ops.append(Op(name, params))
        new_shape = _shape_after(name, params, shape, other)
        size_in = math.prod(shape)
        bound = {"add": bound + 2, "sub": bound + 2, "mul": bound * 2, "div": bound * 2, "exp": math.exp(bound),
                 "tanh": 1.0, "sigmoid": 1.0, "softmax": 1.0, "log_softmax": bound * 2 + math.log(max(size_in, 1)),
                 "logsumexp": bound + math.log(max(size_in, 1)), "sum": bound * size_in,
                 "matmul": bound * 2 * 3}.get(name, bound)
        shape = tuple(new_shape)
    return shapes, domains, ops


def _inputs(shapes, domains, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for shape, domain in zip(shapes, domains):
        x = rng.uniform(-2.0, 2.0, size=shape)
        if domain == "nonzero":  # denominators: |d| in [0.5, 2]
            x = np.where(x < 0, -1.0, 1.0) * rng.uniform(0.5, 2.0, size=shape)
        out.append(np.asarray(x, dtype=np.float64))
    return out


BINARY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}


def _run(ops: list[Op], xs: list[Any], lib: str, pre_relu: list | None = None):
    """Apply the program to xs with backprop (lib="bp") or PyTorch (lib="torch")."""
    h = xs[0]
    for op in ops:
        p, b = op.params, (xs[op.extra] if op.extra is not None else None)
        n = op.name
        if n in ("add", "sub", "mul", "div"):
            left, right = (b, h) if p.get("swap") else (h, b)
            h = BINARY[n](left, right)
        elif n == "matmul":
            h = b @ h if p["left"] else h @ b
        elif n in ("exp", "tanh", "sigmoid"):
            h = getattr(h, n)() if lib == "bp" else getattr(torch, n)(h)
        elif n == "relu":
            if pre_relu is not None:
                pre_relu.append(np.array(h.data if lib == "bp" else h.detach().numpy()))
            h = h.relu()
        elif n in ("sum", "mean"):
            if lib == "bp":
                h = getattr(h, n)(axis=p["axis"], keepdims=p["keepdims"])
            else:
                h = getattr(h, n)(dim=p["axis"], keepdim=p["keepdims"]) if p["axis"] is not None else \
                    (getattr(h, n)().reshape((1,) * h.ndim) if p["keepdims"] else getattr(h, n)())
        elif n == "logsumexp":
            if lib == "bp":
                h = h.logsumexp(p["axis"], keepdims=p["keepdims"])
            else:
                dim = tuple(range(h.ndim)) if p["axis"] is None else p["axis"]
                h = torch.logsumexp(h, dim=dim, keepdim=p["keepdims"])
        elif n in ("softmax", "log_softmax"):
            h = getattr(h, n)(p["axis"]) if lib == "bp" else getattr(torch, n)(h, dim=p["axis"])
        elif n == "reshape":
            h = h.reshape(*p["shape"]) if lib == "bp" else h.reshape(p["shape"])
        elif n == "transpose":
            h = h.transpose(*p["axes"]) if lib == "bp" else h.permute(*p["axes"])
    return h


@settings(PROFILE)
@given(program=programs(), seed=st.integers(0, 2**32 - 1))
def test_random_op_compositions_match_finite_differences_and_torch(program, seed) -> None:
    shapes, domains, ops = program
    note(f"shapes={shapes} ops={ops}")
    xs = _inputs(shapes, domains, seed)
    pre_relu: list[np.ndarray] = []
    with np.errstate(all="raise"):
        out = _run(ops, [bp.tensor(x) for x in xs], "bp", pre_relu)
    assume(all(np.all(np.abs(v) > 1e-3) for v in pre_relu))  # relu's kink: finite differences need distance
    assert np.all(np.isfinite(out.data))
    assert bp.gradcheck(lambda *ts: _run(ops, list(ts), "bp"), xs, atol=1e-5, rtol=1e-4)
    if torch is None:
        return
    ours = [bp.tensor(x, requires_grad=True) for x in xs]
    theirs = [torch.tensor(x, requires_grad=True) for x in xs]
    out, ref = _run(ops, ours, "bp"), _run(ops, theirs, "torch")
    assert out.shape == tuple(ref.shape), (out.shape, ref.shape)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=1e-9, atol=1e-12)
    w = np.random.default_rng(seed).uniform(0.5, 1.5, size=out.shape)
    out.backward(w)
    ref.backward(torch.tensor(w))
    for i, (a, b) in enumerate(zip(ours, theirs)):
        ga = a.grad if a.grad is not None else np.zeros_like(xs[i])
        gb = b.grad.numpy() if b.grad is not None else np.zeros_like(xs[i])
        np.testing.assert_allclose(ga, gb, rtol=1e-8, atol=1e-10, err_msg=f"gradient of input {i}")


# ========================================================================================= (b) IDX files
CODES = [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]


@st.composite
def idx_blobs(draw) -> bytes:
    """A raw IDX file: valid, or broken in one of the ways files break."""
    code = draw(st.sampled_from([*CODES, 0x00, 0x0A, 0xFF]))
    dims = draw(st.lists(st.integers(0, 5), min_size=0, max_size=4))
    if draw(st.booleans()):  # absurd declared sizes: must be refused, not allocated
        dims = [*dims, draw(st.sampled_from([2**31, 2**32 - 1, 65536]))]
    header = bytes([0, 0, code, len(dims)]) + np.asarray(dims, dtype=">u4").tobytes()
    itemsize = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}.get(code, 1)
    n = math.prod(dims) * itemsize if math.prod(dims) * itemsize < 4096 else draw(st.integers(0, 64))
    payload = draw(st.binary(min_size=n, max_size=n)) if n <= 256 else bytes(n)
    blob = header + payload
    cut = draw(st.sampled_from(["none", "none", "truncate", "extend", "magic"]))
    if cut == "truncate" and blob:
        blob = blob[: draw(st.integers(0, len(blob) - 1))]
    elif cut == "extend":
        blob += draw(st.binary(min_size=1, max_size=8))
    elif cut == "magic":
        blob = draw(st.binary(min_size=2, max_size=2)) + blob[2:]
    return blob


@st.composite
def idx_files(draw) -> tuple[str, bytes]:
    """(file name, bytes): raw or gzip, intact or damaged gzip streams, random bytes."""
    blob = draw(st.one_of(idx_blobs(), st.binary(max_size=200)))
    form = draw(st.sampled_from(["raw", "gzip", "gzip-cut", "gzip-tail", "gzip-two-members", "gzip-flip", "bomb"]))
    if form == "gzip":
        data = gzip.compress(blob, mtime=0)
    elif form == "gzip-cut":
        data = gzip.compress(blob, mtime=0)
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif form == "gzip-tail":
        data = gzip.compress(blob, mtime=0) + draw(st.binary(min_size=1, max_size=16))
    elif form == "gzip-two-members":
        data = gzip.compress(blob[: len(blob) // 2], mtime=0) + gzip.compress(blob[len(blob) // 2:], mtime=0)
    elif form == "gzip-flip":
        data = bytearray(gzip.compress(blob, mtime=0))
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= 1 << draw(st.integers(0, 7))
        data = bytes(data)
    elif form == "bomb":  # a small file that inflates to 64 MiB of zeros after the blob
        c = zlib.compressobj(9, zlib.DEFLATED, 31)
        data = c.compress(blob) + b"".join(c.compress(bytes(1 << 20)) for _ in range(64)) + c.flush()
    else:
        data = blob
    name = draw(st.sampled_from(["x-idx3-ubyte", "x-idx3-ubyte.gz", "labels"]))
    return name, data


def _declared(blob: bytes) -> tuple[int, ...]:
    return tuple(int(s) for s in np.frombuffer(blob, ">u4", count=blob[3], offset=4))


@settings(PROFILE)
@given(case=idx_files())
def test_read_idx_gives_an_array_or_a_clear_value_error(case, tmp_path_factory) -> None:
    name, data = case
    path = tmp_path_factory.mktemp("idx") / name
    path.write_bytes(data)
    try:
        with time_limit(TIME_LIMIT_S):
            out = read_idx(path)
    except ValueError as e:
        assert str(path) in str(e) and len(str(e)) > len(str(path)) + 10, str(e)
        return
    assert isinstance(out, np.ndarray) and out.dtype.isnative and out.flags.writeable
    raw = data
    if data[:2] == b"\x1f\x8b":
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as g:
            raw = g.read(4 + 4 * out.ndim + out.nbytes)
    assert out.shape == _declared(raw) and out.nbytes == len(raw) - 4 - 4 * out.ndim
    assert out.astype(out.dtype.newbyteorder(">")).tobytes() == raw[4 + 4 * out.ndim:]


@st.composite
def _cells(draw) -> str:
    return draw(st.one_of(
        st.integers(-10, 10).map(str),
        st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
        st.sampled_from(["", " ", "nan", "inf", "-inf", "1e39", "-0", "0x10", "1_000", "99999999999999999999",
                         "1e300", "cat", "dog", "label", "TRUE", "NaN", "٣", "１", "\x00", "3.0", "-1"]),
        st.text(alphabet=string.ascii_letters + string.digits + " .-+eE", max_size=6),
        st.text(max_size=4).map(lambda s: '"' + s.replace('"', '""') + '"'),  # a quoted field
        st.just('"unclosed'), st.just('a"b'), st.just('"x"y'),
    ))


@st.composite
def csv_texts(draw) -> bytes:
    """CSV files: a header or not, rows of numbers, words, quotes and damage; or random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    n_cols = draw(st.integers(1, 4))
    rows = []
    if draw(st.booleans()):
        rows.append([draw(st.sampled_from(["a", "b", "label", "x", ""])) for _ in range(n_cols)])
    numeric = draw(st.booleans())
    for _ in range(draw(st.integers(0, 12))):
        width = n_cols if draw(st.integers(0, 9)) else draw(st.integers(0, 5))
        if numeric:
            row = [str(draw(st.integers(-3, 3))) for _ in range(width)]
            if row and draw(st.integers(0, 4)) == 0:
                row[draw(st.integers(0, len(row) - 1))] = draw(_cells())
        else:
            row = [draw(_cells()) for _ in range(width)]
        rows.append(row)
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = newline.join(",".join(r) for r in rows) + draw(st.sampled_from(["", newline, newline * 3]))
    if draw(st.booleans()):
        text = "\ufeff" + text
    data = text.encode("utf-8")
    if draw(st.integers(0, 9)) == 0:  # a stray invalid byte
        i = draw(st.integers(0, len(data)))
        data = data[:i] + b"\xff" + data[i:]
    return data


@settings(PROFILE)
@given(data=csv_texts(), test_size=st.sampled_from([0.0, 0.2, 0.5, 2]),
       label_column=st.sampled_from([None, 0, -1, "label"]))
def test_load_csv_gives_a_dataset_or_a_clear_value_error(data, test_size, label_column, tmp_path_factory) -> None:
    path = tmp_path_factory.mktemp("csv") / "data.csv"
    path.write_bytes(data)
    try:
        with time_limit(TIME_LIMIT_S), np.errstate(all="raise"):
            ds = load_csv(path, label_column=label_column, test_size=test_size)
    except ValueError as e:
        assert str(path) in str(e), f"the message does not name the file: {e}"
        return
    n = len(ds.x_train) + len(ds.x_test)
    assert n >= 1 and ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert len(ds.x_train) == len(ds.y_train) and len(ds.x_test) == len(ds.y_test)
    assert np.isfinite(ds.x_train).all() and np.isfinite(ds.x_test).all()
    assert ds.x_train.ndim == 2 and ds.x_train.shape[1] == ds.x_test.shape[1] >= 1
    for y in (ds.y_train, ds.y_test):
        assert ((y >= 0) & (y < ds.n_classes)).all()
    assert len(ds.x_test) == (math.ceil(test_size * n) if isinstance(test_size, float) else test_size)


@pytest.mark.parametrize("text, needle", [
    ("a,label\n1,99999999999999999999\n2,3\n", "99999999999999999999"),
    ("a,label\n1,1e300\n2,3\n", "1e300"),
    ("a,label\n1,0\n", "leaves no training samples"),
])
def test_load_csv_edge_cases_found_by_fuzzing(text, needle, tmp_path) -> None:
    path = tmp_path / "edge.csv"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load_csv(path)
    assert str(path) in str(err.value) and needle in str(err.value), str(err.value)


def test_read_idx_bomb_is_refused_within_bounded_memory(tmp_path) -> None:
    """A 200 KB gzip that inflates to 200 MB after a header declaring 10 bytes: refused, ~nothing allocated."""
    import tracemalloc

    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    blob = c.compress(bytes([0, 0, 8, 1]) + np.asarray([10], ">u4").tobytes())
    blob += b"".join(c.compress(bytes(1 << 20)) for _ in range(200)) + c.flush()
    path = Path(tmp_path) / "bomb-idx1-ubyte.gz"
    path.write_bytes(blob)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="overlong"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000, peak
