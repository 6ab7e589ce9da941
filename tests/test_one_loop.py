"""Every front end drives the one training loop: a callback registered on it sees the same events from each.

``register_loop_callback`` adds a recording callback to every loop. In this process it watches ``fit``,
``MLPClassifier.fit`` and ``partial_fit``; in the subprocesses (``mpiexec -n 2`` with
``fit(distributed=True)``, ``backprop train`` and ``backprop train --workers 2``) a ``sitecustomize`` module
registers the same callback, which writes what it saw to a file per process. Each sequence must be the
loop's: begin, then per epoch the epoch's begin, a begin and an end per batch, the epoch's end with its
loss, and the end of training. Also: a custom ``train_step`` (gradient accumulation) through ``fit``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import backprop as bp
from backprop.training import Step, StepResult, register_loop_callback

RECORDER = '''
import json, os
from backprop.training import Callback, register_loop_callback

class Recorder(Callback):
    """Writes the loop's events to $BACKPROP_EVENTS/<pid>-<n>.json when training ends."""
    runs = 0
    seen = []

    def on_train_begin(self, logs=None):
        self.events = [["train_begin"]]
    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(["epoch_begin", epoch])
    def on_train_batch_begin(self, batch, logs=None):
        self.events.append(["batch_begin", batch])
    def on_train_batch_end(self, batch, logs=None):
        self.events.append(["batch_end", batch, sorted(logs)])
    def on_epoch_end(self, epoch, logs=None):
        self.events.append(["epoch_end", epoch, "loss" in logs])
    def on_train_end(self, logs=None):
        self.events.append(["train_end"])
        Recorder.seen.append(self.events)
        out = os.environ.get("BACKPROP_EVENTS")
        if out:
            Recorder.runs += 1
            with open(os.path.join(out, f"{os.getpid()}-{Recorder.runs}.json"), "w") as f:
                json.dump(self.events, f)
