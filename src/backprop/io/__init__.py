"""Saving and loading: models as safetensors files (weights) with their architecture as JSON in the header,
training checkpoints that resume exactly (:mod:`backprop.io.checkpoint`), and atomic writes for every file
backprop produces (checkpoints, metrics, plots).

>>> import backprop.io as bio
>>> 'Linear' in bio.LAYER_TYPES and 'Conv2d' in bio.LAYER_TYPES
True
"""

import sys as _sys

from backprop.io.atomic import atomic_write, load_json, save_json, write_bytes_atomic, write_text_atomic
from backprop.io.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    Checkpoint,
    TrainingCheckpoint,
    load_checkpoint,
    save_checkpoint,
)
from backprop.io.serialization import (
    FORMAT,
    FORMAT_VERSION,
    LAYER_TYPES,
    Arg,
    LayerSpec,
    load,
    load_metadata,
    load_weights,
    model_from_config,
    model_to_config,
    register_layer,
    save,
    save_weights,
)

from backprop.training import extensions as _extensions

__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "FORMAT", "FORMAT_VERSION", "LAYER_TYPES", "Arg", "Checkpoint",
    "LayerSpec", "TrainingCheckpoint", "atomic_write", "load", "load_checkpoint", "load_json", "load_metadata",
    "load_weights", "model_from_config", "model_to_config", "register_layer", "save", "save_checkpoint",
    "save_json", "save_weights", "write_bytes_atomic", "write_text_atomic",
]

# NOTE: training may not import io (imports point downward): fit's checkpoints and ModelCheckpoint find it here
_extensions.provide("io", _sys.modules[__name__])
