"""Every layer of backprop.nn, checked from its registration, as tests/test_ops_gradcheck.py checks every op.

A layer class of ``backprop.nn`` must say, where it is defined, how it is saved (``@layer_type`` with its
constructor arguments, or ``@not_saveable(reason)``) and how it is exported to ONNX (an ``onnx`` method, or
``onnx = NotExportable(reason)``); ``test_every_layer_is_described`` fails for one that does not. The tests
below then take every registered example and check a save/load round trip, the ONNX export against
onnxruntime and the layer against PyTorch, so a new layer gets all of them by registering its examples.
"""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
from pathlib import Path

import numpy as np
import pytest

import backprop as bp
import backprop.nn
from backprop import io as bio
from backprop import nn
from backprop.nn.contract import NotExportable, onnx_decision
from backprop.nn.module import Module
from backprop.nn.registry import LAYER_TYPES, Example, save_decision


def _import_all_of_nn() -> None:
    for info in pkgutil.walk_packages(backprop.nn.__path__, "backprop.nn."):
        importlib.import_module(info.name)


def _subclasses(cls: type):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _nn_layer_classes() -> list[type]:
    """Every Module subclass defined in backprop.nn (all its submodules), but the abstract ``_Private`` bases."""
    _import_all_of_nn()
    found = {c for c in _subclasses(Module) if c.__module__.startswith("backprop.nn")}
    return sorted((c for c in found if not c.__name__.startswith("_")), key=lambda c: c.__name__)


def _undescribed(classes: list[type]) -> tuple[list[str], list[str]]:
    """(classes without a save/load decision, classes without an ONNX decision)."""
    no_save = [c.__name__ for c in classes if save_decision(c) is None]
    no_onnx = [c.__name__ for c in classes if onnx_decision(c) is None]
    return no_save, no_onnx


def test_every_layer_is_described():
    """A layer without a save/load description or an ONNX decision would escape the checks below."""
    classes = _nn_layer_classes()
    assert len(classes) >= 25 and nn.Linear in classes and nn.Softplus in classes
    no_save, no_onnx = _undescribed(classes)
    assert not no_save, f"layers without a save/load description (@layer_type or @not_saveable): {no_save}"
    assert not no_onnx, f"layers without an ONNX decision (an onnx method or NotExportable): {no_onnx}"


def test_the_completeness_check_catches_an_undescribed_layer():
    class Forgotten(Module):
        def forward(self, x):
            return x

    class MyReLU(nn.ReLU):  # a forward of its own: ReLU's export is not its export
        def forward(self, x):
            return super().forward(x) * 2

    assert _undescribed([Forgotten, MyReLU, nn.ReLU]) == (["Forgotten", "MyReLU"], ["Forgotten", "MyReLU"])


def test_refusals_give_reasons():
    assert isinstance(onnx_decision(nn.ModuleList), NotExportable)
    assert "forward" in save_decision(nn.ModuleList)
    assert "built in" in save_decision(nn.Sequential) and callable(onnx_decision(nn.Sequential))


def test_every_registered_layer_has_examples():
    ours = [spec for spec in LAYER_TYPES.values() if spec.cls.__module__.startswith("backprop.nn")]
    assert len(ours) >= 23
    assert not [s.name for s in ours if not s.examples], "registered layers without examples"
    assert all(isinstance(e, Example) for s in ours for e in s.examples)


def _examples():
    for spec in LAYER_TYPES.values():
        if spec.cls.__module__.startswith("backprop.nn"):
            for i, ex in enumerate(spec.examples):
                yield pytest.param(ex, id=f"{spec.name}-{ex.label or i}")


EXAMPLES = list(_examples())


def _perturbed(example: Example, rng: np.random.Generator) -> Module:
    """The example layer with random weights and (after a training step's forward) buffers off their defaults."""
    bp.manual_seed(0)
    layer = example.make()
    for p in layer.parameters():
        p.data += rng.uniform(-0.5, 0.5, size=p.data.shape).astype(p.data.dtype)
    with bp.no_grad():
        layer.train()
        layer(_inp(example.sample(rng)))
    return layer


def _inp(x: np.ndarray):
    return bp.tensor(x) if x.dtype.kind == "f" else x


def _first(y):
    """A layer's output; of a tuple (MultiheadAttention's (output, weights), as in PyTorch) its first item."""
    return y[0] if isinstance(y, tuple) else y


