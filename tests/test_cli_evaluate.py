"""``backprop evaluate`` and ``backprop predict`` (issue 12, items 1 and 10), run in-process through ``main``.

Models are trained here with the library in a second and saved with the metadata ``backprop train`` writes
(``classes``, ``class_names``, ``n_features``, ``loss``, ``dataset``, ``args``, and ``task`` for regression);
one test goes through ``backprop train`` itself.

>>> sorted(IRIS_CLASSES)
['setosa', 'versicolor', 'virginica']
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import backprop as bp
from backprop import io as bio
from backprop.cli.main import main
from backprop.nn import models

IRIS_CLASSES = ("setosa", "versicolor", "virginica")


# ------------------------------------------------------------------------------------------------ helpers
def blobs(n: int = 150, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated classes of 4 features (iris-like), n rows, class i % 3 on row i."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, 4)).astype(np.float32) * 0.3 + y[:, None] * np.array([2.0, -2.0, 1.0, 0.5],
                                                                                 dtype=np.float32)
    return x, y


def write_csv(path: Path, x: np.ndarray, labels: Any, header: bool = True, delimiter: str = ",") -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        if header:
            w.writerow([f"f{i}" for i in range(x.shape[1])] + ["species"])
        for row, label in zip(x, labels):
            w.writerow([f"{v:.4f}" for v in row] + [label])
    return path


def save_model(path: Path, model: bp.nn.Module, classes: list[Any], loss: str, dataset: str,
               n_features: int, **extra: Any) -> Path:
    """The model file as ``backprop train`` writes it."""
    meta = {"dataset": dataset, "classes": classes, "class_names": [str(c) for c in classes],
            "n_features": n_features, "loss": loss, "test": {}, "epochs": 1, "iterations": 1, "seconds": 0.0,
            "args": {"dataset": dataset, "label_column": None, "loss": loss}, **extra}
    bio.save(model, path, metadata=meta)
    return path


def train_blobs(tmp_path: Path, loss: str = "cross_entropy", epochs: int = 20) -> Path:
    """An MLP trained on the blobs, its classes the iris names (as train saves string labels)."""
    x, y = blobs()
    bp.manual_seed(0)
    model = models.mlp(4, [8], 3, loss=loss)
    bp.fit(model, x, y, loss=loss, optimizer=bp.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
           batch_size=16, epochs=epochs, verbose=0)
    return save_model(tmp_path / "iris.safetensors", model, list(IRIS_CLASSES), loss, "csv:iris.csv", 4)


def cli(*args: str, capsys: Any) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``backprop ARGS`` run in this process."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse's errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def iris_model(tmp_path_factory) -> Path:
    return train_blobs(tmp_path_factory.mktemp("iris"))


@pytest.fixture
def iris_csv(tmp_path) -> Path:
    x, y = blobs()
    return write_csv(tmp_path / "iris.csv", x, [IRIS_CLASSES[k] for k in y])


# ------------------------------------------------------------------- item 1: labels through the model's classes
def test_evaluate_maps_labels_through_the_models_classes_two_of_three(iris_model, tmp_path, capsys):
    """A CSV holding two of the model's three classes failed with 'confusion_matrix: labels must be in [0, 1]'."""
    x, y = blobs()
    keep = y != 0  # versicolor and virginica only: the file's own labels would be renumbered 0, 1
    path = write_csv(tmp_path / "two.csv", x[keep], [IRIS_CLASSES[k] for k in y[keep]])
    code, out, err = cli("evaluate", iris_model, "--dataset", f"csv:{path}", "--no-plot", capsys=capsys)
    assert code == 0, err
    assert "100 samples" in out and "3 classes" in out
    assert float(out.split("\naccuracy ")[1].split()[0]) > 0.95  # renumbered labels would score ~0
    report = out[out.index("precision"):]
    setosa = next(line for line in report.splitlines() if line.strip().startswith("setosa"))
    assert setosa.split()[-1] == "0"  # absent from the file: zero support, still a row of the report
    assert "setosa" in out.split("no samples")[1].splitlines()[0]  # and a note says so


