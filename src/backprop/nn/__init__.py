"""Layers and losses: ``backprop.nn`` mirrors ``torch.nn``."""

from backprop.nn import functional, init
from backprop.nn.layers import (
    GELU,
    Dropout,
    Flatten,
    Identity,
    LeakyReLU,
    Linear,
    LogSoftmax,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from backprop.nn.module import Module, ModuleList, Parameter, Sequential

__all__ = [
    "GELU", "Dropout", "Flatten", "Identity", "LeakyReLU", "Linear", "LogSoftmax", "Module", "ModuleList",
    "Parameter", "ReLU", "Sequential", "Sigmoid", "Softmax", "Tanh", "functional", "init",
]
