"""Layers and losses: ``backprop.nn`` mirrors ``torch.nn``."""

from backprop.nn import (
    functional,
    init,
    losses,
    models,
    utils,
)
from backprop.nn.conv import Conv1d, Conv2d
from backprop.nn.embedding import Embedding
from backprop.nn.layers import (
    GELU,
    Dropout,
    Flatten,
    Hardtanh,
    Identity,
    LeakyReLU,
    Linear,
    LogSoftmax,
    ReLU,
    Sigmoid,
    Softmax,
    Softplus,
    Tanh,
    Unflatten,
)
from backprop.nn.module import Module, ModuleList, Parameter, Sequential
from backprop.nn.normalization import BatchNorm1d, BatchNorm2d, LayerNorm
from backprop.nn.pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d

__all__ = [
    "GELU", "AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv1d", "Conv2d", "Dropout",
    "Embedding", "Flatten", "Hardtanh", "Identity", "LayerNorm", "LeakyReLU", "Linear", "LogSoftmax", "MaxPool2d",
    "Module", "ModuleList", "Parameter", "ReLU", "Sequential", "Sigmoid", "Softmax", "Softplus", "Tanh", "Unflatten",
    "functional", "init", "losses", "models", "utils",
]
