"""Activations: ReLU (AlexNet), PReLU and Leaky ReLU (He et al.), tanh and sigmoid.

``relu``, ``tanh`` and ``sigmoid`` are the engine's ops (:mod:`minidl.ops`), re-exported.

PReLU (Delving Deep into Rectifiers, eq. 1 and 2-4), for x (N, C, ...) and a (C,) or (1,):

    f(y_i) = max(0, y_i) + a_i * min(0, y_i)
    dE/dy_i = dE/df * (1 if y_i > 0 else a_i)
    dE/da_i = sum over batch and positions of dE/df * (y_i if y_i <= 0 else 0)

channel-wise (one a per channel, summed over N and space) or channel-shared (one a, summed over
channels too). y <= 0 takes the negative branch (docs/design.md). a = 0 is ReLU; a fixed 0.01 is
Leaky ReLU. The slope gradient is a deterministic reduction (NumPy's pairwise sums).
"""
import numpy as np

from minidl.backend import get_array_module
from minidl.functional._checks import check_floating, finite
from minidl.functional._utils import kernels
from minidl.ops import relu, sigmoid, tanh
from minidl.tensor import Function

__all__ = ["relu", "tanh", "sigmoid", "leaky_relu", "prelu"]


class LeakyReLUFunction(Function):
    def forward(self, x, slope):
        xp = get_array_module(x)
        self.slope = slope
        pos = x > 0
        self.save_for_backward(pos)
        y = xp.minimum(x, 0)          # max(0, x) + slope * min(0, x), branch-free
        y *= x.dtype.type(slope)
        y += xp.maximum(x, 0)
        return y

    def backward(self, gy):
        pos, = self.saved_arrays
        gx = gy * pos
        neg = gy * gy.dtype.type(self.slope)
        neg *= ~pos
        gx += neg
        return gx


def leaky_relu(x, negative_slope=0.01):
    """``max(0, x) + negative_slope * min(0, x)`` (a PReLU with a fixed slope)."""
    check_floating("leaky_relu", x)
    return LeakyReLUFunction.apply(x, slope=finite("leaky_relu", "negative_slope",
                                                   negative_slope))


def _bshape(x, weight):
    """Shape that broadcasts weight (C,) or (1,) along dim 1 of x (inputs with fewer than 2
    dimensions have no channel dimension, as in torch: one shared slope)."""
    shape = [1] * x.ndim
    if x.ndim >= 2:
        shape[1] = weight.shape[0]
    return tuple(shape)


class PReLUFunction(Function):
    """NumPy path written branch-free, as the paper's formula ``max(0, y) + a * min(0, y)``:
    ``np.where`` on a random sign pattern is several times slower (branch mispredictions)."""

    def forward(self, x, weight):
        self.save_for_backward(x, weight)
        a = weight.reshape(_bshape(x, weight))
        y = np.minimum(x, 0)
        y *= a
        y += np.maximum(x, 0)
        return y

    def forward_cuda(self, x, weight):
        self.save_for_backward(x, weight)
        return kernels().prelu_forward(x, weight)

    def backward(self, gy):
        x, weight = self.saved_arrays
        need_x, need_w = self.needs_input_grad
        gx = gw = None
        if need_x:
            # g if x > 0 else a*g, as g*[x > 0] + (a*g)*[x <= 0] (exact, no branches)
            pos = x > 0
            gx = gy * pos
            neg = gy * weight.reshape(_bshape(x, weight))
            neg *= ~pos
            gx += neg
        if need_w:
            contrib = np.minimum(x, 0)   # x where x <= 0, else 0
            contrib *= gy
            if weight.shape[0] == 1:
                gw = contrib.sum().reshape(1)
            else:
                axes = (0,) + tuple(range(2, x.ndim)) if x.ndim >= 2 else ()
                gw = contrib.sum(axis=axes) if axes else contrib
        return gx, gw

    def backward_cuda(self, gy):
        x, weight = self.saved_arrays
        return kernels().prelu_backward(x, weight, gy, need_weight=self.needs_input_grad[1])


def prelu(x, weight):
    """Parametric ReLU: ``y = x if x > 0 else a * x`` with a = ``weight`` of shape (C,)
    (channel-wise, C = x.shape[1]) or (1,) (channel-shared). Gradients reach x and the slopes."""
    check_floating("prelu", x, weight=weight)
    if weight.ndim != 1:
        raise ValueError(f"prelu: weight must be 1-d, (1,) or (C,), got shape {weight.shape}")
    c = x.shape[1] if x.ndim >= 2 else 1
    if weight.shape[0] not in (1, c):
        raise ValueError(f"prelu: weight of shape {weight.shape} does not match input of shape "
                         f"{x.shape}: expected (1,) or ({c},) (one slope per channel, dim 1)")
    return PReLUFunction.apply(x, weight)
