"""Read and write IDX files, the format MNIST and Fashion-MNIST are published in.

An IDX file is a big-endian header followed by the raw row-major payload:

    bytes 0-1   zero
    byte  2     type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64)
    byte  3     number of dimensions d
    4*d bytes   the size of each dimension, unsigned 32-bit
    rest        prod(sizes) items of that type

:func:`read_idx` validates all of it, so a damaged file gives a ValueError, never
garbage. Files may be gzip-compressed (as published) or raw.

Example:
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from backprop.data.idx import read_idx, write_idx
    >>> path = Path(tempfile.mkdtemp()) / "x-idx2-ubyte.gz"
    >>> write_idx(path, np.arange(6, dtype=np.uint8).reshape(2, 3))
    >>> read_idx(path)
    array([[0, 1, 2],
           [3, 4, 5]], dtype=uint8)
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = ["read_idx", "write_idx"]

# Type code -> big-endian numpy dtype of the payload.
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES: dict[np.dtype, int] = {dt.newbyteorder("="): code for code, dt in _DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a native-endian, writable array.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a corrupt gzip stream, a bad magic number, an unknown type code,
            or a payload whose size does not match the header (truncated or overlong);
            the message names the file.

    Example:
        >>> import tempfile, numpy as np
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
        >>> write_idx(path, np.array([7, 2, 1], dtype=np.uint8))
        >>> read_idx(path)
        array([7, 2, 1], dtype=uint8)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    data = path.read_bytes()

    # NOTE: compression is detected from the content, not the name: a raw IDX file
    # starts with two zero bytes, a gzip stream with 1f 8b, so the two never clash.
    compressed = data[:2] == _GZIP_MAGIC
    if compressed:
        data = _gunzip_idx(path, data)

    if len(data) < 4:
        raise ValueError(f"{path}: not an IDX file: {len(data)} bytes, too short for the 4-byte magic number")
    zero, code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00":
        raise ValueError(
            f"{path}: not an IDX file: bad magic number 0x{data[:4].hex()} (must start with two zero bytes)"
        )
    if code not in _DTYPES:
        known = ", ".join(f"0x{c:02X} {dt.name}" for c, dt in _DTYPES.items())
        raise ValueError(f"{path}: unsupported IDX type code 0x{code:02X} (supported: {known})")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions (need at least 1)")

    header_bytes = 4 + 4 * ndim
    if len(data) < header_bytes:
        raise ValueError(
            f"{path}: truncated IDX header: {ndim} dimensions need {header_bytes} header bytes, "
            f"the file has {len(data)}"
        )
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _DTYPES[code]
    # NOTE: Python ints, not numpy: a bogus header like 4e9 x 4e9 must not overflow
    # into a plausible size. The check runs before anything large is allocated.
    expected = dtype.itemsize * int(np.prod(shape, dtype=object))
    actual = len(data) - header_bytes
    if actual != expected:
        kind = "truncated" if actual < expected else "overlong"
        # NOTE: a compressed file is decompressed only one byte past the declared size
        holds = f"at least {actual}" if compressed and actual > expected else f"{actual}"
        raise ValueError(
            f"{path}: {kind} IDX payload: the header declares shape {shape} of {dtype.name}, "
            f"i.e. {expected} bytes, but the file holds {holds} bytes after the {header_bytes}-byte header"
        )
    # astype copies into native byte order, so the result is writable and owns its memory.
    return (
        np.frombuffer(data, dtype=dtype, offset=header_bytes).reshape(shape).astype(dtype.newbyteorder("="))
    )


def _gunzip_idx(path: Path, data: bytes) -> bytes:
    """Decompress no more than the header says the file holds (plus one byte, to notice an overlong one).

    A few kilobytes of gzip can expand to gigabytes (a "zip bomb"); reading the header first bounds the
    memory by the size the header declares, which the array needs anyway.
    """
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            head = stream.read(4)
            ndim = head[3] if len(head) == 4 and head[:2] == b"\x00\x00" else 0
            head += stream.read(4 * ndim)
            if len(head) < 4 + 4 * ndim or head[2] not in _DTYPES:
                return head + stream.read(1)  # too short or unknown type: the checks below say which
            shape = np.frombuffer(head, dtype=">u4", count=ndim, offset=4)
            size = _DTYPES[head[2]].itemsize * int(np.prod(shape.astype(object), dtype=object))
            # NOTE: in chunks: read(n) would allocate n bytes at once, and the header's n may be absurd
            chunks, left = [head], size + 1
            while left > 0:
                chunk = stream.read(min(left, _CHUNK))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise ValueError(f"{path}: corrupt gzip stream ({exc})") from exc


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends with ``.gz``.

    The dtype must be one IDX supports (uint8, int8, int16, int32, float32, float64);
    it is never converted silently, so a round trip returns the same array.

    Example:
        >>> import tempfile, numpy as np
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "w-idx1-float.gz"
        >>> write_idx(path, np.array([0.5, -1.0], dtype=np.float32))
        >>> read_idx(path).tolist()
        [0.5, -1.0]
    """
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        supported = ", ".join(dt.name for dt in _CODES)
        raise TypeError(f"write_idx: dtype {array.dtype} is not supported by IDX (supported: {supported})")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"write_idx: IDX needs 1 to 255 dimensions, got an array with {array.ndim}")
    if any(s >= 2**32 for s in array.shape):
        raise ValueError(f"write_idx: every dimension must be < 2**32, got shape {array.shape}")

    code = _CODES[native]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = np.ascontiguousarray(array, dtype=_DTYPES[code]).tobytes()
    data = header + payload
    path = Path(path)
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)  # mtime=0: identical input, identical bytes
    path.write_bytes(data)