'''


def expected(epochs: int, batches: int) -> list:
    events: list = [["train_begin"]]
    for e in range(epochs):
        events.append(["epoch_begin", e])
        for b in range(batches):
            events += [["batch_begin", b], ["batch_end", b, ["loss", "size"]]]
        events.append(["epoch_end", e, True])
    return [*events, ["train_end"]]


@pytest.fixture
def recorder():
    ns: dict = {}
    exec(RECORDER, ns)  # noqa: S102 - the same source the subprocesses run
    handle = register_loop_callback(ns["Recorder"])
    yield ns["Recorder"]
    handle.remove()


def data(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def test_fit_drives_the_loop(recorder):
    x, y = data()
    bp.manual_seed(0)
    model = bp.nn.Sequential(bp.nn.Linear(4, 8), bp.nn.Tanh(), bp.nn.Linear(8, 2))
    bp.fit(model, x, y, batch_size=16, epochs=2, verbose=0, seed=0)
    assert recorder.seen == [expected(2, 4)]


def test_sklearn_fit_and_partial_fit_drive_the_loop(recorder):
    from backprop.sklearn import MLPClassifier

    x, y = data()
    clf = MLPClassifier(hidden_layer_sizes=(8,), batch_size=16, max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning after 2 epochs
        clf.fit(x, y)
    clf.partial_fit(x, y)
    assert recorder.seen == [expected(2, 4), expected(1, 4)]


def test_the_registered_callback_goes_away():
    x, y = data()
    ns: dict = {}
    exec(RECORDER, ns)  # noqa: S102
    register_loop_callback(ns["Recorder"]).remove()
    bp.fit(bp.nn.Sequential(bp.nn.Linear(4, 2)), x, y, epochs=1, verbose=0)
    assert ns["Recorder"].seen == []


# ------------------------------------------------------------------------------------------ subprocesses
def _mpiexec() -> str | None:
    here = Path(sysconfig.get_path("scripts")) / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def _has_mpi() -> bool:
    return _mpiexec() is not None and bp.distributed.is_available()


def _run(tmp_path: Path, cmd: list[str]) -> list[list]:
    """Run ``cmd`` with the recorder installed in every Python process it starts; the sequences they wrote."""
    site, events = tmp_path / "site", tmp_path / "events"
    site.mkdir(exist_ok=True)
    events.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(RECORDER + "\nregister_loop_callback(Recorder)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "BACKPROP_EVENTS": str(events), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    found = [json.loads(p.read_text()) for p in sorted(events.glob("*.json"))]
    for p in events.glob("*.json"):
        p.unlink()
    return found


@pytest.mark.skipif(not _has_mpi(), reason="needs mpi4py and mpiexec (pip install 'backprop[mpi]')")
def test_distributed_fit_drives_the_loop_on_every_rank(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import numpy as np, backprop as bp
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 4)).astype(np.float32)
        bp.manual_seed(0)
        model = bp.nn.Sequential(bp.nn.Linear(4, 8), bp.nn.Tanh(), bp.nn.Linear(8, 2))
        bp.fit(model, x, (x[:, 0] > 0).astype(np.int64), batch_size=16, epochs=2, verbose=0, seed=0,
               distributed=True)
    """))
    runs = _run(tmp_path, [_mpiexec(), "-n", "2", sys.executable, str(script)])
    assert runs == [expected(2, 4)] * 2  # one per rank, each the whole loop


@pytest.mark.skipif(not _has_mpi(), reason="needs mpi4py and mpiexec (pip install 'backprop[mpi]')")
def test_command_line_with_workers_drives_the_same_loop(tmp_path):
    args = ["train", "--epochs", "2", "--batch-size", "64", "--quiet"]
    one = _run(tmp_path, [sys.executable, "-m", "backprop", *args, "--out", str(tmp_path / "one")])
    workers = _run(tmp_path, [sys.executable, "-m", "backprop", *args, "--workers", "2",
                              "--out", str(tmp_path / "workers")])
    assert len(one) == 1 and len(workers) == 2
    batches = sum(1 for e in one[0] if e[0] == "batch_begin") // 2
    assert one[0] == expected(2, batches) and workers == [one[0]] * 2


# ---------------------------------------------------------------------------------- the override point
class AccumulateGradients(Step):
    """The README's example: average the gradients of k mini-batches, then make one update."""

    k = 2

    def train_step(self, batch):
        self.seen = getattr(self, "seen", 0) + 1
        out, loss = self.compute_loss(batch)
        self.backpropagate(loss, scale=1.0 / self.k)  # gradients add up (+=) over k batches
        if self.seen % self.k == 0:
            self.apply_gradients(float(loss.data))
            self.optimizer.zero_grad()
        return StepResult(float(loss.data), batch.n, batch.total, out.data, batch.y)


def test_gradient_accumulation_equals_the_doubled_batch():
    """k=2 accumulated batches of 8 (no shuffle, plain SGD) make the same updates as batches of 16."""
    x, y = data()

    def run(batch_size, step):
        bp.manual_seed(0)
        model = bp.nn.Sequential(bp.nn.Linear(4, 8), bp.nn.Tanh(), bp.nn.Linear(8, 2)).double()
        bp.fit(model, x.astype(np.float64), y, batch_size=batch_size, epochs=3, shuffle=False, verbose=0,
               step=step)
        return [p.data.copy() for p in model.parameters()]

    for a, b in zip(run(8, AccumulateGradients), run(16, Step)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # and it is not what batches of 8 do without accumulating
    assert not all(np.allclose(a, b) for a, b in zip(run(8, Step), run(16, Step)))


def test_fit_refuses_a_step_that_is_not_a_step_class():
    x, y = data()
    with pytest.raises(ValueError, match="step must be a subclass of backprop.training.Step"):
        bp.fit(bp.nn.Sequential(bp.nn.Linear(4, 2)), x, y, epochs=1, verbose=0, step=lambda *a, **k: None)
