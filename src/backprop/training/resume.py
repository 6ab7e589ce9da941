"""Checkpoints that resume a ``fit`` exactly: what is checked before resuming, and the callback that writes them.

``fit(checkpoint=...)`` adds a :class:`Checkpointing` callback that writes a training checkpoint (weights,
optimizer and scheduler states, random generators, counters, History; :mod:`backprop.io.checkpoint`) at
the end of every epoch; ``fit(resume_from=...)`` first checks the checkpoint was written by the same kind
of run (:func:`check_resume`), restores its states (:func:`restore`), and the same callback puts the random
generators back at the start of training, so the resumed run is bit-identical to an uninterrupted one.
The files themselves are :mod:`backprop.io`'s, found through :mod:`backprop.training.extensions`.

>>> "numpy" in environment()
True
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any

import numpy as np

from backprop.data.loader import DataLoader
from backprop.engine.random import get_rng
from backprop.nn.module import Module
from backprop.training import extensions
from backprop.training.callbacks import Callback
from backprop.training.loop import EpochProgress

__all__ = ["Checkpointing", "check_resume", "checkpoint_target", "environment", "restore"]


def check_resume(resume: Any, seed: int | None, epochs: int, batch_size: int, shuffle: bool,
                  validation_split: float, n_samples: int) -> int | None:
    """The seed to use when resuming from ``resume``; ValueError if this fit cannot continue that run exactly."""
    where = f"fit: resume_from={resume.path or 'the checkpoint'}"
    if resume.epoch > epochs:
        raise ValueError(f"{where} has already trained {resume.epoch} epochs, more than epochs={epochs} (epochs "
                         "is the total number of epochs, counting those already trained)")
    for name in ("global", "loader"):
        if name not in resume.rng_states:
            raise ValueError(f"{where} holds no state for the {name!r} random generator")
    record = resume.extra.get("fit")
    if record is None:
        if validation_split and seed is None:
            raise ValueError(f"{where} was not written by fit: pass the seed used, to recompute the validation split")
        return seed
    if not isinstance(record, dict) or not {"seed", "seed_entropy", "batch_size", "shuffle", "validation_split",
                                            "samples"} <= set(record):
        raise ValueError(f"{where}: its extra['fit'] record is incomplete")
    if not isinstance(record["seed_entropy"], str) or not record["seed_entropy"].isdigit():
        raise ValueError(f"{where}: its extra['fit']['seed_entropy'] is not an integer")
    given = {"seed": seed, "batch_size": batch_size, "shuffle": bool(shuffle),
             "validation_split": float(validation_split), "samples": n_samples}
    if seed is None:
        given["seed"] = record["seed"]
    wrong = [f"{k}={record[k]!r} (got {v!r})" for k, v in given.items() if record[k] != v]
    if wrong:
        what = "samples" if any(w.startswith("samples") for w in wrong) else "settings"
        raise ValueError(f"{where} was trained with other {what}: " + ", ".join(wrong)
                         + "; resuming exactly needs the same data, batch_size, shuffle, validation_split and seed")
    progress = record.get("progress")
    if progress is not None and resume.epoch >= epochs:
        raise ValueError(f"{where} stopped in the middle of epoch {resume.epoch + 1}, after epochs={epochs}")
    env = record.get("environment")
    if env is not None and env != environment():
        warnings.warn(f"{where} was written with another NumPy/BLAS configuration ({env}); the resumed run "
                      "may differ from an uninterrupted one in the last bits", RuntimeWarning, stacklevel=3)
    return given["seed"]


def restore(resume: Any, model: Module, opt: Any, schedule: Any, loader: DataLoader) -> tuple[int, Any]:
    """Load the checkpoint's states (all checked before any is changed); the epoch to continue with and,
    for a checkpoint written mid-epoch, where in it (an :class:`~backprop.training.loop.EpochProgress`)."""
    for name, gen in (("global", get_rng()), ("loader", loader.rng)):
        kind = type(gen.bit_generator).__name__
        if resume.rng_states[name]["bit_generator"] != kind:
            raise ValueError(f"fit: resume_from: the saved {name!r} generator is a "
                             f"{resume.rng_states[name]['bit_generator']}, this one a {kind}")
    resume.restore(model, opt, schedule)
    progress = (resume.extra.get("fit") or {}).get("progress")
    return resume.epoch, None if progress is None else EpochProgress.from_json(progress)


_env_cache: dict[str, Any] = {}


def environment() -> dict[str, Any]:
    """NumPy's version and the BLAS libraries with their thread counts: what bit-exact results depend on."""
    if "env" not in _env_cache:
        env: dict[str, Any] = {"numpy": np.__version__}
        with contextlib.suppress(Exception):  # threadpoolctl missing or failing: record what is known
            from threadpoolctl import threadpool_info

            env["blas"] = sorted(f"{d.get('internal_api')} {d.get('version')} {d.get('num_threads')} threads"
                                 for d in threadpool_info() if d.get("user_api") == "blas")
        _env_cache["env"] = env
    return _env_cache["env"]