# ----------------------------------------------------------------------------------------- save/load
@pytest.mark.parametrize("example", EXAMPLES)
def test_save_load_round_trip(example, tmp_path):
    rng = np.random.default_rng(0)
    model = nn.Sequential(_perturbed(example, rng))
    x = example.sample(rng)
    model.eval()
    with bp.no_grad():
        want = _first(model(_inp(x))).data
    path = tmp_path / "m.safetensors"
    bio.save(model, path)
    loaded = bio.load(path)
    assert type(loaded[0]) is type(model[0]) and repr(loaded) == repr(model)
    assert bio.model_to_config(loaded) == bio.model_to_config(model)
    assert json.loads(json.dumps(bio.model_to_config(model))) == bio.model_to_config(model)
    state, got_state = model.state_dict(), loaded.state_dict()
    assert list(got_state) == list(state)
    for k in state:
        np.testing.assert_array_equal(got_state[k], state[k], err_msg=k)
    loaded.eval()
    with bp.no_grad():
        np.testing.assert_array_equal(_first(loaded(_inp(x))).data, want)


# --------------------------------------------------------------------------------------------- ONNX
@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("example", EXAMPLES)
def test_onnx_export_matches_onnxruntime(example, opset, tmp_path):
    pytest.importorskip("onnx")
    import backprop.onnx as bonnx

    rng = np.random.default_rng(1)
    model = nn.Sequential(_perturbed(example, rng))
    x = example.sample(rng)
    path = tmp_path / "m.onnx"
    if isinstance(onnx_decision(type(model[0])), NotExportable):
        with pytest.raises(ValueError, match="cannot be exported to ONNX"):
            bonnx.export(model, path, x, opset=opset)
        return
    bonnx.export(model, path, x, opset=opset)  # NOTE: runs onnxruntime on x itself when it is installed
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    bigger = np.concatenate([x, example.sample(np.random.default_rng(2))])  # the batch dimension is dynamic
    model.eval()
    for batch in (x, bigger):
        (got,) = sess.run(None, {"input": batch})
        with bp.no_grad():
            want = _first(model(_inp(batch))).data
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ PyTorch
@pytest.mark.parametrize("example", EXAMPLES)
def test_matches_torch(example):
    torch = pytest.importorskip("torch")
    if example.torch is None:
        pytest.skip("no PyTorch equivalent")
    rng = np.random.default_rng(3)
    ours = _perturbed(example, rng).double()
    theirs = example.torch(torch).double()
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    x = example.sample(rng)
    x = x.astype(np.float64) if x.dtype.kind == "f" else x
    modes = ["eval"]
    ours.train()
    with bp.no_grad():
        if np.array_equal(_first(ours(_inp(x))).data, _first(ours(_inp(x))).data):  # deterministic in training (not Dropout)
            modes.append("train")
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    for mode in modes:
        ours.train(mode == "train")
        theirs.train(mode == "train")
        a = bp.tensor(x, requires_grad=True) if x.dtype.kind == "f" else x
        b = torch.tensor(x, requires_grad=x.dtype.kind == "f")
        out, ref = _first(ours(a)), _first(theirs(b))
        np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=1e-9, atol=1e-12, err_msg=mode)
        w = np.random.default_rng(4).uniform(0.5, 1.5, size=out.shape)
        ours.zero_grad()
        out.backward(w)
        ref.backward(torch.tensor(w))
        if x.dtype.kind == "f":
            np.testing.assert_allclose(a.grad, b.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=f"{mode}: input")
        grads = dict(theirs.named_parameters())
        for name, p in ours.named_parameters():
            np.testing.assert_allclose(p.grad, grads[name].grad.numpy(), rtol=1e-9, atol=1e-12,
                                       err_msg=f"{mode}: {name}")
            grads[name].grad = None
        for name, buf in theirs.named_buffers():
            np.testing.assert_allclose(ours.state_dict()[name], buf.numpy(), rtol=1e-9, err_msg=f"{mode}: {name}")


