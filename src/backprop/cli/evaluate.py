"""``backprop evaluate`` and ``backprop predict``: a saved model on a data set, or on new rows.

    backprop evaluate runs/<stamp>/model.safetensors                        # its data set's test split
    backprop evaluate runs/<stamp>/model.safetensors --dataset csv:new.csv  # every row of a CSV file
    backprop predict runs/<stamp>/model.safetensors samples.csv             # one class (or number) per row
    backprop predict runs/<stamp>/model.safetensors samples.csv --proba     # class probabilities, as CSV

Both read what ``backprop train`` saved with the model (``bio.load_metadata``): its ``classes``, ``loss``,
``n_features`` and ``task``. What the model file holds applies as it is: a ``Normalization`` layer saved in it
standardises the features here exactly as in training.

* **Labels** are mapped through the model's ``classes``, never re-derived from the file: a file may hold some
  of the classes only (the others show support 0), and a label the model does not know is an error naming it
  and the model's classes. Integer classes match labels by value (``1``, ``1.0``), text classes by exact,
  case-sensitive text (see :func:`backprop.data.load_csv`).
* **The data**: a named data set (digits, mnist, fashion-mnist) is evaluated on its test split (the official
  10,000 images; digits: the seeded 20% split that ``train`` holds out), a CSV file on every row. Without
  ``--dataset`` the model's own named data set is used; a model trained on a CSV file needs the file given.
  ``--label-column`` and ``--delimiter`` default to the ones the model was trained with.
* **Classification** prints loss, accuracy, macro precision/recall/F1 and a per-class report over all the
  model's classes (sklearn's ``classification_report(labels=all)``: a class absent from the file counts as 0
  in the macro averages, and a note names it), and draws the confusion matrix as a PNG. The PNG needs
  matplotlib (``pip install "backprop[plot]"``): without it everything else is printed and one note on stderr
  says so; ``--no-plot`` skips the PNG.
* **Regression** (a model saved with ``task: "regression"``) prints MSE, RMSE, MAE and R^2.
* **Sequences**: a model trained on seq-mnist is reported as a classifier, on adding as a regression; on copy
  the loss in nats per step beside the memoryless baseline, the accuracy per step and of whole sequences;
  a character model on text (``--dataset text:PATH``, its last 10%, read with the model's vocabulary and
  ``--seq-len``) the cross-entropy in nats per character, the perplexity and the accuracy.
* ``predict --proba``: one CSV row of class probabilities per sample under a header of the class labels:
  softmax of the logits (cross_entropy), exp of the log-probabilities (nll), and for the sigmoid outputs of
  the squared-error losses (mse, quadratic) each row divided by its sum (scikit-learn's one-vs-rest rule);
  every row sums to 1.

Bad input is one line on stderr and exit code 2, before anything is evaluated.

>>> import argparse
>>> sub = argparse.ArgumentParser().add_subparsers(dest="command")
>>> add_parsers(sub)["predict"].parse_args(["model.safetensors", "rows.csv", "--delimiter", "tab"]).delimiter
'\\t'
>>> _probabilities(np.array([[0.0, 0.0], [np.log(3.0), 0.0]]), "cross_entropy").round(3).tolist()
[[0.5, 0.5], [0.75, 0.25]]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

import backprop as bp
from backprop import io as bio
from backprop.cli import sequences as seq
from backprop.cli.options import CLIError, data_options, delimiter, is_csv, load_data, model_file
from backprop.data.datasets import UnknownLabel, _is_number
from backprop.data.sequences import copy_baseline
from backprop.extras import MissingExtra
from backprop.training import metrics as M
from backprop.training.inputs import n_outputs

PROBA_LOSSES = ("cross_entropy", "nll", "mse", "quadratic")  # how --proba reads the outputs of each


def add_parsers(subparsers: Any) -> dict[str, argparse.ArgumentParser]:
    """Add the ``evaluate`` and ``predict`` subcommands to ``subparsers``."""
    e = subparsers.add_parser("evaluate", help="loss, accuracy, per-class precision/recall/F1 and a confusion matrix "
                                               "(or MSE, MAE, R^2) of a saved model on a data set")
    e.add_argument("model", help="a model file written by 'backprop train'")
    data_options(e, for_model=True)
    e.add_argument("--out", help="confusion-matrix PNG to write (default: confusion_matrix.png beside the model)")
    e.add_argument("--no-plot", action="store_true", help="do not draw the confusion-matrix PNG")

    p = subparsers.add_parser("predict", help="print one predicted class (or number, or with --proba the class "
                                              "probabilities) per row of a CSV file")
    p.add_argument("model", help="a model file written by 'backprop train'")
    p.add_argument("file", help="CSV of feature rows (a header row is allowed)")
    p.add_argument("--label-column", help="drop this column (a name or a 0-based index) if the file also holds "
                                          "labels")
    p.add_argument("--delimiter", type=delimiter, default=None, metavar="CHAR",
                   help="field separator: one character, or 'tab' (default: the one the model was trained with, "
                        "else ,)")
    p.add_argument("--proba", action="store_true",
                   help="print the class probabilities instead, as CSV with a header row of the class labels")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return {"evaluate": e, "predict": p}


# ------------------------------------------------------------------------------------------ the model
def _load_model(path: str) -> tuple[Any, dict[str, Any]]:
    model_file(path)
    return bio.load(path), bio.load_metadata(path) or {}


def _task(meta: dict[str, Any]) -> str:
    return "regression" if meta.get("task") == "regression" else "classification"


def _classes(meta: dict[str, Any]) -> list[Any] | None:
    """The model's saved class values (ints or strings), or None for a file without them."""
    classes = meta.get("classes")
    if isinstance(classes, list) and classes and all(isinstance(c, (int, str)) and not isinstance(c, bool)
                                                     for c in classes):
        return classes
    return None


