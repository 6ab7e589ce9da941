"""Tests for backprop.io: model files (safetensors + JSON architecture), PyTorch interop, bad files, atomic writes."""

from __future__ import annotations

import json
import os
import re
import stat

import numpy as np
import pytest
import safetensors
import safetensors.numpy

import backprop as bp
import backprop.io as bio
from backprop.io import serialization

DTYPES = [np.float32, np.float64]


def mlp(dtype=np.float32, seed=0):
    """A Sequential using every built-in layer type (input (N, 2, 3))."""
    bp.manual_seed(seed)
    net = bp.nn.Sequential(
        bp.nn.Flatten(),
        bp.nn.Linear(6, 16),
        bp.nn.ReLU(),
        bp.nn.Linear(16, 12),
        bp.nn.Tanh(),
        bp.nn.Dropout(0.3),
        bp.nn.Linear(12, 10, bias=False),
        bp.nn.GELU(approximate="tanh"),
        bp.nn.Sequential(bp.nn.Linear(10, 8), bp.nn.LeakyReLU(0.2), bp.nn.Identity()),
        bp.nn.Linear(8, 8),
        bp.nn.GELU(),
        bp.nn.Sigmoid(),
        bp.nn.Linear(8, 5),
        bp.nn.Softmax(dim=-1),
        bp.nn.LogSoftmax(dim=1),
    )
    return net.to(dtype)


def outputs(model, x):
    model.eval()
    return model(bp.tensor(x)).data


def files_in(folder):
    return sorted(os.listdir(folder))


def write_with_metadata(path, tensors, metadata):
    """A safetensors file with arbitrary (crafted) metadata."""
    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)


def valid_metadata(model):
    return {
        "format": "backprop",
        "version": "1",
        "architecture": json.dumps(bio.model_to_config(model)),
        "user": "{}",
    }


# ------------------------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_same_outputs_state_and_dtype(tmp_path, dtype):
    net = mlp(dtype)
    path = tmp_path / "model.safetensors"
    bio.save(net, path, metadata={"epoch": 7, "val_acc": 0.9, "note": "héllo"})
    bp.manual_seed(123)  # the loaded weights must not depend on the generator
    loaded = bio.load(path)
    assert type(loaded) is bp.nn.Sequential and len(loaded) == len(net)
    assert loaded.dtype == np.dtype(dtype)
    assert repr(loaded) == repr(net)
    a, b = net.state_dict(), loaded.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert b[k].dtype == a[k].dtype
        np.testing.assert_array_equal(a[k], b[k])
    x = np.random.default_rng(1).standard_normal((7, 2, 3)).astype(dtype)
    np.testing.assert_array_equal(outputs(net, x), outputs(loaded, x))
    assert bio.model_to_config(loaded) == bio.model_to_config(net)
    assert bio.load_metadata(path) == {"epoch": 7, "val_acc": 0.9, "note": "héllo"}
    assert files_in(tmp_path) == ["model.safetensors"]


def test_file_is_plain_safetensors_with_backprop_metadata(tmp_path):
    net = mlp()
    path = tmp_path / "model.safetensors"
    bio.save(net, str(path))
    arrays = safetensors.numpy.load_file(str(path))
    assert set(arrays) == set(net.state_dict())
    assert "1.weight" in arrays and arrays["1.weight"].shape == (16, 6)  # PyTorch's (out, in)
    with safetensors.safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
    assert set(meta) == {"format", "version", "architecture", "user"}
    assert meta["format"] == "backprop" and meta["version"] == "1"
    config = json.loads(meta["architecture"])
    assert config["type"] == "Sequential" and config["dtype"] == "float32"
    assert config["layers"][1] == {"type": "Linear", "args": {"in_features": 6, "out_features": 16, "bias": True}}
    assert config["layers"][8]["type"] == "Sequential"
    assert json.loads(meta["user"]) == {}
    assert bio.load_metadata(path) == {}


def test_load_leaves_random_generator_alone(tmp_path):
    path = tmp_path / "m.safetensors"
    bio.save(mlp(), path)
    bp.manual_seed(5)
    expected = bp.get_rng().random(3)
    bp.manual_seed(5)
    bio.load(path)
    np.testing.assert_array_equal(bp.get_rng().random(3), expected)