def checkpoint_target(checkpoint: Any) -> Any:
    if isinstance(checkpoint, (str, os.PathLike)):
        return extensions.get("io").TrainingCheckpoint(checkpoint)
    if isinstance(getattr(checkpoint, "filepath", None), (str, os.PathLike)):
        return checkpoint
    raise TypeError(f"fit: checkpoint must be a path or a TrainingCheckpoint, got {type(checkpoint).__name__}")


class Checkpointing(Callback):
    """Resume at the start of training and write a checkpoint at the end of every epoch (the last callback).

    ``resume``: a loaded checkpoint whose random generator states are put back in ``on_train_begin``,
    after every other callback began (the uninterrupted run went straight from one epoch's end to the
    next). ``saver``: a path (``str.format`` fields ``{epoch}`` and the log keys) or an object with a
    ``filepath``; ``write``: False on the data-parallel ranks that do not write files.
    """

    def __init__(self, saver: Any, resume: Any, optimizer: Any, schedule: Any, history: Any, loader: DataLoader,
                 record: dict[str, Any] | None, write: bool = True, mid_epoch: bool = True) -> None:
        self.saver, self.resume, self.optimizer, self.schedule = saver, resume, optimizer, schedule
        self.history, self.loader, self.record, self.write = history, loader, record, write
        self.mid_epoch, self.epoch_start = mid_epoch, None

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        if self.resume is not None:
            get_rng().bit_generator.state = self.resume.rng_states["global"]
            self.loader.rng.bit_generator.state = self.resume.rng_states["loader"]

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        """Keep the loader's state before the epoch's permutation is drawn: a mid-epoch checkpoint needs it."""
        if self.saver is not None and self.write and self.mid_epoch:
            self.epoch_start = self.loader.rng.bit_generator.state

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        """The state the next epoch starts from (its permutation not drawn yet)."""
        if self.saver is not None and self.write:
            self._save(epoch + 1, logs or {}, self.loader.rng, None)

    def on_train_interrupted(self, progress: Any) -> None:
        """Stopped between two steps of an epoch: a checkpoint of that point, which resumes bit-identically."""
        if progress is not None and self.saver is not None and self.write and self.epoch_start is not None:
            self._save(progress.epoch, {}, self.epoch_start, progress.to_json())

    def _save(self, epoch: int, logs: dict[str, float], loader_state: Any, progress: dict[str, Any] | None) -> None:
        bio = extensions.get("io")
        path = os.fspath(self.saver.filepath)
        if "{" in path:
            try:
                path = path.format(epoch=epoch, **logs)
            except (KeyError, IndexError) as e:
                if progress is not None:  # NOTE: a path named after epoch-end logs: keep the last epoch's file
                    return
                raise ValueError(f"fit: checkpoint path {path!r} uses the field {e}, which is not among epoch, "
                                 f"{', '.join(logs)}") from None
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        record = {**self.record, "environment": environment()}
        if progress is not None:
            record["progress"] = progress
        extra = {**dict(getattr(self.saver, "extra", None) or {}), "fit": record}
        bio.save_checkpoint(path, self.model, self.optimizer, self.schedule, epoch=epoch,
                            iteration=self.history.iterations, rng_states={"global": get_rng(), "loader": loader_state},
                            history=self.history, extra=extra)
        if hasattr(self.saver, "last_saved"):
            self.saver.last_saved = path
