"""`backprop train` as a new user meets it: defaults that stop on their own, missing extras, interruptions,
divergence, output folders and the launcher's checks (issue 12, items 2, 3, 5, 6, 9 and 11).

Each test runs the command in a subprocess, as a user would. A missing extra is simulated by a
``sitecustomize`` module on ``PYTHONPATH`` that makes the named modules unimportable (``sys.modules[name] =
None``), so these tests pass whether or not the extras are installed.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from backprop import io as bio


def run(*args, cwd=None, env=None, check=True, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "backprop", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def without(tmp_path, *modules):
    """An environment in which ``modules`` cannot be imported."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def one_error_line(proc):
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("backprop: error: ") and "Traceback" not in proc.stderr
    return lines[0]


# ----------------------------------------------------------------------------------- item 2: missing extras
@pytest.mark.parametrize("modules, args, install", [
    (["tensorboard"], ["--tensorboard"], 'pip install "backprop[tensorboard]"'),
    (["matplotlib"], [], 'pip install "backprop[plot]"'),
    (["mpi4py"], ["--workers", "2"], 'pip install "backprop[mpi]"'),
], ids=["tensorboard", "plot", "mpi"])
def test_a_missing_extra_is_one_line_exit_2_before_any_work(tmp_path, modules, args, install):
    proc = run("train", "--epochs", "1", *args, cwd=tmp_path, env=without(tmp_path, *modules), check=False)
    assert proc.returncode == 2
    assert install in one_error_line(proc)
    assert not (tmp_path / "runs").exists()  # nothing was written


def test_no_plot_trains_without_matplotlib(tmp_path):
    out = tmp_path / "run"
    run("train", "--epochs", "2", "--no-plot", "--out", str(out), env=without(tmp_path, "matplotlib"))
    assert (out / "model.safetensors").exists() and (out / "metrics.csv").exists()
    assert not (out / "training.png").exists()


# --------------------------------------------------------------------------- item 3: stopped in epoch 1
def test_ctrl_c_in_the_first_epoch_checkpoints_there_and_resumes_bit_identically(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 8))
    data = tmp_path / "blobs.csv"
    np.savetxt(data, np.column_stack([x, (x[:, 0] * x[:, 1] > 0).astype(int)]), delimiter=",", fmt="%.4f")
    common = ["train", "--dataset", f"csv:{data}", "--epochs", "1", "--batch-size", "1", "--hidden", "16",
              "--no-plot"]
    straight = tmp_path / "straight"
    run(*common, "--out", str(straight), "--quiet")
    out = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "backprop", *common, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "iterations per epoch" in line:  # training starts: 14,400 steps of one sample in epoch 1
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Continue with: backprop train --resume" in err and "Traceback" not in err
    ckpt = bio.load_checkpoint(out / "checkpoint.safetensors")
    assert ckpt.epoch == 0 and 0 < ckpt.iteration < 14_400, "the stop did not fall in epoch 1"
    assert f"epoch 1, iteration {ckpt.iteration}" in err
    assert not (out / "training.png").exists() and not (out / "metrics.csv").exists()  # no empty files

    resumed = run("train", "--resume", str(out))
    assert f"resuming {out} in epoch 1 after iteration {ckpt.iteration} of 1: 1 epoch remains" in resumed.stdout
    a, b = bio.load(straight / "model.safetensors"), bio.load(out / "model.safetensors")
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert np.array_equal(p, q), name
    assert (straight / "metrics.csv").read_text() == (out / "metrics.csv").read_text()


# ------------------------------------------------------------------ item 5: divergence in the CLI's words
def test_a_run_that_diverges_at_once_speaks_cli(tmp_path):
    out = tmp_path / "run"
    proc = run("train", "--lr", "1e6", "--out", str(out), check=False)
    assert proc.returncode == 3
    line = one_error_line(proc)
    assert "training diverged" in line and "--lr" in line and "--clip-norm" in line
    for python_only in ("clip_norm=", "TerminateOnNaN", ".;", "Warning", ".py:"):
        assert python_only not in proc.stderr
    assert (out / "model.safetensors").exists()
    assert not (out / "training.png").exists() and not (out / "metrics.csv").exists()