def test_config_round_trip_and_json():
    net = mlp(np.float64)
    config = bio.model_to_config(net)
    assert json.loads(json.dumps(config)) == config
    rebuilt = bio.model_from_config(json.loads(json.dumps(config)))
    assert rebuilt.dtype == np.float64
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    single = bio.model_to_config(bp.nn.Linear(3, 2))
    assert single == {"type": "Linear", "dtype": "float32", "args": {"in_features": 3, "out_features": 2, "bias": True}}
    assert isinstance(bio.model_from_config(single), bp.nn.Linear)


def test_model_without_parameters(tmp_path):
    net = bp.nn.Sequential(bp.nn.ReLU(), bp.nn.Softmax(dim=0))
    bio.save(net, tmp_path / "m.safetensors")
    loaded = bio.load(tmp_path / "m.safetensors")
    x = np.array([[-1.0, 2.0], [3.0, 0.5]], dtype=np.float32)
    np.testing.assert_array_equal(outputs(loaded, x), outputs(net, x))


# --------------------------------------------------------------------------------------------- PyTorch interop
def torch_twin(torch, dtype):
    tnn = torch.nn
    return tnn.Sequential(
        tnn.Flatten(),
        tnn.Linear(6, 16), tnn.ReLU(),
        tnn.Linear(16, 12), tnn.Tanh(), tnn.Dropout(0.3),
        tnn.Linear(12, 10, bias=False), tnn.GELU(approximate="tanh"),
        tnn.Sequential(tnn.Linear(10, 8), tnn.LeakyReLU(0.2), tnn.Identity()),
        tnn.Linear(8, 8), tnn.GELU(), tnn.Sigmoid(),
        tnn.Linear(8, 5), tnn.Softmax(dim=-1), tnn.LogSoftmax(dim=1),
    ).to(dtype).eval()


def test_backprop_file_loads_into_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    net = mlp(np.float64)
    path = tmp_path / "model.safetensors"
    bio.save(net, path)
    state = safetensors.torch.load_file(str(path))
    twin = torch_twin(torch, torch.float64)
    twin.load_state_dict(state)  # strict: same names, same shapes
    x = np.random.default_rng(2).standard_normal((9, 2, 3))
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(outputs(net, x), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pytorch_file_loads_into_backprop(tmp_path, dtype):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    torch.manual_seed(0)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    twin = torch_twin(torch, tdtype)
    path = tmp_path / "torch.safetensors"
    safetensors.torch.save_file(twin.state_dict(), str(path))
    net = mlp(dtype, seed=1)
    assert bio.load_weights(net, path) is net
    x = np.random.default_rng(3).standard_normal((9, 2, 3)).astype(dtype)
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(outputs(net, x), expected, atol=1e-6 if dtype == np.float64 else 1e-5, rtol=0)
    # a PyTorch file holds weights only: load() says what to do instead
    with pytest.raises(ValueError, match="weights only.*load_weights"):
        bio.load(path)


def test_bfloat16_tensor_is_refused_clearly(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    path = tmp_path / "bf16.safetensors"
    safetensors.torch.save_file({"weight": torch.zeros(2, 3, dtype=torch.bfloat16)}, str(path))
    with pytest.raises(ValueError, match="'weight' has dtype BF16"):
        bio.load_weights(bp.nn.Linear(3, 2, bias=False), path)


# ---------------------------------------------------------------------------------------------- save_weights
def test_save_weights_load_weights_round_trip_for_any_module(tmp_path):
    class Custom(bp.nn.Module):
        def __init__(self):
            self.encoder = bp.nn.Linear(4, 3)
            self.head = bp.nn.Linear(3, 2)

        def forward(self, x):
            return self.head(bp.relu(self.encoder(x)))

    bp.manual_seed(0)
    a = Custom()
    path = tmp_path / "w.safetensors"
    with pytest.raises(TypeError, match=r"Custom.*only Sequential models of known layers.*save_weights"):
        bio.save(a, path)
    assert not path.exists()
    bio.save_weights(a, path, metadata={"step": 3})
    assert set(safetensors.numpy.load_file(str(path))) == {"encoder.weight", "encoder.bias", "head.weight", "head.bias"}
    assert bio.load_metadata(path) == {"step": 3}
    b = Custom()
    bio.load_weights(b, path)
    x = np.ones((2, 4), dtype=np.float32)
    np.testing.assert_array_equal(outputs(a, x), outputs(b, x))
    with pytest.raises(ValueError, match=r"holds weights only.*load_weights\(model"):
        bio.load(path)


def test_load_weights_checks_everything_before_changing_anything(tmp_path):
    net = mlp()
    before = net.state_dict()
    other = mlp(seed=1).state_dict()
    del other["3.weight"], other["9.bias"]
    other["encoder.weight"] = other["extra"] = np.zeros(2, dtype=np.float32)
    path = tmp_path / "other.safetensors"
    bio.save_weights(other, path)
    with pytest.raises(ValueError, match="missing tensors 3.weight, 9.bias; unexpected tensors encoder.weight, extra") as err:
        bio.load_weights(net, path)
    assert str(path) in str(err.value)

    small = mlp()
    state = small.state_dict()
    state["1.weight"] = np.zeros((16, 7), dtype=np.float32)
    state["12.bias"] = np.zeros(4, dtype=np.float32)
    bio.save_weights(state, path)
    with pytest.raises(ValueError, match=r"shape mismatch: 1.weight is \(16, 7\) in the file but \(16, 6\)") as err:
        bio.load_weights(net, path)
    assert "12.bias is (4,)" in str(err.value)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])  # nothing changed

    # strict=False: only the tensors that are there, still shape-checked
    partial = {k: v + 1 for k, v in before.items() if k.startswith("1.")}
    bio.save_weights(partial, path)
    bio.load_weights(net, path, strict=False)
    np.testing.assert_array_equal(net.state_dict()["1.weight"], before["1.weight"] + 1)
    np.testing.assert_array_equal(net.state_dict()["3.weight"], before["3.weight"])


