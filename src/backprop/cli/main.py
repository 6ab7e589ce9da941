"""The ``backprop`` command: train, evaluate, predict, trace and export from the shell.

    backprop train                                   # an MLP on the 8x8 digits, no download needed
    backprop train --dataset mnist --hidden 800 --epochs 30 --lr 0.05
    backprop evaluate runs/<stamp>/model.safetensors --dataset digits
    backprop predict runs/<stamp>/model.safetensors samples.csv
    backprop generate runs/<stamp>/model.safetensors --prompt "ROMEO:"   # a character model's text

Each subcommand lives in its own module (``train``, ``evaluate``, ``trace``, ``export``) with its
``add_parser`` and its command; this one assembles the parser and reports errors. Bad options and bad data
print one line on stderr and exit with code 2 (``--debug`` shows the traceback).

>>> sorted(COMMANDS)
['evaluate', 'export', 'generate', 'playground', 'predict', 'trace', 'train']
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from backprop import __version__
from backprop.cli import evaluate, export, generate, playground, trace, train
from backprop.cli.options import EXIT_USAGE, CLIError
from backprop.extras import MissingExtra

COMMANDS = {"train": train.cmd_train, "evaluate": evaluate.cmd_evaluate, "predict": evaluate.cmd_predict,
            "trace": trace.cmd_trace, "export": export.cmd_export, "playground": playground.cmd_playground,
            "generate": generate.cmd_generate}


class _Parser(argparse.ArgumentParser):
    """argparse that reports an error in one line, with a pointer to --help, and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="backprop", description="Train neural networks by backpropagation.",
                     epilog=train.EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"backprop {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train.add_parser(sub)
    evaluate.add_parsers(sub)
    trace.add_parser(sub)
    export.add_parser(sub)
    playground.add_parser(sub)
    generate.add_parser(sub)
    return parser


def _one_line(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
              line: str | None = None) -> None:
    """A warning as the command line speaks: one line, no source path (``--debug`` keeps Python's format)."""
    text = " ".join(str(message).split())
    print(f"backprop: warning: {text}", file=sys.stderr if file is None else file)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shown = warnings.showwarning
    if not getattr(args, "debug", False):
        warnings.showwarning = _one_line
    try:
        return COMMANDS[args.command](args)
    except MissingExtra as e:  # an optional extra the command needs: how to install it, before any work
        print(f"backprop: error: {e}", file=sys.stderr)
        return EXIT_USAGE
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
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