def test_evaluate_rejects_an_unknown_label_naming_it(iris_model, tmp_path, capsys):
    """A file whose 'setosa' was renamed 'SETOSA' was accepted and reported as a class."""
    x, y = blobs()
    path = write_csv(tmp_path / "renamed.csv", x, [IRIS_CLASSES[k].upper() if k == 0 else IRIS_CLASSES[k]
                                                   for k in y])
    code, out, err = cli("evaluate", iris_model, "--dataset", f"csv:{path}", "--no-plot", capsys=capsys)
    one_line_error(code, err, "'SETOSA'", "line 2", "setosa", "versicolor", "virginica", "model")
    assert out == ""  # nothing evaluated


def test_evaluate_uses_the_whole_csv_file(iris_model, iris_csv, capsys):
    """`--dataset csv:iris.csv` reported "test split: 30 samples" of 150."""
    code, out, err = cli("evaluate", iris_model, "--dataset", f"csv:{iris_csv}", "--no-plot", capsys=capsys)
    assert code == 0, err
    assert "150 samples" in out and "test split" not in out
    assert "support" in out and "150" in out.split("weighted avg")[1]


def test_evaluate_named_dataset_uses_its_test_split_and_defaults_to_the_models(tmp_path, capsys):
    ds = bp.data.load_dataset("digits")
    bp.manual_seed(0)
    model = models.mlp(64, [16], 10)
    bp.fit(model, ds.x_train, ds.y_train, optimizer=bp.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
           batch_size=32, epochs=3, verbose=0)
    path = save_model(tmp_path / "digits.safetensors", model, list(range(10)), "cross_entropy", "digits", 64)
    want = bp.evaluate(model, ds.x_test, ds.y_test)["accuracy"]
    for given in ((), ("--dataset", "digits")):
        code, out, err = cli("evaluate", path, *given, "--no-plot", capsys=capsys)
        assert code == 0, err
        assert "digits test split: 360 samples, 10 classes" in out
        assert abs(float(out.split("\naccuracy ")[1].split()[0]) - want) < 1e-4


def test_evaluate_integer_classes_match_numeric_labels(tmp_path, capsys):
    """Saved int classes [1, 2, 3]: the CSV labels '1' and '2.0' are the classes 1 and 2; '7' is unknown."""
    x, y = blobs()
    bp.manual_seed(0)
    model = models.mlp(4, [8], 3)
    bp.fit(model, x, y, optimizer=bp.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), epochs=20, verbose=0)
    path = save_model(tmp_path / "m.safetensors", model, [1, 2, 3], "cross_entropy", "csv:n.csv", 4)
    keep = y < 2
    labels = [("1" if k == 0 else "2.0") for k in y[keep]]
    data = write_csv(tmp_path / "n.csv", x[keep], labels)
    code, out, err = cli("evaluate", path, "--dataset", f"csv:{data}", "--no-plot", capsys=capsys)
    assert code == 0, err
    assert float(out.split("\naccuracy ")[1].split()[0]) > 0.95
    bad = write_csv(tmp_path / "bad.csv", x[:3], ["1", "7", "2"])
    code, out, err = cli("evaluate", path, "--dataset", f"csv:{bad}", "--no-plot", capsys=capsys)
    one_line_error(code, err, "'7'", "line 3", "[1, 2, 3]")
    bad.write_text("f0,f1,f2,f3,species\n1,2,3,4,setosa\n")
    code, out, err = cli("evaluate", path, "--dataset", f"csv:{bad}", "--no-plot", capsys=capsys)
    one_line_error(code, err, "'setosa'")


def test_evaluate_a_csv_model_needs_the_file(iris_model, capsys):
    code, _out, err = cli("evaluate", iris_model, capsys=capsys)
    one_line_error(code, err, "--dataset", "csv")


def test_evaluate_checks_the_feature_count_first(iris_model, tmp_path, capsys):
    path = write_csv(tmp_path / "wide.csv", np.zeros((4, 5), np.float32), ["setosa"] * 4)
    code, _out, err = cli("evaluate", iris_model, "--dataset", f"csv:{path}", "--no-plot", capsys=capsys)
    one_line_error(code, err, "5 features", "4")


def test_evaluate_writes_the_confusion_matrix_png(iris_model, iris_csv, tmp_path, capsys):
    png = tmp_path / "cm.png"
    code, out, err = cli("evaluate", iris_model, "--dataset", f"csv:{iris_csv}", "--out", png, capsys=capsys)
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {png}" in out