def test_a_plateau_schedule_without_validation_data_warns_nothing(tmp_path):
    proc = run("train", "--epochs", "2", "--scheduler", "plateau", "--validation-split", "0", "--no-plot",
               "--out", str(tmp_path / "run"))
    assert proc.stderr == ""


def test_exit_codes_are_documented():
    proc = run("train", "--help")
    for code in ("0 ", "2 ", "3 ", "130", "143"):
        assert f"  {code}" in proc.stdout


# --------------------------------------------------------------------- item 6: --workers checked first
def test_workers_check_the_batch_size_once_before_launching(tmp_path):
    proc = run("train", "--workers", "64", "--batch-size", "16", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "--batch-size 16 must be divisible by the 64 MPI ranks" in one_error_line(proc)


def test_more_ranks_than_cores_gets_a_warning(capsys, monkeypatch):
    from backprop.cli import train

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    train._warn_oversubscribed(4)
    assert "more ranks than the 2 CPU cores" in capsys.readouterr().err
    train._warn_oversubscribed(2)
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- item 9: a short, honest run
def test_the_default_run_stops_early_and_evaluates_the_test_split_once(tmp_path):
    proc = run("train", "--out", str(tmp_path / "run"), "--no-plot")
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert len(rows) < 30 and "early stopping" in proc.stdout  # stopped before the 30-epoch bound
    assert "Restoring model weights from the end of the best epoch" in proc.stdout
    assert {"val_loss", "val_accuracy"} <= set(rows[0]) and not any(k.startswith("test") for k in rows[0])
    assert proc.stdout.count("test accuracy") == 1
    meta = bio.load_metadata(tmp_path / "run" / "model.safetensors")
    assert meta["test"]["accuracy"] >= 0.96


# ------------------------------------------------------------------------ item 11: output folders, plots
def test_out_never_overwrites_a_run_silently(tmp_path):
    out = tmp_path / "run"
    run("train", "--epochs", "1", "--no-plot", "--out", str(out))
    before = (out / "model.safetensors").read_bytes()
    proc = run("train", "--epochs", "1", "--no-plot", "--out", str(out), check=False)
    assert proc.returncode == 2 and "--overwrite" in one_error_line(proc)
    assert (out / "model.safetensors").read_bytes() == before
    run("train", "--epochs", "1", "--no-plot", "--seed", "1", "--out", str(out), "--overwrite")
    assert (out / "model.safetensors").read_bytes() != before


@pytest.mark.parametrize("where, needle", [("file", "is not a folder"), ("proc", "cannot create the folder")])
def test_an_unusable_out_is_one_clear_line(tmp_path, where, needle):
    target = tmp_path / "a-file"
    target.write_text("x")
    out = str(target) if where == "file" else "/proc/backprop-run"
    proc = run("train", "--epochs", "1", "--out", out, check=False)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert needle in line and "[Errno" not in line


def test_the_plot_has_whole_epochs_and_the_learning_rate_when_it_changes(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    out = tmp_path / "run"
    run("train", "--epochs", "3", "--early-stopping", "0", "--scheduler", "cosine", "--out", str(out))
    width = matplotlib.image.imread(out / "training.png").shape[1]
    assert width == 1500  # loss, accuracy and the learning rate: three panels of 500 pixels
    out2 = tmp_path / "constant"
    run("train", "--epochs", "3", "--early-stopping", "0", "--out", str(out2))
    assert matplotlib.image.imread(out2 / "training.png").shape[1] == 1000


# --------------------------------------------------------------- item 10: standardised CSV data, regression
def test_csv_features_are_standardised_by_a_layer_saved_with_the_model(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(800, 20)).astype(float)  # raw 0..255 values, as a user's CSV holds them
    label = (pixels[:, 0] + pixels[:, 1] > 255).astype(int)
    data = tmp_path / "pixels.csv"
    np.savetxt(data, np.column_stack([pixels, label]), delimiter=",", fmt="%d")
    scores = {}
    for flag in ("--standardize", "--no-standardize"):
        out = tmp_path / flag
        proc = run("train", "--dataset", f"csv:{data}", flag, "--no-plot", "--out", str(out))
        scores[flag] = float(proc.stdout.split("test accuracy ")[1].split()[0])
        assert bio.load_metadata(out / "model.safetensors")["standardized"] == (flag == "--standardize")
    assert scores["--standardize"] > 0.9 > scores["--no-standardize"], scores
    model = bio.load(tmp_path / "--standardize" / "model.safetensors")
    assert type(model[0]).__name__ == "Normalization"  # evaluate and predict apply it from the file
    ev = run("evaluate", str(tmp_path / "--standardize" / "model.safetensors"), "--dataset", f"csv:{data}")
    assert float(ev.stdout.split("\naccuracy ")[1].split()[0]) > 0.9


def test_a_float_target_with_mse_is_regression_in_the_units_of_the_file(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3)) * [1, 10, 100] + [0, 50, 1000]
    price = 3 * x[:, 0] + 0.2 * x[:, 1] - 0.01 * x[:, 2] + 500 + rng.normal(size=600) * 0.1
    data = tmp_path / "prices.csv"
    np.savetxt(data, np.column_stack([x, price]), delimiter=",", fmt="%.5f", header="a,b,c,price", comments="")
    out = tmp_path / "run"
    proc = run("train", "--dataset", f"csv:{data}", "--loss", "mse", "--no-plot", "--out", str(out))
    assert "test mse" in proc.stdout
    meta = bio.load_metadata(out / "model.safetensors")
    assert meta["task"] == "regression" and meta["classes"] == []
    assert meta["test"]["loss"] < 0.05  # noise variance 0.01: in the target's own units, not standardised ones
    rows = tmp_path / "rows.csv"
    np.savetxt(rows, x[:5], delimiter=",", fmt="%.5f")
    pred = np.array(run("predict", str(out / "model.safetensors"), str(rows)).stdout.split(), dtype=float)
    assert np.allclose(pred, price[:5], atol=0.5)
    bad = run("train", "--dataset", f"csv:{data}", "--loss", "mse", "--model", "lenet5", check=False, cwd=tmp_path)
    assert bad.returncode == 2 and "--model mlp" in one_error_line(bad)


@pytest.mark.parametrize("command", [["evaluate"], ["predict", "rows.csv"], ["export", "--onnx", "m.onnx"]])
def test_a_run_folder_given_as_the_model_file_is_one_clear_line(tmp_path, command):
    out = tmp_path / "run"
    run("train", "--epochs", "1", "--no-plot", "--out", str(out))
    (tmp_path / "rows.csv").write_text("0\n")
    proc = run(command[0], str(out), *command[1:], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert f"{out} is a folder, not a model file (did you mean {out / 'model.safetensors'}?)" in line
    assert "[Errno" not in line


# ------------------------------------------------------------------ item 8: a run that does not learn
def test_a_run_that_does_not_learn_says_so_in_one_line_with_the_option_to_change(tmp_path):
    proc = run("train", "--lr", "1e-7", "--epochs", "2", "--early-stopping", "0", "--no-plot",
               "--out", str(tmp_path / "run"))
    lines = [ln for ln in proc.stderr.splitlines() if "training health" in ln]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("backprop: warning: training health (epoch 1): the loss has not moved")
    assert "ln(10)" in lines[0] and "(--lr " in lines[0] and "lr=" not in lines[0]
    healthy = run("train", "--epochs", "3", "--no-plot", "--out", str(tmp_path / "healthy"))
    assert "training health" not in healthy.stderr


def test_lenet5_and_cnn_default_to_a_learning_rate_that_trains():
    from backprop.cli.train import MODEL_DEFAULTS

    assert MODEL_DEFAULTS["lenet5"]["lr"] <= 0.02 and MODEL_DEFAULTS["cnn"]["lr"] <= 0.02