def test_load_weights_accepts_a_state_dict():
    a, b = mlp(seed=0), mlp(seed=1)
    bio.load_weights(b, a.state_dict())
    x = np.ones((2, 2, 3), dtype=np.float32)
    np.testing.assert_array_equal(outputs(a, x), outputs(b, x))
    with pytest.raises(ValueError, match="missing tensors"):
        bio.load_weights(b, {"1.weight": a.state_dict()["1.weight"]})


# ------------------------------------------------------------------------------------------------- bad files
def test_missing_file(tmp_path):
    path = tmp_path / "nope.safetensors"
    for fn in (bio.load, lambda p: bio.load_weights(mlp(), p), bio.load_metadata):
        with pytest.raises(FileNotFoundError, match="nope.safetensors"):
            fn(path)


def test_truncated_files_are_refused(tmp_path):
    good = tmp_path / "good.safetensors"
    bio.save(mlp(), good)
    data = good.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    cut = tmp_path / "cut.safetensors"
    for n in sorted({0, 3, 8, 9, 40, header_end - 1, header_end, header_end + 5, len(data) // 2, len(data) - 1}):
        cut.write_bytes(data[:n])
        with pytest.raises(ValueError, match="is not a valid backprop model file") as err:
            bio.load(cut)
        assert str(cut) in str(err.value)
        with pytest.raises(ValueError, match="is not a valid backprop model file"):
            bio.load_weights(mlp(), cut)
    # one byte too many is not fine either
    cut.write_bytes(data + b"\0")
    with pytest.raises(ValueError, match="not a valid backprop model file"):
        bio.load(cut)


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_are_refused(tmp_path, seed):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(np.random.default_rng(seed).bytes(1000 + seed))
    with pytest.raises(ValueError, match="not a valid backprop model file"):
        bio.load(path)


def test_header_that_is_not_json(tmp_path):
    path = tmp_path / "bad.safetensors"
    body = b"{not json!"
    path.write_bytes(len(body).to_bytes(8, "little") + body)
    with pytest.raises(ValueError, match="header is not valid JSON"):
        bio.load(path)
    body = b"[1, 2]"
    path.write_bytes(len(body).to_bytes(8, "little") + body)
    with pytest.raises(ValueError, match="header is not a JSON object"):
        bio.load(path)


def test_weights_only_file_given_to_load(tmp_path):
    net = mlp()
    path = tmp_path / "w.safetensors"
    safetensors.numpy.save_file(net.state_dict(), str(path))
    with pytest.raises(ValueError, match=r"holds weights only.*load_weights") as err:
        bio.load(path)
    assert str(path) in str(err.value)
    bio.load_weights(mlp(seed=3), path)  # while load_weights takes it


def test_non_numeric_tensor_is_refused(tmp_path):
    path = tmp_path / "bool.safetensors"
    state = mlp().state_dict()
    state["1.bias"] = np.ones(16, dtype=bool)
    write_with_metadata(path, state, valid_metadata(mlp()))
    with pytest.raises(ValueError, match="'1.bias' has dtype BOOL"):
        bio.load(path)
    with pytest.raises(ValueError, match="'1.bias' has dtype BOOL"):
        bio.load_weights(mlp(), path)


def test_shapes_not_matching_the_architecture(tmp_path):
    net = mlp()
    meta = valid_metadata(net)
    config = json.loads(meta["architecture"])
    config["layers"][3]["args"]["out_features"] = 13  # 3.weight (13, 16), but the file holds (12, 16)
    config["layers"][6]["args"]["in_features"] = 13
    meta["architecture"] = json.dumps(config)
    path = tmp_path / "m.safetensors"
    write_with_metadata(path, net.state_dict(), meta)
    with pytest.raises(ValueError, match=r"do not match its architecture: shape mismatch: 3.weight is \(12, 16\)"):
        bio.load(path)

    state = net.state_dict()
    del state["9.bias"]
    state["extra"] = np.zeros(2, dtype=np.float32)
    write_with_metadata(path, state, valid_metadata(net))
    with pytest.raises(ValueError, match="missing tensors 9.bias; unexpected tensors extra"):
        bio.load(path)


def _arch_error(tmp_path, mutate):
    """Save a valid model, change its architecture JSON with ``mutate(config)``, return load()'s ValueError text."""
    net = bp.nn.Sequential(bp.nn.Linear(4, 8), bp.nn.ReLU(), bp.nn.Dropout(0.1), bp.nn.Linear(8, 2))
    meta = valid_metadata(net)
    config = json.loads(meta["architecture"])
    new = mutate(config)  # None: config changed in place; else the replacement (a str is the raw JSON text)
    meta["architecture"] = new if isinstance(new, str) else json.dumps(config if new is None else new)
    path = tmp_path / "crafted.safetensors"
    write_with_metadata(path, net.state_dict(), meta)
    with pytest.raises(ValueError) as err:
        bio.load(path)
    message = str(err.value)
    assert message.startswith(f"{path} is not a valid backprop model file")
    return message


def _set(config, index, key, value):
    config["layers"][index][key] = value


def _set_arg(config, index, key, value):
    config["layers"][index]["args"][key] = value


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: _set(c, 1, "type", "os.system"), r"layers\[1\]: unknown layer type 'os.system'; known types: .*Linear"),
        (lambda c: _set(c, 0, "type", "__import__"), r"layers\[0\]: unknown layer type '__import__'"),
        (lambda c: _set(c, 0, "type", 42), r"layers\[0\]: 'type' must be a layer name"),
        (lambda c: _set(c, 0, "code", "print(1)"), r"layers\[0\] \(Linear\): unexpected key 'code'"),
        (lambda c: _set_arg(c, 1, "inplace", True), r"layers\[1\] \(ReLU\): unexpected argument 'inplace' \(ReLU takes no"),
        (lambda c: _set_arg(c, 0, "device", "cuda"), r"layers\[0\] \(Linear\): unexpected argument 'device'"),
        (lambda c: _set_arg(c, 0, "in_features", "4"), r"\(Linear\): argument 'in_features': expected an integer > 0, got '4'"),
        (lambda c: _set_arg(c, 0, "in_features", True), r"argument 'in_features': expected an integer > 0, got True"),
        (lambda c: _set_arg(c, 0, "in_features", 4.0), r"argument 'in_features': expected an integer > 0, got 4.0"),
        (lambda c: _set_arg(c, 3, "out_features", -2), r"layers\[3\] \(Linear\): argument 'out_features'.*got -2"),
        (lambda c: _set_arg(c, 0, "bias", 1), r"layers\[0\] \(Linear\): argument 'bias': expected true or false, got 1"),
        (lambda c: _set_arg(c, 2, "p", 1.5), r"layers\[2\] \(Dropout\): argument 'p': expected a number in \[0, 1\)"),
        (lambda c: _set_arg(c, 2, "p", "0.1"), r"layers\[2\] \(Dropout\): argument 'p'"),
        (lambda c: c["layers"][0]["args"].clear(), r"layers\[0\] \(Linear\): argument 'in_features' is missing"),
        (lambda c: _set(c, 0, "args", [4, 8]), r"layers\[0\] \(Linear\): 'args' must be an object"),
        (lambda c: c["layers"].__setitem__(1, "ReLU"), r"layers\[1\]: expected an object"),
        (lambda c: c.__setitem__("layers", {"0": {}}), r"model \(Sequential\): 'layers' must be a list"),
        (lambda c: c.__setitem__("dtype", "object"), r"'dtype' must be one of"),
        (lambda c: c.__setitem__("import", "os"), r"model \(Sequential\): unexpected key 'import'"),
        (lambda c: _set(c, 1, "dtype", "float64"), r"layers\[1\] \(ReLU\): unexpected key 'dtype'"),
        (lambda c: "{\"type\": \"Sequential\", \"type\": \"Linear\"}", r"duplicate key 'type'"),
        (lambda c: "not json at all", r"architecture is not valid JSON"),
        (lambda c: [1, 2], r"architecture is not a JSON object"),
        (lambda c: "[" * 100_000, r"architecture is not valid JSON"),
    ],
)
def test_bad_architecture_json(tmp_path, mutate, expected):
    message = _arch_error(tmp_path, mutate)
    assert re.search(expected, message), message


