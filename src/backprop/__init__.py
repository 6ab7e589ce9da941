"""backprop: neural networks that learn by backpropagation, on NumPy.

The layers, each importing only from those before it: ``engine`` (Tensor, the primitives, autograd),
``nn``, ``optim``, ``data``, ``training`` (the one loop, ``fit``), ``io``, then ``distributed``, ``onnx``,
``sklearn`` and ``viz``; this module re-exports the public names, and ``cli`` builds on it.

>>> import backprop as bp
>>> x = bp.tensor([[1.0, 2.0]], requires_grad=True)
>>> (x ** 2).sum().item()
5.0

``sklearn`` and ``viz`` are imported on first use (PEP 562), so ``import backprop`` stays fast and does not
load scikit-learn, while ``bp.sklearn.MLPClassifier`` and ``bp.viz.draw_graph`` need no import of their own:

>>> bp.viz.draw_graph.__name__, "sklearn" in dir(bp)
('draw_graph', True)
"""

import importlib
from types import ModuleType

from backprop import data, distributed, io, nn, onnx, optim, training
from backprop.data import DataLoader, datasets
from backprop.engine import *

# NOTE: bp.sum, bp.max, bp.min, bp.abs, bp.pow, as torch.sum...: bound only here, in the re-export hub, so
# no engine module shadows the builtins (backprop.engine.functional defines them as _sum, _max, ...).
from backprop.engine.functional import _abs as abs
from backprop.engine.functional import _max as max
from backprop.engine.functional import _min as min
from backprop.engine.functional import _pow as pow
from backprop.engine.functional import _sum as sum
from backprop.engine.random import get_rng, manual_seed
from backprop.training import (
    Callback,
    History,
    LambdaCallback,
    TrainingDiverged,
    evaluate,
    fit,
    jit,
    predict,
)

__version__ = "0.1.0"
__all__ = [  # noqa: RUF022 - the engine's names first, then the rest
    "DEFAULT_DTYPE", "Function", "REGISTRY", "Tensor", "abs", "add", "argmax", "argmin", "as_tensor", "clip",
    "concatenate", "div", "enable_grad", "exp", "gelu", "get_num_threads", "gradcheck", "is_grad_enabled", "leaky_relu", "log",
    "log_softmax", "logsumexp", "matmul", "max", "maximum", "mean", "min", "minimum", "mul", "neg", "no_grad",
    "ops", "pow", "register", "relu", "reshape", "set_num_threads", "sigmoid", "softmax", "sqrt", "stack", "sub", "sum", "tanh",
    "tensor", "transpose", "unbroadcast", "where",
    "Callback", "DataLoader", "History", "LambdaCallback", "TrainingDiverged", "__version__",
    "data", "datasets", "distributed", "evaluate", "fit", "get_rng", "io", "jit", "manual_seed", "nn", "onnx", "optim", "predict",
    "training",
]

# NOTE: these subpackages are imported on first attribute access (PEP 562), not above: backprop.sklearn pulls
# in scikit-learn (~1 s, and an optional extra), so `import backprop` would be slow or fail without it; yet
# `bp.sklearn.MLPClassifier` and `backprop.viz.draw_graph(...)`, as the README writes them, must work after a
# bare `import backprop`. They are left out of __all__, so `from backprop import *` imports neither. (io and
# distributed stay eager: they register themselves with training's extension points when imported.)
_LAZY_SUBPACKAGES = ("sklearn", "viz")


def __getattr__(name: str) -> ModuleType:
    """``bp.sklearn`` / ``bp.viz``: import the subpackage on first access; any other name: AttributeError."""
    if name in _LAZY_SUBPACKAGES:
        # NOTE: importlib, not an import statement: the import machinery binds the submodule as an attribute
        # of this package, so __getattr__ runs once per name.
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names and the lazily imported subpackages, for tab completion."""
    return sorted(set(globals()) | set(_LAZY_SUBPACKAGES))
