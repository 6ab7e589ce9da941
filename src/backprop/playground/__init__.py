"""``backprop playground``: a local web page where a network learns by backpropagation, one step at a time.

The page (``static/``: HTML, JavaScript, CSS, no CDN) talks over one WebSocket to a small ASGI server
(:mod:`backprop.playground.server`, Starlette and uvicorn: ``pip install "backprop[playground]"``). Each
connection gets its own :class:`~backprop.playground.session.Session`, which trains a ``bp.nn.Sequential``
with a ``bp.optim`` optimizer and a ``Step`` of backprop's one training loop, in a worker thread. Everything
but the server imports without the extra: the data sets, the configuration and the session run anywhere.

>>> from backprop.playground import Config, Session
>>> s = Session(Config(dataset="circle", hidden=(4,), activations=("tanh",), lr=0.1))
>>> s.step(); s.iteration
1
"""

from backprop.playground.config import Config, ConfigError
from backprop.playground.session import Session

__all__ = ["Config", "ConfigError", "Session"]
