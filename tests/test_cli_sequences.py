"""``backprop train`` on the sequence sets, ``evaluate`` and ``generate``, end to end on tiny runs (issue 14).

The runs are subprocesses, as a user starts them, and last seconds: a few epochs of small networks on short
sequences and a small text written here (tiny Shakespeare is not needed). Bad options are checked in-process
through ``backprop.cli.main.main``: one line on stderr, exit code 2, nothing trained.
"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from backprop import io as bio
from backprop.cli.main import main

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 12


def run(*args: str, cwd=None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "backprop", *args], capture_output=True, text=True, cwd=cwd,
                          check=False, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "play.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def char_model(tmp_path_factory, text_file):
    out = tmp_path_factory.mktemp("run") / "lstm"
    proc = run("train", "--model", "lstm", "--dataset", f"text:{text_file}", "--seq-len", "16", "--hidden", "32",
               "--epochs", "3", "--lr", "0.01", "--no-plot", "--out", str(out))
    return out / "model.safetensors", proc.stdout


def test_a_character_model_trains_and_reports_nats_and_perplexity(char_model, text_file):
    path, stdout = char_model
    assert "the last 10% of the text for validation" in stdout
    line = re.search(r"validation cross-entropy ([\d.]+) nats per character - perplexity ([\d.]+)", stdout)
    assert line, stdout
    ce, ppl = float(line.group(1)), float(line.group(2))
    assert abs(np.exp(ce) - ppl) < 0.01 * ppl and ce < np.log(len(set(TEXT)))  # better than uniform
    meta = bio.load_metadata(path)
    cut = int(len(TEXT) * 0.9)
    assert meta["sequence_kind"] == "text" and meta["seq_len"] == 16
    assert meta["vocabulary"] == "".join(sorted(set(TEXT[:cut])))
    evaluated = run("evaluate", str(path)).stdout  # its own text and window length by default
    assert f"cross-entropy {ce:.4f} nats per character" in evaluated, evaluated
    assert "accuracy" in evaluated


def test_generate_is_reproducible_with_a_seed(char_model):
    path, _ = char_model
    a = run("generate", str(path), "--prompt", "First", "--length", "60", "--seed", "7", "--temperature", "0.8").stdout
    b = run("generate", str(path), "--prompt", "First", "--length", "60", "--seed", "7", "--temperature", "0.8").stdout
    assert a == b and a.startswith("First") and len(a) == len("First") + 60 + 1
    assert set(a) <= set(TEXT)
    greedy = run("generate", str(path), "--prompt", "All:", "--length", "20", "--temperature", "0").stdout
    assert greedy == run("generate", str(path), "--prompt", "All:", "--length", "20", "--temperature", "0",
                         "--seed", "99").stdout  # no randomness at temperature 0


def test_a_transformer_character_model(tmp_path, text_file):
    out = tmp_path / "tf"
    stdout = run("train", "--model", "transformer", "--dataset", f"text:{text_file}", "--seq-len", "16", "--hidden",
                 "16", "--epochs", "2", "--no-plot", "--out", str(out)).stdout
    assert "transformer (d_model 16, 4 heads, 1 layer)" in stdout and "validation cross-entropy" in stdout
    sample = run("generate", str(out / "model.safetensors"), "--length", "30", "--seed", "1").stdout
    assert len(sample) == 1 + 30 + 1  # the default prompt: a newline


def test_export_a_character_model_to_onnx(char_model, tmp_path):
    pytest.importorskip("onnx")
    path, _ = char_model
    out = run("export", str(path), "--onnx", str(tmp_path / "lm.onnx")).stdout
    assert "input 'input' (batch, 16) int64 character indices, output 'output' (batch, 16, " in out, out


def test_adding_problem_is_a_regression(tmp_path):
    out = tmp_path / "add"
    stdout = run("train", "--model", "gru", "--dataset", "adding:6", "--hidden", "8", "--epochs", "1",
                 "--batch-size", "500", "--no-plot", "--out", str(out)).stdout
    assert "a number to predict" in stdout and re.search(r"test mse [\d.e-]+ - test rmse", stdout), stdout
    assert "predicting the mean: mse 0.16" in stdout
    evaluated = run("evaluate", str(out / "model.safetensors")).stdout
    assert "adding:6 test split: 10000 samples, regression" in evaluated and "r2 " in evaluated
    pytest.importorskip("onnx")
    exported = run("export", str(out / "model.safetensors"), "--onnx", str(tmp_path / "add.onnx")).stdout
    assert "input 'input' (batch, 6, 2) float32, output 'output' (batch, 1)" in exported, exported


def test_copy_task_is_a_class_per_step(tmp_path):
    out = tmp_path / "copy"
    stdout = run("train", "--model", "rnn", "--dataset", "copy:2", "--hidden", "8", "--epochs", "1",
                 "--batch-size", "500", "--no-plot", "--out", str(out)).stdout
    assert "a class of 9 at every step" in stdout and "test accuracy per step" in stdout
    evaluated = run("evaluate", str(out / "model.safetensors")).stdout
    assert "the memoryless baseline: 0.9452" in evaluated and "whole sequences" in evaluated


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--model", "lstm", "--dataset", "digits"], "--model lstm reads sequences"),
    (["train", "--model", "mlp", "--dataset", "adding:5"], "holds sequences: train it with --model rnn"),
    (["train", "--model", "lstm", "--dataset", "adding:5", "--seq-len", "9"], "--seq-len only applies"),
    (["train", "--model", "lstm", "--dataset", "adding:5", "--hidden", "32,16"], "share one hidden size"),
    (["train", "--model", "gru", "--dataset", "adding:5", "--loss", "nll"], "train it with --loss mse"),
    (["train", "--model", "lstm", "--dataset", "copy:3", "--loss", "mse"], "--loss cross_entropy"),
    (["train", "--model", "lstm", "--dataset", "copy:3", "--standardize"], "not to sequences"),
    (["train", "--model", "gru", "--dataset", "adding:1"], "T must be an integer >= 2"),
    (["train", "--model", "lstm", "--dataset", "text:/no/such/file.txt"], "does not exist"),
    (["train", "--model", "lstm", "--dataset", "text:"], "needs a path"),
])
def test_bad_train_options_are_one_line(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_bad_generate_options_are_one_line(char_model, tmp_path, capsys):
    path, _ = char_model
    for argv, message in ((["--prompt", "€uro"], "not in the vocabulary: '€'"), (["--prompt", ""], "is empty")):
        assert main(["generate", str(path), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    for bad in (["--temperature", "-1"], ["--temperature", "nan"], ["--length", "-3"], ["--seed", "x"]):
        with pytest.raises(SystemExit) as e:
            main(["generate", str(path), *bad])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "backprop generate: error: argument" in err, err
    assert main(["predict", str(path), str(path)]) == 2
    assert "reads sequences: use 'backprop evaluate' or 'backprop generate'" in capsys.readouterr().err


def test_generate_needs_a_character_model(tmp_path, capsys):
    out = tmp_path / "digits"
    run("train", "--epochs", "1", "--hidden", "8", "--no-plot", "--out", str(out))
    assert main(["generate", str(out / "model.safetensors")]) == 2
    assert "is not a character model" in capsys.readouterr().err
