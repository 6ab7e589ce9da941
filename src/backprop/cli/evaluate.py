"""``backprop evaluate`` and ``backprop predict``: a saved model on a data set's test split, or on new rows.

    backprop evaluate runs/<stamp>/model.safetensors --dataset digits
    backprop predict runs/<stamp>/model.safetensors samples.csv

>>> import argparse
>>> sub = argparse.ArgumentParser().add_subparsers(dest="command")
>>> add_parsers(sub)["predict"].parse_args(["model.safetensors", "rows.csv"]).file
'rows.csv'
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
from backprop.cli.options import CLIError, data_options, load_data
from backprop.data.datasets import _is_number
from backprop.training import metrics as M


def add_parsers(subparsers: Any) -> dict[str, argparse.ArgumentParser]:
    """Add the ``evaluate`` and ``predict`` subcommands to ``subparsers``."""
    e = subparsers.add_parser("evaluate", help="loss, accuracy, per-class precision/recall/F1 and a confusion matrix "
                                        "of a saved model on a data set's test split")
    e.add_argument("model", help="a model file written by 'backprop train'")
    data_options(e)
    e.add_argument("--out", help="confusion-matrix PNG to write (default: confusion_matrix.png beside the model)")

    p = subparsers.add_parser("predict", help="print one predicted class per row of a CSV file")
    p.add_argument("model", help="a model file written by 'backprop train'")
    p.add_argument("file", help="CSV of feature rows (a header row is allowed)")
    p.add_argument("--label-column", help="drop this column if the file also holds labels")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return {"evaluate": e, "predict": p}


def _load_model(path: str):

    if not os.path.exists(path):
        raise CLIError(f"model file {path} does not exist")
    return bio.load(path), bio.load_metadata(path) or {}


def cmd_evaluate(args: argparse.Namespace) -> int:

    model, meta = _load_model(args.model)
    ds = load_data(args)
    loss = meta.get("loss", "cross_entropy")
    n_classes = len(ds.classes)
    result = bp.evaluate(model, ds.x_test, ds.y_test, loss=loss)
    outputs = bp.predict(model, ds.x_test)
    p, r, f1 = M.precision_recall_f1(outputs, ds.y_test, average="macro", n_classes=n_classes)
    print(f"{ds.name} test split: {len(ds.x_test)} samples, {n_classes} classes")
    print(f"loss {result['loss']:.4f}")
    print(f"accuracy {result['accuracy']:.4f}")
    if n_classes > 5 and outputs.shape[1] > 5:
        print(f"top-5 accuracy {M.top_k_accuracy(outputs, ds.y_test, k=5):.4f}")
    print(f"macro precision {p:.4f} - macro recall {r:.4f} - macro F1 {f1:.4f}")
    names = [str(n) for n in ds.class_names]
    print()
    print(M.classification_report(ds.y_test, outputs, class_names=names, digits=4, n_classes=n_classes))
    cm = M.confusion_matrix(ds.y_test, outputs, n_classes=n_classes)
    png = Path(args.out) if args.out else Path(args.model).with_name("confusion_matrix.png")
    png.parent.mkdir(parents=True, exist_ok=True)
    M.plot_confusion_matrix(cm, png, class_names=names, title=f"{ds.name} test split")
    print(f"wrote {png}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:

    model, meta = _load_model(args.model)
    label_column = args.label_column
    if label_column is not None and label_column.lstrip("-").isdigit():
        label_column = int(label_column)
    x = _read_feature_csv(args.file, label_column)
    n_features = meta.get("n_features")
    if n_features is not None and x.shape[1] != n_features:
        raise CLIError(f"{args.file}: rows have {x.shape[1]} values but the model expects {n_features} features")
    classes = meta.get("classes")
    pred = bp.training.metrics.predicted_classes(bp.predict(model, x))
    out = sys.stdout
    for k in pred:
        out.write(f"{classes[k] if classes else k}\n")
    return 0


def _read_feature_csv(path: str, label_column: int | str | None) -> np.ndarray:
    """Numeric rows of a CSV (an optional header row is skipped); errors name the line and column."""
    if not os.path.exists(path):
        raise CLIError(f"{path} does not exist")
    try:
        return _parse_feature_csv(path, label_column)
    except UnicodeDecodeError as e:
        raise CLIError(f"{path} is not a UTF-8 text CSV file (byte {e.start}: {e.reason})") from None


def _parse_feature_csv(path: str, label_column: int | str | None) -> np.ndarray:
    rows: list[list[float]] = []
    header: list[str] | None = None
    with open(path, newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if not rows and header is None and not any(_is_number(c.strip()) for c in row):
                header = [c.strip() for c in row]
                continue
            if label_column is not None:
                idx = header.index(label_column) if isinstance(label_column, str) and header else label_column
                if not isinstance(idx, int):
                    raise CLIError(f"{path}: no column named {label_column!r}")
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


