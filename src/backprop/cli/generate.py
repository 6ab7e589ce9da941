"""``backprop generate``: sample text from a character model trained by ``backprop train --dataset text:PATH``.

    backprop generate runs/<stamp>/model.safetensors --prompt "ROMEO:" --length 300 --temperature 0.8 --seed 1

The model file holds the vocabulary (the characters of its training text); the prompt must use those
characters. The prompt is printed, then ``--length`` characters, each drawn from the model's distribution
of the next character after everything before it, sharpened by ``--temperature`` below 1, flattened above,
and replaced by the most likely character at 0. The same ``--seed`` gives the same text.

>>> import argparse
>>> sub = argparse.ArgumentParser().add_subparsers(dest="command")
>>> args = add_parser(sub).parse_args(["m.safetensors", "--prompt", "To be", "--temperature", "0.5"])
>>> args.prompt, args.length, args.temperature, args.seed
('To be', 500, 0.5, None)
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from backprop import io as bio
from backprop.cli.options import CLIError, model_file, non_negative_int
from backprop.data.sequences import decode, encode
from backprop.nn.sequence_models import generate

DEFAULT_LENGTH = 500


def temperature(text: str) -> float:
    """A finite number >= 0 (0: the most likely character every time)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0 (0: always the most likely character), "
                                         f"got {text!r}")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``generate`` subcommand to ``subparsers``."""
    p = subparsers.add_parser("generate", help="sample text from a character model (trained on --dataset text:PATH)",
                              description="Print the prompt and --length characters sampled from a character "
                                          "language model, one at a time.")
    p.add_argument("model", help="a model file written by 'backprop train --dataset text:PATH'")
    p.add_argument("--prompt", default=None,
                   help="the text to continue, in the model's characters (default: a newline, or the first "
                        "character of the vocabulary)")
    p.add_argument("--length", type=non_negative_int, default=DEFAULT_LENGTH,
                   help=f"characters to generate (default: {DEFAULT_LENGTH})")
    p.add_argument("--temperature", type=temperature, default=1.0,
                   help="divides the scores before the softmax: below 1 safer, above 1 wilder, 0 always the most "
                        "likely character (default: 1)")
    p.add_argument("--seed", type=non_negative_int, default=None,
                   help="random seed: the same seed gives the same text (default: a fresh one)")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


def cmd_generate(args: argparse.Namespace) -> int:
    model = bio.load(model_file(args.model))
    meta = bio.load_metadata(args.model) or {}
    vocabulary = meta.get("vocabulary")
    if meta.get("sequence_kind") != "text" or not isinstance(vocabulary, str) or not vocabulary:
        raise CLIError(f"{args.model} is not a character model: train one with --dataset text:PATH "
                       "(--model lstm, gru, rnn or transformer)")
    prompt = args.prompt
    if prompt is None:
        prompt = "\n" if "\n" in vocabulary else vocabulary[0]
    if not prompt:
        raise CLIError("--prompt is empty: give at least one character for the model to continue")
    try:
        ids = encode(prompt, vocabulary)
    except ValueError as e:
        raise CLIError(f"--prompt: {e} (the model knows {len(vocabulary)} characters, those of its training "
                       "text)") from None
    out = generate(model, ids, args.length, temperature=args.temperature, seed=args.seed)
    sys.stdout.write(prompt + decode(out, vocabulary) + "\n")
    sys.stdout.flush()
    return 0
