"""Ready-made networks: the MLP of the command line, LeNet-5 and a small modern CNN with batch norm.

>>> import backprop as bp
>>> _ = bp.manual_seed(0)
>>> net = lenet5()
>>> net(bp.tensor(np.zeros((2, 784), np.float32))).shape
(2, 10)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from backprop.nn.conv import Conv2d
from backprop.nn.layers import (
    GELU,
    Dropout,
    Flatten,
    LeakyReLU,
    Linear,
    LogSoftmax,
    ReLU,
    Sigmoid,
    Tanh,
    Unflatten,
)
from backprop.nn.module import Module, Sequential
from backprop.nn.normalization import BatchNorm2d
from backprop.nn.pooling import MaxPool2d

ACTIVATIONS: dict[str, type[Module]] = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh, "leaky_relu": LeakyReLU,
                                        "gelu": GELU}


def _activation(name: str) -> type[Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _head(loss: str) -> list[Module]:
    """The output layer suits the loss: logits for cross-entropy, log-probabilities for nll, sigmoid units for
    the squared-error costs (compared with one-hot targets, as in Nielsen's book)."""
    if loss == "nll":
        return [LogSoftmax(dim=1)]
    if loss in ("mse", "quadratic"):
        return [Sigmoid()]
    return []


def mlp(n_features: int, hidden: Sequence[int], n_classes: int, activation: str = "relu", dropout: float = 0.0,
        loss: str = "cross_entropy") -> Sequential:
    """Linear layers with ``activation`` (and dropout) between them."""
    act = _activation(activation)
    layers: list[Module] = []
    width = n_features
    for h in hidden:
        layers += [Linear(width, h), act()]
        if dropout:
            layers.append(Dropout(dropout))
        width = h
    return Sequential(*layers, Linear(width, n_classes), *_head(loss))


def _image_side(n_features: int, model: str) -> int:
    side = round(float(np.sqrt(n_features)))
    if side * side != n_features or side < 12:
        raise ValueError(f"--model {model} needs square grayscale images of at least 12x12 (such as MNIST's 28x28); "
                         f"this data set has {n_features} features per sample")
    return side


def lenet5(n_features: int = 784, n_classes: int = 10, activation: str = "relu", dropout: float = 0.0,
           loss: str = "cross_entropy") -> Sequential:
    """LeNet-5 (LeCun et al. 1998) with max pooling: conv 5x5x6 pad 2, pool, conv 5x5x16, pool, fc 120, 84, 10.

    Takes flattened square images (N, side*side), e.g. MNIST's 784 pixels.
    """
    side = _image_side(n_features, "lenet5")
    act = _activation(activation)
    s = ((side // 2) - 4) // 2  # after pool, conv 5 (valid), pool
    return Sequential(
        Unflatten(1, (1, side, side)),
        Conv2d(1, 6, 5, padding=2), act(), MaxPool2d(2),
        Conv2d(6, 16, 5), act(), MaxPool2d(2),
        Flatten(),
        Linear(16 * s * s, 120), act(), *([Dropout(dropout)] if dropout else []),
        Linear(120, 84), act(), *([Dropout(dropout)] if dropout else []),
        Linear(84, n_classes), *_head(loss),
    )


def small_cnn(n_features: int = 784, n_classes: int = 10, activation: str = "relu", dropout: float = 0.25,
              loss: str = "cross_entropy") -> Sequential:
    """A small modern CNN: two conv-batchnorm-activation-pool blocks (32 and 64 channels), a 128-unit layer."""
    side = _image_side(n_features, "cnn")
    act = _activation(activation)
    s = side // 4
    return Sequential(
        Unflatten(1, (1, side, side)),
        Conv2d(1, 32, 3, padding=1, bias=False), BatchNorm2d(32), act(), MaxPool2d(2),
        Conv2d(32, 64, 3, padding=1, bias=False), BatchNorm2d(64), act(), MaxPool2d(2),
        Flatten(), *([Dropout(dropout)] if dropout else []),
        Linear(64 * s * s, 128), act(), *([Dropout(dropout)] if dropout else []),
        Linear(128, n_classes), *_head(loss),
    )


MODELS = {"mlp": mlp, "lenet5": lenet5, "cnn": small_cnn}
