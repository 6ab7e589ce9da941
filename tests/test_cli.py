"""End-to-end tests of the `backprop` command, run as a user would (a subprocess)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
MNIST_DIR = Path(os.environ.get("BACKPROP_DATA", SHARED))


def run(*args, cwd=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "backprop", *args], capture_output=True, text=True, cwd=cwd, check=False,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    proc = run("train", "--epochs", "15", "--early-stopping", "0", "--out", str(out))
    return out, proc


def test_train_writes_model_metrics_and_plot(trained):
    out, proc = trained
    assert (out / "model.safetensors").stat().st_size > 1000
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 15
    assert {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"} <= set(rows[0])
    assert not any(key.startswith("test") for key in rows[0])  # the test split is evaluated once, at the end
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert str(out / "model.safetensors") in proc.stdout
    # not a terminal: one line per epoch, no progress bar
    assert proc.stdout.count("Epoch ") == 15
    assert "it/s" not in proc.stderr and "\r" not in proc.stdout


def test_default_train_reaches_97_percent(tmp_path):
    """The README's first command: `backprop train` with no option (96.9-97.5% for seeds 0-2: 349-351 of the
    360 test digits)."""
    proc = run("train", cwd=tmp_path)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("test loss"))
    acc = float(line.split("test accuracy ")[1].split()[0])
    assert acc >= 0.969, line  # printed to 4 places: 349/360 = 0.9694
    assert list((tmp_path / "runs").iterdir())  # default --out is runs/<timestamp>


def test_evaluate_matches_training_figures(trained):
    out, proc = trained
    ev = run("evaluate", str(out / "model.safetensors"), "--dataset", "digits")
    acc = float(ev.stdout.split("accuracy ")[1].split()[0])
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("test loss"))
    assert abs(acc - float(line.split("test accuracy ")[1].split()[0])) < 1e-4


def test_predict_prints_one_class_per_row(trained, tmp_path):
    out, _ = trained
    import backprop as bp

    (_, _), (xs, ys) = bp.datasets.load_digits()
    path = tmp_path / "rows.csv"
    np.savetxt(path, xs[:40], delimiter=",", header=",".join(f"p{i}" for i in range(64)), comments="")
    proc = run("predict", str(out / "model.safetensors"), str(path))
    pred = [int(v) for v in proc.stdout.split()]
    assert len(pred) == 40
    assert np.mean(np.array(pred) == ys[:40]) > 0.85


def test_csv_dataset_with_string_labels(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "blobs.csv"
    with path.open("w") as f:
        f.write("a,b,species\n")
        for i in range(150):
            c = i % 3
            f.write(f"{rng.normal(c * 3):.4f},{rng.normal(-c * 3):.4f},{['cat', 'dog', 'eel'][c]}\n")
    out = tmp_path / "run"
    proc = run("train", "--dataset", f"csv:{path}", "--label-column", "species", "--hidden", "8", "--epochs", "30",
               "--out", str(out), "--quiet")
    assert proc.stdout.strip() == str(out)
    rows = tmp_path / "rows.csv"
    rows.write_text("0,0\n6,-6\n")
    pred = run("predict", str(out / "model.safetensors"), str(rows)).stdout.split()
    assert pred == ["cat", "eel"]


@pytest.mark.parametrize("args, needle", [
    (["train", "--lr", "-1"], "--lr"),
    (["train", "--lr", "abc"], "--lr"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--hidden", "12,x"], "--hidden"),
    (["train", "--epochs", "-2"], "--epochs"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--dataset", "imagenet"], "unknown dataset"),
    (["train", "--activation", "swish"], "--activation"),
    (["train", "--dataset", "csv:/nonexistent/file.csv"], "nonexistent"),
    (["evaluate", "/nonexistent/model.safetensors"], "does not exist"),
])
def test_bad_options_give_one_line_and_exit_2(args, needle, tmp_path):
    proc = run(*args, check=False, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert needle in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(("backprop", "usage"))


def test_malformed_csv_names_line_and_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,b,label\n1,2,0\n3,x,1\n")
    proc = run("train", "--dataset", f"csv:{path}", "--epochs", "1", check=False, cwd=tmp_path)
    assert proc.returncode == 2
    assert "line 3" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_mnist_folder_explains_where_files_go(tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), BACKPROP_DATA=str(tmp_path / "none"))
    proc = subprocess.run([sys.executable, "-m", "backprop", "train", "--dataset", "mnist", "--data-dir",
                           str(tmp_path / "empty")], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert proc.returncode == 2
    assert "train-images-idx3-ubyte.gz" in proc.stderr and "Traceback" not in proc.stderr


def test_debug_shows_traceback(tmp_path):
    proc = run("train", "--dataset", "imagenet", "--debug", check=False, cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.mnist
@pytest.mark.skipif(not (MNIST_DIR / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()
                    and not (MNIST_DIR / "t10k-labels-idx1-ubyte.gz").exists(), reason="MNIST files not found")
def test_mnist_one_epoch(tmp_path):
    """Nielsen's network for one epoch already classifies most of the test set."""
    out = tmp_path / "run"
    proc = run("train", "--dataset", "mnist", "--data-dir", str(MNIST_DIR), "--hidden", "30", "--activation",
               "sigmoid", "--loss", "quadratic", "--lr", "3.0", "--momentum", "0", "--batch-size", "10",
               "--epochs", "1", "--validation-split", "0", "--out", str(out))
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("test loss"))
    assert float(line.split("test accuracy ")[1].split()[0]) > 0.90
    assert "6000 iterations per epoch" in proc.stdout


