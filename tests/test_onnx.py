"""ONNX export: the exported graph, run by onnxruntime, gives what the backprop model gives (eval mode)."""

import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import backprop as bp
import backprop.onnx as bonnx
from backprop import nn
from backprop.nn import models

BATCHES = (1, 17)


@pytest.fixture
def rng():
    bp.manual_seed(0)
    return np.random.default_rng(0)


def backprop_out(model, x):
    with bp.no_grad():
        return model(x if x.dtype.kind in "iu" else bp.tensor(x)).data


def roundtrip(model, sample_shape, tmp_path, rng, *, dtype=np.float32, tol=1e-5, batches=BATCHES, draw=None,
              **kw):
    """Export ``model`` (eval mode), check the file, run onnxruntime at each batch size against backprop."""
    draw = draw or (lambda n: rng.standard_normal((n, *sample_shape)).astype(dtype))
    model.eval()
    path = tmp_path / "model.onnx"
    proto = bonnx.export(model, path, draw(1), **kw)
    loaded = onnx.load(str(path))
    onnx.checker.check_model(loaded, full_check=True)
    assert loaded.SerializeToString() == proto.SerializeToString()
    options = ort.SessionOptions()
    if dtype == np.float64:  # onnxruntime 1.16 fuses Gemm + Tanh into FusedGemm, which has no float64 kernel
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for n in batches:
        x = draw(n)
        got = sess.run(None, {kw.get("input_name", "input"): x})[0]
        want = backprop_out(model, x)
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    return loaded, sess


def ops(proto):
    return [n.op_type for n in proto.graph.node]


# ------------------------------------------------------------------------------------------ the models
@pytest.mark.parametrize("activation, loss", [("relu", "cross_entropy"), ("sigmoid", "mse"), ("tanh", "nll"),
                                              ("leaky_relu", "cross_entropy"), ("gelu", "nll")])
def test_mlp_with_dropout(activation, loss, tmp_path, rng):
    model = models.mlp(64, [32, 16], 10, activation, dropout=0.3, loss=loss)
    proto, sess = roundtrip(model, (64,), tmp_path, rng)
    assert "Dropout" not in ops(proto) and ops(proto).count("Gemm") == 3
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    assert (inp.name, inp.shape, inp.type) == ("input", ["batch", 64], "tensor(float)")
    assert (out.name, out.shape) == ("output", ["batch", 10])
    assert {i.name for i in proto.graph.initializer} >= {"layer0.weight", "layer0.bias"}
    assert proto.producer_name == "backprop" and proto.opset_import[0].version == 17


def test_lenet5(tmp_path, rng):
    proto, _ = roundtrip(models.lenet5(), (784,), tmp_path, rng)
    assert ops(proto) == ["Reshape", "Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool", "Flatten",
                          "Gemm", "Relu", "Gemm", "Relu", "Gemm"]


def test_batch_norm_cnn_after_training(tmp_path, rng):
    model = models.small_cnn()
    x = rng.random((24, 784)).astype(np.float32)
    y = rng.integers(0, 10, 24)
    bp.fit(model, x, y, batch_size=8, epochs=1, lr=0.05, verbose=0)
    bn = model[2]
    assert isinstance(bn, nn.BatchNorm2d) and int(bn.num_batches_tracked) == 3
    assert np.abs(bn.running_mean).max() > 1e-3 and np.abs(bn.running_var - 1).max() > 1e-3
    model.train()  # exported as in eval mode, whatever mode it is in; its mode is left alone
    bonnx.export(model, tmp_path / "train_mode.onnx", x[:1])
    assert model.training and all(m.training for m in model.modules())
    proto, _ = roundtrip(model, (784,), tmp_path, rng)
    assert ops(proto).count("BatchNormalization") == 2 and "Dropout" not in ops(proto)