def test_nested_layer_errors_name_the_path(tmp_path):
    def mutate(c):
        c["layers"][1] = {"type": "Sequential", "layers": [{"type": "ReLU", "args": {}}, {"type": "Evil", "args": {}}]}

    assert "model.layers[1].layers[1]: unknown layer type 'Evil'" in _arch_error(tmp_path, mutate)


def test_too_deeply_nested(tmp_path):
    def mutate(c):
        deep = {"type": "ReLU", "args": {}}
        for _ in range(100):
            deep = {"type": "Sequential", "layers": [deep]}
        c["layers"][1] = deep

    assert "nested deeper than" in _arch_error(tmp_path, mutate)


def test_bad_format_metadata(tmp_path):
    net = bp.nn.Sequential(bp.nn.Linear(2, 2))
    path = tmp_path / "m.safetensors"
    meta = valid_metadata(net)
    meta["version"] = "99"
    write_with_metadata(path, net.state_dict(), meta)
    with pytest.raises(ValueError, match="format version '99'; this backprop reads version 1"):
        bio.load(path)
    meta = valid_metadata(net)
    meta["format"] = "pt"
    write_with_metadata(path, net.state_dict(), meta)
    with pytest.raises(ValueError, match="metadata format is 'pt'"):
        bio.load(path)
    write_with_metadata(path, net.state_dict(), {"format": "pt"})
    with pytest.raises(ValueError, match="holds weights only"):
        bio.load(path)


