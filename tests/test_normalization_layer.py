"""``backprop.nn.Normalization`` (issue 12, item 10): feature standardisation as a layer whose statistics are saved
with the model, so ``evaluate``, ``predict`` and ``export`` apply the transform training used.

>>> from backprop.nn import Normalization
>>> Normalization(3).adapt([[1.0, 2.0, 3.0], [3.0, 2.0, 5.0]]).var.tolist()
[1.0, 0.0, 1.0]
"""

from __future__ import annotations

import numpy as np
import pytest

import backprop as bp
from backprop import io as bio
from backprop.cli.main import main
from backprop.nn import Normalization, models
from backprop.nn.registry import LAYER_TYPES


def pixels(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Digit-like images of 0..255 pixel values whose border pixels are always 0 (constant features)."""
    (x, y), _ = bp.datasets.load_digits(test_size=0)
    x = np.round(x * 255).astype(np.float32)
    x[:, [0, 7, 56]] = 0.0  # constant, as MNIST's corners
    return x, y


# ------------------------------------------------------------------------------------------------ the layer
def test_adapt_computes_the_population_mean_and_variance_per_feature():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(1000, 5)).astype(np.float32)
    norm = Normalization(5).adapt(x)
    np.testing.assert_allclose(norm.mean, x.astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(norm.var, x.astype(np.float64).var(axis=0), rtol=1e-6)  # ddof=0, as Keras/sklearn
    assert norm.mean.dtype == norm.var.dtype == np.float32
    out = norm(bp.tensor(x)).data
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=0), 1, atol=1e-4)


def test_matches_sklearn_standard_scaler_with_constant_features():
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    x, _ = pixels()
    x[:, 1] = 7.0  # a constant that is not 0
    ours = Normalization(64, dtype=np.float64).adapt(x)
    scaler = preprocessing.StandardScaler().fit(x.astype(np.float64))
    np.testing.assert_allclose(ours.mean, scaler.mean_, rtol=1e-12)
    np.testing.assert_allclose(ours.scale(), scaler.scale_, rtol=1e-12)  # 1 for the constant features
    probe = x[:50].astype(np.float64) + 3.0
    np.testing.assert_allclose(ours(bp.tensor(probe)).data, scaler.transform(probe), rtol=1e-10, atol=1e-12)


def test_a_zero_variance_feature_gives_zero_not_nan_and_stays_finite_on_new_values():
    x, _ = pixels()
    norm = Normalization(64).adapt(x)
    assert norm.var[0] == norm.var[7] == norm.var[56] == 0
    out = norm(bp.tensor(x)).data
    assert np.isfinite(out).all() and not out[:, [0, 7, 56]].any()
    stray = np.zeros((1, 64), np.float32)
    stray[0, 0] = 255.0  # a pixel the training data never lit: shifted, not multiplied by 1/eps
    assert norm(bp.tensor(stray)).data[0, 0] == 255.0


def test_a_column_constant_up_to_rounding_counts_as_constant():
    x = np.full((3000, 2), 0.1, dtype=np.float64)
    x[:, 1] = np.linspace(0, 1, 3000)
    norm = Normalization(2, dtype=np.float64).adapt(x)
    assert norm.var[0] == 0 and norm.var[1] > 0.08


def test_adapt_reads_large_data_in_chunks_with_the_same_result():
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(20000, 3)) * [1.0, 100.0, 1e-3] + [5.0, -3.0, 1e4]).astype(np.float32)
    norm = Normalization(3, dtype=np.float64).adapt(x)
    np.testing.assert_allclose(norm.mean, x.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(norm.var, x.astype(np.float64).var(axis=0), rtol=1e-9)


def test_invert_maps_back_and_three_dim_inputs_use_the_last_axis():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 6, 3)).astype(np.float64) * 3 + 1
    norm = Normalization(3, dtype=np.float64).adapt(x)
    back = Normalization(3, mean=norm.mean, variance=norm.var, invert=True, dtype=np.float64)
    np.testing.assert_allclose(back(norm(bp.tensor(x))).data, x, rtol=1e-12)
    np.testing.assert_allclose(norm.mean, x.reshape(-1, 3).mean(axis=0))


def test_gradient_by_finite_differences():
    norm = Normalization(3, mean=[1.0, -2.0, 0.5], variance=[4.0, 0.0, 0.25], dtype=np.float64)
    x = np.random.default_rng(3).normal(size=(4, 3))
    assert bp.gradcheck(lambda t: norm(t), [x])
    inv = Normalization(3, mean=[1.0, -2.0, 0.5], variance=[4.0, 0.0, 0.25], invert=True, dtype=np.float64)
    assert bp.gradcheck(lambda t: inv(t), [x])


def test_training_leaves_the_statistics_alone():
    x, y = pixels()
    bp.manual_seed(0)
    norm = Normalization(64).adapt(x)
    mean, var = norm.mean.copy(), norm.var.copy()
    model = bp.nn.Sequential(norm, *models.mlp(64, [16], 10))
    bp.fit(model, x, y, optimizer=bp.optim.SGD(model.parameters(), lr=0.05), epochs=1, verbose=0)
    np.testing.assert_array_equal(norm.mean, mean)
    np.testing.assert_array_equal(norm.var, var)
    assert [name for name, _ in model.named_buffers()] == ["0.mean", "0.var"]


@pytest.mark.parametrize("make, error", [
    (lambda: Normalization(0), "num_features"),
    (lambda: Normalization(2, variance=[1.0, -1.0]), ">= 0"),
    (lambda: Normalization(2, mean=[1.0, 2.0, 3.0]), "one per feature"),
    (lambda: Normalization(2, mean=[np.nan, 0.0]), "finite"),
    (lambda: Normalization(2).adapt(np.zeros((0, 2))), "no samples"),
    (lambda: Normalization(2).adapt(np.zeros((3, 4))), r"\(samples, \.\.\., 2\)"),
    (lambda: Normalization(2).adapt(np.array([[1.0, np.inf]])), "finite"),
    (lambda: Normalization(2)(bp.tensor(np.zeros((3, 4), np.float32))), "2 features"),
])
def test_errors_say_what_is_wrong(make, error):
    with pytest.raises(ValueError, match=error):
        make()


def test_registered_for_save_load_and_onnx():
    spec = LAYER_TYPES["Normalization"]
    assert spec.cls is Normalization and list(spec.args) == ["num_features", "invert"]
    assert spec.config(Normalization(5, invert=True)) == {"num_features": 5, "invert": True}
    assert "Normalization" in bp.onnx.supported_layers()


# ------------------------------------------------------------------------------------ with a model
def test_standardising_rescues_an_mlp_on_raw_pixel_values():
    """The issue: an MLP on unscaled pixel values learns nothing at a rate the [0, 1] data trains well with."""
    x, y = pixels()
    scores = {}
    for standardise in (False, True):
        bp.manual_seed(0)
        net = models.mlp(64, [32], 10)
        model = bp.nn.Sequential(Normalization(64).adapt(x), *net) if standardise else net
        bp.fit(model, x[:1400], y[:1400], optimizer=bp.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
               batch_size=16, epochs=5, verbose=0, seed=0)
        scores[standardise] = bp.evaluate(model, x[1400:], y[1400:])["accuracy"]
    assert scores[True] > 0.9 and scores[False] < 0.5, scores


@pytest.fixture(scope="module")
def standardised_model(tmp_path_factory):
    """A model file as ``backprop train`` writes it for CSV data: Normalization first, then the MLP."""
    x, y = pixels()
    bp.manual_seed(0)
    model = bp.nn.Sequential(Normalization(64).adapt(x), *models.mlp(64, [32], 10))
    bp.fit(model, x, y, optimizer=bp.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), batch_size=16,
           epochs=4, verbose=0, seed=0)
    folder = tmp_path_factory.mktemp("std")
    path = folder / "model.safetensors"
    bio.save(model, path, metadata={"dataset": "csv:pixels.csv", "classes": list(range(10)),
                                    "class_names": [str(k) for k in range(10)], "n_features": 64,
                                    "loss": "cross_entropy", "args": {"dataset": "csv:pixels.csv"}})
    data = folder / "pixels.csv"
    np.savetxt(data, np.column_stack([x, y]), delimiter=",", fmt="%g",
               header=",".join([f"p{i}" for i in range(64)] + ["label"]), comments="")
    return model, path, data


def test_load_gives_the_same_transform(standardised_model):
    model, path, _ = standardised_model
    loaded = bio.load(path)
    assert isinstance(loaded[0], Normalization)
    np.testing.assert_array_equal(loaded[0].mean, model[0].mean)
    np.testing.assert_array_equal(loaded[0].var, model[0].var)
    x, _ = pixels()
    np.testing.assert_array_equal(bp.predict(loaded, x), bp.predict(model, x))
    assert bio.model_to_config(loaded)["layers"][0] == {"type": "Normalization",
                                                         "args": {"num_features": 64, "invert": False}}


def test_evaluate_and_predict_apply_the_saved_transform(standardised_model, tmp_path, capsys):
    _model, path, data = standardised_model
    assert main(["evaluate", str(path), "--dataset", f"csv:{data}", "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert float(out.split("\naccuracy ")[1].split()[0]) > 0.95  # raw 0..255 pixels, standardised by the file
    rows = tmp_path / "rows.csv"
    x, y = pixels()
    np.savetxt(rows, x[:100], delimiter=",", fmt="%g")
    assert main(["predict", str(path), str(rows)]) == 0
    pred = np.array([int(v) for v in capsys.readouterr().out.split()])
    assert np.mean(pred == y[:100]) > 0.95


def test_export_writes_the_transform_into_the_onnx_graph(standardised_model, tmp_path, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model, path, _ = standardised_model
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(path), "--onnx", str(onnx_path)]) == 0, capsys.readouterr().err
    x, _ = pixels()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x[:64]})
    np.testing.assert_allclose(got, bp.predict(model, x[:64]), rtol=1e-4, atol=1e-4)
