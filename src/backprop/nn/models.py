"""Ready-made networks: the MLP of the command line, LeNet-5 and a small modern CNN with batch norm.

``MODEL_DEFAULTS`` holds, for each network, training options it is known to learn with on the data it is
made for (the 8x8 digits for ``mlp``, MNIST for ``lenet5`` and ``cnn``), under ``fit``'s and the command
line's names; a front end uses them where its user gave no value.

>>> MODEL_DEFAULTS["lenet5"]["lr"]
0.01
>>> import backprop as bp
>>> _ = bp.manual_seed(0)
>>> net = lenet5()
>>> net(bp.tensor(np.zeros((2, 784), np.float32))).shape
(2, 10)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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

#: Training options each network learns with, where the user gives none: the optimizer and its ``lr`` and
#: ``momentum`` (for SGD and RMSprop) and the ``batch_size``, as ``fit`` and ``backprop train`` name them.
#: Measured with ``bp.fit`` as ``backprop train`` runs it (10% held out for validation, seeds 0, 1, 2):
#: one epoch on MNIST, lenet5 98.3%, 97.9%, 97.6% and cnn 98.4%, 98.3%, 97.9% test accuracy; mlp on the
#: digits (at most 30 epochs, early stopping) 96.9%, 97.5%, 97.2%.
#:
#: NOTE: the conv nets take a 5x lower ``lr`` than the MLP, and it is the step size, not the init, that
#: needs it. With SGD lr 0.05, momentum 0.9 (an effective step of lr / (1 - momentum) = 0.5) and batch 16,
#: LeNet-5 ends its first MNIST epoch at chance (10.3%, 10.1%, 11.4% for seeds 0-2; PyTorch's loop too) and
#: the CNN twice in three (10.3%, 10.1%, 94.0%). A large step pushes ReLU units to where no sample turns
#: them on; a dead unit gets no gradient, so it never comes back. LeNet-5's loss falls to 0.7 by step 500
#: while its first conv layer loses 3 of its 6 channels, then climbs back to ln(10) = 2.303 once all 6 are
#: dead (by step 1750). The CNN's batch norm keeps its conv units alive, but its 3136->128 linear layer takes
#: 3136 inputs of unit scale, so one step moves its pre-activations by about lr * |x|^2 ~ 0.05 * 3136 times
#: the error: 84% of its units are dead after 10 steps, all by step 300, and every gradient but the output
#: bias's is then exactly 0. He (Kaiming) init, the right one for ReLU, does not help (LeNet-5: 10.3%,
#: 10.1%, 73.0%), so the layers keep PyTorch's init and PyTorch's weights load as they are; tanh, LeNet-5's
#: own activation, trains at lr 0.05 (96.0-96.9%) but ReLU at lr 0.01 learns more. lr 0.02 still trains
#: both (97.6-98.6%, 98.3-98.6%): the defaults keep a factor 2 from there and 5 from the collapse.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": {"optimizer": "sgd", "lr": 0.02, "momentum": 0.9, "batch_size": 16},
    "lenet5": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": 16},
    "cnn": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": 16},
}
