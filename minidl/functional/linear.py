"""Fully connected layer: ``y = x W^T + b``, x (..., in), W (out, in) (torch's layout), b (out,).

Backward: ``dx = dY W``, ``dW = dY^T x`` (leading dimensions flattened), ``db = sum dY``.
"""
from minidl.functional._checks import check_floating
from minidl.tensor import Function


class LinearFunction(Function):
    def forward(self, x, w, b):
        self.save_for_backward(x, w)
        y = x @ w.T
        if b is not None:
            y += b
        return y

    def backward(self, gy):
        x, w = self.saved_arrays
        need_x, need_w, need_b = self.needs_input_grad
        g2 = gy.reshape(-1, gy.shape[-1])
        gx = (gy @ w) if need_x else None
        gw = g2.T @ x.reshape(-1, x.shape[-1]) if need_w else None
        gb = g2.sum(axis=0) if need_b else None
        return gx, gw, gb


def linear(x, weight, bias=None):
    """``x @ weight.T + bias``: x (..., in_features), weight (out_features, in_features)."""
    check_floating("linear", x, weight=weight, bias=bias)
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be 2-d (out_features, in_features), got shape "
                         f"{weight.shape}")
    if x.ndim < 1:
        raise ValueError(f"linear: input must have at least 1 dimension (..., in_features), got "
                         f"a 0-d input; weight shape {weight.shape}")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input of shape {x.shape} has {x.shape[-1]} "
                         f"features in its last dimension, but the weight of shape "
                         f"{weight.shape} expects {weight.shape[1]}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"linear: bias has shape {bias.shape}, expected ({weight.shape[0]},)")
    return LinearFunction.apply(x, weight, bias)