def test_batch_norm_1d_on_features(tmp_path, rng):
    model = nn.Sequential(nn.Linear(10, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.BatchNorm1d(6, affine=False),
                          nn.Linear(6, 3))
    model.train()
    for _ in range(3):
        model(bp.tensor(rng.standard_normal((8, 10)).astype(np.float32) * 3 + 1))
    proto, _ = roundtrip(model, (10,), tmp_path, rng)
    assert ops(proto) == ["Gemm", "BatchNormalization", "Relu", "BatchNormalization", "Gemm"]


def test_float64_model_keeps_float64(tmp_path, rng):
    model = models.mlp(12, [8, 8], 3, "tanh", dropout=0.1, loss="nll").double()
    proto, sess = roundtrip(model, (12,), tmp_path, rng, dtype=np.float64, tol=1e-12)
    assert sess.get_inputs()[0].type == "tensor(double)"
    assert {i.data_type for i in proto.graph.initializer} == {onnx.TensorProto.DOUBLE}


def test_float_example_input_is_cast_to_the_model_dtype(tmp_path, rng):
    model = models.mlp(5, [4], 2)
    bonnx.export(model, tmp_path / "m.onnx", rng.standard_normal((1, 5)))  # float64 example, float32 model
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(float)"


# ----------------------------------------------------------------------------------- layer by layer
@pytest.mark.parametrize("kwargs", [
    {"stride": 2, "padding": 1},
    {"dilation": 2, "padding": "same"},
    {"kernel_size": 4, "padding": "same"},  # even kernel: one more after than before, as PyTorch
    {"groups": 3, "padding": (1, 2), "bias": False},
    {"stride": (2, 3), "dilation": (1, 2), "padding": "valid"},
])
def test_conv2d_variants(kwargs, tmp_path, rng):
    kwargs = dict(kwargs)
    model = nn.Sequential(nn.Conv2d(3, 6, kwargs.pop("kernel_size", 3), **kwargs), nn.ReLU())
    roundtrip(model, (3, 9, 11), tmp_path, rng)


@pytest.mark.parametrize("kwargs", [
    {"stride": 2, "padding": 1},
    {"kernel_size": 4, "dilation": 2, "padding": "same"},
    {"groups": 2, "bias": False},
    {"groups": 4, "stride": 3},
])
def test_conv1d_variants(kwargs, tmp_path, rng):
    kwargs = dict(kwargs)
    model = nn.Sequential(nn.Conv1d(4, 8, kwargs.pop("kernel_size", 3), **kwargs), nn.BatchNorm1d(8), nn.GELU(),
                          nn.Flatten(), nn.LogSoftmax(dim=1))
    model[1].running_mean[:] = rng.standard_normal(8)
    model[1].running_var[:] = rng.random(8) + 0.5
    proto, _ = roundtrip(model, (4, 13), tmp_path, rng)
    assert ops(proto)[:2] == ["Conv", "BatchNormalization"]


@pytest.mark.parametrize("shape", [(3, 9, 11), (2, 12, 13)])
@pytest.mark.parametrize("kernel, stride, padding, dilation", [
    (2, 2, 0, 1), (3, 2, 1, 1), (3, 3, 1, 1), (2, 2, 1, 2), (3, 2, 0, 2), (2, 2, 1, 3), (4, 3, 2, 1)])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_max_pool(shape, kernel, stride, padding, dilation, ceil_mode, tmp_path, rng):
    model = nn.Sequential(nn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil_mode))
    roundtrip(model, shape, tmp_path, rng, batches=(2,))


@pytest.mark.parametrize("shape", [(3, 9, 11), (2, 12, 13)])
@pytest.mark.parametrize("kernel, stride, padding", [(2, 2, 0), (3, 2, 1), (2, 2, 1), (3, 3, 1), (2, 1, 0),
                                                     (4, 3, 2), (5, 2, 2)])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("count", ["include_pad", "exclude_pad", "divisor_override"])
def test_avg_pool(shape, kernel, stride, padding, ceil_mode, count, tmp_path, rng):
    model = nn.Sequential(nn.AvgPool2d(kernel, stride, padding, ceil_mode=ceil_mode,
                                       count_include_pad=count != "exclude_pad",
                                       divisor_override=7 if count == "divisor_override" else None))
    roundtrip(model, shape, tmp_path, rng, batches=(2,))


@pytest.mark.parametrize("size, op", [(1, "GlobalAveragePool"), ((3, 1), "AveragePool"), ((None, 1), "AveragePool"),
                                      ((3, None), "AveragePool")])
def test_adaptive_avg_pool(size, op, tmp_path, rng):
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.AdaptiveAvgPool2d(size), nn.Flatten())
    proto, _ = roundtrip(model, (2, 9, 11), tmp_path, rng)
    assert op in ops(proto)


def test_adaptive_avg_pool_that_does_not_divide_is_refused(tmp_path, rng):
    model = nn.Sequential(nn.AdaptiveAvgPool2d((2, 2)))
    with pytest.raises(ValueError, match=r"layer 0 \(AdaptiveAvgPool2d\).*\(2, 2\).*\(9, 11\)"):
        bonnx.export(model, tmp_path / "m.onnx", rng.random((1, 3, 9, 11)))
    assert not (tmp_path / "m.onnx").exists()