def _saved_option(meta: dict[str, Any], name: str) -> str | None:
    """An option of the ``train`` command that made the model (its metadata's ``args``), if a string."""
    saved = meta.get("args")
    value = saved.get(name) if isinstance(saved, dict) else None
    return value if isinstance(value, str) else None


def _check_features(x: np.ndarray, meta: dict[str, Any], source: str) -> None:
    n_features = meta.get("n_features")
    have = int(np.prod(x.shape[1:]))
    if isinstance(n_features, int) and have != n_features:
        raise CLIError(f"{source} has {have} features per row but the model expects {n_features}")


# -------------------------------------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    model, meta = _load_model(args.model)
    task, classes = _task(meta), _classes(meta)
    if args.task not in ("auto", task):
        raise CLIError(f"--task {args.task}: {args.model} is a {task} model")
    args.task = task
    if args.dataset is None:
        args.dataset = _default_dataset(meta, args.model)
    if is_csv(args.dataset):
        # NOTE: the model's own CSV options by default: its files are usually laid out as its training file
        if args.label_column is None:
            args.label_column = _saved_option(meta, "label_column")
        if args.delimiter is None:
            args.delimiter = _saved_option(meta, "delimiter")
        kw: dict[str, Any] = {"test_size": 0, "task": task}  # the whole file, in file order
        if classes is not None and task == "classification":
            kw["classes"] = classes
        try:
            ds = load_data(args, **kw)
        except UnknownLabel as e:
            raise CLIError(f"{e.where}: label {e.label!r} is not one of the model's classes {e.classes}") from None
        x, y, title = ds.x_train, ds.y_train, ds.name
        what = f"{ds.name}: {len(x)} samples (the whole file)"
    else:
        kind = meta.get("sequence_kind")
        if task == "regression" and kind != "regression":
            raise CLIError(f"{args.model} is a regression model (trained on a CSV file): give --dataset csv:PATH")
        kw = {}
        if kind == "text":  # NOTE: the model's characters and window length, whatever text it reads
            kw["vocabulary"] = str(meta.get("vocabulary", ""))
            if args.seq_len is None and isinstance(meta.get("seq_len"), int):
                args.seq_len = meta["seq_len"]
        if kind == "regression":
            args.task = "auto"  # NOTE: the data set knows its targets are numbers (--task is for CSV files)
        ds = load_data(args, **kw)
        if kind is not None and getattr(ds, "kind", None) != kind:
            raise CLIError(f"{args.model} was trained on {meta.get('dataset')}, a set of another kind than "
                           f"{ds.name}")
        x, y, title = ds.x_test, ds.y_test, f"{ds.name} test split"
        what = f"{title}: {len(x)} samples"
        if kind == "text":
            what = f"{ds.name}: its last 10%, {y.size:,} characters in {len(y)} windows of {y.shape[1]}"
        if classes is not None:
            y = _to_model_classes(ds.classes, y, classes, ds.name)
    if meta.get("sequence_kind") in ("steps", "text"):
        _report_steps(model, x, y, meta["sequence_kind"], what)
        return 0
    if meta.get("sequence_kind") is None:  # NOTE: sequence models check their own input (steps, features)
        _check_features(x, meta, ds.name)
    if task == "regression":
        _report_regression(model, x, y, what)
        return 0
    names = _class_names(meta, classes, ds)
    _report_classification(model, x, y, names, meta.get("loss", "cross_entropy"), what, title, args)
    return 0


