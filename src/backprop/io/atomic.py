"""Atomic file writes: a file is either its old self or completely new, never half written.

Everything backprop writes (models, checkpoints, metrics, plots) goes through :func:`atomic_write`: the
data goes to a temporary file in the same folder, is flushed and ``fsync``-ed, then ``os.replace`` puts it
in place in one step. A crash, a full disk or an exception midway leaves the previous file untouched and
removes the temporary file.

>>> import os, tempfile
>>> folder = tempfile.mkdtemp()
>>> path = os.path.join(folder, "notes.txt")
>>> write_text_atomic(path, "hello\\n")
>>> with atomic_write(path, "w") as f:
...     _ = f.write("partial")
...     raise RuntimeError("interrupted")
Traceback (most recent call last):
...
RuntimeError: interrupted
>>> open(path).read(), os.listdir(folder)
('hello\\n', ['notes.txt'])

Matplotlib writes into an open binary file: ``with atomic_write("loss.png") as f: fig.savefig(f, format="png")``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["atomic_write", "load_json", "save_json", "write_bytes_atomic", "write_text_atomic"]

_MODES = ("w", "wt", "wb")


def _fsync_dir(directory: str) -> None:
    """Make the rename itself durable (POSIX); best effort, a no-op where folders cannot be opened."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "wb", *, encoding: str | None = None, newline: str | None = None
) -> Iterator[IO[Any]]:
    """Open ``path`` for writing so that it is replaced only when the ``with`` block ends without error.

    ``mode`` is ``"wb"`` (binary, the default) or ``"w"``/``"wt"`` (text, UTF-8 unless ``encoding`` is
    given). The folder must exist. A symlink is followed: the file it points to is replaced. The new file
    keeps the permissions of the file it replaces (new files get the usual ``0o666 & ~umask``).
    """
    if mode not in _MODES:
        raise ValueError(f"atomic_write: mode must be one of {_MODES}, got {mode!r} (appending cannot be atomic)")
    binary = "b" in mode
    if binary and (encoding is not None or newline is not None):
        raise ValueError("atomic_write: encoding and newline are for text mode ('w'), not 'wb'")
    if not binary and encoding is None:
        encoding = "utf-8"
    target = os.fspath(path)
    if os.path.islink(target):
        target = os.path.realpath(target)
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {target}: the folder {directory} does not exist")
    if os.path.isdir(target):
        raise IsADirectoryError(f"cannot write {target}: it is a folder")

    tmp = os.path.join(directory, f".{os.path.basename(target)}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666)
    try:
        with contextlib.suppress(OSError):  # keep the permissions of the file being replaced
            os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
        f = os.fdopen(fd, mode, encoding=encoding, newline=newline)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Replace ``path`` by ``text`` atomically (newlines written as given, no platform translation)."""
    with atomic_write(path, "w", encoding=encoding, newline="") as f:
        f.write(text)


def _json_default(obj: Any) -> Any:
    """NumPy scalars and arrays, paths and sets, as JSON values."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    raise TypeError(f"save_json: cannot write an object of type {type(obj).__name__} as JSON")


def save_json(obj: Any, path: str | os.PathLike[str], *, indent: int | None = 2, sort_keys: bool = False) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (NumPy numbers and arrays are converted).

    The text is made before the file is touched, so an object that cannot be written leaves ``path`` as it
    was. NaN and infinities are written as ``NaN``/``Infinity``, as Python's ``json`` does.
    """
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=_json_default, ensure_ascii=False)
    write_text_atomic(path, text + "\n")


def load_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file (the counterpart of :func:`save_json`)."""
    with open(os.fspath(path), encoding="utf-8") as f:
        return json.load(f)