def newest_opset():
    """The newest opset that both onnx and onnxruntime know (onnxruntime 1.16 runs up to 19, 1.17 up to 20)."""
    ort_version = tuple(int(v) for v in ort.__version__.split(".")[:2])
    return min(onnx.defs.onnx_opset_version(), 19 if ort_version < (1, 17) else 20 if ort_version < (1, 18) else 99)


@pytest.mark.parametrize("opset", [13, 17, 20])
def test_layer_norm_gelu_softmax(opset, tmp_path, rng):
    if opset > newest_opset():
        pytest.skip(f"opset {opset} needs newer onnx/onnxruntime")
    model = nn.Sequential(nn.Linear(13, 6), nn.LayerNorm(6), nn.GELU("tanh"),
                          nn.LayerNorm(6, elementwise_affine=False), nn.GELU(), nn.Linear(6, 5),
                          nn.LayerNorm((4, 5), bias=False), nn.Softmax(dim=-1))
    for ln in (model[1], model[6]):
        ln.weight.data[...] = rng.standard_normal(ln.weight.shape)
    model[1].bias.data[...] = rng.standard_normal(6)
    proto, _ = roundtrip(model, (4, 13), tmp_path, rng, opset=opset)
    assert ("LayerNormalization" in ops(proto)) == (opset >= 17)
    assert ("Gelu" in ops(proto)) == (opset >= 20)
    assert ops(proto)[:2] == ["MatMul", "Add"]  # Linear on 3-D input


@pytest.mark.parametrize("opset", [13, 17])
def test_padding_layers(opset, tmp_path, rng):
    """Pad with PyTorch's modes (replicate is ONNX's edge); negative amounts crop with a Slice after the Pad."""
    model = nn.Sequential(nn.ReflectionPad2d((1, 2, 2, 1)), nn.Conv2d(3, 4, 3), nn.ReplicationPad2d((0, 1, 3, -1)),
                          nn.ReLU(), nn.ConstantPad2d((1, -1, -2, 2), 0.5), nn.ZeroPad2d(-1),
                          nn.Flatten(2), nn.ReflectionPad1d((-1, 3)), nn.ConstantPad1d(1, -2.0))
    proto, _ = roundtrip(model, (3, 7, 8), tmp_path, rng, opset=opset)
    modes = [next(a.s.decode() for a in n.attribute if a.name == "mode") for n in proto.graph.node
             if n.op_type == "Pad"]
    assert modes == ["reflect", "edge", "constant", "reflect", "constant"]
    assert ops(proto).count("Slice") == 4  # the crops of layers 2, 4, 5 and 7


def test_flatten_unflatten_and_nested_sequentials(tmp_path, rng):
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Sequential(nn.LeakyReLU(0.2), nn.Dropout(0.5))),
        nn.Flatten(2), nn.Unflatten(2, (9, 11)), nn.Identity(), nn.Flatten(), nn.Unflatten(-1, (4, -1)),
        nn.Linear(99, 3), nn.Sigmoid())
    proto, _ = roundtrip(model, (3, 9, 11), tmp_path, rng)
    assert ops(proto) == ["Conv", "LeakyRelu", "Reshape", "Reshape", "Flatten", "Reshape", "MatMul", "Add",
                          "Sigmoid"]
    assert proto.graph.node[0].name.startswith("layer0.0/")


def test_embedding(tmp_path, rng):
    model = nn.Sequential(nn.Embedding(20, 5, padding_idx=0), nn.LayerNorm(5), nn.Flatten(), nn.Linear(35, 3))
    proto, sess = roundtrip(model, None, tmp_path, rng, draw=lambda n: rng.integers(0, 20, (n, 7)))
    assert ops(proto)[0] == "Gather" and sess.get_inputs()[0].type == "tensor(int64)"


def test_only_pass_through_layers(tmp_path, rng):
    proto, _ = roundtrip(nn.Sequential(nn.Dropout(0.2), nn.Identity()), (3,), tmp_path, rng)
    assert ops(proto) == ["Identity"]


def test_static_batch_and_names(tmp_path, rng):
    model = models.mlp(6, [4], 2)
    _, sess = roundtrip(model, (6,), tmp_path, rng, batches=(3,), dynamic_batch=False, input_name="x",
                        output_name="logits", draw=lambda n: rng.standard_normal((3, 6)).astype(np.float32))
    assert sess.get_inputs()[0].shape == [3, 6] and sess.get_outputs()[0].name == "logits"


# ------------------------------------------------------------------------------------------- refusals
class Doubler(nn.Module):
    def forward(self, x):
        return x * 2


class MyReLU(nn.ReLU):
    def forward(self, x):
        return super().forward(x) * 2


