"""``backprop playground``: a local web page where a network learns by backpropagation, one step at a time.

    backprop playground                      # http://127.0.0.1:8765/, opens the browser
    backprop playground --port 0 --no-browser
    backprop playground --host 0.0.0.0       # deliberately reachable from other machines

The page trains with backprop's own engine (see :mod:`backprop.playground`); the server binds 127.0.0.1
unless ``--host`` says otherwise, prints its address, and stops cleanly on Ctrl-C. It needs the extra
``pip install "backprop[playground]"``: without it the command says so in one line (exit code 2).

>>> import argparse
>>> p = add_parser(argparse.ArgumentParser().add_subparsers())
>>> a = p.parse_args(["--port", "0", "--no-browser"])
>>> a.host, a.port, a.browser
('127.0.0.1', 0, False)
"""

from __future__ import annotations

import argparse
from typing import Any

from backprop.cli.options import int_in
from backprop.extras import require
from backprop.playground.server import DEFAULT_PORT, serve


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``playground`` subcommand to ``subparsers`` (the object ``add_subparsers`` returned)."""
    p = subparsers.add_parser(
        "playground",
        help="a local web page: watch a network learn by backpropagation, step by step",
        description="Start a local web server with the playground page: 2-D data sets, a network of 0-6 hidden "
        "layers trained by backprop's engine, play/pause/step (forward, backward, update), the decision "
        "boundary, every neuron, the gradients on the edges, and the chain rule of any weight. Everything "
        "it serves ships in the package: it works offline.",
        epilog='Needs: pip install "backprop[playground]". Ctrl-C stops the server.',
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int_in(0, 65535), default=DEFAULT_PORT,
                   help=f"the port (default: {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--no-browser", dest="browser", action="store_false", help="do not open a browser")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


def cmd_playground(args: argparse.Namespace) -> int:
    """Serve the playground until Ctrl-C; 0 when stopped."""
    require("playground", needed_by="backprop playground")  # NOTE: one line naming the install, before any work
    return serve(args.host, args.port, open_browser=args.browser)
