"""The CSV loader's options for issue 12 (items 1 and 10): ``classes`` (a model's), ``task`` (regression) and
``delimiter``, and how the command line's ``--task``/``--loss``/``--delimiter`` reach it (``backprop.cli.options``).

>>> from backprop.cli.options import delimiter
>>> delimiter("semicolon"), delimiter("|")
(';', '|')
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from backprop.cli.options import CLIError, csv_task, data_options, load_data
from backprop.data import load_dataset
from backprop.data.datasets import UnknownLabel, load_csv


def write(tmp_path: Path, text: str, name: str = "d.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------- classes
def test_classes_fix_the_encoding_and_keep_absent_classes(tmp_path):
    path = write(tmp_path, "a,b,y\n1,2,dog\n3,4,cat\n5,6,dog\n")
    ds = load_csv(path, classes=["ant", "cat", "dog"], test_size=0)
    assert ds.classes.tolist() == ["ant", "cat", "dog"] and ds.y_train.tolist() == [2, 1, 2]
    assert ds.n_classes == 3  # 'ant' has no row, still a class


def test_integer_classes_match_by_value_text_classes_by_exact_text(tmp_path):
    path = write(tmp_path, "a,y\n1,1\n2,2.0\n3, 3\n")
    assert load_csv(path, classes=[3, 2, 1], test_size=0).y_train.tolist() == [2, 1, 0]
    with pytest.raises(UnknownLabel, match=r"line 3, column 2 \('y'\): label '2.0' is not one of the classes "
                                           r"\['1', '2', '3'\]") as info:
        load_csv(path, classes=["1", "2", "3"], test_size=0)
    assert info.value.label == "2.0" and info.value.classes == ["1", "2", "3"]
    path = write(tmp_path, "a,y\n1,setosa\n2,SETOSA\n")
    with pytest.raises(UnknownLabel, match="'SETOSA'"):
        load_csv(path, classes=["setosa", "virginica"], test_size=0)
    with pytest.raises(UnknownLabel, match="'setosa'"):
        load_csv(path, classes=[0, 1], test_size=0)


def test_without_classes_the_labels_are_still_the_sorted_unique_values(tmp_path):
    path = write(tmp_path, "a,y\n1,b\n2,a\n3,b\n4,a\n")
    ds = load_csv(path, test_size=0)
    assert ds.classes.tolist() == ["a", "b"] and ds.y_train.tolist() == [1, 0, 1, 0]


def test_test_size_zero_keeps_the_whole_file_in_order(tmp_path):
    rows = "".join(f"{i},{i % 3}\n" for i in range(50))
    ds = load_csv(write(tmp_path, "x,y\n" + rows), test_size=0)
    assert ds.x_train[:, 0].tolist() == list(range(50)) and len(ds.x_test) == 0


# ---------------------------------------------------------------------------------------------- task
def test_regression_gives_float_targets_and_a_shuffled_split(tmp_path):
    rows = "".join(f"{i},{i * 0.5 + 0.25}\n" for i in range(40))
    path = write(tmp_path, "x,price\n" + rows)
    ds = load_csv(path, task="regression", test_size=0.25, seed=0)
    assert ds.task == "regression" and ds.y_train.dtype == np.float32 and ds.n_classes == 0
    assert len(ds.y_train) == 30 and len(ds.y_test) == 10
    np.testing.assert_allclose(np.concatenate([ds.x_train, ds.x_test])[:, 0] * 0.5 + 0.25,
                               np.concatenate([ds.y_train, ds.y_test]))
    model_selection = pytest.importorskip("sklearn.model_selection")
    x = np.arange(40, dtype=np.float32)[:, None]
    x_train, x_test = model_selection.train_test_split(x, test_size=10, random_state=0)
    np.testing.assert_array_equal(ds.x_train, x_train)  # scikit-learn's split without stratify
    np.testing.assert_array_equal(ds.x_test, x_test)


def test_auto_is_regression_only_for_non_integer_numbers(tmp_path):
    floats = write(tmp_path, "x,y\n1,0.5\n2,1\n3,2.5\n", "f.csv")
    ints = write(tmp_path, "x,y\n1,0\n2,1.0\n3,2\n", "i.csv")
    text = write(tmp_path, "x,y\n1,a\n2,1.5\n3,b\n", "t.csv")
    assert load_csv(floats, task="auto", test_size=0).task == "regression"
    assert load_csv(ints, task="auto", test_size=0).task == "classification"
    assert load_csv(text, task="auto", test_size=0).classes.tolist() == ["1.5", "a", "b"]
    with pytest.raises(ValueError, match=r"line 2, column 2 \('y'\): label '0.5' is not an integer.*"
                                         r"task='regression'.*--task regression --loss mse"):
        load_csv(floats, test_size=0)


@pytest.mark.parametrize("text, needle", [
    ("x,y\n1,2\n2,abc\n", r"line 3, column 2 \('y'\): target 'abc' is not a number"),
    ("x,y\n1,2\n2,1e39\n", r"line 3.*'1e39' is not a finite float32 number"),
])
def test_regression_targets_must_be_finite_numbers(tmp_path, text, needle):
    with pytest.raises(ValueError, match=needle):
        load_csv(write(tmp_path, text), task="regression", test_size=0)


@pytest.mark.parametrize("kw, needle", [
    ({"task": "clustering"}, "task must be one of"),
    ({"task": "regression", "classes": [0, 1]}, "classes apply to task='classification' only"),
    ({"delimiter": ";;"}, "delimiter must be one character"),
    ({"delimiter": '"'}, "delimiter must be one character"),
])
def test_bad_arguments(tmp_path, kw, needle):
    with pytest.raises(ValueError, match=needle):
        load_csv(write(tmp_path, "x,y\n1,2\n"), **kw)


# ----------------------------------------------------------------------------------------- delimiter
@pytest.mark.parametrize("sep", ["\t", ";", "|", " "])
def test_delimiter(tmp_path, sep):
    text = "".join(sep.join([str(i), str(i * 2), str(i % 2)]) + "\n" for i in range(10))
    ds = load_csv(write(tmp_path, text), delimiter=sep, test_size=0)
    assert ds.x_train.shape == (10, 2) and ds.classes.tolist() == [0, 1]


def test_one_column_suggests_the_separator_the_line_holds(tmp_path):
    path = write(tmp_path, "a;b;y\n1;2;0\n2;1;1\n")
    with pytest.raises(ValueError, match=r"line 1: need at least 2 columns.*got 1; if ';' separates the fields, "
                                         r"pass delimiter=';' \(backprop: --delimiter ';'\)"):
        load_csv(path)
    path = write(tmp_path, "1\t2\t0\n", "t.csv")
    with pytest.raises(ValueError, match=r"delimiter='\\t' \(backprop: --delimiter tab\)"):
        load_csv(path)


# -------------------------------------------------------------------------------- the command line's options
def parse(*argv: str, loss: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    data_options(p)
    args = p.parse_args(list(argv))
    if loss is not None:
        args.loss = loss
    return args


@pytest.mark.parametrize("task, loss, want", [
    ("auto", "mse", "auto"), ("auto", "cross_entropy", "classification"), ("auto", None, "classification"),
    ("classification", "mse", "classification"), ("regression", "mse", "regression"),
    ("regression", None, "regression"),
])
def test_csv_task_from_task_and_loss(task, loss, want):
    assert csv_task(parse("--task", task, loss=loss)) == want


def test_regression_needs_mse():
    with pytest.raises(CLIError, match="--task regression needs --loss mse"):
        csv_task(parse("--task", "regression", loss="cross_entropy"))


def test_load_data_passes_delimiter_and_task(tmp_path):
    path = write(tmp_path, "x;y\n" + "".join(f"{i};{i / 4}\n" for i in range(20)))
    ds = load_data(parse("--dataset", f"csv:{path}", "--delimiter", ";", loss="mse"))
    assert ds.task == "regression" and len(ds.x_train) == 16
    with pytest.raises(ValueError, match="not an integer"):
        load_data(parse("--dataset", f"csv:{path}", "--delimiter", ";", loss="cross_entropy"))
    whole = load_data(parse("--dataset", f"csv:{path}", "--delimiter", ";", loss="mse"), test_size=0)
    assert len(whole.x_train) == 20


@pytest.mark.parametrize("argv, needle", [
    (["--delimiter", ";"], "--delimiter only applies"),
    (["--task", "regression"], "--task regression only applies"),
    (["--label-column", "y"], "--label-column only applies"),
])
def test_csv_options_are_refused_for_named_data_sets(argv, needle):
    with pytest.raises(CLIError, match=needle):
        load_data(parse("--dataset", "digits", *argv))


def test_named_data_sets_are_unchanged():
    ds = load_data(parse("--dataset", "digits"))
    reference = load_dataset("digits")
    assert ds.task == "classification" and len(ds.x_test) == len(reference.x_test) == 360
    np.testing.assert_array_equal(ds.y_test, reference.y_test)
