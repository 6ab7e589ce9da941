"""IDX files, MNIST / Fashion-MNIST lookup and loading, digits and CSV loaders, load_dataset."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backprop.data import datasets as ds_mod
from backprop.data.datasets import (
    Dataset,
    load_csv,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_mnist,
)
from backprop.data.idx import read_idx, write_idx

FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# The shared read-only copies beside the repository, or $BACKPROP_DATA (read at import,
# before the isolation fixture below clears it).
DATA_ROOTS = [Path(p) for p in (os.environ.get("BACKPROP_DATA"),) if p] + [
    Path(__file__).resolve().parents[2] / "shared" / "datasets"
]


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No test sees the user's BACKPROP_DATA or cache, nor writes to ~/.cache."""
    monkeypatch.delenv("BACKPROP_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28),
        np.array([7, 2, 1, 0], dtype=np.uint8),
        np.array([-128, 0, 127], dtype=np.int8),
        np.arange(-6, 6, dtype=np.int16).reshape(3, 4),
        np.array([[1, -(2**31)], [2**31 - 1, 0]], dtype=np.int32),
        np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4),
        np.array([np.pi, -np.e, 1e300], dtype=np.float64),
    ],
    ids=lambda a: f"{a.dtype}{a.shape}",
)
def test_idx_round_trip(tmp_path, array, suffix):
    path = tmp_path / f"data-idx{suffix}"
    write_idx(path, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    out = read_idx(path)
    assert out.dtype == array.dtype and out.dtype.isnative and out.flags.writeable
    np.testing.assert_array_equal(out, array)


def test_idx_header_is_big_endian_as_published(tmp_path):
    write_idx(tmp_path / "x", np.zeros((60000, 28, 28), dtype=np.uint8)[:3])
    assert (tmp_path / "x").read_bytes()[:16] == bytes.fromhex("00000803 00000003 0000001c 0000001c")


def test_idx_compression_is_detected_from_content(tmp_path):
    write_idx(tmp_path / "raw", np.arange(5, dtype=np.uint8))
    (tmp_path / "raw").rename(tmp_path / "misnamed.gz")
    np.testing.assert_array_equal(read_idx(tmp_path / "misnamed.gz"), np.arange(5))


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_and_overlong_payload(tmp_path, gz):
    good = tmp_path / "good"
    write_idx(good, np.zeros((3, 4), dtype=np.int16))  # 24 payload bytes after a 12-byte header
    data = good.read_bytes()
    for name, blob, word, actual in [
        ("cut", data[:-5], "truncated", 19),
        ("long", data + b"\0", "overlong", 25),
    ]:
        path = tmp_path / (name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(blob) if gz else blob)
        with pytest.raises(ValueError) as info:
            read_idx(path)
        msg = str(info.value)
        assert str(path) in msg and word in msg
        assert "(3, 4)" in msg and "24 bytes" in msg and f"{actual} bytes" in msg


@pytest.mark.parametrize(
    ("blob", "needle"),
    [
        (b"", "too short"),
        (b"\x00\x00", "too short"),
        (bytes.fromhex("01020801 00000001 07"), "bad magic number 0x01020801"),
        (bytes.fromhex("00000A01 00000001 07"), "unsupported IDX type code 0x0A"),
        (bytes.fromhex("00000800"), "0 dimensions"),
        (bytes.fromhex("00000803 00000001 0000"), "truncated IDX header"),
        (bytes.fromhex("00000803 ffffffff ffffffff ffffffff 00"), "truncated IDX payload"),
    ],
)
def test_idx_bad_headers(tmp_path, blob, needle):
    path = tmp_path / "bad-idx"
    path.write_bytes(blob)
    with pytest.raises(ValueError, match="bad-idx") as info:
        read_idx(path)
    assert needle in str(info.value)


def test_idx_corrupt_gzip(tmp_path):
    write_idx(tmp_path / "ok.gz", np.arange(1000, dtype=np.int32))
    data = bytearray((tmp_path / "ok.gz").read_bytes())
    cut = tmp_path / "cut.gz"
    cut.write_bytes(bytes(data[: len(data) // 2]))  # stream ends early
    flipped = tmp_path / "flipped.gz"
    data[len(data) // 2] ^= 0xFF  # bad deflate data or a CRC mismatch
    flipped.write_bytes(bytes(data))
    for path in (cut, flipped):
        with pytest.raises(ValueError, match="corrupt gzip stream") as info:
            read_idx(path)
        assert str(path) in str(info.value)


def test_idx_missing_file_and_bad_writes(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        read_idx(tmp_path / "nope")
    with pytest.raises(TypeError, match="int64"):
        write_idx(tmp_path / "x", np.arange(3, dtype=np.int64))
    with pytest.raises(ValueError, match="dimensions"):
        write_idx(tmp_path / "x", np.uint8(3))


_header = st.builds(
    lambda code, dims, extra: (
        bytes([0, 0, code, len(dims)])
        + np.asarray(dims, dtype=">u4").tobytes()
        + bytes(max(0, int(np.prod(dims)) + extra))
    ),
    code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x0A, 0x00]),
    dims=st.lists(st.integers(0, 6), min_size=0, max_size=4),
    extra=st.integers(-3, 3),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.one_of(st.binary(max_size=300), _header), compress=st.booleans())
def test_idx_random_bytes_give_an_array_or_value_error(tmp_path, blob, compress):
    path = tmp_path / "fuzz"
    path.write_bytes(gzip.compress(blob) if compress else blob)
    try:
        out = read_idx(path)
    except ValueError as exc:
        assert str(path) in str(exc)
        return
    header = 4 + 4 * out.ndim
    assert out.dtype.isnative and out.nbytes == len(blob) - header
    assert out.shape == tuple(np.frombuffer(blob, ">u4", count=out.ndim, offset=4))


# --------------------------------------------------------------------------- MNIST, Fashion-MNIST: real files


def _real(name: str) -> Path:
    for root in DATA_ROOTS:
        for folder in (root / name, root):
            if all((folder / f).is_file() for f in FILES):
                return folder
    pytest.skip(f"{name} IDX files not found in {[str(r) for r in DATA_ROOTS]} (set BACKPROP_DATA)")


@pytest.fixture(scope="module")
def mnist():
    return load_mnist(_real("mnist"), download=False)


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion-mnist", data_dir=_real("fashion-mnist"), download=False)


@pytest.mark.mnist
def test_real_mnist(mnist):
    (x_train, y_train), (x_test, y_test) = mnist
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert np.bincount(y_train, minlength=10).sum() == 60000
    np.testing.assert_array_equal(
        np.bincount(y_test), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    )


@pytest.mark.mnist
def test_real_fashion_mnist(fashion):
    assert fashion.name == "fashion-mnist" and fashion.n_features == 784 and fashion.n_classes == 10
    assert fashion.x_train.shape == (60000, 784) and fashion.x_test.dtype == np.float32
    assert 0.0 <= fashion.x_test.min() and fashion.x_test.max() <= 1.0
    np.testing.assert_array_equal(np.bincount(fashion.y_test), np.full(10, 1000))
    np.testing.assert_array_equal(fashion.classes, np.arange(10))
    assert fashion.class_names[0] == "T-shirt/top" and fashion.class_names[9] == "Ankle boot"


@pytest.mark.mnist
def test_real_parent_folder_and_env_var(monkeypatch):
    folder = _real("mnist")
    if folder.name != "mnist":
        pytest.skip("the MNIST files are not in a folder named mnist/")
    monkeypatch.setenv("BACKPROP_DATA", str(folder.parent))
    (_, _), (x_test, y_test) = load_mnist(download=False)
    assert x_test.shape == (10000, 784) and y_test[:3].tolist() == [7, 2, 1]


# --------------------------------------------------------------------------- lookup, with small made-up files


def make_fake(folder: Path, n_train: int = 12, n_test: int = 8, gz: bool = True, seed: int = 0) -> dict:
    """Four small IDX files in MNIST layout; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    }
    for stem, array in arrays.items():
        write_idx(folder / (stem + (".gz" if gz else "")), array)
    return arrays


def test_fake_files_in_data_dir(tmp_path):
    arrays = make_fake(tmp_path / "here")
    (x_train, y_train), (x_test, y_test) = load_mnist(tmp_path / "here", download=False)
    assert x_train.shape == (12, 784) and x_test.shape == (8, 784)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    np.testing.assert_array_equal(
        x_train, arrays["train-images-idx3-ubyte"].reshape(12, 784) / np.float32(255)
    )
    np.testing.assert_array_equal(y_test, arrays["t10k-labels-idx1-ubyte"])
    (x_train, _), _ = load_mnist(str(tmp_path / "here"), flatten=False, download=False)
    assert x_train.shape == (12, 28, 28)
    assert x_train.max() <= 1.0 and x_train.min() >= 0.0


def test_fake_files_in_named_subfolder_and_raw(tmp_path):
    make_fake(tmp_path / "fashion-mnist", n_train=5, gz=False)
    (x_train, _), _ = load_fashion_mnist(tmp_path, download=False)
    assert x_train.shape == (5, 784)


def test_env_var_direct_and_subfolder(tmp_path, monkeypatch):
    make_fake(tmp_path / "direct", n_train=3)
    monkeypatch.setenv("BACKPROP_DATA", str(tmp_path / "direct"))
    assert load_mnist(download=False)[0][0].shape == (3, 784)
    make_fake(tmp_path / "root" / "mnist", n_train=4)
    monkeypatch.setenv("BACKPROP_DATA", str(tmp_path / "root"))
    assert load_mnist(download=False)[0][0].shape == (4, 784)


def test_lookup_order_data_dir_then_env_then_cache(tmp_path, monkeypatch):
    make_fake(tmp_path / "xdg-cache" / "backprop" / "mnist", n_train=2)
    assert load_mnist(download=False)[0][0].shape == (2, 784)  # the cache
    make_fake(tmp_path / "env", n_train=3)
    monkeypatch.setenv("BACKPROP_DATA", str(tmp_path / "env"))
    assert load_mnist(download=False)[0][0].shape == (3, 784)  # env beats cache
    make_fake(tmp_path / "arg", n_train=4)
    assert load_mnist(tmp_path / "arg", download=False)[0][0].shape == (4, 784)  # argument beats env


def test_incomplete_folder_is_skipped(tmp_path, monkeypatch):
    make_fake(tmp_path / "partial")
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte.gz").unlink()
    make_fake(tmp_path / "env", n_train=6)
    monkeypatch.setenv("BACKPROP_DATA", str(tmp_path / "env"))
    assert load_mnist(tmp_path / "partial", download=False)[0][0].shape == (6, 784)


def test_missing_files_message(tmp_path):
    make_fake(tmp_path / "partial")
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path / "partial", download=False)
    msg = str(info.value)
    for name in FILES:
        assert name in msg
    assert str(tmp_path / "partial") in msg and str(tmp_path / "xdg-cache" / "backprop" / "mnist") in msg
    assert "missing t10k-labels-idx1-ubyte.gz" in msg
    assert "--data-dir" in msg and "BACKPROP_DATA" in msg and "download=False" in msg


@pytest.mark.parametrize(
    ("stem", "array", "needle"),
    [
        ("train-images-idx3-ubyte", np.zeros((12, 27, 28), np.uint8), "(N, 28, 28)"),
        ("train-images-idx3-ubyte", np.zeros((12, 28, 28), np.float32), "(N, 28, 28)"),
        ("train-labels-idx1-ubyte", np.zeros((12, 1), np.uint8), "labels of shape (N,)"),
        ("train-labels-idx1-ubyte", np.zeros(11, np.uint8), "12 images"),
        ("t10k-labels-idx1-ubyte", np.full(8, 10, np.uint8), "labels must be 0..9"),
    ],
)
def test_wrong_contents(tmp_path, stem, array, needle):
    make_fake(tmp_path)
    write_idx(tmp_path / f"{stem}.gz", array)
    with pytest.raises(ValueError) as info:
        load_mnist(tmp_path, download=False)
    assert needle in str(info.value)


def test_truncated_file_names_the_file(tmp_path):
    make_fake(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated") as info:
        load_mnist(tmp_path, download=False)
    assert str(path) in str(info.value)


def test_wrong_dataset_folder_is_detected(tmp_path, monkeypatch):
    make_fake(tmp_path)
    digest = hashlib.md5((tmp_path / "train-labels-idx1-ubyte.gz").read_bytes()).hexdigest()
    spec = ds_mod._IDX_DATASETS["mnist"]
    fake_spec = dataclasses.replace(spec, md5={**spec.md5, "train-labels-idx1-ubyte.gz": digest})
    monkeypatch.setitem(ds_mod._IDX_DATASETS, "mnist", fake_spec)
    with pytest.raises(ValueError, match="is the MNIST file, not Fashion-MNIST"):
        load_fashion_mnist(tmp_path, download=False)


# --------------------------------------------------------------------------- download (no network needed)


def _file_mirror(tmp_path, monkeypatch, corrupt: str | None = None) -> Path:
    """Serve made-up files from a file:// mirror, with their MD5s as the published sums."""
    src = tmp_path / "mirror"
    make_fake(src, n_train=7)
    md5 = {f: hashlib.md5((src / f).read_bytes()).hexdigest() for f in FILES}
    if corrupt:
        md5[corrupt] = "0" * 32
    spec = dataclasses.replace(
        ds_mod._IDX_DATASETS["mnist"], mirrors=("http://unreachable.invalid/", src.as_uri() + "/"), md5=md5
    )
    monkeypatch.setitem(ds_mod._IDX_DATASETS, "mnist", spec)
    return src


def test_download_into_cache(tmp_path, monkeypatch):
    _file_mirror(tmp_path, monkeypatch)
    (x_train, _), _ = load_mnist(tmp_path / "empty")
    assert x_train.shape == (7, 784)
    cache = tmp_path / "xdg-cache" / "backprop" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(FILES)  # no .part files left
    assert load_mnist(download=False)[0][0].shape == (7, 784)  # found in the cache now


def test_download_md5_mismatch_keeps_nothing(tmp_path, monkeypatch):
    _file_mirror(tmp_path, monkeypatch, corrupt="t10k-images-idx3-ubyte.gz")
    with pytest.raises(FileNotFoundError, match="MD5 mismatch"):
        load_mnist()
    cache = tmp_path / "xdg-cache" / "backprop" / "mnist"
    assert "t10k-images-idx3-ubyte.gz" not in {p.name for p in cache.iterdir()}
    assert not list(cache.glob("*.part"))


def test_download_without_network_fails_fast(monkeypatch):
    calls = []

    def offline(url, timeout):
        calls.append((url, timeout))
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(ds_mod.urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match="download failed") as info:
        load_fashion_mnist()
    assert "train-images-idx3-ubyte.gz" in str(info.value)
    assert len(calls) == 1 and calls[0][1] <= 10  # a dead mirror is not retried per file


# --------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes_range():
    (x_train, y_train), (x_test, y_test) = load_digits()
    assert x_train.shape == (1437, 64) and x_test.shape == (360, 64)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert set(np.unique(y_test)) == set(range(10))


def test_digits_stratified_and_reproducible():
    (x_a, y_a), (_, yt_a) = load_digits(test_size=0.25, seed=3)
    (x_b, _), (_, yt_b) = load_digits(test_size=0.25, seed=3)
    np.testing.assert_array_equal(x_a, x_b)
    np.testing.assert_array_equal(yt_a, yt_b)
    total = np.bincount(np.concatenate([y_a, yt_a]))
    assert np.all(np.abs(np.bincount(yt_a) - 0.25 * total) <= 1)  # stratified
    (x_c, _), _ = load_digits(test_size=0.25, seed=4)
    assert not np.array_equal(x_a, x_c)


def test_digits_all_for_training_and_bad_test_size():
    (x_train, _), (x_test, y_test) = load_digits(test_size=0)
    assert x_train.shape == (1797, 64) and x_test.shape == (0, 64) and y_test.shape == (0,)
    with pytest.raises(ValueError, match="test_size"):
        load_digits(test_size=1.5)


def test_load_dataset_digits():
    ds = load_dataset("Digits", seed=1)
    assert isinstance(ds, Dataset) and ds.name == "digits" and ds.n_classes == 10 and ds.n_features == 64
    np.testing.assert_array_equal(ds.classes, np.arange(10))
    assert ds.class_names == tuple("0123456789")


# --------------------------------------------------------------------------- CSV


def write_csv(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_header_and_label_by_name(tmp_path):
    rows = "\n".join(f"{i},{i % 3 + 10},{i * 0.5}" for i in range(30))
    path = write_csv(tmp_path, "id, species ,size\n" + rows + "\n\n")
    ds = load_csv(path, label_column="species", test_size=0.2, seed=0)
    assert ds.name == "csv:data.csv"
    assert ds.x_train.shape == (24, 2) and ds.x_test.shape == (6, 2) and ds.x_train.dtype == np.float32
    assert ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.classes, [10, 11, 12])
    for x, y in [(ds.x_train, ds.y_train), (ds.x_test, ds.y_test)]:
        np.testing.assert_array_equal(ds.classes[y], x[:, 0] % 3 + 10)  # rows stay intact
        np.testing.assert_allclose(x[:, 1], x[:, 0] * 0.5)
    assert np.bincount(ds.y_test).tolist() == [2, 2, 2]  # stratified


def test_csv_label_by_index_without_header(tmp_path):
    path = write_csv(tmp_path, "".join(f"{i % 2},{i},{-i}\n" for i in range(10)))
    for column in (0, -3):
        ds = load_csv(path, label_column=column, test_size=0.4)
        assert ds.x_train.shape == (6, 2) and ds.x_test.shape == (4, 2)
        np.testing.assert_array_equal(ds.y_train, ds.x_train[:, 0] % 2)
    ds = load_csv(path)  # default: the last column, 10 distinct values
    assert ds.n_classes == 10 and ds.n_features == 2


def test_csv_label_column_found_automatically_and_float_integers(tmp_path):
    path = write_csv(
        tmp_path, "a,Label,b\n" + "".join(f"{i},{3.0 if i % 2 else 7.0},{i}\n" for i in range(8))
    )
    ds = load_csv(path, test_size=0.5)
    np.testing.assert_array_equal(ds.classes, [3, 7])
    assert ds.classes.dtype == np.int64
    np.testing.assert_array_equal(ds.y_train, 1 - ds.x_train[:, 0] % 2)


def test_csv_string_labels(tmp_path):
    names = ["setosa", "versicolor", "virginica"]
    path = write_csv(tmp_path, "".join(f"{i},{i / 10},{names[i % 3]}\n" for i in range(12)))
    ds = load_csv(path, test_size=3, seed=5)
    assert ds.classes.tolist() == names and ds.class_names == tuple(names)
    assert ds.x_test.shape == (3, 2) and sorted(ds.y_test.tolist()) == [0, 1, 2]
    np.testing.assert_array_equal(ds.classes[ds.y_train], [names[int(i) % 3] for i in ds.x_train[:, 0]])


def test_csv_tiny_classes_fall_back_to_plain_split(tmp_path):
    path = write_csv(tmp_path, "1,0\n2,0\n3,1\n4,1\n5,2\n")  # class 2 has one sample
    ds = load_csv(path, test_size=0.4)
    assert len(ds.x_train) == 3 and len(ds.x_test) == 2


@pytest.mark.parametrize(
    ("text", "kw", "needles"),
    [
        ("a,b,label\n1,2,0\n3,x,1\n", {}, ["line 3", "column 2", "'b'", "'x'"]),
        ("1,2,0\n3,4,1\n5,,1\n", {}, ["line 3", "column 2", "''"]),
        ("a,b,label\n1,2,0\n3,4,1\n5,6\n", {}, ["line 4", "expected 3 columns", "got 2"]),
        ("", {}, ["empty CSV"]),
        ("\n\n", {}, ["empty CSV"]),
        ("a,b,label\n", {}, ["no data rows"]),
        ("1\n2\n", {}, ["at least 2 columns"]),
        ("a,b,label\n1,2,0\n3,nan,1\n", {}, ["line 3", "column 2", "not a finite"]),
        ("a,b,label\n1,2,0\n3,4,0.5\n", {}, ["line 3", "column 3", "not an integer"]),
        ("a,b,label\n1,2,0\n3,4,\n", {}, ["line 3", "column 3", "empty label"]),
        ("a,b,label\n1,2,0\n", {"label_column": "kind"}, ["'kind' is not a column", "'label'"]),
        ("1,2,0\n3,4,1\n", {"label_column": "kind"}, ["no header row"]),
        ("1,2,0\n3,4,1\n", {"label_column": 3}, ["out of range for 3 columns"]),
    ],
)
def test_csv_malformed(tmp_path, text, kw, needles):
    path = write_csv(tmp_path, text, name="broken.csv")
    with pytest.raises(ValueError) as info:
        load_csv(path, **kw)
    msg = str(info.value)
    assert str(path) in msg
    for needle in needles:
        assert needle in msg


def test_csv_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_csv(tmp_path / "nope.csv")
    path = write_csv(tmp_path, "1,2,0\n3,4,1\n")
    with pytest.raises(TypeError, match="label_column"):
        load_csv(path, label_column=1.0)
    with pytest.raises(ValueError, match="header"):
        load_csv(path, header="yes")


def test_load_dataset_csv_and_unknown_spec(tmp_path):
    path = write_csv(tmp_path, "".join(f"{i},{i % 2}\n" for i in range(10)))
    ds = load_dataset(f"csv:{path}", test_size=0.2)
    assert isinstance(ds, Dataset) and ds.x_train.shape == (8, 1)
    assert load_dataset(str(path)).x_train.shape == (8, 1)
    with pytest.raises(ValueError) as info:
        load_dataset("cifar10")
    for valid in ("digits", "mnist", "fashion-mnist", "csv:PATH"):
        assert valid in str(info.value)
    with pytest.raises(ValueError, match="needs a path"):
        load_dataset("csv:")
    with pytest.raises(TypeError):
        load_dataset(3)


def test_load_dataset_mnist_from_fake_files(tmp_path):
    make_fake(tmp_path / "fashion-mnist", n_train=9)
    ds = load_dataset("fashion_mnist", data_dir=tmp_path, flatten=False, download=False)
    assert ds.name == "fashion-mnist" and ds.x_train.shape == (9, 28, 28) and ds.n_features == 784
    assert ds.class_names[5] == "Sandal"


def test_dataset_checks_lengths():
    with pytest.raises(ValueError, match="lengths differ"):
        Dataset(np.zeros((3, 2)), np.zeros(2), np.zeros((1, 2)), np.zeros(1), np.arange(2), "bad")


def test_backprop_datasets_is_the_one_datasets_module():
    """``bp.datasets`` is ``backprop.data.datasets`` itself (one entry point, no re-exporting copy)."""
    import backprop as bp
    from backprop import data

    public = bp.datasets
    assert public is data.datasets

    assert public.load_mnist is load_mnist and public.load_dataset is load_dataset
    assert data.load_csv is load_csv and data.read_idx is read_idx
    assert data.DataLoader.__module__ == "backprop.data.loader"
