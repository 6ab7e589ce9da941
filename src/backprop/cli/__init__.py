"""The backprop command line."""

from backprop.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
