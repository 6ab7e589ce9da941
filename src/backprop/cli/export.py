"""``backprop export``: a model file written by ``backprop train`` as an ONNX file.

    backprop export runs/<stamp>/model.safetensors --onnx model.onnx
    backprop export runs/<stamp>/model.safetensors --onnx model.onnx --opset 20

The graph takes a float32 batch of shape (batch, n_features), the flattened samples ``backprop train`` saw
(the model file's ``n_features``), and gives what the model gives in eval mode (logits, log-probabilities or
sigmoid outputs, depending on its loss). A sequence model takes (batch, steps, features), a character model
(batch, steps) int64 character indices, the steps those it was trained on. Needs ``pip install "backprop[onnx]"`` (onnxruntime checks the
export against backprop on a random sample before the file is written). Errors: one line, exit code 2.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

from backprop import io as bio
from backprop import onnx as bonnx
from backprop.cli.options import CLIError, any_int, model_file
from backprop.extras import require


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to ``subparsers`` (the object ``add_subparsers`` returned)."""
    p = subparsers.add_parser(
        "export",
        help="write a trained model as an ONNX file (for onnxruntime and other runtimes)",
        description="Export a model file written by 'backprop train' to ONNX: the network as it predicts "
        "(eval mode), taking a (batch, n_features) float32 input named 'input' and giving 'output'. The "
        "graph is checked by onnx.checker and, when onnxruntime is installed, against backprop's own output.",
    )
    p.add_argument("model", help="a model file written by 'backprop train'")
    p.add_argument("--onnx", required=True, metavar="OUT", help="the ONNX file to write, e.g. model.onnx")
    p.add_argument("--opset", type=any_int, default=17, help="ONNX operator set version (default: 17)")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


def _n_features(meta: dict[str, Any], path: str) -> int:
    n = meta.get("n_features")
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return n
    raise CLIError(f"{path} has no n_features in its metadata (was it written by 'backprop train'?); "
                     f"export it from Python with backprop.onnx.export(model, path, example_input)")


def cmd_export(args: argparse.Namespace) -> int:

    model_file(args.model)
    require("onnx", needed_by="backprop export")
    model = bio.load(args.model)
    meta = bio.load_metadata(args.model) or {}
    n_features = _n_features(meta, args.model)
    dtype = model.dtype
    rng = np.random.default_rng(0)
    example = rng.random((1, n_features)).astype(dtype)
    shape, kind, steps = f"(batch, {n_features}) {dtype}", meta.get("sequence_kind"), meta.get("seq_len")
    if kind is not None and isinstance(steps, int) and steps > 0:  # NOTE: a sequence model (issue 14)
        if kind == "text":
            example = rng.integers(0, len(str(meta.get("vocabulary", ""))) or 1, (1, steps))
            shape = f"(batch, {steps}) int64 character indices"
        else:
            example = rng.random((1, steps, n_features // steps)).astype(dtype)
            shape = f"(batch, {steps}, {n_features // steps}) {dtype}"
    out_dir = os.path.dirname(os.path.abspath(args.onnx))
    if not os.path.isdir(out_dir):
        raise CLIError(f"cannot write {args.onnx}: folder {out_dir} does not exist")
    proto = bonnx.export(model, args.onnx, example, opset=args.opset)
    out_shape = [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    print(f"wrote {args.onnx}: ONNX opset {args.opset}, input 'input' {shape}, "
          f"output 'output' ({', '.join(map(str, out_shape))})")
    return 0