def test_unsupported_layer_is_named_by_position_and_class(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")
    model = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.ReLU(), Doubler()))
    with pytest.raises(ValueError, match=r"layer 1\.1 \(Doubler\) is not supported.*Linear"):
        bonnx.export(model, path, np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"layer 0 \(MyReLU\)"):  # a subclass with its own forward
        bonnx.export(nn.Sequential(MyReLU()), path, np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"the model \(Doubler\)"):
        bonnx.export(Doubler(), path, np.zeros((1, 3), np.float32))
    assert path.read_bytes() == b"previous"  # nothing written


def test_other_refusals(tmp_path, rng):
    x = rng.random((1, 3, 4, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="opset must be an integer from 13"):
        bonnx.export(nn.Sequential(nn.ReLU()), tmp_path / "m.onnx", x, opset=12)
    with pytest.raises(ValueError, match=r"layer 0 \(BatchNorm2d\).*track_running_stats"):
        bonnx.export(nn.Sequential(nn.BatchNorm2d(3, track_running_stats=False)), tmp_path / "m.onnx", x)
    with pytest.raises(ValueError, match=r"layer 0 \(Flatten\).*batch dimension.*dynamic_batch=False"):
        bonnx.export(nn.Sequential(nn.Flatten(0)), tmp_path / "m.onnx", x)
    bonnx.export(nn.Sequential(nn.Flatten(0)), tmp_path / "m.onnx", x, dynamic_batch=False)
    with pytest.raises(ValueError, match=r"layer 0 \(Linear\) fails on the example input"):
        bonnx.export(nn.Sequential(nn.Linear(5, 2)), tmp_path / "m.onnx", x)
    with pytest.raises(ValueError, match="input_name and output_name must differ"):
        bonnx.export(nn.Sequential(nn.ReLU()), tmp_path / "m.onnx", x, input_name="x", output_name="x")


def test_a_wrong_graph_is_caught_by_onnxruntime_and_not_written(tmp_path, monkeypatch):
    monkeypatch.setattr(nn.ReLU, "onnx", lambda self, g, x: g.node("Sigmoid", [x]))  # a wrong export
    path = tmp_path / "m.onnx"
    with pytest.raises(bonnx.ExportCheckError, match="differs from backprop's"):
        bonnx.export(models.mlp(4, [3], 2), path, np.ones((1, 4), np.float32))
    assert not path.exists()
    bonnx.export(models.mlp(4, [3], 2), path, np.ones((1, 4), np.float32), check=False)
    assert path.exists()


# ------------------------------------------------------------------------------------------- the CLI
def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "backprop", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, check=False)


def test_cli_export_of_a_trained_digits_model(tmp_path):
    train = run_cli("train", "--epochs", "1", "--hidden", "32", "--dropout", "0.1", "--out", "run", "--quiet",
                    cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    model_file = tmp_path / "run" / "model.safetensors"
    proc = run_cli("export", str(model_file), "--onnx", "digits.onnx", "--opset", "18", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "wrote digits.onnx" in proc.stdout and "(batch, 64)" in proc.stdout

    proto = onnx.load(str(tmp_path / "digits.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == 18
    from backprop.data import load_dataset

    ds = load_dataset("digits")
    x = ds.x_test.reshape(len(ds.x_test), -1).astype(np.float32)
    model = bp.io.load(model_file).eval()
    sess = ort.InferenceSession(str(tmp_path / "digits.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    np.testing.assert_allclose(got, backprop_out(model, x), rtol=1e-5, atol=1e-5)
    assert (got.argmax(1) == ds.y_test).mean() > 0.5


@pytest.mark.parametrize("args, needle", [
    (["missing.safetensors", "--onnx", "m.onnx"], "does not exist"),
    (["run/model.safetensors", "--onnx", "m.onnx", "--opset", "7"], "opset must be an integer from 13"),
    (["run/model.safetensors", "--onnx", "no/such/folder/m.onnx"], "does not exist"),
    (["run/data.csv", "--onnx", "m.onnx"], "not a valid backprop model file"),
])
def test_cli_errors_are_one_line_exit_2(args, needle, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "data.csv").write_text("1,2,3\n")
    model = models.mlp(4, [3], 2)
    bp.io.save(model, tmp_path / "run" / "model.safetensors", metadata={"n_features": 4})
    proc = run_cli("export", *args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("backprop: error:") and needle in lines[0], proc.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_cli_needs_n_features(tmp_path):
    bp.io.save(models.mlp(4, [3], 2), tmp_path / "model.safetensors")
    proc = run_cli("export", "model.safetensors", "--onnx", "m.onnx", cwd=tmp_path)
    assert proc.returncode == 2 and "n_features" in proc.stderr
