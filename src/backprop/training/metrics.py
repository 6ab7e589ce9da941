"""Classification metrics from model outputs and targets (NumPy in, Python floats or arrays out).

Functions: :func:`accuracy`, :func:`top_k_accuracy`, :func:`precision_recall_f1`, :func:`confusion_matrix`,
:func:`classification_report` (sklearn's text layout) and :func:`plot_confusion_matrix` (a PNG).

``outputs`` are a model's outputs: scores (N, C) whose argmax is the predicted class, or one logit per
sample (N, 1) thresholded at 0. Targets ``y`` are class indices (N,), or one-hot / probability rows (N, C)
(their argmax is taken). Where a function accepts ``outputs_or_pred``, 1-D integer predictions work too.

Metric names for ``fit`` / ``evaluate`` (``metrics=(...)``), see :func:`get_metric`:

* ``"accuracy"``: fraction of correct predictions;
* ``"top_<k>_accuracy"`` (``"top_5_accuracy"``, ``"top_3_accuracy"``...): the true class is among the k
  highest scores;
* ``"<average>_<score>"`` with average ``macro``, ``micro`` or ``weighted`` and score ``precision``,
  ``recall`` or ``f1`` (``"macro_f1"``, ``"weighted_precision"``...).

In ``fit`` a metric is computed over the whole epoch, not averaged over batches: accuracies count the
correct samples, precision / recall / F1 accumulate a confusion matrix over the epoch.

>>> import numpy as np
>>> accuracy(np.array([[2.0, 1.0], [0.0, 3.0]]), np.array([0, 0]))
0.5
>>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0])).tolist()
[[1, 0], [1, 1]]
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from backprop.extras import require
from backprop.training import extensions

__all__ = [
    "METRICS", "Metric", "accuracy", "classification_report", "confusion_matrix", "correct", "get_metric",
    "plot_confusion_matrix", "precision_recall_f1", "predicted_classes", "top_k_accuracy",
]

_AVERAGES = ("macro", "micro", "weighted")


# ------------------------------------------------------------------------------------------------ helpers
def predicted_classes(outputs: np.ndarray) -> np.ndarray:
    """The predicted class of each row: argmax for several outputs, threshold at 0 (logit) for one."""
    if outputs.ndim == 2 and outputs.shape[1] == 1:
        return (outputs[:, 0] > 0).astype(np.int64)
    return outputs.argmax(axis=-1)


def _true_classes(y: Any) -> np.ndarray:
    """Class indices from indices (N,), one-hot / probability rows (N, C) or a column (N, 1)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        return y.argmax(axis=1)
    if y.ndim == 2:
        y = y[:, 0]
    if y.dtype.kind == "f":
        if not np.all(y == np.round(y)):
            raise ValueError("class labels must be integers")
        y = y.astype(np.int64)
    return y.astype(np.int64, copy=False)


def _pred_classes(outputs_or_pred: Any) -> tuple[np.ndarray, int]:
    """Predicted classes and the number of classes the outputs imply (0 for plain predictions)."""
    a = np.asarray(outputs_or_pred)
    if a.ndim == 2:
        return predicted_classes(a), max(a.shape[1], 2)
    if a.ndim == 1 and a.dtype.kind in "biu" or a.ndim == 1 and np.all(a == np.round(a)):
        return a.astype(np.int64), 0
    raise ValueError(f"expected outputs (N, C) or predicted class indices (N,), got shape {a.shape} "
                     f"and dtype {a.dtype}")


def _per_step(outputs: np.ndarray, y: np.ndarray) -> bool:
    """Outputs (N, ..., C) for class indices (N, ...): a class at every step of a sequence."""
    return outputs.ndim > 2 and y.shape == outputs.shape[:-1]


def _predictions(outputs: np.ndarray, y: np.ndarray) -> int:
    """How many predictions the outputs make: one per sample, or one per step of a sequence."""
    return y.size if _per_step(outputs, y) else len(y)


def correct(outputs: np.ndarray, y: np.ndarray) -> int:
    """Number of correctly classified samples; ``y`` holds class indices or one-hot rows. For outputs
    (N, ..., C) and class indices (N, ...) (a class per step of a sequence), the number of correct steps."""
    if _per_step(outputs, y):
        return int(np.count_nonzero(outputs.argmax(axis=-1) == y))
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    elif y.ndim == 2:
        y = y[:, 0]
    return int(np.count_nonzero(predicted_classes(outputs) == y))


# ------------------------------------------------------------------------------------------------ metrics
def accuracy(outputs: np.ndarray, y: np.ndarray) -> float:
    """Fraction of correctly classified samples (of steps, for a class per step of a sequence)."""
    return correct(outputs, y) / max(_predictions(outputs, y), 1)


