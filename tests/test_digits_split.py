"""The bundled digits and the train/test split without scikit-learn: the same data and the same split.

``load_digits`` reads ``backprop/data/digits.npz`` and ``_split`` reimplements scikit-learn's
``train_test_split`` (StratifiedShuffleSplit / ShuffleSplit on a legacy RandomState), so the figures
measured before scikit-learn became an extra still hold. Where scikit-learn is installed these tests
compare both, sample for sample; without it they check what needs no reference.

>>> from backprop.data.datasets import load_digits
>>> (x, y), _ = load_digits(test_size=0.5, seed=0)
>>> x.shape
(898, 64)
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from backprop.data.datasets import _split, load_csv, load_digits


def _sklearn_split(x: np.ndarray, y: np.ndarray, test_size: float, seed: int | None):
    """What backprop's ``_split`` did before it stopped importing scikit-learn (the same rules, verbatim)."""
    model_selection = pytest.importorskip("sklearn.model_selection")
    n = len(x)
    n_test = math.ceil(test_size * n) if isinstance(test_size, float) else test_size
    counts = np.bincount(y)
    n_classes = int(np.count_nonzero(counts))
    can_stratify = counts[counts > 0].min() >= 2 and min(n_test, n - n_test) >= n_classes
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        x, y, test_size=n_test, random_state=seed, stratify=y if can_stratify else None)
    return (x_train, y_train), (x_test, y_test)


def _assert_same(a, b) -> None:
    for part_a, part_b in zip(a, b):
        for arr_a, arr_b in zip(part_a, part_b):
            np.testing.assert_array_equal(arr_a, arr_b)
            assert arr_a.dtype == arr_b.dtype


def test_the_bundled_digits_are_scikit_learns():
    datasets = pytest.importorskip("sklearn.datasets")
    bunch = datasets.load_digits()
    (x, y), _ = load_digits(test_size=0)
    np.testing.assert_array_equal(x, bunch.data.astype(np.float32) / np.float32(16.0))
    np.testing.assert_array_equal(y, bunch.target)


@pytest.mark.parametrize("test_size, seed", [(0.2, 0), (0.25, 3), (0.25, 4), (0.5, 1), (0.1, 42), (360, 0),
                                             (10, 7), (0.999, 0)])
def test_digits_split_is_train_test_split(test_size, seed):
    (x, y), _ = load_digits(test_size=0)
    _assert_same(load_digits(test_size=test_size, seed=seed), _sklearn_split(x, y, test_size, seed))


@pytest.mark.parametrize("y", [
    [0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],                   # unequal classes: remainders to break ties
    [0, 1, 0, 1, 0, 1, 0, 1, 0, 1],                         # equal classes
    [0, 0, 0, 0, 0, 0, 0, 1, 2, 2],                         # a class of one: shuffled, not stratified
    [1, 1, 1, 2, 2, 2, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5],   # gaps in the labels (bincount zeros)
])
@pytest.mark.parametrize("test_size", [0.2, 0.34, 0.5, 3])
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_small_splits_are_train_test_split(y, test_size, seed):
    y = np.array(y, dtype=np.int64)
    x = np.arange(len(y) * 2, dtype=np.float32).reshape(len(y), 2)
    _assert_same(_split(x, y, test_size, seed), _sklearn_split(x, y, test_size, seed))


def test_seed_none_draws_from_numpys_global_state_as_scikit_learn():
    (x, y), _ = load_digits(test_size=0)
    np.random.seed(5)
    ours = load_digits(seed=None)
    np.random.seed(5)
    _assert_same(ours, _sklearn_split(x, y, 0.2, None))


def test_csv_split_is_train_test_split(tmp_path):
    rows = [f"{i},{i % 3}" for i in range(30)]
    path = tmp_path / "t.csv"
    path.write_text("x,label\n" + "\n".join(rows) + "\n")
    ds = load_csv(path, test_size=0.2, seed=0)
    x = np.arange(30, dtype=np.float32).reshape(30, 1)
    y = np.arange(30) % 3
    _assert_same(((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)), _sklearn_split(x, y, 0.2, 0))


def test_the_split_needs_no_scikit_learn(monkeypatch):
    """With scikit-learn made unimportable, the digits load and split as before (no import is attempted)."""
    for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sklearn", None)
    (x_train, _), (x_test, y_test) = load_digits()
    assert x_train.shape == (1437, 64) and x_test.shape == (360, 64)
    # NOTE: the split's fingerprint as scikit-learn 1.9.1 drew it (checked against it above where installed)
    assert np.bincount(y_test).tolist() == [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]
    assert y_test[:12].tolist() == [7, 6, 3, 7, 7, 3, 2, 8, 9, 3, 2, 6]
    assert float(x_test.sum()) == 7021.875
    (x_a, _), _ = load_digits(test_size=0.25, seed=3)
    (x_b, _), _ = load_digits(test_size=0.25, seed=3)
    np.testing.assert_array_equal(x_a, x_b)