def _default_dataset(meta: dict[str, Any], model_path: str) -> str:
    """The named data set the model was trained on; a CSV-trained model needs its file given."""
    name = meta.get("dataset")
    if not isinstance(name, str):
        raise CLIError(f"{model_path} does not say which data set it was trained on: give --dataset")
    if is_csv(name):
        raise CLIError(f"{model_path} was trained on {name}: give the CSV file to evaluate with --dataset csv:PATH")
    return name


def _to_model_classes(values: np.ndarray, y: np.ndarray, classes: list[Any], name: str) -> np.ndarray:
    """``y`` (indices into the data set's ``values``) as indices into the model's ``classes``."""
    as_int = all(isinstance(c, int) for c in classes)
    index = {(c if as_int else str(c)): k for k, c in enumerate(classes)}
    mapping = np.full(len(values), -1, dtype=np.int64)
    for j, v in enumerate(values):
        v = v.item() if isinstance(v, np.generic) else v
        mapping[j] = index.get(v if as_int else str(v), -1)
    present = np.zeros(len(values), dtype=bool)
    present[np.unique(y)] = True
    unknown = np.flatnonzero(present & (mapping < 0))
    if len(unknown):
        label = values[unknown[0]]
        raise CLIError(f"{name}: label {label.item() if isinstance(label, np.generic) else label!r} is not one of "
                       f"the model's classes {classes}")
    return mapping[y]


def _class_names(meta: dict[str, Any], classes: list[Any] | None, ds: Any) -> list[str]:
    names = meta.get("class_names")
    if classes is None:
        return [str(n) for n in ds.class_names]
    if isinstance(names, list) and len(names) == len(classes):
        return [str(n) for n in names]
    return [str(c) for c in classes]


def _report_classification(model: Any, x: np.ndarray, y: np.ndarray, names: list[str], loss: str, what: str,
                           title: str, args: argparse.Namespace) -> None:
    k = len(names)
    outputs = bp.predict(model, x)
    if outputs.ndim != 2 or outputs.shape[1] not in (k, 1):
        raise CLIError(f"{args.model}: the model gives {outputs.shape[1:]} outputs per sample but its metadata lists "
                       f"{k} classes")
    result = bp.evaluate(model, x, y, loss=loss)
    p, r, f1 = M.precision_recall_f1(outputs, y, average="macro", n_classes=k)
    print(f"{what}, {k} classes")
    print(f"loss {result['loss']:.4f}")
    print(f"accuracy {result['accuracy']:.4f}")
    if k > 5 and outputs.shape[1] > 5:
        print(f"top-5 accuracy {M.top_k_accuracy(outputs, y, k=5):.4f}")
    print(f"macro precision {p:.4f} - macro recall {r:.4f} - macro F1 {f1:.4f}")
    absent = [names[c] for c in range(k) if not np.any(y == c)]
    if absent:
        # NOTE: the averages run over all the model's classes, as sklearn's classification_report(labels=...)
        # does: the report's rows and its macro row then agree with the line above
        print(f"note: no samples of {', '.join(absent)} here: support 0, counted as 0 in the macro averages "
              "(accuracy and the weighted averages are unaffected)")
    print()
    print(M.classification_report(y, outputs, class_names=names, digits=4, n_classes=k))
    if args.no_plot:
        return
    cm = M.confusion_matrix(y, outputs, n_classes=k)
    png = Path(args.out) if args.out else Path(args.model).with_name("confusion_matrix.png")
    try:
        png.parent.mkdir(parents=True, exist_ok=True)
        M.plot_confusion_matrix(cm, png, class_names=names, title=title)
    except MissingExtra as e:
        why = "not installed" if e.reason is None else f"failed to import: {e.reason}"
        print(f"backprop: note: no confusion-matrix PNG: it needs matplotlib ({why}): {e.install}; "
              "--no-plot skips it", file=sys.stderr)
        return
    print(f"wrote {png}")


