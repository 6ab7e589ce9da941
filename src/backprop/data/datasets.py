"""Classification data sets as float32 features and int64 labels, split into train and test.

Per-dataset loaders return Keras-style tuples ``((x_train, y_train), (x_test, y_test))``:

* :func:`load_mnist`, :func:`load_fashion_mnist`: the official 60000/10000 split of the
  28x28 IDX images, pixels scaled to [0, 1], flattened to (N, 784) by default.
* :func:`load_digits`: the 8x8 UCI digits bundled with backprop (no download, no scikit-learn),
  (N, 64) in [0, 1].

:func:`load_csv` and :func:`load_dataset` (the single entry point of the CLI) return a
:class:`Dataset`, which also carries the class labels and their names. Labels are always
the class indices ``0..K-1``; ``classes[k]`` is the original label value of class ``k``
and ``class_names[k]`` its human-readable name.

Example:
    >>> from backprop.data.datasets import load_dataset
    >>> ds = load_dataset("digits")
    >>> ds.x_train.shape, ds.x_train.dtype, ds.n_classes
    ((1437, 64), dtype('float32'), 10)
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import itertools
import math
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from backprop.data.idx import read_idx

__all__ = [
    "DATASET_SPECS",
    "Dataset",
    "UnknownLabel",
    "load_csv",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "register_dataset",
]

Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


# --------------------------------------------------------------------------- Dataset


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split of a classification data set (or of a regression one, from :func:`load_csv`).

    Attributes:
        x_train, x_test: float32 features, one sample per row.
        y_train, y_test: int64 class indices in ``0..K-1``; for regression, float32 targets.
        classes: the original label value of each class index (``classes[y]``); empty for regression.
        name: a short name, e.g. ``"mnist"`` or ``"csv:iris.csv"``.
        class_names: a human-readable name per class; defaults to ``str(classes[k])``.

    Example:
        >>> import numpy as np
        >>> ds = Dataset(np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1]),
        ...              np.zeros((2, 2), np.float32), np.array([0, 1]), np.array([3, 7]), "toy")
        >>> ds.n_classes, ds.n_features, ds.class_names
        (2, 2, ('3', '7'))
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: np.ndarray
    name: str
    class_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError(
                f"Dataset {self.name!r}: x and y lengths differ: train {len(self.x_train)} vs "
                f"{len(self.y_train)}, test {len(self.x_test)} vs {len(self.y_test)}"
            )
        if not self.class_names:
            # NOTE: frozen dataclass, so the derived default is set via object.__setattr__.
            object.__setattr__(self, "class_names", tuple(str(c) for c in self.classes))
        if len(self.class_names) != len(self.classes):
            raise ValueError(
                f"Dataset {self.name!r}: {len(self.class_names)} class_names for {len(self.classes)} classes"
            )

    @property
    def n_classes(self) -> int:
        """Number of classes K."""
        return len(self.classes)

    @property
    def n_features(self) -> int:
        """Features per sample (the product of the per-sample shape)."""
        return math.prod(self.x_train.shape[1:])

    @property
    def task(self) -> str:
        """``"regression"`` when the targets are float numbers to predict, else ``"classification"``."""
        return "regression" if self.y_train.dtype.kind == "f" else "classification"


# --------------------------------------------------------------------------- MNIST, Fashion-MNIST

_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_DOWNLOAD_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class _IdxSpec:
    title: str
    mirrors: tuple[str, ...]  # base URLs ending with "/"
    md5: dict[str, str]  # "<file>.gz" -> hex digest of the published file
    class_names: tuple[str, ...]


_IDX_DATASETS: dict[str, _IdxSpec] = {
    "mnist": _IdxSpec(
        title="MNIST",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        class_names=tuple(str(d) for d in range(10)),
    ),
    "fashion-mnist": _IdxSpec(
        title="Fashion-MNIST",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
}


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None, *, flatten: bool = True, download: bool = True
) -> Split:
    """Load MNIST handwritten digits: ``((x_train, y_train), (x_test, y_test))``, 60000/10000.

    x is float32 in [0, 1] of shape (N, 784), or (N, 28, 28) with ``flatten=False``;
    y is int64 in 0..9. See :func:`load_fashion_mnist` for where the files are looked up.

    Example:
        >>> (x_train, y_train), (x_test, y_test) = load_mnist("/work/shared/datasets")  # doctest: +SKIP
        >>> x_train.shape, y_test.dtype  # doctest: +SKIP
        ((60000, 784), dtype('int64'))
    """
    return _load_idx_dataset("mnist", data_dir, flatten=flatten, download=download)


def load_fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None, *, flatten: bool = True, download: bool = True
) -> Split:
    """Load Fashion-MNIST (Zalando article images): ``((x_train, y_train), (x_test, y_test))``.

    Same shapes and dtypes as :func:`load_mnist`; the labels 0..9 mean T-shirt/top, Trouser,
    Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot.

    The four files ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
    ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz`` (or without ``.gz``) are
    looked up, first complete folder wins, in: ``data_dir``; ``$BACKPROP_DATA``; the cache
    ``$XDG_CACHE_HOME/backprop/<name>`` (default ``~/.cache/backprop/<name>``). The first two
    may hold the files directly or in a subfolder ``mnist/`` resp. ``fashion-mnist/``. When
    none has them and ``download`` is true, they are downloaded into the cache (MD5-checked);
    otherwise FileNotFoundError says what was searched and how to provide the files.

    Example:
        >>> (x_train, y_train), _ = load_fashion_mnist(flatten=False, download=False)  # doctest: +SKIP
        >>> x_train.shape  # doctest: +SKIP
        (60000, 28, 28)
    """
    return _load_idx_dataset("fashion-mnist", data_dir, flatten=flatten, download=download)


def _load_idx_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, *, flatten: bool = True, download: bool = True
) -> Split:
    spec = _IDX_DATASETS[name]
    searched = _candidate_dirs(name, data_dir)
    paths = _find_files(searched)
    failure = "downloading is disabled (download=False)"
    if paths is None and download:
        try:
            _download(spec, _cache_dir(name))
        except OSError as exc:  # network errors and an unwritable cache alike
            failure = f"the download failed: {exc}"
        paths = _find_files([_cache_dir(name)])
    if paths is None:
        raise FileNotFoundError(_missing_message(spec, name, searched, failure))

    _check_not_other_dataset(spec, paths)
    train = _read_split(paths[_FILES[0]], paths[_FILES[1]], flatten)
    test = _read_split(paths[_FILES[2]], paths[_FILES[3]], flatten)
    return train, test


def _cache_dir(name: str) -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # NOTE: the XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "backprop" / name


def _candidate_dirs(name: str, data_dir: str | os.PathLike[str] | None) -> list[Path]:
    dirs: list[Path] = []
    for base in (data_dir, os.environ.get("BACKPROP_DATA") or None):
        if base is not None:
            base = Path(base).expanduser()
            # NOTE: the named subfolder comes first, so a parent folder is never mistaken
            # for the data folder of another set.
            dirs += [base / name, base]
    dirs.append(_cache_dir(name))
    return list(dict.fromkeys(dirs))  # drop duplicates, keep the order


def _find_in(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _find_files(dirs: Iterable[Path]) -> dict[str, Path] | None:
    """The four files from the first folder that holds all of them."""
    for folder in dirs:
        found = {stem: _find_in(folder, stem) for stem in _FILES}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return None


def _download(spec: _IdxSpec, folder: Path) -> None:
    """Fetch the missing files of ``spec`` into ``folder``; OSError if any cannot be had."""
    folder.mkdir(parents=True, exist_ok=True)
    dead: set[str] = set()  # mirrors that did not answer: not retried for the next file
    for stem in _FILES:
        if _find_in(folder, stem) is not None:
            continue
        filename = f"{stem}.gz"
        errors = []
        for mirror in spec.mirrors:
            if mirror in dead:
                continue
            url = mirror + filename
            try:
                _fetch(url, folder / filename, spec.md5[filename])
                break
            except (urllib.error.HTTPError, ValueError) as exc:  # the server answered: mirror alive
                errors.append(f"{url}: {exc}")
            except (OSError, http.client.HTTPException) as exc:  # no route, DNS failure, timeout, reset
                dead.add(mirror)
                errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
        else:
            raise OSError("; ".join(errors) or f"no mirror left to try for {filename}")


def _fetch(url: str, dest: Path, md5: str) -> None:
    """Download ``url`` to ``dest`` via a temp file in the same folder, checking its MD5."""
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        digest = hashlib.md5()
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response, part.open("wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise ValueError(f"MD5 mismatch: got {digest.hexdigest()}, expected {md5}")
        # NOTE: rename only once complete and verified, so an interrupted download never
        # leaves a file under the final name.
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def _missing_message(spec: _IdxSpec, name: str, searched: list[Path], failure: str) -> str:
    lines = [
        f"{spec.title} files not found. Need these four in one folder (gzip-compressed or not): "
        + ", ".join(f"{stem}.gz" for stem in _FILES)
        + ".",
        "Searched:",
    ]
    for folder in searched:
        if not folder.is_dir():
            lines.append(f"  {folder} (no such folder)")
        else:
            missing = [f"{stem}.gz" for stem in _FILES if _find_in(folder, stem) is None]
            lines.append(f"  {folder} (missing {', '.join(missing)})")
    lines.append(f"Not downloaded: {failure}.")
    lines.append(
        f"Provide the files with --data-dir DIR or the environment variable BACKPROP_DATA=DIR, "
        f"where DIR holds them or a subfolder {name}/ with them."
    )
    return "\n".join(lines)


def _check_not_other_dataset(spec: _IdxSpec, paths: dict[str, Path]) -> None:
    # NOTE: MNIST and Fashion-MNIST share file names and shapes, so a data_dir pointing
    # at the wrong folder would load silently. The small label files give it away.
    for stem in (_FILES[1], _FILES[3]):
        path = paths[stem]
        if path.suffix != ".gz":
            continue
        digest = hashlib.md5(path.read_bytes()).hexdigest()
        for other in _IDX_DATASETS.values():
            if other is not spec and other.md5.get(f"{stem}.gz") == digest:
                raise ValueError(f"{path} is the {other.title} file, not {spec.title}: check the data folder")


def _read_split(images_path: Path, labels_path: Path, flatten: bool) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{images_path}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(
            f"{labels_path}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}"
        )
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images in {images_path} but {len(labels)} labels in {labels_path}")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_path}: labels must be 0..9, found {int(labels.max())}")
    if flatten:
        images = images.reshape(len(images), -1)  # a view: the array is contiguous
    x = images.astype(np.float32)
    np.divide(x, 255.0, out=x)  # in place: no second 188 MB temporary for the train set
    return x, labels.astype(np.int64)


# --------------------------------------------------------------------------- digits


def load_digits(test_size: float = 0.2, seed: int | None = 0) -> Split:
    """The 8x8 handwritten digits bundled with backprop (1797 samples, no download), stratified split.

    x is float32 in [0, 1] of shape (N, 64) (the 0..16 counts divided by 16); y is int64 in 0..9.
    ``test_size`` is a fraction in [0, 1) or a sample count; ``seed`` fixes the split, which is the one
    scikit-learn's ``train_test_split(..., stratify=y, random_state=seed)`` makes (see :func:`_split`).

    The data: the test set of the UCI "Optical Recognition of Handwritten Digits" (E. Alpaydin and
    C. Kaynak, 1998, https://doi.org/10.24432/C50P49, CC BY 4.0), as scikit-learn distributes it
    (``sklearn.datasets.load_digits``), in the same order, shipped in the package as ``digits.npz``
    (45 KB; ``DIGITS_NOTICE.txt`` beside it says where it comes from).

    Example:
        >>> (x_train, y_train), (x_test, y_test) = load_digits()
        >>> x_train.shape, x_test.shape, x_train.dtype, float(x_train.max())
        ((1437, 64), (360, 64), dtype('float32'), 1.0)
    """
    # NOTE: package data, not scikit-learn's copy: the core install has no scikit-learn (an extra).
    with resources.files(__package__).joinpath("digits.npz").open("rb") as f, np.load(f) as npz:
        data, target = npz["data"], npz["target"]
    x = data.astype(np.float32) / np.float32(16.0)
    y = target.astype(np.int64)
    return _split(x, y, test_size, seed)


def _split(x: np.ndarray, y: np.ndarray, test_size: float, seed: int | None) -> Split:
    """Seeded train/test split, stratified by class whenever every class can be in both parts.

    The split is scikit-learn's ``train_test_split(x, y, test_size=n_test, random_state=seed,
    stratify=y or None)``, sample for sample (a test checks it against scikit-learn when installed), so
    every figure measured on it before scikit-learn became optional still holds.
    """
    n = len(x)
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float, np.integer, np.floating)):
        raise TypeError(f"test_size must be a fraction or a sample count, got {test_size!r}")
    if isinstance(test_size, (float, np.floating)):
        if not 0.0 <= test_size < 1.0:
            raise ValueError(f"test_size as a fraction must be in [0, 1), got {test_size}")
        n_test = math.ceil(test_size * n)  # what scikit-learn does
        if n_test >= n > 0:
            raise ValueError(
                f"test_size={test_size} leaves no training samples: ceil({test_size} * {n}) = {n_test} of the "
                f"{n} samples would go to the test split"
            )
    else:
        if not 0 <= test_size < n:
            raise ValueError(f"test_size as a count must be in [0, {n}) for {n} samples, got {test_size}")
        n_test = int(test_size)
    if n_test == 0:
        return (x, y), (x[:0], y[:0])

    counts = np.bincount(y)
    n_classes = int(np.count_nonzero(counts))
    # NOTE: stratifying needs >= 2 samples per class and room for every class on both
    # sides; tiny CSV files may not allow it, and then the split is only shuffled.
    can_stratify = counts[counts > 0].min() >= 2 and min(n_test, n - n_test) >= n_classes
    rng = _random_state(seed)
    if can_stratify:
        train, test = _stratified_indices(y, n - n_test, n_test, rng)
    else:  # scikit-learn's ShuffleSplit
        permutation = rng.permutation(n)
        train, test = permutation[n_test:], permutation[:n_test]
    return (x[train], y[train]), (x[test], y[test])


def _random_state(seed: int | None) -> np.random.RandomState:
    """sklearn.utils.check_random_state: a RandomState seeded with ``seed``, or NumPy's global one for None."""
    # NOTE: the legacy RandomState, not a Generator: its streams are frozen (NEP 19), which is what keeps the
    # split equal to scikit-learn's on every NumPy version. seed=None draws from the global RandomState as
    # scikit-learn does, so np.random.seed() governs it in both.
    if seed is None:
        return np.random.mtrand._rand
    return np.random.RandomState(seed)


