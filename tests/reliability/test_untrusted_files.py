"""Model files from strangers: nothing in them is ever executed, and a bad file never half-loads.

* Pickles in disguise (a ``.pkl``, ``.npy``, ``.npz`` or ``torch.save`` file renamed ``.safetensors``) whose
  unpickling would create a marker folder: ``load``, ``load_weights``, ``load_metadata`` and ``backprop
  evaluate`` refuse them clearly, and the marker never appears. (A control shows each payload is live.)
* Valid safetensors files with a crafted header: layer types such as ``os.system``, unexpected keys,
  arguments that are code, tensor dtypes that are not numbers, absurd sizes.
* Damage: every truncation of a small model file, every single-bit flip. ``load_weights`` either copies all
  of the file or changes nothing; ``load`` returns a model or raises ValueError, never anything else.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

import backprop as bp
from backprop import io as bio
from backprop import nn

INVALID = "is not a valid backprop model file"


class Payload:
    """Unpickling it creates the folder ``marker`` (os.mkdir: no shell, no side effect beyond that)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (self.marker,)


def _small_model() -> nn.Module:
    bp.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2))


# ------------------------------------------------------------------------------------- pickles in disguise
def _pkl(marker: Path) -> bytes:
    return pickle.dumps({"0.weight": Payload(marker)})


def _npy(marker: Path) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    return buf.getvalue()


def _npz(marker: Path) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{"0.weight": np.array([Payload(marker)], dtype=object)})
    return buf.getvalue()


def _torch_zip(marker: Path) -> bytes:
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    torch.save({"0.weight": Payload(marker)}, buf)
    return buf.getvalue()


def _pickle_after_safetensors_prefix(marker: Path) -> bytes:
    """A pickle behind an 8-byte length that points into it: the header 'JSON' is the pickle."""
    body = _pkl(marker)
    return struct.pack("<Q", len(body)) + body


def _unpickle_control(kind: str, blob: bytes) -> None:
    """What a careless loader would do with each file (proves the payload is live)."""
    if kind == "pkl":
        pickle.loads(blob)
    elif kind in ("npy", "npz"):
        loaded = np.load(io.BytesIO(blob), allow_pickle=True)
        if kind == "npz":
            loaded["0.weight"]
    elif kind == "torch":
        import torch

        torch.load(io.BytesIO(blob), weights_only=False)
    elif kind == "prefixed":
        pickle.loads(blob[8:])


DISGUISES = {"pkl": _pkl, "npy": _npy, "npz": _npz, "torch": _torch_zip, "prefixed": _pickle_after_safetensors_prefix}


@pytest.mark.parametrize("kind", list(DISGUISES))
def test_pickle_payloads_are_never_unpickled(kind, tmp_path) -> None:
    control = tmp_path / "control-marker"
    _unpickle_control(kind, DISGUISES[kind](control))
    assert control.exists(), "the payload is not live: the test would prove nothing"

    marker = tmp_path / "marker"
    path = tmp_path / f"model-{kind}.safetensors"
    path.write_bytes(DISGUISES[kind](marker))
    target = _small_model()
    before = {k: v.copy() for k, v in target.state_dict().items()}
    for attempt in (bio.load, lambda p: bio.load_weights(target, p), bio.load_metadata):
        with pytest.raises(ValueError, match=INVALID) as err:
            attempt(path)
        assert str(path) in str(err.value)
    for k, v in target.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert not marker.exists(), "a pickle in the file was executed"


# --------------------------------------------------------------------------------- crafted safetensors files
def _arch(*layers: Any, **top: Any) -> dict[str, Any]:
    return {"type": "Sequential", "dtype": "float32", "layers": list(layers), **top}


LINEAR = {"type": "Linear", "args": {"in_features": 3, "out_features": 2}}
WEIGHTS = {"0.weight": np.zeros((2, 3), np.float32), "0.bias": np.zeros(2, np.float32)}


def _file(path: Path, architecture: Any, tensors: dict[str, np.ndarray] | None = None, **meta: str) -> None:
    metadata = {"format": "backprop", "version": "1", "user": "{}",
                "architecture": architecture if isinstance(architecture, str) else json.dumps(architecture)}
    metadata.update(meta)
    path.write_bytes(safetensors.numpy.save(WEIGHTS if tensors is None else tensors, metadata=metadata))


