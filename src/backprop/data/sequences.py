"""Sequence data sets: sequential MNIST, the adding problem, the copy task and character-level text.

Every set is a :class:`SequenceDataset` (a :class:`~backprop.data.datasets.Dataset` that knows what its
targets are), and :func:`~backprop.data.load_dataset` loads each by name:

* ``seq-mnist``: MNIST read row by row, each image a sequence of 28 steps of 28 pixels, x (N, 28, 28) in
  [0, 1], one class per sequence; the official 60,000 / 10,000 split, from the same files as ``mnist``.
* ``adding[:T]`` (default T = 100): the adding problem (Hochreiter & Schmidhuber 1997, experiment 4, in
  the form of Le et al. 2015 and Arjovsky et al. 2016): x (N, T, 2), at each step a value drawn from
  U(0, 1) and a marker, 1 at two steps (one in each half of the sequence) and 0 elsewhere; the target is the
  sum of the two marked values (a regression; predicting the mean, 1, gives a mean squared error of
  Var(a + b) = 2 / 12 = 0.167). 50,000 training and 10,000 test sequences, drawn from fixed seeds.
* ``copy[:T]`` (default T = 100): the copy task of Arjovsky et al. (2016): 10 symbols drawn from 1..8, T - 1
  blanks (0), a delimiter (9), then 10 blanks; the target is T + 10 blanks, then the 10 symbols. x is one-hot
  (N, T + 20, 10); y (N, T + 20) holds a class (0..8) per step. Predicting blanks and then a uniformly random
  symbol costs ``10 log(8) / (T + 20)`` nats per step (:func:`copy_baseline`). 20,000 / 2,000 sequences.
* ``text:PATH``: a character-level language model's data from any UTF-8 text file: the first 90% of its
  characters for training, the last 10% held out (the test split, which ``backprop train`` also uses as its
  validation data); the vocabulary is the sorted set of characters of the training part; x (N, seq_len) are
  character indices of consecutive, non-overlapping windows and y (N, seq_len) the next character at every
  step (x shifted by one).

>>> x, y = adding_problem(4, length=10, seed=0)
>>> x.shape, y.shape, bool(np.allclose(y, (x[..., 0] * x[..., 1]).sum(axis=1)))
((4, 10, 2), (4,), True)
>>> ds = text_dataset("hello world, hello moon, hello hello", seq_len=3, name="text:toy")
>>> ds.vocabulary, ds.x_train.shape, ds.x_test.shape
(' ,dehlmnorw', (10, 3), (1, 3))
>>> decode(ds.x_train[0], ds.vocabulary), decode(ds.y_train[0], ds.vocabulary)   # the next character at each step
('hel', 'ell')
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backprop.data.datasets import Dataset, _load_idx_dataset, register_dataset

__all__ = [
    "SEQUENCE_DATASETS", "SequenceDataset", "adding_problem", "copy_baseline", "copy_task", "decode", "encode",
    "load_sequence_mnist", "load_text", "text_dataset",
]

#: How the sequence sets are written for ``load_dataset`` (and ``backprop train --dataset``).
SEQUENCE_DATASETS = ("seq-mnist", "adding[:T]", "copy[:T]", "text:PATH")
KINDS = ("sequence", "regression", "steps", "text")
DEFAULT_LENGTH = 100  # T of the adding problem and the copy task, as in the papers' main experiments
DEFAULT_SEQ_LEN = 100  # characters per window of a text
VALIDATION_FRACTION = 0.1  # the last 10% of a text is held out
COPY_SYMBOLS, COPY_LENGTH = 8, 10  # Arjovsky et al.: 10 symbols of 8 to remember


@dataclass(frozen=True, eq=False)
class SequenceDataset(Dataset):
    """A :class:`~backprop.data.datasets.Dataset` of sequences, x (N, T, features) or (N, T) indices.

    ``kind`` says what the targets are: ``"sequence"`` one class per sequence (y (N,)), ``"regression"`` one
    number per sequence (y (N,) float32), ``"steps"`` a class at every step (y (N, T)), ``"text"`` the next
    character at every step (x and y (N, T) indices into ``vocabulary``).
    """

    kind: str = "sequence"
    vocabulary: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in KINDS:
            raise ValueError(f"SequenceDataset {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def task(self) -> str:
        return "regression" if self.kind == "regression" else "classification"

    @property
    def per_step(self) -> bool:
        """True when the targets are a class at every step (the copy task, text)."""
        return self.kind in ("steps", "text")

    @property
    def seq_len(self) -> int:
        """Steps per sequence."""
        return int(self.x_train.shape[1])

    def metadata(self) -> dict[str, Any]:
        """What a model trained on this set needs to be used again (saved with it by ``backprop train``)."""
        meta: dict[str, Any] = {"sequence_kind": self.kind, "seq_len": self.seq_len}
        if self.kind == "text":
            meta["vocabulary"] = self.vocabulary
        return meta


# ------------------------------------------------------------------------------------------- generators
def _rng(seed: int, part: int) -> np.random.Generator:
    # NOTE: the training and the test sequences come from two streams of one seed: never the same sequences
    return np.random.default_rng([int(seed), part])


def _check_count(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def adding_problem(n: int, length: int = DEFAULT_LENGTH, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sequences of the adding problem: x (n, length, 2) float32 and the targets y (n,) float32.

    Channel 0 holds values drawn from U(0, 1), channel 1 the markers: 1 at one step drawn from the first half
    (``length // 2`` steps) and one from the rest, 0 elsewhere. y is the sum of the two marked values.

    >>> x, y = adding_problem(2, length=6, seed=1)
    >>> x[..., 1].sum(axis=1).tolist(), bool(np.all(x[:, :3, 1].sum(axis=1) == 1))
    ([2.0, 2.0], True)
    """
    n, length = _check_count("n", n, 1), _check_count("the adding problem's length T", length, 2)
    rng = np.random.default_rng(seed) if not isinstance(seed, np.random.Generator) else seed
    half = length // 2
    x = np.zeros((n, length, 2), dtype=np.float32)
    x[..., 0] = rng.random((n, length), dtype=np.float32)
    rows = np.arange(n)
    first = rng.integers(0, half, n)
    second = rng.integers(half, length, n)
    x[rows, first, 1] = 1.0
    x[rows, second, 1] = 1.0
    y = (x[rows, first, 0] + x[rows, second, 0]).astype(np.float32)
    return x, y


