"""What ``backprop train`` and ``backprop evaluate`` do differently for sequences: the models, checks and reports.

The sequence models (``--model rnn|lstm|gru|transformer``) train on the sequence sets (``--dataset seq-mnist``,
``adding[:T]``, ``copy[:T]``, ``text:PATH``; see :mod:`backprop.data.sequences`), and only there. What the
model is follows from the data set: a class per sequence (seq-mnist) or a number (adding) is read from the
final hidden state (:class:`~backprop.nn.RecurrentNet`, or the mean over the steps for the transformer), a
class per step (copy) from every step, and a text gets a character language model
(:class:`~backprop.nn.RecurrentLM`, or the causal :class:`~backprop.nn.TransformerLM`).

``--hidden`` gives the hidden size, one number per stacked layer (all equal: ``--hidden 256,256`` is two
layers of 256); for the transformer it is ``d_model`` per layer, with 4 heads (fewer when ``d_model`` is
not a multiple of 4) and a feed-forward width of 4 d_model. ``--dropout`` acts between stacked layers and
before the output layer. A text's characters are embedded in ``min(64, hidden)`` dimensions.

>>> import argparse
>>> args = argparse.Namespace(model="lstm", hidden=[64, 64], dropout=None)
>>> layers(args)
(64, 2)
>>> perplexity_line(1.5)
'cross-entropy 1.5000 nats per character - perplexity 4.48'
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from backprop import nn
from backprop.cli.options import CLIError
from backprop.data.sequences import SequenceDataset, copy_baseline

__all__ = ["SEQUENCE_MODELS", "build", "check", "describe", "final_line", "layers", "perplexity_line"]

SEQUENCE_MODELS = ("rnn", "lstm", "gru", "transformer")
DEFAULT_HIDDEN = {"rnn": [128], "lstm": [128], "gru": [128], "transformer": [64, 64]}
EMBEDDING_DIM = 64  # at most: a character needs few dimensions


def is_sequence_model(args: argparse.Namespace) -> bool:
    return args.model in SEQUENCE_MODELS


def layers(args: argparse.Namespace) -> tuple[int, int]:
    """(hidden size, number of stacked layers) from ``--hidden`` (or the model's default)."""
    sizes = args.hidden if args.hidden is not None else DEFAULT_HIDDEN[args.model]
    if not sizes:
        raise CLIError(f"--model {args.model} needs a hidden size: --hidden N (or N,N for two layers)")
    if len(set(sizes)) != 1:
        what = "d_model" if args.model == "transformer" else "hidden size"
        raise CLIError(f"--hidden {','.join(map(str, sizes))}: the stacked layers of --model {args.model} share one "
                       f"{what}; give it once per layer, e.g. --hidden {sizes[0]},{sizes[0]}")
    return sizes[0], len(sizes)


def check(args: argparse.Namespace, ds: Any) -> None:
    """The model fits the data set, and the options fit both; one line (CLIError) otherwise."""
    sequences = isinstance(ds, SequenceDataset)
    if not is_sequence_model(args):
        if sequences:
            raise CLIError(f"--dataset {ds.name} holds sequences: train it with --model rnn, lstm, gru or "
                           f"transformer (not {args.model})")
        return
    if not sequences:
        raise CLIError(f"--model {args.model} reads sequences: use --dataset seq-mnist, adding[:T], copy[:T] or "
                       f"text:PATH (not {ds.name})")
    layers(args)
    if ds.kind == "regression":
        if args.loss == "cross_entropy":  # NOTE: the default: a number to predict is learnt by squared error
            args.loss = "mse"
        elif args.loss != "mse":
            raise CLIError(f"--dataset {ds.name} asks for a number: train it with --loss mse (not {args.loss})")
    elif args.loss != "cross_entropy":
        raise CLIError(f"--model {args.model} learns classes with --loss cross_entropy (not {args.loss})")
    if args.standardize:
        raise CLIError("--standardize applies to rows of features, not to sequences")
    if args.model == "transformer" and ds.kind == "text" and ds.seq_len > 4096:
        raise CLIError(f"--seq-len {ds.seq_len}: the transformer attends over at most 4096 characters")


def _heads(d_model: int) -> int:
    return next(h for h in (4, 2, 1) if d_model % h == 0)


def build(args: argparse.Namespace, ds: SequenceDataset, n_outputs: int) -> nn.Module:
    """The network ``--model`` names for the data set ``ds`` (see the module docstring)."""
    hidden, n_layers = layers(args)
    dropout = args.dropout or 0.0
    every_step = ds.kind == "steps"
    if ds.kind == "text":
        vocab = len(ds.vocabulary)
        if args.model == "transformer":
            return nn.TransformerLM(vocab, hidden, _heads(hidden), n_layers, dropout=dropout, max_len=ds.seq_len)
        return nn.RecurrentLM(args.model, vocab, min(EMBEDDING_DIM, hidden), hidden, num_layers=n_layers,
                              dropout=dropout)
    features = int(ds.x_train.shape[2])
    if args.model == "transformer":
        return nn.TransformerNet(features, hidden, _heads(hidden), n_layers, n_outputs, dropout=dropout,
                                 max_len=ds.seq_len, every_step=every_step)
    return nn.RecurrentNet(args.model, features, hidden, n_outputs, num_layers=n_layers, dropout=dropout,
                           every_step=every_step)


def describe(model: Any, args: argparse.Namespace) -> str:
    """The network in one line: kind, sizes, parameter count."""
    hidden, n_layers = layers(args)
    n = sum(p.data.size for p in model.parameters())
    size = f"d_model {hidden}, {_heads(hidden)} heads" if args.model == "transformer" else f"hidden size {hidden}"
    return f"{args.model} ({size}, {n_layers} layer{'s' if n_layers > 1 else ''}), {n:,} parameters"


def data_line(ds: SequenceDataset) -> str:
    """What the data set holds, for the first line of a training run."""
    if ds.kind == "text":
        return (f"{ds.name}: {len(ds.vocabulary)} characters, windows of {ds.seq_len}: {ds.x_train.size:,} training "
                f"and {ds.x_test.size:,} held-out characters (the last 10%, the validation data)")
    what = {"sequence": f"{ds.n_classes} classes", "regression": "a number to predict",
            "steps": f"a class of {ds.n_classes} at every step"}[ds.kind]
    return (f"{ds.name}: {len(ds.x_train)} train / {len(ds.x_test)} test sequences of {ds.seq_len} steps of "
            f"{ds.x_train.shape[2]} features, {what}")


def perplexity_line(cross_entropy: float) -> str:
    """Cross-entropy in nats per character and the perplexity, exp(cross-entropy)."""
    return f"cross-entropy {cross_entropy:.4f} nats per character - perplexity {math.exp(cross_entropy):.2f}"


def final_line(ds: SequenceDataset, final: dict[str, float]) -> str:
    """The test (for a text: validation) result of a finished run, as train prints it."""
    if ds.kind == "text":
        return f"validation {perplexity_line(final['loss'])} - accuracy {final['accuracy']:.4f}"
    if ds.kind == "regression":
        return (f"test mse {final['loss']:.6g} - test rmse {final['loss'] ** 0.5:.6g} (predicting the mean: mse "
                f"{float(ds.y_test.var()):.4g})")
    if ds.kind == "steps":
        delay = ds.seq_len - 20
        return (f"test loss {final['loss']:.4f} nats per step (the memoryless baseline: "
                f"{copy_baseline(delay):.4f}) - test accuracy per step {final['accuracy']:.4f}")
    return f"test loss {final['loss']:.4f} - test accuracy {final['accuracy']:.4f}"