def test_evaluate_without_matplotlib_prints_everything_and_one_note(iris_model, iris_csv, tmp_path, capsys,
                                                                   monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ModuleNotFoundError
    png = tmp_path / "cm.png"
    code, out, err = cli("evaluate", iris_model, "--dataset", f"csv:{iris_csv}", "--out", png, capsys=capsys)
    assert code == 0, err
    assert "macro F1" in out and "support" in out and not png.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and 'pip install "backprop[plot]"' in lines[0] and "--no-plot" in lines[0]


# ---------------------------------------------------------------------------------- item 10: --delimiter
@pytest.mark.parametrize("sep, given", [("\t", "tab"), ("\t", "\\t"), (";", ";")])
def test_delimiter_for_evaluate_and_predict(iris_model, tmp_path, capsys, sep, given):
    x, y = blobs()
    path = write_csv(tmp_path / "iris.tsv", x, [IRIS_CLASSES[k] for k in y], delimiter=sep)
    code, out, err = cli("evaluate", iris_model, "--dataset", f"csv:{path}", "--delimiter", given, "--no-plot",
                         capsys=capsys)
    assert code == 0, err
    assert "150 samples" in out
    rows = tmp_path / "rows.txt"
    rows.write_text(f"{sep.join(['0', '0', '0', '0'])}\n{sep.join(['4', '-4', '2', '1'])}\n")
    code, out, err = cli("predict", iris_model, rows, "--delimiter", given, capsys=capsys)
    assert code == 0, err
    assert out.split() == ["setosa", "virginica"]


def test_a_wrong_delimiter_is_one_line_that_suggests_the_right_one(iris_model, tmp_path, capsys):
    x, y = blobs()
    path = write_csv(tmp_path / "semi.csv", x, [IRIS_CLASSES[k] for k in y], delimiter=";")
    code, _out, err = cli("evaluate", iris_model, "--dataset", f"csv:{path}", "--no-plot", capsys=capsys)
    one_line_error(code, err, "line 1", "--delimiter ';'")
    rows = tmp_path / "rows.csv"
    rows.write_text("1;2;3;4\n")
    code, _out, err = cli("predict", iris_model, rows, capsys=capsys)
    one_line_error(code, err, "line 1", "--delimiter")


@pytest.mark.parametrize("args, needles", [
    (["predict", "M", "rows.csv", "--delimiter", "ab"], ["--delimiter", "'ab'"]),
    (["predict", "M", "rows.csv", "--delimiter", "7"], ["--delimiter"]),
    (["evaluate", "M", "--dataset", "digits", "--delimiter", ";"], ["--delimiter", "csv:PATH"]),
    (["evaluate", "M", "--dataset", "digits", "--label-column", "y"], ["--label-column", "csv:PATH"]),
    (["evaluate", "M", "--task", "regression"], ["--task regression", "classification model"]),
    (["evaluate", "M", "--task", "sideways"], ["--task"]),
])
def test_bad_options_are_one_line_exit_2(iris_model, tmp_path, capsys, args, needles):
    (tmp_path / "rows.csv").write_text("1,2,3,4\n")
    args = [str(iris_model) if a == "M" else str(tmp_path / a) if a == "rows.csv" else a for a in args]
    code, out, err = cli(*args, capsys=capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert all(n in err.strip().splitlines()[-1] for n in needles), err


# ---------------------------------------------------------------------------------- item 10: regression
@pytest.fixture(scope="module")
def regression(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """A model of y = 2 a - b + 0.5 saved as a regression model, and a CSV of (a, b, c, y) with float targets."""
    folder = tmp_path_factory.mktemp("reg")
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(300, 3)).astype(np.float32)
    y = (2 * x[:, 0] - x[:, 1] + 0.5 + rng.normal(0, 0.01, 300)).astype(np.float32)
    bp.manual_seed(0)
    model = models.mlp(3, [16], 1)  # a linear output (no head)
    bp.fit(model, x, y[:, None], loss="mse", metrics=(), optimizer=bp.optim.Adam(model.parameters(), lr=0.01),
           batch_size=16, epochs=40, verbose=0)
    path = save_model(folder / "reg.safetensors", model, [], "mse", "csv:reg.csv", 3, task="regression")
    data = folder / "reg.csv"
    with data.open("w") as f:
        f.write("a,b,c,y\n" + "".join(f"{a:.5f},{b:.5f},{c:.5f},{t:.5f}\n" for (a, b, c), t in zip(x, y)))
    return path, data, y


def test_evaluate_a_regression_model_prints_mse_mae_r2(regression, capsys):
    path, data, _ = regression
    code, out, err = cli("evaluate", path, "--dataset", f"csv:{data}", capsys=capsys)
    assert code == 0, err
    assert "300 samples" in out and "regression" in out
    figures = dict(line.split(" ", 1) for line in out.splitlines()[1:] if line)
    assert float(figures["mse"]) < 0.01 and float(figures["mae"]) < 0.1 and float(figures["r2"]) > 0.99
    assert abs(float(figures["rmse"]) ** 2 - float(figures["mse"])) < 1e-4
    assert "confusion" not in out and "precision" not in out


def test_predict_a_regression_model_prints_numbers(regression, tmp_path, capsys):
    path, data, y = regression
    code, out, err = cli("predict", path, data, "--label-column", "y", capsys=capsys)
    assert code == 0, err
    pred = np.array([float(v) for v in out.split()])
    assert len(pred) == 300 and np.abs(pred - y).mean() < 0.1
    code, out, err = cli("predict", path, data, "--label-column", "y", "--proba", capsys=capsys)
    one_line_error(code, err, "--proba", "regression")


def test_evaluate_regression_needs_its_csv_and_numeric_targets(regression, tmp_path, capsys):
    path, _, _ = regression
    code, _out, err = cli("evaluate", path, "--dataset", "digits", capsys=capsys)
    one_line_error(code, err, "regression", "csv:PATH")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c,y\n1,2,3,4.5\n1,2,3,high\n")
    code, _out, err = cli("evaluate", path, "--dataset", f"csv:{bad}", capsys=capsys)
    one_line_error(code, err, "line 3", "'high'", "not a number")


# --------------------------------------------------------------------------------------- item 10: --proba
@pytest.mark.parametrize("loss", ["cross_entropy", "nll", "mse", "quadratic"])
def test_predict_proba_prints_class_probabilities_as_csv(tmp_path, capsys, loss):
    model = train_blobs(tmp_path, loss=loss, epochs=30)
    x, y = blobs(30, seed=1)
    rows = tmp_path / "rows.csv"
    np.savetxt(rows, x, delimiter=",", fmt="%.4f")
    code, out, err = cli("predict", model, rows, "--proba", capsys=capsys)
    assert code == 0, err
    table = list(csv.reader(io.StringIO(out)))
    assert table[0] == list(IRIS_CLASSES)
    probs = np.array(table[1:], dtype=np.float64)
    assert probs.shape == (30, 3) and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    code, plain, _ = cli("predict", model, rows, capsys=capsys)
    assert [IRIS_CLASSES[k] for k in probs.argmax(axis=1)] == plain.split()  # the same classes as without it
    assert np.mean(probs.argmax(axis=1) == y) > 0.9


def test_predict_proba_of_a_softmax_model_is_the_softmax(iris_model, tmp_path, capsys):
    x, _ = blobs(5, seed=2)
    rows = tmp_path / "rows.csv"
    np.savetxt(rows, x, delimiter=",", fmt="%.4f")
    code, out, err = cli("predict", iris_model, rows, "--proba", capsys=capsys)
    assert code == 0, err
    x = np.loadtxt(rows, delimiter=",", dtype=np.float32)
    logits = bp.predict(bio.load(iris_model), x).astype(np.float64)
    want = np.exp(logits - logits.max(axis=1, keepdims=True))
    want /= want.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.array(list(csv.reader(io.StringIO(out)))[1:], dtype=np.float64), want,
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------- through backprop train
def test_a_model_from_backprop_train_evaluates_on_the_whole_csv(tmp_path, capsys):
    x, y = blobs()
    data = write_csv(tmp_path / "iris.csv", x, [IRIS_CLASSES[k] for k in y])
    out_dir = tmp_path / "run"
    code, out, err = cli("train", "--dataset", f"csv:{data}", "--label-column", "species", "--hidden", "8",
                         "--epochs", "1", "--quiet", "--out", out_dir, capsys=capsys)
    assert code == 0, err
    keep = y > 0
    two = write_csv(tmp_path / "two.csv", x[keep], [IRIS_CLASSES[k] for k in y[keep]])
    code, out, err = cli("evaluate", out_dir / "model.safetensors", "--dataset", f"csv:{two}", "--no-plot",
                         capsys=capsys)
    assert code == 0, err
    assert "csv:two.csv: 100 samples (the whole file), 3 classes" in out  # label column: the model's