def _top_k_hits(outputs: np.ndarray, y: Any, k: int) -> int:
    outputs = np.asarray(outputs)
    if outputs.ndim != 2:
        raise ValueError(f"top_k_accuracy: outputs must be scores of shape (N, C), got {outputs.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"top_k_accuracy: k must be a positive integer, got {k!r}")
    t = _true_classes(y)
    if k >= outputs.shape[1]:
        return len(t)
    true_score = outputs[np.arange(len(t)), t]
    # NOTE: the rank is the number of strictly higher scores, so a tie with the true class counts as a hit
    rank = np.count_nonzero(outputs > true_score[:, None], axis=1)
    return int(np.count_nonzero(rank < k))


def top_k_accuracy(outputs: np.ndarray, y: Any, k: int = 5) -> float:
    """Fraction of samples whose true class is among the ``k`` highest scores (ties count as hits)."""
    return _top_k_hits(outputs, y, k) / max(len(outputs), 1)


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int | None = None) -> np.ndarray:
    """Counts ``cm[i, j]`` of samples of true class i predicted as j (sklearn's layout), int64 (C, C).

    ``y_pred`` may be predicted classes (N,) or outputs (N, C). ``n_classes`` defaults to the number of
    outputs, or to the largest label + 1.
    """
    t = _true_classes(y_true)
    p, c_out = _pred_classes(y_pred)
    if len(t) != len(p):
        raise ValueError(f"confusion_matrix: y_true has {len(t)} samples but y_pred has {len(p)}")
    top = int(max(t.max(initial=-1), p.max(initial=-1))) + 1
    n = max(top, c_out) if n_classes is None else int(n_classes)
    if min(t.min(initial=0), p.min(initial=0)) < 0 or top > n:
        raise ValueError(f"confusion_matrix: labels must be in [0, {n - 1}]")
    return np.bincount(t * n + p, minlength=n * n).reshape(n, n)


def _scores_from_cm(cm: np.ndarray, average: str | None, labels: np.ndarray | None,
                    zero_division: float) -> tuple[Any, Any, Any]:
    tp = np.diag(cm).astype(np.float64)
    n_pred = cm.sum(axis=0).astype(np.float64)
    n_true = cm.sum(axis=1).astype(np.float64)
    if labels is None:  # sklearn's default: the classes that occur in y_true or y_pred
        labels = np.flatnonzero((n_true + n_pred) > 0)

    def div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.full_like(a, zero_division, dtype=np.float64)
        np.divide(a, b, out=out, where=b > 0)
        return out

    if average is None:
        return div(tp, n_pred), div(tp, n_true), div(2 * tp, n_pred + n_true)
    if average == "micro":
        a, b, c = tp[labels].sum(), n_pred[labels].sum(), n_true[labels].sum()
        one = np.ones(1)
        return (float(div(a * one, b * one)[0]), float(div(a * one, c * one)[0]),
                float(div(2 * a * one, (b + c) * one)[0]))
    precision, recall, f1 = div(tp, n_pred)[labels], div(tp, n_true)[labels], div(2 * tp, n_pred + n_true)[labels]
    if len(labels) == 0:
        return zero_division, zero_division, zero_division
    if average == "macro":
        return float(precision.mean()), float(recall.mean()), float(f1.mean())
    if average == "weighted":
        w = n_true[labels]
        if w.sum() == 0:
            return zero_division, zero_division, zero_division
        return (float(np.average(precision, weights=w)), float(np.average(recall, weights=w)),
                float(np.average(f1, weights=w)))
    raise ValueError(f"average must be one of {_AVERAGES} or None, got {average!r}")


def precision_recall_f1(outputs_or_pred: Any, y: Any, average: str | None = "macro", n_classes: int | None = None,
                        zero_division: float = 0.0) -> tuple[Any, Any, Any]:
    """Precision, recall and F1 of single-label classification, as sklearn's ``precision_recall_fscore_support``.

    ``average``: ``"macro"`` (unweighted mean over classes), ``"micro"`` (from the total counts: equals the
    accuracy), ``"weighted"`` (mean weighted by each class's support), or None: per-class arrays of length
    ``n_classes`` (index = class). The averages run over the classes that occur in ``y`` or in the
    predictions (sklearn's default), or over all ``n_classes`` when it is given. A 0/0 ratio is
    ``zero_division``. F1 is ``2 tp / (2 tp + fp + fn)``.

    >>> p, r, f = precision_recall_f1(np.array([0, 1, 1, 1]), np.array([0, 1, 0, 1]))
    >>> round(p, 4), round(r, 4), round(f, 4)
    (0.8333, 0.75, 0.7333)
    """
    if average not in (*_AVERAGES, None):
        raise ValueError(f"precision_recall_f1: average must be one of {_AVERAGES} or None, got {average!r}")
    cm = confusion_matrix(y, outputs_or_pred, n_classes)
    labels = np.arange(cm.shape[0]) if n_classes is not None else None
    return _scores_from_cm(cm, average, labels, zero_division)


