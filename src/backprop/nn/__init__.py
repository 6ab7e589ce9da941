"""Layers and losses: ``backprop.nn`` mirrors ``torch.nn``.

Each layer lives in one file with its save/load description and its ONNX export (see :mod:`backprop.nn.registry`).

>>> import backprop as bp
>>> bp.nn.Sequential(bp.nn.Linear(3, 2), bp.nn.Softplus())(bp.tensor([[1.0, 2.0, 3.0]])).shape
(1, 2)
"""

from backprop.nn import (
    functional,
    init,
    losses,
    models,
    utils,
)
from backprop.nn.attention import MultiheadAttention, generate_square_subsequent_mask
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
from backprop.nn.padding import (
    ConstantPad1d,
    ConstantPad2d,
    ConstantPad3d,
    ReflectionPad1d,
    ReflectionPad2d,
    ReflectionPad3d,
    ReplicationPad1d,
    ReplicationPad2d,
    ReplicationPad3d,
    ZeroPad1d,
    ZeroPad2d,
    ZeroPad3d,
)
from backprop.nn.pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from backprop.nn.preprocessing import Normalization
from backprop.nn.recurrent import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from backprop.nn.sequence_models import RecurrentLM, RecurrentNet, TransformerLM, TransformerNet
from backprop.nn.transformer import (
    PositionalEncoding,
    TransformerEncoder,
    TransformerEncoderLayer,
    sinusoidal_positional_encoding,
)

__all__ = [
    "GELU", "GRU", "LSTM", "RNN", "AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "ConstantPad1d",
    "ConstantPad2d", "ConstantPad3d", "Conv1d", "Conv2d", "Dropout",
    "Embedding", "Flatten", "GRUCell", "Hardtanh", "Identity", "LSTMCell", "LayerNorm", "LeakyReLU", "Linear",
    "LogSoftmax", "MaxPool2d",
    "Module", "ModuleList", "MultiheadAttention", "Normalization", "Parameter", "PositionalEncoding", "RNNCell",
    "ReLU", "RecurrentLM", "RecurrentNet",
    "ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d",
    "ReplicationPad1d", "ReplicationPad2d", "ReplicationPad3d", "Sequential", "Sigmoid", "Softmax", "Softplus", "Tanh",
    "TransformerEncoder", "TransformerEncoderLayer", "TransformerLM", "TransformerNet", "Unflatten", "ZeroPad1d",
    "ZeroPad2d", "ZeroPad3d",
    "functional", "generate_square_subsequent_mask", "init", "losses", "models", "sinusoidal_positional_encoding",
    "utils",
]
