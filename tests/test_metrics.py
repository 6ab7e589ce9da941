"""Metrics vs sklearn.metrics on random data; named metrics in fit / evaluate; the confusion-matrix plot."""

import os

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the sklearn extra: pip install \"backprop[sklearn]\"")
from sklearn import metrics as skm

import backprop as bp
from backprop import nn
from backprop.training import metrics as M


def random_case(seed, n=200, c=5):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, c))
    y = rng.integers(0, c, size=n)
    scores[np.arange(n), y] += rng.uniform(0, 2, size=n)  # better than chance
    return scores, y


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")  # k >= n_classes
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accuracy_and_top_k(seed):
    scores, y = random_case(seed)
    assert M.accuracy(scores, y) == pytest.approx(skm.accuracy_score(y, scores.argmax(1)))
    for k in (1, 2, 3, 5, 7):
        expected = skm.top_k_accuracy_score(y, scores, k=k, labels=np.arange(5))
        assert M.top_k_accuracy(scores, y, k=k) == pytest.approx(expected), k
    onehot = np.eye(5)[y]
    assert M.top_k_accuracy(scores, onehot, k=2) == M.top_k_accuracy(scores, y, k=2)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("average", ["macro", "micro", "weighted"])
def test_precision_recall_f1_averages(seed, average):
    scores, y = random_case(seed, n=60, c=6)
    pred = scores.argmax(1)
    p, r, f, _ = skm.precision_recall_fscore_support(y, pred, average=average, zero_division=0)
    for given in (scores, pred):
        ours = M.precision_recall_f1(given, y, average=average)
        assert ours == pytest.approx((p, r, f), abs=1e-12)


def test_precision_recall_f1_per_class_and_absent_classes():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 4, size=30)  # classes 4 and 5 never occur, and predictions never say 3
    pred = np.where(y == 3, 0, rng.integers(0, 3, size=30))
    labels = np.arange(6)
    p, r, f, _ = skm.precision_recall_fscore_support(y, pred, labels=labels, average=None, zero_division=0)
    ours = M.precision_recall_f1(pred, y, average=None, n_classes=6)
    for a, b in zip(ours, (p, r, f)):
        np.testing.assert_allclose(a, b)
        assert a.shape == (6,)
    # default averages run over the classes present, as sklearn's
    for average in ("macro", "weighted", "micro"):
        expected = skm.precision_recall_fscore_support(y, pred, average=average, zero_division=0)[:3]
        assert M.precision_recall_f1(pred, y, average=average) == pytest.approx(expected)
        expected = skm.precision_recall_fscore_support(y, pred, labels=labels, average=average, zero_division=0)[:3]
        assert M.precision_recall_f1(pred, y, average=average, n_classes=6) == pytest.approx(expected)


def test_binary_single_logit_outputs():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(40, 1))
    y = rng.integers(0, 2, size=40)
    pred = (logits[:, 0] > 0).astype(int)
    assert M.precision_recall_f1(logits, y, average="macro") == pytest.approx(
        skm.precision_recall_fscore_support(y, pred, average="macro")[:3])
    np.testing.assert_array_equal(M.confusion_matrix(y, logits), skm.confusion_matrix(y, pred))


@pytest.mark.parametrize("seed", [0, 1])
def test_confusion_matrix(seed):
    scores, y = random_case(seed, n=100, c=4)
    pred = scores.argmax(1)
    np.testing.assert_array_equal(M.confusion_matrix(y, pred), skm.confusion_matrix(y, pred))
    np.testing.assert_array_equal(M.confusion_matrix(y, scores), skm.confusion_matrix(y, pred))
    cm = M.confusion_matrix(y, pred, n_classes=6)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y, pred, labels=np.arange(6)))
    with pytest.raises(ValueError):
        M.confusion_matrix(y, pred, n_classes=2)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("digits", [2, 4])
def test_classification_report_is_sklearns(seed, digits):
    scores, y = random_case(seed, n=80, c=4)
    pred = scores.argmax(1)
    assert M.classification_report(y, pred, digits=digits) == skm.classification_report(y, pred, digits=digits)
    names = ["cat", "dog", "a much longer class name", "eel"]
    assert M.classification_report(y, scores, class_names=names) == skm.classification_report(
        y, pred, target_names=names)


def test_named_metrics_in_evaluate_and_fit():
    _, y = random_case(0, n=90, c=4)
    rng = np.random.default_rng(0)
    x = (np.eye(4)[y] * 2 + rng.normal(size=(90, 4))).astype(np.float32)
    bp.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 4))
    names = ("accuracy", "top_2_accuracy", "macro_f1", "micro_precision", "weighted_recall", "macro_precision")
    res = bp.evaluate(model, x, y, metrics=names)
    out = bp.predict(model, x)
    pred = out.argmax(1)
    assert list(res) == ["loss", *names]
    assert res["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert res["top_2_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, out, k=2))
    assert res["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert res["micro_precision"] == pytest.approx(skm.precision_score(y, pred, average="micro"))
    assert res["weighted_recall"] == pytest.approx(skm.recall_score(y, pred, average="weighted"))
    assert res["macro_precision"] == pytest.approx(skm.precision_score(y, pred, average="macro", zero_division=0))
    # in fit, over the whole epoch (not a mean of per-batch F1): with lr 0 the model does not change
    h = bp.fit(model, x, y, optimizer=bp.optim.SGD(model.parameters(), lr=0.0), batch_size=7, epochs=1,
               shuffle=True, seed=0, verbose=0, metrics=names, validation_data=(x, y))
    for name in names:
        assert h.history[name][0] == pytest.approx(res[name]), name
        assert h.history["val_" + name][0] == pytest.approx(res[name]), name


def test_callable_metric_in_fit_with_validation():
    x = np.random.default_rng(0).normal(size=(30, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)

    def mean_output(out, t):
        return float(out.mean())

    bp.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2))
    h = bp.fit(model, x, y, epochs=1, verbose=0, metrics=("accuracy", mean_output), validation_split=0.2, seed=0)
    assert {"mean_output", "val_mean_output"} <= set(h.history)


def test_unknown_metric():
    with pytest.raises(ValueError, match="top_<k>_accuracy"):
        M.get_metric("top_0_accuracy")
    with pytest.raises(ValueError, match="f2"):
        bp.evaluate(nn.Sequential(nn.Linear(2, 2)), np.zeros((3, 2), np.float32), np.zeros(3, np.int64),
                    metrics=("macro_f2",))


def test_plot_confusion_matrix(tmp_path):
    scores, y = random_case(0, n=50, c=3)
    cm = M.confusion_matrix(y, scores)
    path = tmp_path / "cm.png"
    M.plot_confusion_matrix(cm, path, class_names=["a", "b", "c"])
    M.plot_confusion_matrix(cm, tmp_path / "norm.png", normalize=True)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["cm.png", "norm.png"]  # no temporary files left
    with pytest.raises(ValueError):
        M.plot_confusion_matrix(cm, path, class_names=["a"])
