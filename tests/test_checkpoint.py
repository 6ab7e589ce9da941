"""Training checkpoints: exact resumes across processes, the file format, validation, fit and the CLI."""

import base64
import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import safetensors.numpy

import backprop as bp
from backprop import io as bio
from backprop.optim import lr_scheduler as S

# the same process configuration for every run compared (bit-exact sums depend on the BLAS thread count)
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import backprop as bp
    from backprop.optim import lr_scheduler as S

    mode, kind, ckpt, out = sys.argv[1:5]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 10)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.int64)
    bp.manual_seed(0)
    model = bp.nn.Sequential(bp.nn.Linear(10, 32), bp.nn.ReLU(), bp.nn.Dropout(0.3), bp.nn.Linear(32, 2))
    if kind == "sgd":
        opt, sched, split = bp.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), None, 0.0
    else:
        opt, sched, split = bp.optim.Adam(model.parameters(), lr=0.01), lambda o: S.CosineAnnealingLR(o, T_max=4), 0.2
    kw = dict(optimizer=opt, scheduler=sched, batch_size=32, shuffle=True, seed=3, verbose=0, validation_split=split)
    if mode == "straight":
        h = bp.fit(model, x, y, epochs=4, **kw)
    elif mode == "first":
        h = bp.fit(model, x, y, epochs=2, checkpoint=ckpt, **kw)
    else:
        h = bp.fit(model, x, y, epochs=4, resume_from=ckpt, checkpoint=ckpt, **kw)
    np.savez(out, **model.state_dict())
    with open(out + ".json", "w") as f:
        json.dump({"history": h.history, "epoch": h.epoch, "epochs": h.epochs, "iterations": h.iterations,
                   "samples_seen": h.samples_seen, "params": h.params,
                   "validation_indices": getattr(h, "validation_indices", np.arange(0)).tolist()}, f)
""")


def run_script(script, *args):
    proc = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc


def read_run(path):
    with np.load(path) as z:
        weights = {k: z[k] for k in z.files}
    with open(str(path) + ".json") as f:
        return weights, json.load(f)


@pytest.mark.parametrize("kind", ["sgd", "adam"], ids=["sgd-momentum", "adam-cosine"])
def test_resume_in_a_new_process_is_bit_identical(tmp_path, kind):
    """4 epochs straight == 2 epochs, then 2 more resumed from the checkpoint in another process."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    ckpt = tmp_path / "ckpt.safetensors"
    run_script(script, "straight", kind, ckpt, tmp_path / "straight.npz")
    assert not ckpt.exists()
    run_script(script, "first", kind, ckpt, tmp_path / "first.npz")
    assert bio.load_checkpoint(ckpt).epoch == 2
    run_script(script, "resume", kind, ckpt, tmp_path / "resumed.npz")

    straight, h_straight = read_run(tmp_path / "straight.npz")
    first, _ = read_run(tmp_path / "first.npz")
    resumed, h_resumed = read_run(tmp_path / "resumed.npz")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert resumed[name].dtype == straight[name].dtype
        assert np.array_equal(straight[name], resumed[name]), name
    assert not all(np.array_equal(straight[k], first[k]) for k in straight)  # epochs 3 and 4 did train
    assert h_resumed == h_straight  # every metric of every epoch, counters, params and the validation split
    assert h_resumed["epoch"] == [0, 1, 2, 3] and h_resumed["iterations"] == 4 * h_resumed["params"]["steps"]
    if kind == "adam":
        assert "lr" in h_resumed["history"] and "val_loss" in h_resumed["history"]
    ck = bio.load_checkpoint(ckpt)  # the resumed run went on writing to the same file
    assert ck.epoch == 4 and ck.iteration == h_straight["iterations"]
    assert all(np.array_equal(ck.model_state_dict[k], straight[k]) for k in straight)


# ------------------------------------------------------------------------------------------ in process
def data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    return x, (x[:, 0] * x[:, 1] > 0).astype(np.int64)


def mlp(hidden=16):
    bp.manual_seed(0)
    return bp.nn.Sequential(bp.nn.Linear(6, hidden), bp.nn.Tanh(), bp.nn.Dropout(0.2), bp.nn.Linear(hidden, 2))


def header(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n])


def rewrite(src, dst, *, meta=None, tensors=None, body=None):
    """Copy a checkpoint with its metadata, tensors or 'checkpoint' JSON changed by the given functions."""
    m = header(src)["__metadata__"]
    t = safetensors.numpy.load_file(str(src))
    if body is not None:
        b = json.loads(m["checkpoint"])
        body(b)
        m["checkpoint"] = json.dumps(b)
    if meta is not None:
        meta(m)
    if tensors is not None:
        tensors(t)
    safetensors.numpy.save_file(t, str(dst), metadata=m)
    return dst


