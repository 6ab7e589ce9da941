"""The data set loaders, re-exported from :mod:`backprop.data.datasets` (``backprop.datasets.load_mnist``).

Example:
    >>> from backprop.datasets import load_digits
    >>> (x_train, y_train), (x_test, y_test) = load_digits()
    >>> x_train.shape[1]
    64
"""

from backprop.data.datasets import (
    DATASET_SPECS,
    Dataset,
    load_csv,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_mnist,
)

__all__ = [
    "DATASET_SPECS",
    "Dataset",
    "load_csv",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
]
