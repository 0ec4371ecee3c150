"""Dropout (Hinton et al.; AlexNet's fc6 and fc7 use p = 0.5), in the "inverted" form.

Training: ``y = x * m / (1 - p)`` with ``m ~ Bernoulli(1 - p)`` elementwise; the mask is drawn
from :mod:`minidl.random` (the one seeded state, on the CPU, then moved to the input's device),
so a seed gives the same masks on every device. Evaluation: ``y = x``. This equals the paper's
"zero with probability p at train time, multiply by 1 - p at test time" up to a constant factor
on the weights that follow.
"""
from minidl import backend
from minidl import random as _random
from minidl.functional._checks import check_floating, finite
from minidl.tensor import Function


class DropoutFunction(Function):
    def forward(self, x, mask):
        self.save_for_backward(mask)
        return x * mask

    def backward(self, gy):
        mask, = self.saved_arrays
        return gy * mask


def dropout(x, p=0.5, training=True):
    """Inverted dropout: zero each element with probability ``p`` and scale the rest by
    1/(1-p) when ``training``; the identity otherwise (or when p = 0)."""
    check_floating("dropout", x)
    p = finite("dropout", "p", p, low=0.0, high=1.0)
    if not training or p == 0.0:
        return x
    if p == 1.0:
        mask = _random.bernoulli_mask(x.shape, 0.0, dtype=x.dtype)
    else:
        mask = _random.bernoulli_mask(x.shape, 1.0 - p, dtype=x.dtype)
        mask *= x.dtype.type(1.0 / (1.0 - p))
    mask = backend.to_device(mask, x.device)
    return DropoutFunction.apply(x, mask=mask)