def test_model_from_config_errors_without_file():
    with pytest.raises(ValueError, match=r"model config: model\.layers\[0\] \(Linear\): argument 'out_features'"):
        bio.model_from_config({"type": "Sequential", "layers": [{"type": "Linear", "args": {"in_features": 2,
                                                                                          "out_features": 0}}]})
    with pytest.raises(ValueError, match="unknown layer type 'subprocess.Popen'"):
        bio.model_from_config({"type": "subprocess.Popen", "args": {"args": "ls"}})
    with pytest.raises(ValueError, match="expected an object"):
        bio.model_from_config("Sequential")


# ------------------------------------------------------------------------------------------- what can be saved
def test_unsaveable_models_raise_type_error(tmp_path):
    path = tmp_path / "m.safetensors"

    class MyLinear(bp.nn.Linear):  # a subclass may behave differently: not whitelisted
        pass

    with pytest.raises(TypeError, match=r"MyLinear \(at model.layers\[1\]\).*use backprop.io.save_weights"):
        bio.save(bp.nn.Sequential(bp.nn.ReLU(), MyLinear(2, 2)), path)

    seq = bp.nn.Sequential(bp.nn.Linear(2, 2))
    seq.extra = bp.nn.Linear(2, 2)
    with pytest.raises(TypeError, match="sub-modules"):
        bio.save(seq, path)

    mixed = bp.nn.Sequential(bp.nn.Linear(2, 2), bp.nn.Linear(2, 2).double())
    with pytest.raises(TypeError, match="different dtypes"):
        bio.save(mixed, path)

    odd = bp.nn.Sequential(bp.nn.Linear(2, 3))
    odd[0].out_features = 4  # attributes that no longer describe the weights
    with pytest.raises(TypeError, match=r"rebuilt from its config.*shape mismatch"):
        bio.save(odd, path)

    soft = bp.nn.Sequential(bp.nn.Softmax(dim=None))
    with pytest.raises(TypeError, match=r"model.layers\[0\] \(Softmax\): argument 'dim': expected an integer, got None"):
        bio.save(soft, path)

    with pytest.raises(TypeError, match="metadata must be JSON-serialisable"):
        bio.save(bp.nn.Sequential(bp.nn.ReLU()), path, metadata={"f": object()})
    assert not path.exists()