def classification_report(y_true: Any, y_pred: Any, class_names: Sequence[str] | None = None, digits: int = 2,
                          n_classes: int | None = None) -> str:
    """A text table of precision, recall, F1 and support per class and averaged, laid out as sklearn's.

    Rows are the classes that occur in ``y_true`` or ``y_pred`` (all ``n_classes``, or all
    ``len(class_names)`` classes, when given), named by ``class_names`` (default: the class index).
    ``y_pred`` may be predicted classes or outputs (N, C).
    """
    if class_names is not None and n_classes is None:
        n_classes = len(class_names)
    cm = confusion_matrix(y_true, y_pred, n_classes)
    n_true = cm.sum(axis=1)
    if n_classes is not None:
        labels = np.arange(n_classes)
    else:
        labels = np.flatnonzero((n_true + cm.sum(axis=0)) > 0)
    if class_names is not None and len(class_names) < cm.shape[0]:
        raise ValueError(f"classification_report: {len(class_names)} class names for {cm.shape[0]} classes")
    names = [str(class_names[i]) if class_names is not None else str(i) for i in labels]
    p, r, f = _scores_from_cm(cm, None, labels, 0.0)
    headers = ["precision", "recall", "f1-score", "support"]
    width = max(max((len(n) for n in names), default=0), len("weighted avg"), digits)
    report = ("{:>{width}s} " + " {:>9}" * 4).format("", *headers, width=width) + "\n\n"
    row_fmt = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    for name, i in zip(names, labels):
        report += row_fmt.format(name, p[i], r[i], f[i], int(n_true[i]), width=width, digits=digits)
    report += "\n"
    support = int(n_true[labels].sum())
    _, _, acc = _scores_from_cm(cm, "micro", labels, 0.0)
    report += ("{:>{width}s} " + " {:>9.{digits}}" * 2 + " {:>9.{digits}f}" + " {:>9}\n").format(
        "accuracy", "", "", acc, support, width=width, digits=digits)
    for average in ("macro", "weighted"):
        report += row_fmt.format(f"{average} avg", *_scores_from_cm(cm, average, labels, 0.0), support,
                                 width=width, digits=digits)
    return report


def plot_confusion_matrix(cm: Any, path: str | os.PathLike[str], class_names: Sequence[str] | None = None,
                          normalize: bool = False, title: str = "Confusion matrix") -> None:
    """Draw ``cm`` (rows: true class, columns: predicted) as a PNG at ``path``, written atomically.

    ``normalize=True`` shows each row as fractions of the true class. Uses matplotlib's Agg renderer
    without pyplot (no window, no global figure state); matplotlib is the ``plot`` extra
    (``pip install "backprop[plot]"``), imported at the first call.
    """
    # NOTE: imported here, not at the top: matplotlib is optional (the plot extra) and slow to import.
    Figure = require("matplotlib.figure", needed_by="plot_confusion_matrix").Figure

    atomic_write = extensions.get("io").atomic_write
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"plot_confusion_matrix: expected a square matrix, got shape {cm.shape}")
    n = cm.shape[0]
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(n)]
    if len(names) != n:
        raise ValueError(f"plot_confusion_matrix: {len(names)} class names for {n} classes")
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    size = max(4.0, 0.6 * n + 2)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.subplots()
    im = ax.imshow(shown, interpolation="nearest", cmap="Blues")
    fig.colorbar(im, ax=ax)
    ax.set(xticks=np.arange(n), yticks=np.arange(n), xticklabels=names, yticklabels=names,
           xlabel="predicted", ylabel="true", title=title)
    ax.tick_params(axis="x", labelrotation=45)
    if n <= 30:
        threshold = shown.max() / 2 if shown.size else 0
        for i in range(n):
            for j in range(n):
                text = f"{shown[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if shown[i, j] > threshold else "black")
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)


