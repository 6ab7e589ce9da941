"""Interruption and divergence of `backprop train`: stop cleanly, keep the last good state, resume exactly."""

import signal
import subprocess
import sys

import numpy as np
import pytest


def run(*args, cwd=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "backprop", *args], capture_output=True, text=True, cwd=cwd,
                          check=False, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_after_the_step_and_resume_matches_an_uninterrupted_run(signum, code, tmp_path):
    common = ["train", "--epochs", "40", "--hidden", "64", "--batch-size", "32"]
    straight = tmp_path / "straight"
    run(*common, "--out", str(straight), "--quiet")
    out = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, "-m", "backprop", *common, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("Epoch 3/"):
            proc.send_signal(signum)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "--resume" in err and "Traceback" not in err
    run("train", "--resume", str(out), "--quiet")
    a = bp_load(straight / "model.safetensors")
    b = bp_load(out / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def bp_load(path):
    from safetensors.numpy import load_file

    return load_file(str(path))


def test_divergence_saves_the_last_finite_weights_and_exits_3(tmp_path):
    out = tmp_path / "run"
    proc = run("train", "--epochs", "5", "--lr", "1e30", "--momentum", "0", "--out", str(out), check=False)
    assert proc.returncode == 3, proc.stderr
    assert "diverged" in proc.stderr and "lower --lr" in proc.stderr and "Traceback" not in proc.stderr
    weights = bp_load(out / "model.safetensors")
    assert all(np.isfinite(w).all() for w in weights.values())