def test_numpy_attribute_values_are_saved_as_json(tmp_path):
    net = bp.nn.Sequential(bp.nn.Flatten(np.int64(1)), bp.nn.LeakyReLU(np.float32(0.5)))
    config = bio.model_to_config(net)
    assert config["layers"][0]["args"] == {"start_dim": 1} and type(config["layers"][0]["args"]["start_dim"]) is int
    bio.save(net, tmp_path / "m.safetensors", metadata={"acc": np.float64(0.5), "hist": np.arange(3)})
    assert bio.load_metadata(tmp_path / "m.safetensors") == {"acc": 0.5, "hist": [0, 1, 2]}


@pytest.fixture
def scale_layer():
    class Scale(bp.nn.Module):
        def __init__(self, factor: float = 2.0, axes=(0,)):
            self.factor = factor
            self.axes = axes

        def forward(self, x):
            return x * self.factor

    yield Scale
    serialization.LAYER_TYPES.pop("Scale", None)
    serialization.LAYER_TYPES.pop("Scaler", None)


def test_register_layer(tmp_path, scale_layer):
    Scale = scale_layer
    path = tmp_path / "m.safetensors"
    with pytest.raises(TypeError, match="Scale"):
        bio.save(bp.nn.Sequential(Scale(3.0)), path)
    assert bio.register_layer(Scale, {"factor": float, "axes": bio.Arg(list, check=lambda v: len(v) > 0,
                                                                       expect="a non-empty list")}) is Scale
    assert "Scale" in bio.LAYER_TYPES and bio.LAYER_TYPES["Scale"].cls is Scale
    bio.save(bp.nn.Sequential(bp.nn.Linear(2, 2), Scale(3.0, axes=(0, 1))), path)
    loaded = bio.load(path)
    assert isinstance(loaded[1], Scale) and loaded[1].factor == 3.0 and loaded[1].axes == (0, 1)

    with pytest.raises(ValueError, match="takes no argument 'colour'"):
        bio.register_layer(Scale, {"colour": str}, replace=True)
    with pytest.raises(ValueError, match="JSON types"):
        bio.register_layer(Scale, {"factor": np.ndarray}, replace=True)
    with pytest.raises(ValueError, match="already registered as 'Scale'"):
        bio.register_layer(Scale, {}, name="Scaler")
    with pytest.raises(ValueError, match="'Linear' is already"):
        bio.register_layer(Scale, {}, name="Linear")
    with pytest.raises(ValueError, match="Sequential"):
        bio.register_layer(bp.nn.Sequential, {})
    with pytest.raises(TypeError, match="Module subclass"):
        bio.register_layer(dict, {})
    bio.register_layer(Scale, {"factor": float}, name="Scaler", replace=True)
    assert "Scale" not in bio.LAYER_TYPES and bio.LAYER_TYPES["Scaler"].cls is Scale