def _stratified_indices(
    y: np.ndarray, n_train: int, n_test: int, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices as scikit-learn's StratifiedShuffleSplit draws its first split.

    Each class gets its share of the train and the test rows (:func:`_approximate_mode`), its rows
    are shuffled and dealt to train then test, and each part is shuffled again, drawing from ``rng`` in
    scikit-learn's order (sklearn.model_selection._split.StratifiedShuffleSplit._iter_indices, 1.6-1.9).
    """
    classes, y_indices = np.unique(y, return_inverse=True)
    class_counts = np.bincount(y_indices)
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(classes)):
        permutation = rng.permutation(class_counts[i])
        rows = class_indices[i].take(permutation, mode="clip")
        train.extend(rows[: n_i[i]])
        test.extend(rows[n_i[i]: n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of ``n_draws`` rows each class gets: its proportional share, floored, the rest going to the
    largest remainders (ties broken at random), as sklearn.utils._approximate_mode.

    >>> _approximate_mode(np.array([4, 4]), 4, np.random.RandomState(0)).tolist()
    [2, 2]
    """
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            inds = rng.choice(inds, size=add_now, replace=False)
            floored[inds] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


# --------------------------------------------------------------------------- CSV


def load_csv(
    path: str | os.PathLike[str],
    label_column: int | str | None = None,
    header: bool | str | None = "infer",
    test_size: float = 0.2,
    seed: int | None = 0,
    delimiter: str = ",",
    task: str = "classification",
    classes: Sequence[Any] | None = None,
) -> Dataset:
    """Load a numeric CSV file, one sample per row, as a :class:`Dataset`.

    Args:
        path: the CSV file (UTF-8).
        label_column: the label column, by 0-based index (negative counts from the end) or
            by header name. None: a column named ``label`` if the header has one, else the last.
        header: True (first row holds column names), False/None (it holds data), or
            ``"infer"``: it is a header if all its cells are non-numeric, or if a cell is
            non-numeric where the second row has a number.
        test_size, seed: the seeded, stratified train/test split (see :func:`load_digits`);
            ``test_size=0`` puts the whole file in the train part (in file order).
        delimiter: the field separator, one character (``"\\t"`` for tab-separated files).
        task: ``"classification"``: the labels are classes, integers (``3`` or ``3.0``) or text.
            ``"regression"``: the label column is a number to predict: y is float32 (N,),
            ``classes`` is empty and the split is shuffled, not stratified. ``"auto"``:
            regression if every label is a number and not all are integers, else classification.
        classes: the class values the labels must be one of, in this order (a saved model's
            ``classes``): y indexes them, ``Dataset.classes`` is them, and a label outside them is
            an :class:`UnknownLabel` error. Integer classes match the labels by value (``"1"`` and
            ``"1.0"`` are class 1), text classes by their exact text (case-sensitive). None: the
            sorted unique labels of the file.

    Every other column is a float32 feature. Without ``classes``, the sorted unique labels become
    ``classes`` and y their indices.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an empty file, a row with the wrong number of columns, a non-numeric or
            non-finite feature, an empty label, a non-integer numeric label (classification) or a
            non-numeric one (regression), a label not in ``classes``; the message names the file,
            the line and the column (1-based).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "toy.csv"
        >>> _ = path.write_text("x1,x2,label\\n0,1,cat\\n1,0,dog\\n0,2,cat\\n2,0,dog\\n")
        >>> ds = load_csv(path, test_size=0.5)
        >>> ds.x_train.shape, ds.classes.tolist(), sorted(ds.y_test.tolist())
        ((2, 2), ['cat', 'dog'], [0, 1])
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    if header not in ("infer", True, False, None):
        raise ValueError(f"header must be 'infer', True or False, got {header!r}")
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '"\r\n':
        raise ValueError(f"delimiter must be one character other than a quote or a line break, got {delimiter!r}")
    if task not in _TASKS:
        raise ValueError(f"task must be one of {', '.join(map(repr, _TASKS))}, got {task!r}")
    if classes is not None and task != "classification":
        raise ValueError(f"classes apply to task='classification' only, got task={task!r}")

    # NOTE: utf-8-sig drops the byte-order mark that spreadsheet exports put first.
    with path.open(newline="", encoding="utf-8-sig") as f:
        # NOTE: strict: an unclosed quote is an error, not a field that swallows the rest of the file
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        start = [1]  # the line the row being read starts on (a quoted field may span lines)
        try:
            rows = _nonblank_rows(reader, start)
            head = list(itertools.islice(rows, 2))
            if not head:
                raise ValueError(f"{path}: empty CSV file (no rows)")
            has_header = _looks_like_header(head) if header == "infer" else bool(header)
            names = head[0][1] if has_header else None
            body = itertools.chain(head[1:] if has_header else head, rows)
            ref_line, ref_row = head[0]
            n_cols = len(ref_row)
            if n_cols < 2:
                raise ValueError(
                    f"{path}, line {ref_line}: need at least 2 columns (features and a label), got {n_cols}"
                    + _delimiter_hint(path, ref_line, delimiter)
                )
            label_idx = _label_index(path, label_column, names, n_cols)
            feats, labels, lines = _parse_rows(path, body, n_cols, label_idx, names, ref_line)
        except csv.Error as exc:
            raise ValueError(_malformed(path, start[0], reader.line_num, exc, delimiter)) from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not UTF-8 text ({exc})") from exc
    if not feats:
        raise ValueError(f"{path}: no data rows (only a header)")

    x = np.stack(feats)
    if not np.isfinite(x).all():
        i, j = np.argwhere(~np.isfinite(x))[0]
        column = j if j < label_idx else j + 1
        raise ValueError(
            f"{path}, {_where(lines[i], column, names)}: feature {x[i, j]} is not a finite number"
        )
    if task == "auto":
        task = "regression" if _numeric_not_integer(labels) else "classification"
    if task == "regression":
        y, classes = _regression_targets(path, labels, lines, label_idx, names), np.array([], np.float32)
    else:
        y, classes = _encode_labels(path, labels, lines, label_idx, names, classes)
    try:
        if task == "regression":
            # NOTE: not stratified (there are no classes): scikit-learn's train_test_split without stratify,
            # which _split does for labels that are all distinct (one sample per "class")
            rows = np.arange(len(y))
            (train_rows, _), (test_rows, _) = _split(rows, rows, test_size, seed)
            train, test = (x[train_rows], y[train_rows]), (x[test_rows], y[test_rows])
        else:
            train, test = _split(x, y, test_size, seed)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return Dataset(*train, *test, classes=classes, name=f"csv:{path.name}")


def _nonblank_rows(reader: Iterator[list[str]], start: list[int]) -> Iterator[tuple[int, list[str]]]:
    """(line number, stripped cells) of each row that is not blank; ``start[0]`` is the line being read."""
    while True:
        start[0] = reader.line_num + 1  # type: ignore[attr-defined]
        row = next(reader, None)
        if row is None:
            return
        cells = [cell.strip() for cell in row]
        if len(cells) > 1 or (cells and cells[0]):
            yield reader.line_num, cells  # type: ignore[attr-defined]


def _malformed(path: Path, start: int, end: int, exc: csv.Error, delimiter: str) -> str:
    """The message for a row the csv module cannot parse: its line and, for an unclosed quote, the column."""
    text = ""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            text = next(itertools.islice(f, start - 1, None), "")
    except (OSError, UnicodeDecodeError):
        pass
    if "unexpected end of data" in str(exc) and text:
        # the fields before the unclosed one, as a lenient reader splits the line
        column = len(next(csv.reader([text], delimiter=delimiter), [""]))
        return (f"{path}, line {start}, column {column}: malformed CSV: the quoted field that starts there is "
                f"never closed (the file ends on line {end})")
    return f"{path}, line {start}: malformed CSV ({exc})"


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _looks_like_header(head: list[tuple[int, list[str]]]) -> bool:
    first = [not _is_number(cell) for cell in head[0][1]]
    if all(first):
        return True
    if len(head) < 2:
        return False
    return any(text and _is_number(cell) for text, cell in zip(first, head[1][1]))


def _where(line: int, column: int, names: list[str] | None) -> str:
    name = f" ({names[column]!r})" if names else ""
    return f"line {line}, column {column + 1}{name}"


def _label_index(path: Path, label_column: int | str | None, names: list[str] | None, n_cols: int) -> int:
    if label_column is None:
        lowered = [n.lower() for n in names] if names else []
        return lowered.index("label") if lowered.count("label") == 1 else n_cols - 1
    if isinstance(label_column, str):
        if names is None:
            raise ValueError(
                f"{path}: label_column={label_column!r} is a name, but the file has no header row "
                "(give a column index, or header=True)"
            )
        if names.count(label_column) != 1:
            problem = "is not a column" if label_column not in names else "names several columns"
            raise ValueError(f"{path}: label_column={label_column!r} {problem}; the columns are {names}")
        return names.index(label_column)
    if isinstance(label_column, bool) or not isinstance(label_column, (int, np.integer)):
        raise TypeError(f"label_column must be a column index, a column name or None, got {label_column!r}")
    if not -n_cols <= label_column < n_cols:
        raise ValueError(f"{path}: label_column={label_column} is out of range for {n_cols} columns")
    return int(label_column) % n_cols


def _parse_rows(
    path: Path,
    body: Iterable[tuple[int, list[str]]],
    n_cols: int,
    label_idx: int,
    names: list[str] | None,
    ref_line: int,
) -> tuple[list[np.ndarray], list[str], list[int]]:
    """Float32 features, label strings and line numbers of each row, validated as they stream."""
    feats: list[np.ndarray] = []
    labels: list[str] = []
    lines: list[int] = []
    for line, row in body:
        if len(row) != n_cols:
            raise ValueError(
                f"{path}, line {line}: expected {n_cols} columns (as on line {ref_line}), got {len(row)}"
            )
        labels.append(row.pop(label_idx))
        lines.append(line)
        try:
            with np.errstate(over="ignore"):  # 1e39 becomes inf, reported below as non-finite
                feats.append(np.array(row, dtype=np.float32))
        except ValueError:
            for j, cell in enumerate(row):
                if not _is_number(cell):
                    column = j if j < label_idx else j + 1
                    raise ValueError(
                        f"{path}, {_where(line, column, names)}: cannot read {cell!r} as a number"
                    ) from None
            raise  # NOTE: unreachable unless numpy and float() disagree; never swallow it
    return feats, labels, lines


_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


def _as_int(cell: str) -> int | None:
    """The integer a label cell holds ("3" or "3.0"), else None."""
    try:
        return int(cell)
    except ValueError:
        pass
    try:
        value = float(cell)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def _encode_labels(
    path: Path, labels: list[str], lines: list[int], label_idx: int, names: list[str] | None,
    known: Sequence[Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class indices y and the classes: the sorted unique label values, or ``known`` when given."""
    for i, cell in enumerate(labels):
        if not cell:
            raise ValueError(f"{path}, {_where(lines[i], label_idx, names)}: empty label")
    if known is not None:
        return _encode_known(path, labels, lines, label_idx, names, known)
    ints = [_as_int(cell) for cell in labels]
    if all(v is not None for v in ints):
        big = next((i for i, v in enumerate(ints) if not _INT64_MIN <= v <= _INT64_MAX), None)
        if big is not None:
            raise ValueError(
                f"{path}, {_where(lines[big], label_idx, names)}: label {labels[big]!r} is too large "
                f"for a class label (a 64-bit integer: at most {_INT64_MAX} in magnitude)"
            )
        classes, y = np.unique(np.array(ints, dtype=np.int64), return_inverse=True)
    elif all(_is_number(cell) for cell in labels):
        i = next(i for i, v in enumerate(ints) if v is None)
        raise ValueError(
            f"{path}, {_where(lines[i], label_idx, names)}: label {labels[i]!r} is not an integer, and class "
            "labels are integers or text; a number to predict needs task='regression' (backprop train: "
            "--task regression --loss mse)"
        )
    else:
        classes, y = np.unique(np.array(labels, dtype=str), return_inverse=True)
    return y.astype(np.int64).reshape(-1), classes


class UnknownLabel(ValueError):
    """A CSV label that is not one of the classes given to :func:`load_csv` (a saved model's, say).

    Attributes: ``label`` (the cell's text), ``where`` (``"<file>, line L, column C"``), ``classes``
    (the classes given). The message names all three.
    """

    def __init__(self, label: str, where: str, classes: Sequence[Any]) -> None:
        self.label, self.where, self.classes = label, where, list(classes)
        super().__init__(f"{where}: label {label!r} is not one of the classes {self.classes}")


def _is_int_class(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _encode_known(
    path: Path, labels: list[str], lines: list[int], label_idx: int, names: list[str] | None,
    known: Sequence[Any],
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the labels into ``known``; the first label outside it is an :class:`UnknownLabel`."""
    known = [c.item() if isinstance(c, np.generic) else c for c in known]
    if not known:
        raise ValueError("classes must not be empty")
    # NOTE: a CSV cell is text, a saved class an int or a str. Integer classes are matched by value, as
    # load_csv reads integer labels ("1", "1.0", " 1" are all 1); any other class by its exact text, so a
    # renamed class ("SETOSA" for "setosa") is an error, never a new class.
    as_int = all(_is_int_class(c) for c in known)
    index: dict[Any, int] = {(int(c) if as_int else str(c)): k for k, c in enumerate(known)}
    y = np.empty(len(labels), dtype=np.int64)
    for i, cell in enumerate(labels):
        k = index.get(_as_int(cell) if as_int else cell)
        if k is None:
            raise UnknownLabel(cell, f"{path}, {_where(lines[i], label_idx, names)}", known)
        y[i] = k
    return y, np.array(known, dtype=np.int64 if as_int else str)


def _numeric_not_integer(labels: list[str]) -> bool:
    """task='auto': every label a number, and not all of them integers."""
    return all(_is_number(cell) for cell in labels) and any(_as_int(cell) is None for cell in labels)


def _regression_targets(
    path: Path, labels: list[str], lines: list[int], label_idx: int, names: list[str] | None
) -> np.ndarray:
    """The label column as float32 numbers to predict; errors name the first cell that is not a finite one."""
    y = np.empty(len(labels), dtype=np.float32)
    for i, cell in enumerate(labels):
        try:
            value = float(cell)
        except ValueError:
            raise ValueError(f"{path}, {_where(lines[i], label_idx, names)}: target {cell!r} is not a number "
                             "(task='regression' predicts a number)") from None
        with np.errstate(over="ignore"):
            y[i] = value
        if not np.isfinite(y[i]):
            raise ValueError(f"{path}, {_where(lines[i], label_idx, names)}: target {cell!r} is not a finite "
                             "float32 number")
    return y


def _delimiter_hint(path: Path, line: int, delimiter: str) -> str:
    """For a one-column file: which other separator its first row holds, as a hint, else ''."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            text = next(itertools.islice(f, line - 1, None), "")
    except (OSError, UnicodeDecodeError):
        return ""
    for sep, cli in ((";", "';'"), ("\t", "tab"), ("|", "'|'"), (",", "','"), (" ", "' '")):
        if sep != delimiter and sep in text.strip():
            return (f"; if {sep!r} separates the fields, pass delimiter={sep!r} (backprop: --delimiter {cli})")
    return ""


_TASKS = ("classification", "regression", "auto")


# --------------------------------------------------------------------------- one entry point

DATASET_SPECS = ("digits", "mnist", "fashion-mnist", "csv:PATH")

#: Data sets other modules of ``backprop.data`` add (:func:`register_dataset`): name -> (loader, how it is written).
_REGISTERED: dict[str, tuple[Callable[..., Dataset], str]] = {}


def register_dataset(name: str, loader: Callable[..., Dataset], spec: str | None = None) -> None:
    """Make ``load_dataset(name)`` and ``load_dataset(f"{name}:ARG")`` return ``loader(arg, data_dir, **kw)``
    (``arg``: the text after the first colon, or None); ``spec`` is how error messages write it (``"adding[:T]"``).

    NOTE: a registry, so that the sequence data sets (:mod:`backprop.data.sequences`, which builds on this
    module) reach the one entry point without this module importing them.
    """
    _REGISTERED[name] = (loader, spec or name)


def load_dataset(spec: str, data_dir: str | os.PathLike[str] | None = None, **kw: object) -> Dataset:
    """Load a data set by name: ``"digits"``, ``"mnist"``, ``"fashion-mnist"`` or ``"csv:PATH"``, or one of
    the sequence sets (``"seq-mnist"``, ``"adding[:T]"``, ``"copy[:T]"``, ``"text:PATH"``, see
    :mod:`backprop.data.sequences`).

    ``data_dir`` is where MNIST/Fashion-MNIST are looked up (see :func:`load_fashion_mnist`);
    digits and CSV ignore it. Other keywords go to the loader (``flatten``, ``download``;
    ``test_size``, ``seed``; ``label_column``, ``header``, ``delimiter``, ``task``, ``classes``).
    Names are case-insensitive and ``_`` may stand for ``-``; a path ending in ``.csv`` needs no ``csv:``.

    Example:
        >>> ds = load_dataset("digits", seed=1)
        >>> ds.name, ds.classes.tolist()[:3], ds.y_train.dtype
        ('digits', [0, 1, 2], dtype('int64'))
    """
    if not isinstance(spec, str):
        raise TypeError(
            f"dataset spec must be a string like 'mnist' or 'csv:PATH', got {type(spec).__name__}"
        )
    head, colon, arg = spec.partition(":")
    registered = _REGISTERED.get(head.strip().lower().replace("_", "-"))
    if registered is not None:
        return registered[0](arg if colon else None, data_dir, **kw)
    if spec.startswith("csv:") or spec.lower().endswith(".csv"):
        csv_path = spec.removeprefix("csv:")
        if not csv_path:
            raise ValueError("dataset spec 'csv:' needs a path, e.g. 'csv:data/iris.csv'")
        return load_csv(csv_path, **kw)  # type: ignore[arg-type]

    key = spec.strip().lower().replace("_", "-")
    digits = np.arange(10, dtype=np.int64)
    if key == "digits":
        (x_train, y_train), (x_test, y_test) = load_digits(**kw)  # type: ignore[arg-type]
        return Dataset(x_train, y_train, x_test, y_test, classes=digits, name="digits")
    if key in _IDX_DATASETS:
        (x_train, y_train), (x_test, y_test) = _load_idx_dataset(key, data_dir, **kw)  # type: ignore[arg-type]
        names = _IDX_DATASETS[key].class_names
        return Dataset(x_train, y_train, x_test, y_test, classes=digits, name=key, class_names=names)
    valid = ", ".join(repr(s) for s in (*DATASET_SPECS, *(spec for _, spec in _REGISTERED.values())))
    raise ValueError(f"unknown dataset {spec!r}; valid: {valid}")