# ---------------------------------------------------------------------------------- files from before
# The architecture of a file written before the layers registered themselves (every layer type then known):
# the JSON layout is unchanged, and such files must keep loading.
_OLD_ARCHITECTURE = (
    '{"type":"Sequential","dtype":"float32","layers":['
    '{"type":"Unflatten","args":{"dim":1,"unflattened_size":[1,8,8]}},'
    '{"type":"Conv2d","args":{"in_channels":1,"out_channels":4,"kernel_size":[3,3],"stride":[1,1],'
    '"padding":"same","dilation":[1,1],"groups":1,"bias":true}},'
    '{"type":"BatchNorm2d","args":{"num_features":4,"eps":1e-05,"momentum":0.1,"affine":true,'
    '"track_running_stats":true}},'
    '{"type":"ReLU","args":{}},'
    '{"type":"MaxPool2d","args":{"kernel_size":2,"stride":null,"padding":0,"dilation":1,"ceil_mode":false}},'
    '{"type":"AvgPool2d","args":{"kernel_size":1,"stride":null,"padding":0,"ceil_mode":false,'
    '"count_include_pad":true,"divisor_override":null}},'
    '{"type":"AdaptiveAvgPool2d","args":{"output_size":[2,2]}},'
    '{"type":"Flatten","args":{"start_dim":1}},'
    '{"type":"Sequential","layers":[{"type":"Linear","args":{"in_features":16,"out_features":6,"bias":true}},'
    '{"type":"LayerNorm","args":{"normalized_shape":[6],"eps":1e-05,"elementwise_affine":true,"bias":true}},'
    '{"type":"GELU","args":{"approximate":"tanh"}},{"type":"LeakyReLU","args":{"negative_slope":0.1}},'
    '{"type":"Dropout","args":{"p":0.2}},{"type":"Identity","args":{}},{"type":"Sigmoid","args":{}},'
    '{"type":"Tanh","args":{}}]},'
    '{"type":"Unflatten","args":{"dim":1,"unflattened_size":[2,3]}},'
    '{"type":"Conv1d","args":{"in_channels":2,"out_channels":2,"kernel_size":[1],"stride":[1],"padding":[0],'
    '"dilation":[1],"groups":1,"bias":false}},'
    '{"type":"BatchNorm1d","args":{"num_features":2,"eps":1e-05,"momentum":null,"affine":false,'
    '"track_running_stats":true}},'
    '{"type":"Flatten","args":{"start_dim":1}},'
    '{"type":"Softmax","args":{"dim":1}},{"type":"LogSoftmax","args":{"dim":-1}}]}'
)


def test_files_written_before_the_registry_still_load(tmp_path):
    import safetensors.numpy

    config = json.loads(_OLD_ARCHITECTURE)
    model = bio.model_from_config(config)
    tensors = model.state_dict()
    path = tmp_path / "old.safetensors"
    path.write_bytes(safetensors.numpy.save(tensors, metadata={
        "format": "backprop", "version": "1", "architecture": _OLD_ARCHITECTURE, "user": "{}"}))
    loaded = bio.load(path)
    assert bio.model_to_config(loaded) == config  # and the layout written today is the same
    x = bp.tensor(np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32))
    model.eval()
    loaded.eval()
    np.testing.assert_array_equal(loaded(x).data, model(x).data)
    emb = bio.model_from_config({"type": "Sequential", "layers": [
        {"type": "Embedding", "args": {"num_embeddings": 5, "embedding_dim": 2, "padding_idx": None}}]})
    assert isinstance(emb[0], nn.Embedding)


def test_a_file_can_only_name_registered_layers(tmp_path):
    for kind in ("Module", "ModuleList", "Parameter", "contract", "NotExportable", "_ConvNd", "backprop.nn.Linear"):
        with pytest.raises(ValueError, match="unknown layer type"):
            bio.model_from_config({"type": "Sequential", "layers": [{"type": kind, "args": {}}]})
    with pytest.raises(ValueError, match=r"Hardtanh.*failed.*max_val"):
        bio.model_from_config({"type": "Sequential", "layers": [
            {"type": "Hardtanh", "args": {"min_val": 1.0, "max_val": -1.0}}]})
    with pytest.raises(ValueError, match=r"argument 'beta': expected a non-zero number, got 0"):
        bio.model_from_config({"type": "Sequential", "layers": [{"type": "Softplus", "args": {"beta": 0}}]})


# ------------------------------------------------------------------------------------------ imports
def _nn_import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """module -> the modules of backprop.nn it imports, from every import statement (function-local too);
    and module -> every name it imports."""
    root = Path(backprop.nn.__file__).parent
    names = {}
    for f in root.rglob("*.py"):
        parts = [p for p in f.relative_to(root).with_suffix("").parts if p != "__init__"]
        names[".".join(["backprop.nn", *parts])] = f
    graph: dict[str, set[str]] = {}
    raw: dict[str, set[str]] = {}
    for name, f in names.items():
        found = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
                # NOTE: "from backprop.nn import init" counts as importing the package backprop.nn too
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
        edges = set()
        for target in found:
            while target and target not in names:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name], raw[name] = edges, found
    return graph, raw


def test_nn_imports_have_no_cycle():
    graph, raw = _nn_import_graph()
    assert "backprop.nn.module" in graph and "backprop.nn.layers" not in graph["backprop.nn.module"]
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(node):], node]))
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*path, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    for name, imported in raw.items():  # imports point downward: nn uses the engine only (never onnx, io...)
        upward = [t for t in imported if t.split(".")[0] == "onnx"
                  or (t.startswith("backprop") and not t.startswith(("backprop.engine", "backprop.nn")))]
        assert not upward, f"{name} imports {upward}"