@pytest.fixture
def ckpt(tmp_path):
    x, y = data()
    model = mlp()
    opt = bp.optim.Adam(model.parameters(), lr=0.01)
    path = tmp_path / "ckpt.safetensors"
    bp.fit(model, x, y, optimizer=opt, scheduler=lambda o: S.StepLR(o, 1, gamma=0.5), epochs=2, batch_size=32,
           seed=1, verbose=0, checkpoint=path)
    return path


def test_file_layout(ckpt):
    h = header(ckpt)
    meta = h.pop("__metadata__")
    assert set(meta) == {"format", "version", "checkpoint", "architecture"}
    assert meta["format"] == "backprop-checkpoint" and meta["version"] == "1"
    assert {"model.0.weight", "model.0.bias", "model.3.weight", "model.3.bias", "optim.state.0.exp_avg",
            "optim.state.3.exp_avg_sq"} <= set(h)
    assert all(k.startswith(("model.", "optim.state.")) for k in h)
    body = json.loads(meta["checkpoint"])
    assert set(body) == {"epoch", "iteration", "rng_states", "optimizer", "scheduler", "history", "extra"}
    assert body["epoch"] == 2 and body["iteration"] == 16
    assert body["optimizer"]["type"] == "Adam" and body["optimizer"]["state"]["0"] == {"step": 16}
    assert body["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.999]
    assert body["scheduler"]["type"] == "StepLR" and body["scheduler"]["state"]["last_epoch"] == 2
    for name in ("global", "loader"):  # PCG64's 128-bit integers as decimal strings
        state = body["rng_states"][name]
        assert state["bit_generator"] == "PCG64" and isinstance(state["state"], str) and isinstance(state["inc"], str)
    assert body["extra"]["fit"]["seed"] == 1 and body["history"]["epoch"] == [0, 1]

    ck = bio.load_checkpoint(ckpt)
    assert isinstance(ck, bio.Checkpoint) and ck.epoch == 2 and ck.iteration == 16
    assert ck.optimizer_type == "Adam" and ck.scheduler_type == "StepLR"
    assert isinstance(ck.rng_states["global"]["state"]["state"], int)
    assert ck.to_history().history["loss"] == body["history"]["history"]["loss"]
    assert ck.optimizer_state_dict["state"][0]["exp_avg"].shape == (16, 6)
    model = ck.build_model()
    assert np.array_equal(model.state_dict()["0.weight"], ck.model_state_dict["0.weight"])


def test_save_and_load_round_trip(tmp_path):
    model = mlp()
    opt = bp.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = S.CosineAnnealingLR(opt, T_max=5)
    x, y = data(64)
    out = model(bp.tensor(x))
    bp.nn.functional.cross_entropy(out, y).backward()
    opt.step()
    sched.step()
    gen = np.random.default_rng(7)
    gen.random(3)
    path = tmp_path / "c.safetensors"
    bio.save_checkpoint(path, model, opt, sched, epoch=1, iteration=1, rng_states={"g": gen},
                        extra={"note": "hi", "nested": {"a": [1, 2.5, None]}})
    ck = bio.load_checkpoint(path)
    assert ck.rng_states["g"] == gen.bit_generator.state
    assert ck.extra == {"note": "hi", "nested": {"a": [1, 2.5, None]}} and ck.history is None

    model2 = mlp(16)
    for p in model2.parameters():
        p.data[...] = 0
    opt2 = bp.optim.SGD(model2.parameters(), lr=0.5, momentum=0.9)
    sched2 = S.CosineAnnealingLR(opt2, T_max=5)
    ck.restore(model2, opt2, sched2)
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert np.array_equal(a, b), k
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] and sched2.last_epoch == sched.last_epoch
    assert np.array_equal(opt2.state[model2[0].weight]["momentum_buffer"], opt.state[model[0].weight]["momentum_buffer"])


