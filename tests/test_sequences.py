"""The sequence data sets, the sequence models and sampling (issue 14): shapes, seeds, targets, the text split.

Everything here runs in seconds; the MNIST and tiny-Shakespeare checks skip without the files (beside the
repository in ``../shared/datasets``, or in ``$BACKPROP_DATA``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

import backprop as bp
from backprop import nn
from backprop.data import load_dataset
from backprop.data.sequences import (
    SequenceDataset,
    adding_problem,
    copy_baseline,
    copy_task,
    decode,
    encode,
    text_dataset,
)
from backprop.nn.sequence_models import RecurrentLM, RecurrentNet, TransformerLM, generate

ROOTS = [Path(p) for p in (os.environ.get("BACKPROP_DATA"),) if p] + [
    Path(__file__).resolve().parents[2] / "shared" / "datasets"]


def _shared(*parts: str) -> Path:
    for root in ROOTS:
        if (root.joinpath(*parts)).exists():
            return root.joinpath(*parts)
    pytest.skip(f"{'/'.join(parts)} not found in {[str(r) for r in ROOTS]} (set BACKPROP_DATA)")


# ------------------------------------------------------------------------------------------- adding
def test_adding_problem_layout_and_target():
    x, y = adding_problem(500, length=30, seed=3)
    assert x.shape == (500, 30, 2) and y.shape == (500,) and x.dtype == y.dtype == np.float32
    values, markers = x[..., 0], x[..., 1]
    assert np.all((values >= 0) & (values < 1))
    assert set(np.unique(markers)) == {0.0, 1.0}
    assert np.all(markers[:, :15].sum(axis=1) == 1) and np.all(markers[:, 15:].sum(axis=1) == 1)  # one per half
    np.testing.assert_allclose(y, (values * markers).sum(axis=1), rtol=1e-6)
    again, _ = adding_problem(500, length=30, seed=3)
    other, _ = adding_problem(500, length=30, seed=4)
    assert np.array_equal(x, again) and not np.array_equal(x, other)


def test_predicting_the_mean_of_the_adding_problem_costs_a_sixth():
    """Var(a + b) for two U(0, 1) values is 2/12: the 0.167 an LSTM must get far below."""
    _, y = adding_problem(20_000, length=100, seed=0)
    assert abs(float(np.mean((y - 1.0) ** 2)) - 1 / 6) < 0.005


def test_adding_data_set_is_fixed_and_its_splits_differ():
    a, b = load_dataset("adding:12"), load_dataset("adding:12")
    assert isinstance(a, SequenceDataset) and a.kind == "regression" and a.task == "regression"
    assert a.name == "adding:12" and a.x_train.shape == (50_000, 12, 2) and a.x_test.shape == (10_000, 12, 2)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train[:100], a.x_test[:100])
    assert load_dataset("adding").seq_len == 100


# --------------------------------------------------------------------------------------------- copy
def test_copy_task_layout():
    x, y = copy_task(64, delay=7, seed=1)
    steps = 7 + 20
    assert x.shape == (64, steps, 10) and y.shape == (64, steps) and y.dtype == np.int64
    assert np.all(x.sum(axis=2) == 1)  # one-hot
    tokens = x.argmax(axis=2)
    symbols = tokens[:, :10]
    assert np.all((symbols >= 1) & (symbols <= 8))
    assert np.all(tokens[:, 10:16] == 0) and np.all(tokens[:, 16] == 9) and np.all(tokens[:, 17:] == 0)
    assert np.all(y[:, :17] == 0) and np.array_equal(y[:, 17:], symbols)
    assert math.isclose(copy_baseline(100), 10 * math.log(8) / 120)


def test_copy_data_set():
    ds = load_dataset("copy:5")
    assert ds.kind == "steps" and ds.per_step and ds.n_classes == 9 and ds.class_names[0] == "blank"
    assert ds.x_train.shape == (20_000, 25, 10) and ds.y_test.shape == (2_000, 25)


# ------------------------------------------------------------------------------------- seq-mnist
def test_sequential_mnist_is_mnist_row_by_row():
    folder = _shared("mnist", "t10k-labels-idx1-ubyte.gz").parent
    ds = load_dataset("seq-mnist", data_dir=folder.parent)
    flat = load_dataset("mnist", data_dir=folder.parent)
    assert ds.kind == "sequence" and ds.x_train.shape == (60_000, 28, 28) and ds.x_test.shape == (10_000, 28, 28)
    assert np.array_equal(ds.x_test.reshape(10_000, 784), flat.x_test) and np.array_equal(ds.y_test, flat.y_test)
    assert ds.seq_len == 28


@pytest.mark.parametrize(("spec", "message"), [
    ("adding:1", "T must be an integer >= 2"), ("adding:x", "T must be"), ("copy:0", "T must be an integer >= 1"),
    ("seq-mnist:3", "takes no argument"), ("text:", "needs a path"), ("nonsense", "adding\\[:T\\]"),
])
def test_bad_specs_say_what_is_expected(spec, message):
    with pytest.raises(ValueError, match=message):
        load_dataset(spec)


# --------------------------------------------------------------------------------------------- text
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 3


def test_text_split_vocabulary_and_windows():
    ds = text_dataset(TEXT, seq_len=8, name="toy")
    cut = int(len(TEXT) * 0.9)
    assert ds.vocabulary == "".join(sorted(set(TEXT[:cut]))) and ds.kind == "text"
    assert ds.x_train.shape == ((cut - 1) // 8, 8) and ds.x_train.dtype == np.int64
    # consecutive windows of the first 90%, each target the next character
    assert decode(ds.x_train, ds.vocabulary) == TEXT[:len(ds.x_train) * 8]
    assert decode(ds.y_train, ds.vocabulary) == TEXT[1:len(ds.x_train) * 8 + 1]
    held = TEXT[cut:]
    assert decode(ds.x_test, ds.vocabulary) == held[:len(ds.x_test) * 8]
    assert len(ds.x_test) == (len(held) - 1) // 8
    assert ds.metadata() == {"sequence_kind": "text", "seq_len": 8, "vocabulary": ds.vocabulary}


def test_the_vocabulary_is_the_training_part_s():
    text = "ab" * 100 + "abz"  # 'z' only in the held-out tail
    with pytest.warns(UserWarning, match="1 held-out character not in the training part's vocabulary"):
        ds = text_dataset(text, seq_len=4)
    assert ds.vocabulary == "ab"
    assert "z" not in decode(ds.x_test, ds.vocabulary)


def test_text_errors():
    with pytest.raises(ValueError, match="too few"):
        text_dataset("abababab", seq_len=5)
    with pytest.raises(ValueError, match="not in the vocabulary: 'x'"):
        encode("axb", "ab")
    assert encode("abba", "ab").tolist() == [0, 1, 1, 0] and decode([1, 0], "ab") == "ba"


def test_text_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(TEXT, encoding="utf-8")
    ds = load_dataset(f"text:{path}", seq_len=16)
    assert ds.name == f"text:{path}" and ds.seq_len == 16
    again = load_dataset(f"text:{path}", seq_len=16, vocabulary=ds.vocabulary + "#")  # a model's vocabulary
    assert again.vocabulary.endswith("#") and np.array_equal(again.x_train, ds.x_train)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not a UTF-8 text file"):
        load_dataset(f"text:{tmp_path / 'bin.txt'}")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(f"text:{tmp_path / 'none.txt'}")


def test_tiny_shakespeare():
    path = _shared("tinyshakespeare", "input.txt")
    ds = load_dataset(f"text:{path}")
    assert len(ds.vocabulary) == 65 and ds.x_train.shape == (10_038, 100) and ds.x_test.shape == (1_115, 100)
    assert decode(ds.x_train[0, :14], ds.vocabulary) == "First Citizen:"


# ------------------------------------------------------------------------------ per-step training
def test_cross_entropy_and_accuracy_per_step():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, 4, 5))
    y = rng.integers(0, 5, (3, 4))
    flat = bp.nn.functional.cross_entropy(bp.tensor(z.reshape(-1, 5)), y.reshape(-1)).item()
    assert math.isclose(bp.nn.functional.cross_entropy(bp.tensor(z), y).item(), flat, rel_tol=1e-12)
    assert bp.nn.functional.cross_entropy(bp.tensor(z), y, reduction="none").shape == (3, 4)
    from backprop.training.metrics import accuracy

    assert accuracy(z, y) == float(np.mean(z.argmax(-1) == y))


def test_fit_a_language_model_on_integer_windows():
    """x stays integer indices for an Embedding-first model; (N, T) targets are checked against its outputs."""
    bp.manual_seed(0)
    model = RecurrentLM("gru", 6, 4, 16)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, (128, 10))
    y = (x + 1) % 6  # the next "character" is a function of this one
    h = bp.fit(model, x, y, optimizer="adam", lr=0.02, epochs=8, batch_size=32, verbose=0, seed=0,
               validation_data=(x[:32], y[:32]))
    assert h.history["val_accuracy"][-1] > 0.95 and h.history["loss"][-1] < h.history["loss"][0]
    with pytest.raises(ValueError, match="class label 6, outside \\[0, 5\\]"):
        bp.fit(model, x, np.full_like(y, 6), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="integer indices"):
        bp.predict(model, x + 0.5)


def test_recurrent_net_reads_the_final_hidden_state():
    bp.manual_seed(1)
    net = RecurrentNet("lstm", 3, 5, 2)
    x = bp.tensor(np.random.default_rng(1).standard_normal((4, 6, 3)).astype(np.float32))
    _, (h_n, _) = net.rnn(x)
    want = net.head(h_n[-1]).data
    np.testing.assert_allclose(net(x).data, want, rtol=1e-6)
    assert RecurrentNet("gru", 3, 5, 2, every_step=True)(x).shape == (4, 6, 2)


def test_transformer_lm_is_causal():
    bp.manual_seed(2)
    lm = TransformerLM(7, 8, 2, 2, dropout=0.0, max_len=6)
    a = np.array([[1, 2, 3, 4, 5, 6]])
    b = a.copy()
    b[0, 4:] = 0  # change the future
    with bp.no_grad():
        np.testing.assert_allclose(lm(a).data[0, :4], lm(b).data[0, :4], rtol=1e-6, atol=1e-6)
        assert not np.allclose(lm(a).data[0, 4:], lm(b).data[0, 4:])


# ---------------------------------------------------------------------------------------- sampling
def _lm(kind: str) -> nn.Module:
    bp.manual_seed(3)
    return RecurrentLM("lstm", 9, 4, 12) if kind == "lstm" else TransformerLM(9, 8, 2, 1, dropout=0.0, max_len=5)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_generate_is_reproducible_and_greedy_at_temperature_zero(kind):
    lm = _lm(kind)
    prompt = np.array([1, 2, 3])
    a = generate(lm, prompt, 12, temperature=1.0, seed=5)
    assert a.shape == (12,) and a.dtype == np.int64 and np.all((a >= 0) & (a < 9))
    assert np.array_equal(a, generate(lm, prompt, 12, temperature=1.0, seed=5))
    assert any(not np.array_equal(a, generate(lm, prompt, 12, temperature=1.0, seed=s)) for s in range(6, 9))
    greedy = generate(lm, prompt, 6, temperature=0, seed=None)
    text = list(prompt)
    with bp.no_grad():
        lm.eval()
        for token in greedy:  # the most likely next token after everything before it (the last max_len)
            context = np.array([text[-getattr(lm, "max_len", 10 ** 6):]])
            assert token == lm(context).data[0, -1].argmax()
            text.append(int(token))


def test_generate_carries_the_recurrent_state():
    """Sampling one token at a time with the state equals rerunning the whole text (a greedy chain)."""
    lm = _lm("lstm")
    out = generate(lm, np.array([4]), 8, temperature=0)
    full = np.concatenate([[4], out])
    lm.eval()
    with bp.no_grad():
        np.testing.assert_array_equal(lm(full[None, :-1]).data[0].argmax(-1), out)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"temperature": -1.0}, "temperature must be a finite number >= 0"),
    ({"temperature": float("nan")}, "temperature"), ({"length": -2}, "length must be an integer >= 0"),
])
def test_generate_checks_its_arguments(kwargs, message):
    args = {"length": 3, "temperature": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(_lm("lstm"), np.array([1]), **args)
    with pytest.raises(ValueError, match="non-empty 1-D array"):
        generate(_lm("lstm"), np.array([], dtype=np.int64), 3)
    with pytest.raises(TypeError, match="needs a language model"):
        generate(RecurrentNet("rnn", 2, 3, 1), np.array([1]), 3)