def _raw_file(path: Path, header: dict[str, Any], data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _code(marker: Path) -> str:
    return f"__import__('os').mkdir({str(marker)!r})"


CRAFTED = {
    # layer types that name code
    "os.system": lambda m: _arch({"type": "os.system", "args": {"command": f"mkdir {m}"}}),
    "builtins.eval": lambda m: _arch({"type": "builtins.eval", "args": {"source": _code(m)}}),
    "subprocess.Popen": lambda m: _arch({"type": "subprocess.Popen", "args": {"args": ["mkdir", str(m)]}}),
    "__import__": lambda m: _arch({"type": "__import__", "args": {"name": "os"}}),
    "posix.mkdir": lambda m: _arch({"type": "posix.mkdir", "args": {"path": str(m)}}),
    "nested-type": lambda m: _arch(_arch({"type": "eval", "args": {"source": _code(m)}})),
    "type-is-object": lambda m: _arch({"type": {"py/function": "os.system"}, "args": {}}),
    # unexpected keys (jsonpickle / pickle-like tags) at every level
    "top-level-py/object": lambda m: _arch(LINEAR, **{"py/object": "os.system"}),
    "layer-__reduce__": lambda m: _arch({**LINEAR, "__reduce__": ["os.mkdir", [str(m)]]}),
    "argument-__class__": lambda m: _arch({"type": "Linear", "args": {"in_features": 3, "out_features": 2,
                                                                      "__class__": "os.system"}}),
    "argument-is-code": lambda m: _arch({"type": "Linear", "args": {"in_features": _code(m), "out_features": 2}}),
    "argument-is-object": lambda m: _arch({"type": "Linear", "args": {"in_features": {"py/reduce": []},
                                                                      "out_features": 2}}),
    "dtype-is-code": lambda m: {**_arch(LINEAR), "dtype": "numpy.dtype('O')"},
    "architecture-not-json": lambda m: "cos\nsystem\n(S'mkdir marker'\ntR.",
    "architecture-deep-json": lambda m: "[" * 100_000 + "]" * 100_000,
    # absurd sizes: refused before anything is allocated
    "linear-huge": lambda m: _arch({"type": "Linear", "args": {"in_features": 100_000, "out_features": 100_000}}),
    "embedding-huge": lambda m: _arch({"type": "Embedding", "args": {"num_embeddings": 1 << 20,
                                                                     "embedding_dim": 1 << 20}}),
    "conv-huge": lambda m: _arch({"type": "Conv2d", "args": {"in_channels": 1 << 16, "out_channels": 1 << 16,
                                                             "kernel_size": [64, 64]}}),
    "layernorm-huge": lambda m: _arch({"type": "LayerNorm", "args": {"normalized_shape": [1 << 20, 1 << 20]}}),
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_architectures_are_refused(name, tmp_path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "crafted.safetensors"
    _file(path, CRAFTED[name](marker))
    with pytest.raises(ValueError, match=INVALID) as err:
        bio.load(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_the_huge_layers_are_refused_without_allocating(tmp_path) -> None:
    import tracemalloc

    path = tmp_path / "huge.safetensors"
    _file(path, _arch({"type": "Linear", "args": {"in_features": 20_000, "out_features": 20_000}}))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="needs at least 400000000 weights") as err:
            bio.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000, f"{peak} bytes allocated to refuse a {path.stat().st_size}-byte file"
    assert "Linear" in str(err.value) and "model.layers[0]" in str(err.value)


def test_headers_with_unexpected_content(tmp_path) -> None:
    """Whatever the header's metadata holds besides the known keys is data: never looked up, never run."""
    marker = tmp_path / "marker"
    path = tmp_path / "extra.safetensors"
    _file(path, _arch(LINEAR), loader="os.system", hook=_code(marker),
          user=json.dumps({"py/object": "os.system", "__reduce__": [_code(marker)]}))
    model = bio.load(path)
    assert isinstance(model, nn.Sequential)
    assert bio.load_metadata(path) == {"py/object": "os.system", "__reduce__": [_code(marker)]}
    assert not marker.exists()


@pytest.mark.parametrize("header, needle", [
    ({"0.weight": {"dtype": "O", "shape": [1], "data_offsets": [0, 8]}}, "dtype O"),
    ({"0.weight": {"dtype": "PICKLE", "shape": [1], "data_offsets": [0, 8]}}, "dtype PICKLE"),
    ({"0.weight": {"dtype": "BOOL", "shape": [8], "data_offsets": [0, 8]}}, "dtype BOOL"),
    ({"0.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, INVALID),
    ({"0.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 80]}}, INVALID),
    ({"0.weight": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}, INVALID),
    ({"0.weight": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 8]}}, INVALID),
    ({"0.weight": "os.system"}, "not an object"),
    ({"__metadata__": {"format": {"py/object": "os.system"}}}, "__metadata__ is not an object of strings"),
    ({"__metadata__": ["format", "backprop"]}, "__metadata__ is not an object of strings"),
])
def test_crafted_tensor_headers_are_refused(header, needle, tmp_path) -> None:
    path = tmp_path / "tensors.safetensors"
    _raw_file(path, header, bytes(8))
    target = _small_model()
    before = {k: v.copy() for k, v in target.state_dict().items()}
    for attempt in (bio.load, lambda p: bio.load_weights(target, p, strict=False)):
        with pytest.raises(ValueError) as err:
            attempt(path)
        assert needle in str(err.value) and str(path) in str(err.value), str(err.value)
    for k, v in target.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_cli_evaluate_refuses_crafted_files(tmp_path) -> None:
    marker = tmp_path / "marker"
    files = []
    for kind in ("pkl", "npz"):
        path = tmp_path / f"{kind}.safetensors"
        path.write_bytes(DISGUISES[kind](marker))
        files.append(path)
    for name in ("os.system", "builtins.eval", "linear-huge"):
        path = tmp_path / f"{name}.safetensors"
        _file(path, CRAFTED[name](marker))
        files.append(path)
    for path in files:
        proc = subprocess.run([sys.executable, "-m", "backprop", "evaluate", str(path), "--dataset", "digits"],
                              capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and INVALID in lines[0], proc.stderr
    assert not marker.exists()
    assert not any(p.suffix == ".png" for p in tmp_path.iterdir()), "evaluate went on after the refusal"


# --------------------------------------------------------------------------------------------------- damage
@pytest.fixture(scope="module")
def small_file(tmp_path_factory) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("small") / "small.safetensors"
    bp.manual_seed(1)
    bio.save(nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 2)), path, metadata={"epoch": 1})
    return path, path.read_bytes()


def _target() -> nn.Module:
    bp.manual_seed(2)
    return nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 2))


def _state(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in model.state_dict().items()}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


def test_every_truncation_is_refused_and_changes_nothing(small_file, tmp_path) -> None:
    _, data = small_file
    path = tmp_path / "cut.safetensors"
    target = _target()
    before = _state(target)
    for n in range(len(data)):
        path.write_bytes(data[:n])
        with pytest.raises(ValueError, match=INVALID):
            bio.load(path)
        with pytest.raises(ValueError, match=INVALID):
            bio.load_weights(target, path)
        with pytest.raises(ValueError, match=INVALID):
            bio.load_weights(target, path, strict=False)
        assert _same(_state(target), before), f"load_weights of {n} of {len(data)} bytes changed the model"


def test_every_bit_flip_loads_completely_or_not_at_all(small_file, tmp_path, record_property) -> None:
    _, data = small_file
    path = tmp_path / "flipped.safetensors"
    target = _target()
    outcomes = {"refused": 0, "loaded": 0}
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(flipped)
        before = _state(target)
        try:
            bio.load_weights(target, path)
        except ValueError as e:
            assert str(path) in str(e), e
            assert _same(_state(target), before), f"bit {bit}: a failed load_weights changed the model"
            outcomes["refused"] += 1
        else:  # the flip hit a value (or an unchecked byte): then the model holds exactly the file's values
            stored = safetensors.numpy.load(bytes(flipped))
            now = _state(target)
            assert all(np.array_equal(now[k], stored[k].astype(now[k].dtype), equal_nan=True) for k in now), bit
            outcomes["loaded"] += 1
        try:
            model = bio.load(path)
        except ValueError as e:
            assert str(path) in str(e), e
        else:
            assert isinstance(model, nn.Module)
    record_property("bit_flips", outcomes)
    assert outcomes["refused"] > 0 and outcomes["loaded"] > 0, outcomes


def test_a_zip_named_safetensors_is_not_opened_as_a_zip(tmp_path) -> None:
    """A zip (torch's format, npz) whose first bytes make a tiny 'header length': refused, not extracted."""
    path = tmp_path / "archive.safetensors"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../../escape.txt", "x")
    path.write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match=INVALID):
        bio.load(path)
    assert not (tmp_path.parent.parent / "escape.txt").exists()