def test_restore_checks_everything_before_changing_anything(ckpt):
    ck = bio.load_checkpoint(ckpt)
    small = mlp(hidden=8)
    before = {k: v.copy() for k, v in small.state_dict().items()}
    with pytest.raises(ValueError, match=r"does not fit the model: .*shape mismatch"):
        ck.restore(small, bp.optim.Adam(small.parameters()))
    model = mlp()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    sgd = bp.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="holds the state of a Adam optimizer, not SGD"):
        ck.restore(model, sgd, S.StepLR(sgd, 1))
    adam = bp.optim.Adam(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="StepLR learning-rate scheduler, but no scheduler"):
        ck.restore(model, adam)
    with pytest.raises(ValueError, match="holds the state of a StepLR scheduler, not ExponentialLR"):
        ck.restore(model, adam, S.ExponentialLR(adam, 0.9))
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())
    assert adam.state == {}


def test_resume_in_process_and_fit_checks(ckpt):
    x, y = data()

    def again(**kw):
        model = mlp()
        opt = bp.optim.Adam(model.parameters(), lr=0.01)
        args = {"optimizer": opt, "scheduler": lambda o: S.StepLR(o, 1, gamma=0.5), "epochs": 4, "batch_size": 32,
                "seed": 1, "verbose": 0}
        return model, bp.fit(model, x, y, **{**args, **kw})

    straight, h1 = again()
    resumed, h2 = again(resume_from=ckpt)
    assert all(np.array_equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))
    assert h1 == h2
    _, h3 = again(resume_from=bio.load_checkpoint(ckpt), seed=None)  # a Checkpoint object; the seed is saved
    assert h3 == h1
    with pytest.raises(ValueError, match="already trained 2 epochs, more than epochs=1"):
        again(resume_from=ckpt, epochs=1)
    with pytest.raises(ValueError, match=r"other settings: seed=1 \(got 2\)"):
        again(resume_from=ckpt, seed=2)
    with pytest.raises(ValueError, match=r"batch_size=32 \(got 16\)"):
        again(resume_from=ckpt, batch_size=16)
    with pytest.raises(ValueError, match=r"no scheduler was given"):
        again(resume_from=ckpt, scheduler=None)
    _, done = again(resume_from=ckpt, epochs=2)  # nothing left to train
    assert done.epochs == 2 and done.epoch == [0, 1]
    other = rewrite(ckpt, ckpt.with_name("other-blas.safetensors"),
                    body=lambda b: b["extra"]["fit"].update(environment={"numpy": "0.0", "blas": []}))
    with pytest.warns(RuntimeWarning, match="another NumPy/BLAS configuration"):
        again(resume_from=other)


def test_checkpoint_targets(tmp_path):
    x, y = data(64)
    model = mlp()
    target = bio.TrainingCheckpoint(tmp_path / "sub" / "ck-{epoch}.safetensors", extra={"run": "a"})
    bp.fit(model, x, y, epochs=2, batch_size=16, seed=0, verbose=0, checkpoint=target)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["ck-1.safetensors", "ck-2.safetensors"]
    assert target.last_saved == str(tmp_path / "sub" / "ck-2.safetensors")
    ck = bio.load_checkpoint(target.last_saved)
    assert ck.extra["run"] == "a" and ck.extra["fit"]["epochs"] == 2 and ck.scheduler_state_dict is None
    with pytest.raises(TypeError, match="checkpoint must be a path"):
        bp.fit(model, x, y, epochs=1, verbose=0, checkpoint=42)
    with pytest.raises(ValueError, match="reserved"):
        bio.TrainingCheckpoint("x", extra={"fit": 1})


def test_write_is_atomic_and_unsaveable_values_are_named(ckpt):
    before = ckpt.read_bytes()
    model = mlp()
    opt = bp.optim.Adam(model.parameters())
    with pytest.raises(TypeError, match=r"extra\['f'\] is a function"):
        bio.save_checkpoint(ckpt, model, opt, epoch=0, iteration=0, rng_states={}, extra={"f": lambda: 0})
    with pytest.raises(TypeError, match="MT19937"):
        bio.save_checkpoint(ckpt, model, opt, epoch=0, iteration=0,
                            rng_states={"g": np.random.Generator(np.random.MT19937(0))})
    assert ckpt.read_bytes() == before
    assert [p.name for p in ckpt.parent.iterdir()] == [ckpt.name]  # no temporary file left behind