# ---------------------------------------------------------------------------------------------- atomic writes
def test_failed_save_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    old = mlp(seed=0)
    bio.save(old, path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk on fire")

    for target in ("fsync", "replace"):
        with monkeypatch.context() as m:
            m.setattr(os, target, boom)
            with pytest.raises(OSError, match="disk on fire"):
                bio.save(mlp(seed=1), path)
            with pytest.raises(OSError, match="disk on fire"):
                bio.save_weights(mlp(seed=1), path)
        assert path.read_bytes() == before
        assert files_in(tmp_path) == ["model.safetensors"]

    # a failure while the bytes are being written
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError("no space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(os, "fdopen", lambda *a, **k: HalfWriter(real_fdopen(*a, **k)))
    with pytest.raises(OSError, match="no space left"):
        bio.save(mlp(seed=2), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert files_in(tmp_path) == ["model.safetensors"]
    x = np.ones((1, 2, 3), dtype=np.float32)
    np.testing.assert_array_equal(outputs(bio.load(path), x), outputs(old, x))


def test_atomic_write_text_binary_and_errors(tmp_path):
    path = tmp_path / "metrics.csv"
    bio.write_text_atomic(path, "epoch,loss\n1,0.5\n")
    assert path.read_text() == "epoch,loss\n1,0.5\n"
    with pytest.raises(RuntimeError, match="interrupted"), bio.atomic_write(path, "w") as f:
        f.write("epoch,loss\n")
        raise RuntimeError("interrupted")
    assert path.read_text() == "epoch,loss\n1,0.5\n"
    assert files_in(tmp_path) == ["metrics.csv"]

    with bio.atomic_write(tmp_path / "plot.png") as f:  # binary by default, as savefig(f) wants
        f.write(b"\x89PNG")
    assert (tmp_path / "plot.png").read_bytes() == b"\x89PNG"
    bio.write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"

    with pytest.raises(ValueError, match="mode"), bio.atomic_write(path, "a"):
        pass
    with pytest.raises(FileNotFoundError, match="does not exist"), bio.atomic_write(tmp_path / "no" / "x.txt", "w"):
        pass
    with pytest.raises(IsADirectoryError), bio.atomic_write(tmp_path, "wb"):
        pass
    assert sorted(files_in(tmp_path)) == ["b.bin", "metrics.csv", "plot.png"]


def test_atomic_write_with_matplotlib(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    with bio.atomic_write(tmp_path / "loss.png") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert files_in(tmp_path) == ["loss.png"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions and symlinks")
def test_atomic_write_keeps_permissions_and_follows_symlinks(tmp_path):
    path = tmp_path / "secret.json"
    path.write_text("{}")
    os.chmod(path, 0o600)
    bio.save_json({"a": 1}, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    link = tmp_path / "link.json"
    link.symlink_to(path)
    bio.save_json({"b": 2}, link)
    assert link.is_symlink() and bio.load_json(path) == {"b": 2}


def test_save_json(tmp_path):
    path = tmp_path / "history.json"
    data = {"loss": [np.float32(0.5), 0.25], "epoch": np.int64(3), "w": np.arange(2), "nan": float("nan")}
    bio.save_json(data, path)
    back = bio.load_json(path)
    assert back["loss"] == [0.5, 0.25] and back["epoch"] == 3 and back["w"] == [0, 1] and np.isnan(back["nan"])
    text = path.read_text()
    with pytest.raises(TypeError, match="cannot write an object of type object"):
        bio.save_json({"x": object()}, path)
    assert path.read_text() == text
    assert files_in(tmp_path) == ["history.json"]
