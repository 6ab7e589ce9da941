"""Data: mini-batch loading, IDX files, the classification data sets and the sequence ones.

Example:
    >>> from backprop.data import DataLoader, load_dataset
    >>> ds = load_dataset("digits")
    >>> loader = DataLoader(ds.x_train, ds.y_train, batch_size=64, seed=0)
    >>> xb, yb = next(iter(loader))
    >>> xb.shape, yb.shape
    ((64, 64), (64,))
"""

from backprop.data.datasets import (
    Dataset,
    load_csv,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_mnist,
)
from backprop.data.idx import read_idx, write_idx
from backprop.data.loader import DataLoader
from backprop.data.sequences import (
    SequenceDataset,
    adding_problem,
    copy_task,
    load_sequence_mnist,
    load_text,
    text_dataset,
)

__all__ = [
    "DataLoader",
    "Dataset",
    "SequenceDataset",
    "adding_problem",
    "copy_task",
    "load_csv",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "load_sequence_mnist",
    "load_text",
    "read_idx",
    "text_dataset",
    "write_idx",
]