# ------------------------------------------------------------------------------------ bad files
def test_truncated_and_corrupted_files_are_rejected(ckpt, tmp_path):
    data_ = ckpt.read_bytes()
    bad = tmp_path / "bad.safetensors"
    for cut in (0, 5, 100, len(data_) // 2, len(data_) - 1):
        bad.write_bytes(data_[:cut])
        with pytest.raises(ValueError, match="is not a valid backprop checkpoint: .*(truncated|too short)"):
            bio.load_checkpoint(bad)
    n = int.from_bytes(data_[:8], "little")
    flipped = bytearray(data_)
    flipped[8 + n // 2] = ord("\x01")
    bad.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="is not a valid backprop checkpoint: its header is not valid JSON"):
        bio.load_checkpoint(bad)
    bad.write_bytes(data_ + b"\0" * 16)
    with pytest.raises(ValueError, match="truncated or padded"):
        bio.load_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        bio.load_checkpoint(tmp_path / "missing.safetensors")
    model_file = tmp_path / "model.safetensors"
    bio.save(mlp(), model_file)
    with pytest.raises(ValueError, match="is a backprop model file .*not a training checkpoint"):
        bio.load_checkpoint(model_file)


def test_pickle_payloads_are_rejected_and_never_unpickled(ckpt, tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("pickle must never be used")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(np, "load", refuse)
    bio.load_checkpoint(ckpt)  # a good file loads without pickle or np.load

    payload = pickle.dumps({"__reduce__": "os.system"})
    bad = tmp_path / "pickle.safetensors"
    bad.write_bytes(payload)
    with pytest.raises(ValueError, match="is not a valid backprop checkpoint"):
        bio.load_checkpoint(bad)
    cases = {
        "meta": {"meta": lambda m: m.update(state=base64.b64encode(payload).decode())},
        "body": {"body": lambda b: b.update(__reduce__=base64.b64encode(payload).decode())},
        "optimizer": {"body": lambda b: b["optimizer"].update(pickle="x")},
        "history": {"body": lambda b: b["history"].update(cls="History")},
        "rng": {"body": lambda b: b["rng_states"]["global"].update(state="0x1f")},
        "rng-kind": {"body": lambda b: b["rng_states"]["global"].update(bit_generator="MT19937")},
        "opt-state": {"body": lambda b: b["optimizer"]["state"]["0"].update(step="16")},
        "tensor": {"tensors": lambda t: t.update(payload=np.frombuffer(payload, np.uint8).copy())},
        "bool": {"tensors": lambda t: t.update({"model.flag": np.array([True])})},
        "epoch": {"body": lambda b: b.update(epoch=-1)},
        "format": {"meta": lambda m: m.update(format="other")},
        "version": {"meta": lambda m: m.update(version="99")},
        "orphan": {"tensors": lambda t: t.update({"optim.state.99.exp_avg": np.zeros(3, np.float32)})},
        "arch": {"tensors": lambda t: t.update({"model.0.weight": np.zeros((2, 2), np.float32)})},
    }
    expected = {
        "meta": "unexpected metadata key 'state'", "body": "unexpected key '__reduce__'",
        "optimizer": "'optimizer': unexpected key 'pickle'", "history": "'history': unexpected key 'cls'",
        "rng": "128-bit unsigned integer", "rng-kind": "bit_generator must be one of",
        "opt-state": "'step'] must be a number", "tensor": "unexpected tensor 'payload'",
        "bool": "dtype 'BOOL'", "epoch": "epoch must be an integer >= 0", "format": "format is 'other'",
        "version": "checkpoint version '99'", "orphan": "optim.state.99",
        "arch": "do not match its architecture",
    }
    for name, change in cases.items():
        path = rewrite(ckpt, tmp_path / f"{name}.safetensors", **change)
        with pytest.raises(ValueError, match="is not a valid backprop checkpoint") as err:
            bio.load_checkpoint(path)
        assert expected[name] in str(err.value), (name, str(err.value))


# ------------------------------------------------------------------------------------------------ CLI
def cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "backprop", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=600, check=False)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_cli_resume_matches_an_uninterrupted_run(tmp_path):
    common = ["--hidden", "32", "--dropout", "0.2", "--seed", "5"]
    straight, run = tmp_path / "straight", tmp_path / "run"
    cli("train", *common, "--epochs", "4", "--out", straight, "--quiet")
    cli("train", *common, "--epochs", "2", "--out", run, "--quiet")
    assert bio.load_checkpoint(run / "checkpoint.safetensors").epoch == 2
    proc = cli("train", "--resume", run, "--epochs", "4")
    assert "after epoch 2 of 4: 2 epochs remain" in proc.stdout
    assert "Epoch 3/4" in proc.stdout and "Epoch 1/4" not in proc.stdout
    a = safetensors.numpy.load_file(str(straight / "model.safetensors"))
    b = safetensors.numpy.load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert (straight / "metrics.csv").read_text() == (run / "metrics.csv").read_text()
    assert bio.load_metadata(run / "model.safetensors")["args"]["hidden"] == [32]

    done = cli("train", "--resume", run)  # the run's own 4 epochs: nothing left
    assert "0 epochs remain" in done.stdout
    wrong = cli("train", "--resume", run, "--lr", "0.5", check=False)
    assert wrong.returncode == 2 and "only --epochs" in wrong.stderr


def test_cli_resume_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = cli("train", "--resume", empty, check=False)
    assert proc.returncode == 2
    expected = f"backprop: error: --resume {empty}: no checkpoint.safetensors in it, nothing to resume"
    assert proc.stderr.strip().splitlines() == [expected]
    (empty / "checkpoint.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    proc = cli("train", "--resume", empty, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "the checkpoint is corrupt or invalid" in proc.stderr


# ------------------------------------------------------------------------------------- mid-epoch stops
class StopAfter(bp.training.Callback):
    """Ctrl-C as the command line delivers it: raised between two steps, after the ``at``-th one."""

    def __init__(self, at):
        self.at, self.steps = at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == self.at:
            raise KeyboardInterrupt


def fit_kw(model, steps_per_epoch=7, epochs=3):
    opt = bp.optim.Adam(model.parameters(), lr=0.01)
    sched = S.OneCycleLR(opt, max_lr=0.05, total_steps=epochs * steps_per_epoch)
    return dict(optimizer=opt, scheduler=sched, scheduler_interval="step", metrics=("accuracy", "macro_f1"),
                batch_size=32, seed=3, verbose=0, validation_split=0.2, epochs=epochs)


@pytest.mark.parametrize("at", [5, 7, 12], ids=["epoch1-middle", "epoch1-last-batch", "epoch2-middle"])
def test_a_stop_mid_epoch_checkpoints_there_and_resumes_bit_identically(tmp_path, at):
    x, y = data()
    straight = mlp()
    h_straight = bp.fit(straight, x, y, **fit_kw(straight))
    assert h_straight.params["steps"] == 7

    ckpt = tmp_path / "ckpt.safetensors"
    stopped = mlp()
    h_stopped = bp.fit(stopped, x, y, checkpoint=ckpt, callbacks=[StopAfter(at)], **fit_kw(stopped))
    assert h_stopped.interrupted and h_stopped.iterations == at
    ck = bio.load_checkpoint(ckpt)
    assert ck.iteration == at and ck.epoch == (at - 1) // 7
    assert ck.extra["fit"]["progress"]["batches"] == at - 7 * ck.epoch
    assert all(np.array_equal(ck.model_state_dict[k], v) for k, v in stopped.state_dict().items())

    resumed = mlp()
    h_resumed = bp.fit(resumed, x, y, resume_from=ckpt, checkpoint=ckpt, **fit_kw(resumed))
    for k, v in straight.state_dict().items():
        assert np.array_equal(resumed.state_dict()[k], v), k
    assert h_resumed.history == h_straight.history  # the interrupted epoch's loss and metrics included
    assert (h_resumed.iterations, h_resumed.samples_seen, h_resumed.epoch) == \
        (h_straight.iterations, h_straight.samples_seen, h_straight.epoch)
    assert "progress" not in bio.load_checkpoint(ckpt).extra["fit"]  # the end of training overwrote it


def test_a_stop_inside_a_step_keeps_the_last_epochs_checkpoint(tmp_path):
    x, y = data()
    calls = {"n": 0}

    def loss(out, target, reduction="mean"):
        calls["n"] += 1
        if calls["n"] == 10:  # the middle of a step: nothing there is a consistent state to save
            raise KeyboardInterrupt
        return bp.nn.functional.cross_entropy(out, target, reduction=reduction)

    model = mlp()
    ckpt = tmp_path / "ckpt.safetensors"
    h = bp.fit(model, x, y, loss=loss, checkpoint=ckpt, jit=False, **fit_kw(model))
    assert h.interrupted
    ck = bio.load_checkpoint(ckpt)
    assert ck.epoch == 1 and ck.iteration == 7 and "progress" not in ck.extra["fit"]


def test_a_mid_epoch_checkpoint_needs_that_epoch_to_be_trained(tmp_path):
    x, y = data()
    model = mlp()
    ckpt = tmp_path / "ckpt.safetensors"
    bp.fit(model, x, y, checkpoint=ckpt, callbacks=[StopAfter(9)], **fit_kw(model))
    with pytest.raises(ValueError, match="middle of epoch 2, after epochs=1"):
        bp.fit(mlp(), x, y, resume_from=ckpt, **{**fit_kw(model), "epochs": 1})
