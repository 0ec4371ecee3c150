"""Weight initializers with PyTorch's names and exact semantics, drawing from :mod:`minidl.random`.

All functions fill a Tensor in place (keeping its dtype and device) and return it.

fan_in / fan_out of a weight of shape (out, in, kh, kw) are in*kh*kw and out*kh*kw (for a
Linear weight (out, in): in and out). In the PReLU paper's symbols, fan_in is n_l = k*k*c (the
forward condition) and fan_out is n^_l = k*k*d (the backward condition).

He / Kaiming (Delving Deep into Rectifiers, eq. 10 and 15):

    0.5 * (1 + a^2) * n * Var[w] = 1   ->   std = gain / sqrt(n),  gain = sqrt(2 / (1 + a^2))

where ``a`` is the slope of the negative part (0 for ReLU; the PReLU init 0.25, or any learned
slope) and n = fan_in (``mode="fan_in"``) or fan_out (``mode="fan_out"``). a = 1 is the linear
case, Var = 1/n, i.e. Xavier's ``n * Var[w] = 1``. ``kaiming_uniform_`` draws U[-b, b] with
b = sqrt(3) * std (same variance). torch's default nonlinearity is "leaky_relu", with
``a`` the slope; ``nonlinearity="relu"`` ignores ``a`` (gain sqrt(2)).

Xavier / Glorot: Var[w] = gain^2 * 2 / (fan_in + fan_out).
AlexNet: ``normal_(w, 0, 0.01)`` and biases ``constant_(b, 1)`` in conv2/4/5 and fc6/7.
"""
import math

import numpy as np

from minidl import backend
from minidl import random as _random


def _fill(t, values):
    arr = np.asarray(values, dtype=t.dtype).reshape(t.shape)
    t.data = backend.to_device(arr, t.device)
    return t


def calculate_gain(nonlinearity, param=None):
    """torch.nn.init.calculate_gain: the factor the std is multiplied by for a nonlinearity."""
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
              "conv_transpose3d", "sigmoid")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity in ("leaky_relu", "prelu"):
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def _calculate_fan_in_and_fan_out(t):
    shape = t.shape
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need a tensor with at least 2 dimensions, got shape "
                         f"{shape}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _fan(t, mode):
    fan_in, fan_out = _calculate_fan_in_and_fan_out(t)
    if mode == "fan_in":
        return fan_in
    if mode == "fan_out":
        return fan_out
    raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")


def uniform_(t, a=0.0, b=1.0):
    """Fill with U[a, b)."""
    return _fill(t, _random.uniform(a, b, t.shape))


def normal_(t, mean=0.0, std=1.0):
    """Fill with N(mean, std^2) (AlexNet: std=0.01)."""
    return _fill(t, _random.normal(mean, std, t.shape))


def constant_(t, val):
    """Fill with a constant (AlexNet: biases 1 in conv2/4/5 and fc6/7)."""
    return _fill(t, np.full(t.shape, val))


def zeros_(t):
    return constant_(t, 0.0)


def ones_(t):
    return constant_(t, 1.0)


def xavier_uniform_(t, gain=1.0):
    """U[-b, b], b = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(t)
    b = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(t, -b, b)


def xavier_normal_(t, gain=1.0):
    """N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(t)
    return normal_(t, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))


def kaiming_normal_(t, a=0, mode="fan_in", nonlinearity="leaky_relu"):
    """He init: N(0, std^2), std = gain / sqrt(n), gain = sqrt(2 / (1 + a^2)) for leaky_relu.

    The PReLU paper's condition ``0.5 * (1 + a^2) * n * Var[w] = 1`` with n = k*k*c (fan_in) or
    k*k*d (fan_out).
    """
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(t, mode))
    return normal_(t, 0.0, std)


def kaiming_uniform_(t, a=0, mode="fan_in", nonlinearity="leaky_relu"):
    """He init, uniform form: U[-b, b], b = sqrt(3) * gain / sqrt(n) (same variance as normal).

    torch's default Conv2d/Linear weight init is ``kaiming_uniform_(w, a=sqrt(5))``.
    """
    bound = math.sqrt(3.0) * calculate_gain(nonlinearity, a) / math.sqrt(_fan(t, mode))
    return uniform_(t, -bound, bound)