def test_no_jit_trains_the_same_network(tmp_path):
    """`--no-jit` runs every step eagerly: with momentum SGD (nothing folded) the figures are identical."""
    lines = []
    for flag in ((), ("--no-jit",)):
        proc = run("train", "--epochs", "2", "--hidden", "32", *flag, "--out", str(tmp_path / f"run{len(lines)}"))
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("test loss"))
        lines.append(line.split(" (")[0])  # NOTE: the figures, not the seconds
    assert lines[0] == lines[1], lines


def test_training_controls_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    run("train", "--epochs", "4", "--scheduler", "cosine", "--warmup", "1", "--weight-decay", "1e-4", "--dropout",
        "0.1", "--label-smoothing", "0.1", "--clip-norm", "5", "--early-stopping", "3", "--tensorboard",
        "--out", str(out))
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {"lr", "val_loss", "val_accuracy"} <= set(rows[0])
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] < lrs[1] and lrs[-1] < lrs[1]  # warm-up, then cosine decay
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())


def test_evaluate_prints_per_class_metrics_and_writes_confusion_matrix(trained, tmp_path):
    out, _ = trained
    png = tmp_path / "cm.png"
    ev = run("evaluate", str(out / "model.safetensors"), "--dataset", "digits", "--out", str(png))
    assert "macro F1" in ev.stdout and "precision" in ev.stdout and "support" in ev.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cnn_models_need_square_images(tmp_path):
    proc = run("train", "--model", "lenet5", "--epochs", "1", check=False, cwd=tmp_path)
    assert proc.returncode == 2 and "28x28" in proc.stderr


@pytest.mark.parametrize("model", ["lenet5", "cnn"])
def test_cnn_models_train_on_image_csv(model, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((80, 784)).astype(np.float32)
    y = np.arange(80) % 2
    x[y == 1, :392] += 1.0  # class 1: bright top half
    path = tmp_path / "img.csv"
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", fmt="%.3f")
    out = tmp_path / "run"
    proc = run("train", "--dataset", f"csv:{path}", "--model", model, "--epochs", "10", "--batch-size", "16",
               "--optimizer", "adam", "--lr", "0.003",
               "--out", str(out))
    assert f"network: {model}" in proc.stdout and (out / "model.safetensors").exists()
    ev = run("evaluate", str(out / "model.safetensors"), "--dataset", f"csv:{path}")
    assert float(ev.stdout.split("\naccuracy ")[1].split()[0]) >= 0.8

