"""The ``backprop`` command: train, evaluate, predict, trace and export from the shell.

    backprop train                                   # an MLP on the 8x8 digits, no download needed
    backprop train --dataset mnist --hidden 800 --epochs 30 --lr 0.05
    backprop evaluate runs/<stamp>/model.safetensors --dataset digits
    backprop predict runs/<stamp>/model.safetensors samples.csv

Each subcommand lives in its own module (``train``, ``evaluate``, ``trace``, ``export``) with its
``add_parser`` and its command; this one assembles the parser and reports errors. Bad options and bad data
print one line on stderr and exit with code 2 (``--debug`` shows the traceback).

>>> sorted(COMMANDS)
['evaluate', 'export', 'predict', 'trace', 'train']
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from backprop import __version__
from backprop.cli import evaluate, export, trace, train
from backprop.cli.options import EXIT_USAGE, CLIError

COMMANDS = {"train": train.cmd_train, "evaluate": evaluate.cmd_evaluate, "predict": evaluate.cmd_predict,
            "trace": trace.cmd_trace, "export": export.cmd_export}


class _Parser(argparse.ArgumentParser):
    """argparse that reports an error in one line, with a pointer to --help, and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="backprop", description="Train neural networks by backpropagation.")
    parser.add_argument("--version", action="version", version=f"backprop {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train.add_parser(sub)
    evaluate.add_parsers(sub)
    trace.add_parser(sub)
    export.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("backprop: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `backprop predict ... | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (CLIError, ValueError, TypeError, FileNotFoundError, KeyError, OSError) as e:
        if getattr(args, "debug", False):
            raise
        message = str(e).strip().replace("\n", " ") or type(e).__name__
        print(f"backprop: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