def _report_steps(model: Any, x: np.ndarray, y: np.ndarray, kind: str, what: str) -> None:
    """A class at every step: the copy task (loss per step, its baseline, accuracy per step and of whole
    sequences) or a text (cross-entropy per character, perplexity, accuracy)."""
    outputs = bp.predict(model, x)
    if outputs.shape[:-1] != y.shape:
        raise CLIError(f"the model gives outputs of shape {outputs.shape[1:]} per sequence for targets of shape "
                       f"{y.shape[1:]}")
    result = bp.evaluate(model, x, y)
    if kind == "text":
        print(what)
        print(seq.perplexity_line(result["loss"]))
        print(f"accuracy {result['accuracy']:.4f} (the most likely next character)")
        return
    delay = y.shape[1] - 20
    whole = float(np.mean(np.all(outputs.argmax(axis=-1) == y, axis=1)))
    print(f"{what}, a class at each of {y.shape[1]} steps")
    print(f"loss {result['loss']:.4f} nats per step (the memoryless baseline: {copy_baseline(delay):.4f})")
    print(f"accuracy per step {result['accuracy']:.4f} - of the copied symbols "
          f"{float(np.mean(outputs[:, -10:].argmax(axis=-1) == y[:, -10:])):.4f} - whole sequences {whole:.4f}")


def _report_regression(model: Any, x: np.ndarray, y: np.ndarray, what: str) -> None:
    outputs = bp.predict(model, x)
    if outputs.ndim != 2 or outputs.shape[1] != 1:
        raise CLIError(f"a regression model must give one output per sample, this one gives {outputs.shape[1:]}")
    pred, target = outputs[:, 0].astype(np.float64), y.astype(np.float64)
    err = pred - target
    mse, mae = float(np.mean(err ** 2)), float(np.mean(np.abs(err)))
    total = float(np.sum((target - target.mean()) ** 2))
    print(f"{what}, regression")
    print(f"mse {mse:.6g}")
    print(f"rmse {np.sqrt(mse):.6g}")
    print(f"mae {mae:.6g}")
    # NOTE: R^2 = 1 - SS_res / SS_tot is undefined for constant targets; said so rather than printed as inf/nan
    print(f"r2 {1.0 - float(np.sum(err ** 2)) / total:.4f}" if total > 0 else
          "r2 n/a (the targets are all equal)")


# --------------------------------------------------------------------------------------------- predict
def cmd_predict(args: argparse.Namespace) -> int:
    model, meta = _load_model(args.model)
    if meta.get("sequence_kind") is not None:
        raise CLIError(f"predict reads rows of features; {args.model} reads sequences: use 'backprop evaluate'"
                       + (" or 'backprop generate'" if meta["sequence_kind"] == "text" else ""))
    task, classes = _task(meta), _classes(meta)
    loss = meta.get("loss", "cross_entropy")
    if args.proba:
        if task == "regression":
            raise CLIError(f"--proba: {args.model} is a regression model, it predicts numbers, not classes")
        if loss not in PROBA_LOSSES:
            raise CLIError(f"--proba: cannot read probabilities from a model trained with loss {loss!r} "
                           f"(known: {', '.join(PROBA_LOSSES)})")
        if (n_outputs(model) or 0) < 2:
            raise CLIError(f"--proba needs a model with one output per class; {args.model} has one output")
    label_column = args.label_column
    if label_column is not None and label_column.lstrip("-").isdigit():
        label_column = int(label_column)
    sep = args.delimiter or _saved_option(meta, "delimiter") or ","
    x = _read_feature_csv(args.file, label_column, sep)
    n_features = meta.get("n_features")
    if isinstance(n_features, int) and x.shape[1] != n_features:
        hint = " (if it also holds labels, pass --label-column)" if x.shape[1] == n_features + 1 else ""
        raise CLIError(f"{args.file}: rows have {x.shape[1]} values but the model expects {n_features} "
                       f"features{hint}")
    outputs = bp.predict(model, x)
    out = sys.stdout
    if task == "regression":
        out.writelines(f"{v:.7g}\n" for v in outputs.reshape(len(outputs), -1)[:, 0])
        return 0
    labels = classes if classes is not None else list(range(outputs.shape[1]))
    if args.proba:
        probs = _probabilities(outputs, loss)
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(labels)
        writer.writerows([f"{v:.6g}" for v in row] for row in probs)
        return 0
    out.writelines(f"{labels[k]}\n" for k in M.predicted_classes(outputs))
    return 0