def copy_task(n: int, delay: int = DEFAULT_LENGTH, seed: int = 0, *, symbols: int = COPY_SYMBOLS,
              length: int = COPY_LENGTH) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sequences of the copy task: one-hot x (n, delay + 2 length, symbols + 2) float32 and the classes
    y (n, delay + 2 length) int64.

    Inputs: ``length`` symbols drawn from 1..symbols, ``delay - 1`` blanks (0), the delimiter
    (``symbols + 1``), ``length`` blanks. Targets: ``delay + length`` blanks, then the ``length`` symbols.

    >>> x, y = copy_task(1, delay=3, seed=0, length=2)
    >>> x[0].argmax(axis=1).tolist(), y[0].tolist()
    ([7, 6, 0, 0, 9, 0, 0], [0, 0, 0, 0, 0, 7, 6])
    """
    n, delay = _check_count("n", n, 1), _check_count("the copy task's delay T", delay, 1)
    symbols, length = _check_count("symbols", symbols, 1), _check_count("length", length, 1)
    rng = np.random.default_rng(seed) if not isinstance(seed, np.random.Generator) else seed
    steps = delay + 2 * length
    seq = rng.integers(1, symbols + 1, (n, length))
    tokens = np.zeros((n, steps), dtype=np.int64)
    tokens[:, :length] = seq
    tokens[:, length + delay - 1] = symbols + 1  # the delimiter: "now repeat them"
    y = np.zeros((n, steps), dtype=np.int64)
    y[:, -length:] = seq
    x = np.zeros((n, steps, symbols + 2), dtype=np.float32)
    np.put_along_axis(x, tokens[..., None], 1.0, axis=2)
    return x, y


def copy_baseline(delay: int = DEFAULT_LENGTH, *, symbols: int = COPY_SYMBOLS, length: int = COPY_LENGTH) -> float:
    """Cross-entropy per step (nats) of the memoryless answer: blanks, then a uniformly random symbol.

    >>> round(copy_baseline(100), 4)
    0.1733
    """
    return length * math.log(symbols) / (delay + 2 * length)


# ------------------------------------------------------------------------------------------- data sets
def _length(arg: str | None, what: str, low: int) -> int:
    if arg is None or not arg.strip():
        return DEFAULT_LENGTH
    try:
        value = int(arg)
    except ValueError:
        value = None
    if value is None or value < low:
        raise ValueError(f"dataset '{what}:{arg}': T must be an integer >= {low}, as in '{what}:{DEFAULT_LENGTH}'")
    return value


def load_adding(arg: str | None = None, data_dir: Any = None, *, n_train: int = 50_000, n_test: int = 10_000,
                seed: int = 0) -> SequenceDataset:
    """The adding problem of length T (``arg``, default 100) as a data set (``load_dataset("adding:T")``)."""
    length = _length(arg, "adding", 2)
    x_train, y_train = adding_problem(n_train, length, _rng(seed, 0))
    x_test, y_test = adding_problem(n_test, length, _rng(seed, 1))
    return SequenceDataset(x_train, y_train, x_test, y_test, np.array([]), f"adding:{length}", kind="regression")


def load_copy(arg: str | None = None, data_dir: Any = None, *, n_train: int = 20_000, n_test: int = 2_000,
              seed: int = 0) -> SequenceDataset:
    """The copy task with delay T (``arg``, default 100) as a data set (``load_dataset("copy:T")``)."""
    delay = _length(arg, "copy", 1)
    x_train, y_train = copy_task(n_train, delay, _rng(seed, 0))
    x_test, y_test = copy_task(n_test, delay, _rng(seed, 1))
    names = ("blank", *(str(s) for s in range(1, COPY_SYMBOLS + 1)))
    return SequenceDataset(x_train, y_train, x_test, y_test, np.arange(COPY_SYMBOLS + 1), f"copy:{delay}",
                           class_names=names, kind="steps")


def load_sequence_mnist(arg: str | None = None, data_dir: str | os.PathLike[str] | None = None, *,
                        download: bool = True) -> SequenceDataset:
    """MNIST as sequences of 28 rows of 28 pixels (``load_dataset("seq-mnist")``); the files are found as
    :func:`~backprop.data.load_mnist` finds them."""
    if arg is not None:
        raise ValueError(f"dataset 'seq-mnist:{arg}' takes no argument: write 'seq-mnist'")
    (x_train, y_train), (x_test, y_test) = _load_idx_dataset("mnist", data_dir, flatten=False, download=download)
    return SequenceDataset(x_train, y_train, x_test, y_test, np.arange(10), "seq-mnist", kind="sequence")


# ------------------------------------------------------------------------------------------------ text
def encode(text: str, vocabulary: str) -> np.ndarray:
    """The characters of ``text`` as indices into ``vocabulary`` (int64); ValueError naming unknown characters.

    >>> encode("abba", "ab").tolist()
    [0, 1, 1, 0]
    """
    index = {c: i for i, c in enumerate(vocabulary)}
    unknown = sorted({c for c in text if c not in index})
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise ValueError(f"{len(unknown)} character{'s' if len(unknown) > 1 else ''} not in the vocabulary: {shown}")
    return np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text))


def decode(ids: Any, vocabulary: str) -> str:
    """Indices into ``vocabulary`` back to text.

    >>> decode([1, 0, 1], "ab")
    'bab'
    """
    return "".join(vocabulary[int(i)] for i in np.asarray(ids).reshape(-1))


def _windows(ids: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive, non-overlapping windows: x = ids[k T:(k+1) T], y = the same shifted by one character."""
    n = (len(ids) - 1) // seq_len
    x = ids[: n * seq_len].reshape(n, seq_len)
    y = ids[1: n * seq_len + 1].reshape(n, seq_len)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def text_dataset(text: str, seq_len: int = DEFAULT_SEQ_LEN, name: str = "text",
                 validation_fraction: float = VALIDATION_FRACTION, vocabulary: str | None = None) -> SequenceDataset:
    """A character-level language model's data from ``text``: the first ``1 - validation_fraction`` of its
    characters for training, the rest held out as the test split; windows of ``seq_len`` characters.

    The vocabulary is the sorted set of the training part's characters, or ``vocabulary`` (a trained model's,
    to evaluate it on another text). Held-out characters outside it (none in tiny Shakespeare) are left out
    of the held-out text, with a warning saying how many; training characters outside a given vocabulary too.
    """
    seq_len = _check_count("seq_len", seq_len, 1)
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
    cut = int(len(text) * (1 - validation_fraction))
    train, held = text[:cut], text[cut:]
    if vocabulary is None:
        vocabulary = "".join(sorted(set(train)))
    known = set(vocabulary)
    if len(known) != len(vocabulary) or not vocabulary:
        raise ValueError(f"{name}: the vocabulary must be distinct characters, got {vocabulary!r}")
    if any(c not in known for c in train):
        train = "".join(c for c in train if c in known)
    unseen = sum(1 for c in held if c not in known)
    if unseen:
        warnings.warn(f"{name}: {unseen} held-out character{'s' if unseen > 1 else ''} not in the training part's "
                      "vocabulary: left out of the held-out text", UserWarning, stacklevel=2)
        held = "".join(c for c in held if c in known)
    if len(train) <= seq_len or len(held) <= seq_len:  # NOTE: a window needs the character after it too
        need = math.ceil((seq_len + 1) / min(1 - validation_fraction, validation_fraction))
        raise ValueError(f"{name}: {len(text)} characters are too few for windows of {seq_len} characters (the held-"
                         f"out {validation_fraction:.0%} needs {seq_len + 1}): give at least {need} characters, or "
                         "a smaller --seq-len")
    x_train, y_train = _windows(encode(train, vocabulary), seq_len)
    x_test, y_test = _windows(encode(held, vocabulary), seq_len)
    return SequenceDataset(x_train, y_train, x_test, y_test, np.arange(len(vocabulary)), name,
                           class_names=tuple(vocabulary), kind="text", vocabulary=vocabulary)


def load_text(path: str | os.PathLike[str], data_dir: Any = None, *, seq_len: int = DEFAULT_SEQ_LEN,
              vocabulary: str | None = None) -> SequenceDataset:
    """:func:`text_dataset` of a UTF-8 text file (``load_dataset("text:PATH", seq_len=...)``)."""
    if path is None or not str(path).strip():
        raise ValueError("dataset 'text:' needs a path, e.g. 'text:input.txt'")
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"text file {p} does not exist" if not p.exists() else f"{p} is not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p} is not a UTF-8 text file (byte {e.start}: {e.reason})") from None
    return text_dataset(text, seq_len, name=f"text:{path}", vocabulary=vocabulary)


register_dataset("seq-mnist", load_sequence_mnist)
register_dataset("adding", load_adding, "adding[:T]")
register_dataset("copy", load_copy, "copy[:T]")
register_dataset("text", load_text, "text:PATH")
