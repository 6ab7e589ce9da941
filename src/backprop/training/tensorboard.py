"""TensorBoard event files without TensorFlow or PyTorch: scalars and histograms.

Uses only the ``tensorboard`` package (the extra ``pip install "backprop[tensorboard]"``): its protocol buffers
(``Event``, ``Summary``, ``HistogramProto``) and its ``EventFileWriter`` (TFRecord files with CRCs, written
by a background thread). ``tensorboard --logdir <dir>`` and
``tensorboard.backend.event_processing.event_accumulator.EventAccumulator`` read what it writes.

>>> import tempfile, numpy as np
>>> if tensorboard_available():
...     with SummaryWriter(tempfile.mkdtemp()) as w:
...         w.add_scalar("loss", 0.5, step=0)
...         w.add_histogram("weights/0.weight", np.random.default_rng(0).normal(size=100), step=0)
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from backprop.extras import available, require

__all__ = ["SummaryWriter", "histogram_proto", "require_tensorboard", "tensorboard_available"]

_NEEDED_BY = "the TensorBoard callback"
# NOTE: the modules the writer uses, not just `tensorboard`: an old or partial install lacks one of these
_MODULES = ("tensorboard.compat.proto.event_pb2", "tensorboard.compat.proto.summary_pb2",
            "tensorboard.summary.writer.event_file_writer")


def tensorboard_available() -> bool:
    """True when the ``tensorboard`` package can be imported."""
    return all(available(m) for m in _MODULES)


def require_tensorboard() -> None:
    """:class:`~backprop.extras.MissingExtra` (an ImportError naming the install command) without ``tensorboard``."""
    for module in _MODULES:
        require(module, needed_by=_NEEDED_BY)


def histogram_proto(values: Any, bins: int = 30) -> Any:
    """A ``HistogramProto`` of ``values``: min, max, num, sum, sum_squares and ``bins`` equal-width buckets.

    ``bucket_limit[i]`` is the right edge of bucket i and ``bucket[i]`` its count (TensorBoard's layout;
    the first bucket starts at ``min``). Non-finite values are left out (``num`` counts the finite ones).
    """
    from tensorboard.compat.proto.summary_pb2 import HistogramProto

    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return HistogramProto(min=0.0, max=0.0, num=0, sum=0.0, sum_squares=0.0, bucket_limit=[0.0], bucket=[0.0])
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:  # one value: a single bucket ending at it
        return HistogramProto(min=lo, max=hi, num=v.size, sum=float(v.sum()), sum_squares=float(v @ v),
                              bucket_limit=[hi], bucket=[float(v.size)])
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    return HistogramProto(min=lo, max=hi, num=v.size, sum=float(v.sum()), sum_squares=float(v @ v),
                          bucket_limit=edges[1:].tolist(), bucket=counts.astype(np.float64).tolist())


class SummaryWriter:
    """Write scalars and histograms to a new event file in ``log_dir`` (created if missing).

    A small subset of ``torch.utils.tensorboard.SummaryWriter``: :meth:`add_scalar`, :meth:`add_histogram`,
    :meth:`flush`, :meth:`close`; also a context manager.
    """

    def __init__(self, log_dir: str | os.PathLike[str], flush_secs: float = 120, max_queue: int = 10) -> None:
        require_tensorboard()
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.log_dir = os.fspath(log_dir)
        os.makedirs(self.log_dir, exist_ok=True)
        self._writer = EventFileWriter(self.log_dir, max_queue_size=max_queue, flush_secs=flush_secs)
        self.closed = False

    @property
    def path(self) -> str:
        """The event file's path."""
        return self._writer._file_name

    def _add(self, summary_value: Any, step: int, wall_time: float | None) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        if self.closed:
            raise ValueError("SummaryWriter: the writer is closed")
        event = event_pb2.Event(wall_time=time.time() if wall_time is None else wall_time, step=int(step),
                                summary=summary_pb2.Summary(value=[summary_value]))
        self._writer.add_event(event)

    def add_scalar(self, tag: str, value: float, step: int, wall_time: float | None = None) -> None:
        """One point of the curve ``tag``."""
        from tensorboard.compat.proto import summary_pb2

        self._add(summary_pb2.Summary.Value(tag=tag, simple_value=float(value)), step, wall_time)

    def add_histogram(self, tag: str, values: Any, step: int, bins: int = 30, wall_time: float | None = None) -> None:
        """A histogram of ``values`` (any array) at ``step``; see :func:`histogram_proto`."""
        from tensorboard.compat.proto import summary_pb2

        self._add(summary_pb2.Summary.Value(tag=tag, histo=histogram_proto(values, bins)), step, wall_time)

    def flush(self) -> None:
        if not self.closed:
            self._writer.flush()

    def close(self) -> None:
        if not self.closed:
            self._writer.close()
            self.closed = True

    def __enter__(self) -> SummaryWriter:  # noqa: PYI034 - Python 3.10 has no typing.Self
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