def _probabilities(outputs: np.ndarray, loss: str) -> np.ndarray:
    """Class probabilities from a model's outputs (N, C) given its loss; every row sums to 1."""
    z = outputs.astype(np.float64)
    if loss == "nll":  # log-probabilities
        p = np.exp(z)
    elif loss in ("mse", "quadratic"):  # sigmoid units, one per class, trained against one-hot rows
        p = np.clip(z, 0.0, None)
    else:  # logits
        p = np.exp(z - z.max(axis=1, keepdims=True))
    total = p.sum(axis=1, keepdims=True)
    # NOTE: a row of sigmoid outputs that are all 0 says nothing about the classes: uniform
    return np.divide(p, total, out=np.full_like(p, 1.0 / p.shape[1]), where=total > 0)


def _check_separator(path: str, line_no: int, cell: str, sep: str) -> None:
    """A row read as one field that holds another usual separator: the file is not split by ``sep``."""
    for other, name in ((",", "','"), (";", "';'"), ("\t", "tab"), ("|", "'|'")):
        if other != sep and other in cell:
            raise CLIError(f"{path}, line {line_no}: one field only, split by {sep!r}; if {other!r} separates the "
                           f"fields, pass --delimiter {name}")


def _read_feature_csv(path: str, label_column: int | str | None, sep: str = ",") -> np.ndarray:
    """Numeric rows of a CSV (an optional header row is skipped); errors name the line and column."""
    if not os.path.exists(path):
        raise CLIError(f"{path} does not exist")
    try:
        return _parse_feature_csv(path, label_column, sep)
    except UnicodeDecodeError as e:
        raise CLIError(f"{path} is not a UTF-8 text CSV file (byte {e.start}: {e.reason})") from None


def _parse_feature_csv(path: str, label_column: int | str | None, sep: str = ",") -> np.ndarray:
    rows: list[list[float]] = []
    header: list[str] | None = None
    with open(path, newline="", encoding="utf-8-sig") as f:
        for line_no, row in enumerate(csv.reader(f, delimiter=sep), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) == 1:
                _check_separator(path, line_no, row[0], sep)
            if not rows and header is None and not any(_is_number(c.strip()) for c in row):
                header = [c.strip() for c in row]
                continue
            if label_column is not None:
                if isinstance(label_column, str):
                    if header is None or label_column not in header:
                        raise CLIError(f"{path}: no column named {label_column!r}"
                                       + (f"; the columns are {header}" if header else " (the file has no header row)"))
                    idx = header.index(label_column)
                else:
                    idx = label_column
                if not -len(row) <= idx < len(row):
                    raise CLIError(f"{path}, line {line_no}: --label-column {idx} is out of range for {len(row)} "
                                   "columns")
                row = row[:idx] + row[idx + 1:] if idx != -1 else row[:-1]
            values = []
            for col, cell in enumerate(row, start=1):
                try:
                    values.append(float(cell))
                except ValueError:
                    raise CLIError(f"{path}, line {line_no}, column {col}: {cell!r} is not a number") from None
            if rows and len(values) != len(rows[0]):
                raise CLIError(f"{path}, line {line_no}: {len(values)} values, but earlier rows have {len(rows[0])}")
            rows.append(values)
    if not rows:
        raise CLIError(f"{path} holds no data rows")
    return np.asarray(rows, dtype=np.float32)