# ----------------------------------------------------------------------------- streaming metrics for fit
class Metric:
    """A metric accumulated over batches: ``reset()``, ``update(outputs, y)`` per batch, ``result()``.

    ``state_names`` lists the attributes that hold the running state: :meth:`state_dict` saves them (as
    JSON, exactly) so that a run interrupted mid-epoch resumes with the same epoch result. A metric that
    names none cannot be saved mid-epoch (its run then resumes from the last complete epoch).
    """

    name: str = "metric"
    state_names: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any] | None:
        """The running state as JSON-able values (arrays as dtype, shape and values), or None if unknown."""
        if not self.state_names:
            return None
        state: dict[str, Any] = {}
        for key in self.state_names:
            value = getattr(self, key)
            if isinstance(value, np.ndarray):
                value = {"dtype": str(value.dtype), "shape": list(value.shape), "values": value.ravel().tolist()}
            state[key] = value.item() if isinstance(value, np.generic) else value
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`state_dict` returned."""
        if set(state) != set(self.state_names):
            raise ValueError(f"metric {self.name!r}: the saved state has {sorted(state)}, expected "
                             f"{sorted(self.state_names)}")
        for key, value in state.items():
            if isinstance(value, dict):
                value = np.asarray(value["values"], dtype=value["dtype"]).reshape(value["shape"])
            setattr(self, key, value)

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, outputs: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def result(self) -> float:
        raise NotImplementedError


class MeanMetric(Metric):
    """A function ``(outputs, y) -> float`` averaged over the samples of every batch."""

    state_names = ("total", "count")

    def __init__(self, fn: Callable[[np.ndarray, np.ndarray], float], name: str) -> None:
        self.fn, self.name = fn, name
        self.reset()

    def reset(self) -> None:
        self.total, self.count = 0.0, 0

    def update(self, outputs: np.ndarray, y: np.ndarray) -> None:
        n = len(y)
        self.total += float(self.fn(outputs, y)) * n
        self.count += n

    def result(self) -> float:
        return self.total / self.count if self.count else float("nan")


class _Accuracy(Metric):
    state_names = ("hits", "count")

    def __init__(self, k: int | None = None, name: str = "accuracy") -> None:
        self.k, self.name = k, name
        self.reset()

    def reset(self) -> None:
        self.hits, self.count = 0, 0

    def update(self, outputs: np.ndarray, y: np.ndarray) -> None:
        self.hits += correct(outputs, y) if self.k is None else _top_k_hits(outputs, y, self.k)
        self.count += _predictions(outputs, y)

    def result(self) -> float:
        return self.hits / self.count if self.count else float("nan")


class _ConfusionScore(Metric):
    """Precision, recall or F1 from a confusion matrix accumulated over every batch."""

    state_names = ("cm",)

    def __init__(self, average: str, score: str) -> None:
        self.average, self.score, self.name = average, score, f"{average}_{score}"
        self.reset()

    def reset(self) -> None:
        self.cm = np.zeros((0, 0), dtype=np.int64)

    def update(self, outputs: np.ndarray, y: np.ndarray) -> None:
        cm = confusion_matrix(y, outputs)
        n = max(cm.shape[0], self.cm.shape[0])
        total = np.zeros((n, n), dtype=np.int64)
        total[:cm.shape[0], :cm.shape[0]] += cm
        total[:self.cm.shape[0], :self.cm.shape[0]] += self.cm
        self.cm = total

    def result(self) -> float:
        if self.cm.sum() == 0:
            return float("nan")
        p, r, f = _scores_from_cm(self.cm, self.average, None, 0.0)
        return float({"precision": p, "recall": r, "f1": f}[self.score])


#: The fixed metric names; ``top_<k>_accuracy`` works for any k >= 1.
METRICS: dict[str, Callable[[], Metric]] = {"accuracy": _Accuracy}
for _avg in _AVERAGES:
    for _score in ("precision", "recall", "f1"):
        METRICS[f"{_avg}_{_score}"] = (lambda a=_avg, s=_score: _ConfusionScore(a, s))

_TOP_K = re.compile(r"top_([1-9][0-9]*)_accuracy")


def get_metric(metric: str | Callable[[np.ndarray, np.ndarray], float] | Metric) -> Metric:
    """A fresh streaming :class:`Metric` from a name (see the module docstring), a Metric, or a function
    ``(outputs, y) -> float`` (averaged over samples, named by its ``__name__``)."""
    if isinstance(metric, Metric):
        return metric
    if callable(metric):
        return MeanMetric(metric, getattr(metric, "__name__", "metric"))
    if isinstance(metric, str):
        if metric in METRICS:
            return METRICS[metric]()
        m = _TOP_K.fullmatch(metric)
        if m:
            return _Accuracy(int(m.group(1)), metric)
    names = ", ".join([*METRICS, "top_<k>_accuracy"])
    raise ValueError(f"unknown metric {metric!r}; expected one of {names} or a callable")


def resolve_metrics(metrics: Sequence[str | Callable | Metric], y: np.ndarray | None) -> list[Metric]:
    """Metric objects for ``fit``/``evaluate``; the built-in (named) ones are left out for regression targets.

    NOTE: built-in metrics need classes (integer labels or probability rows), which float targets of one
    column are not; a callable is kept, since it may measure anything.
    """
    regression = y is not None and y.dtype.kind == "f" and y.ndim == 1
    made = [(spec, get_metric(spec)) for spec in metrics]  # every name checked, even those left out
    return [m for spec, m in made if not (isinstance(spec, str) and regression)]
