"""Normalization: local response normalization (AlexNet) and batch normalization (ResNet).

Local response normalization, across channels, in the AlexNet paper's form (x = a, y = b):

    scale_i = k + alpha * sum_{j in window(i)} a_j^2          b_i = a_i / scale_i^beta

at every (n, h, w), with the window of ``size`` = n channels ``[i - n//2, i + (n-1)//2]`` clipped
to ``[0, C-1]`` (docs/design.md; PyTorch's window, symmetric for odd n). alpha is NOT divided by n:
Caffe, cuDNN and PyTorch use ``k + alpha/n * sum``, so

    minidl  local_response_norm(x, n, alpha, beta, k)
    == torch.nn.functional.local_response_norm(x, n, alpha * n, beta, k)

The backward is the analytic one (not autograd of a composite), with the mirrored window
``window'(i) = [i - (n-1)//2, i + n//2]`` (the j whose window contains i):

    da_i = g_i * scale_i^-beta  -  2 * alpha * beta * a_i * sum_{j in window'(i)} g_j b_j / scale_j

Batch normalization (Ioffe & Szegedy; ResNet puts it after every conv), over axes (N, H, W) for
4-d input (N, C, H, W) or N for 2-d input (N, C):

    xhat = (x - mu_B) / sqrt(var_B + eps),   y = gamma * xhat + beta

training uses the batch statistics (biased var) and updates running statistics in place,
``running = (1 - momentum) * running + momentum * stat`` with the UNBIASED batch variance, as
PyTorch; evaluation normalizes with the running statistics.
"""
import numpy as np

from minidl.backend import get_array_module
from minidl.functional._checks import check_floating, finite
from minidl.functional._utils import kernels
from minidl.tensor import Function

# ----------------------------------------------------------------------------------------------
# local response normalization


def _window_sum(sq, before, after):
    """s[:, c] = sum_{j = c - before}^{c + after} sq[:, j] (zero outside [0, C-1]): a loop over
    the window's offsets (n adds of the whole tensor; more accurate in float32 than the
    difference of two cumulative sums)."""
    c = sq.shape[1]
    out = sq.copy()
    for o in range(1, before + 1):
        if o < c:
            out[:, o:] += sq[:, :c - o]
    for o in range(1, after + 1):
        if o < c:
            out[:, :c - o] += sq[:, o:]
    return out


class LocalResponseNormFunction(Function):
    """LRN; saves x, y and the scale for the analytic backward (module docstring)."""

    def forward(self, x, size, alpha, beta, k):
        self.params = (size, alpha, beta)
        scale = _window_sum(x * x, size // 2, (size - 1) // 2)
        scale *= alpha
        scale += k
        y = x * scale ** (-beta)
        self.save_for_backward(x, y, scale)
        return y

    def forward_cuda(self, x, size, alpha, beta, k):
        self.params = (size, alpha, beta)
        y, scale = kernels().lrn_forward(x, size, alpha, beta, k)
        self.save_for_backward(x, y, scale)
        return y

    def backward(self, gy):
        x, y, scale = self.saved_arrays
        size, alpha, beta = self.params
        t = _window_sum(gy * y / scale, (size - 1) // 2, size // 2)
        return gy * scale ** (-beta) - (2.0 * alpha * beta) * x * t

    def backward_cuda(self, gy):
        x, y, scale = self.saved_arrays
        size, alpha, beta = self.params
        return kernels().lrn_backward(x, y, scale, gy, size, alpha, beta)


def local_response_norm(x, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """AlexNet's local response normalization across channels of x (N, C, ...) -> same shape.

    ``b_i = a_i / (k + alpha * sum_{j=max(0, i-n//2)}^{min(C-1, i+(n-1)//2)} a_j^2)^beta`` with
    n = ``size`` (paper: n=5, k=2, alpha=1e-4, beta=0.75).

    Note alpha is the paper's: NOT divided by n. PyTorch/Caffe divide it, so
    ``minidl(x, n, alpha, beta, k) == torch.nn.functional.local_response_norm(x, n, alpha*n,
    beta, k)``.
    """
    check_floating("local_response_norm", x)
    if x.ndim < 3:
        raise ValueError(f"local_response_norm: expected input (N, C, H, W) or (N, C, L), got "
                         f"shape {x.shape}")
    size = int(size)
    if size < 1:
        raise ValueError(f"local_response_norm: size must be >= 1, got {size}")
    alpha = finite("local_response_norm", "alpha", alpha)
    beta = finite("local_response_norm", "beta", beta)
    k = finite("local_response_norm", "k", k)
    return LocalResponseNormFunction.apply(x, size=size, alpha=alpha, beta=beta, k=k)


# ----------------------------------------------------------------------------------------------
# batch normalization


def _channels_last_axis(a):
    """(N, C, ...) as an (N, C, L) view: per-channel reductions run over contiguous rows."""
    return a.reshape(a.shape[0], a.shape[1], -1)


def _channel_sum(a):
    """sum over every axis but 1, as (C,): row sums (pairwise, contiguous), then over N."""
    return _channels_last_axis(a).sum(axis=2).sum(axis=0)


def _channel_dot(a, b):
    """sum over every axis but 1 of a * b, as (C,), without an a * b temporary."""
    xp = get_array_module(a)
    return xp.einsum("ncl,ncl->c", _channels_last_axis(a), _channels_last_axis(b))


def _batch_statistics(x):
    """(mean, biased variance, x - mean) per channel, in two passes over x (exact, no
    E[x^2] - E[x]^2 cancellation); the centred array is reused by the forward as xhat."""
    m = x.size // x.shape[1]
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    mean = _channel_sum(x) / x.dtype.type(m)
    centered = x - mean.reshape(shape)
    var = _channel_dot(centered, centered) / x.dtype.type(m)
    return mean, var, centered


class BatchNormFunction(Function):
    """y = gamma * xhat + beta, xhat = (x - mu) / sqrt(var + eps), per channel (axis 1).

    Training (batch statistics), with m = number of reduced elements, a = gamma / sqrt(var+eps):
      dbeta = sum(g),  dgamma = sum(g * xhat),  dx = a * (g - dbeta / m - xhat * dgamma / m)
    Evaluation (fixed statistics): dx = a * g.

    The per-channel sums are row sums of an (N, C, L) view and ``einsum`` dot products (no
    product temporaries); the forward normalizes the centred array of the statistics in place
    and the backward is three passes over g, so a training step reads and writes each
    activation a few times instead of a dozen.
    """

    def forward(self, x, weight, bias, mean, var, eps, training, centered=None):
        shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        self.shape, self.training = shape, training
        xp = get_array_module(x)
        inv_std = (1.0 / xp.sqrt(var.astype(np.float64) + eps)).astype(x.dtype)
        if centered is None:
            xhat = x - mean.reshape(shape)
        else:
            xhat = centered  # x - mean, made by _batch_statistics for this call only
        xhat *= inv_std.reshape(shape)
        self.save_for_backward(xhat, inv_std, *(() if weight is None else (weight,)))
        if weight is not None:
            y = xhat * weight.reshape(shape)
        else:
            y = xhat.copy()
        if bias is not None:
            y += bias.reshape(shape)
        return y

    def backward(self, gy):
        xhat, inv_std, *weight = self.saved_arrays
        weight = weight[0] if weight else None
        need_x, need_w, need_b = self.needs_input_grad
        stats = need_x and self.training
        gb = _channel_sum(gy) if need_b or stats else None
        gw = _channel_dot(gy, xhat) if need_w or stats else None
        gx = None
        if need_x:
            a = inv_std if weight is None else weight * inv_std
            gx = gy * a.reshape(self.shape)
            if self.training:
                m = xhat.size // xhat.shape[1]
                gx -= xhat * (a * gw / m).reshape(self.shape)
                gx -= (a * gb / m).reshape(self.shape)
        return gx, (gw if need_w else None), (gb if need_b else None)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch normalization of x (N, C) or (N, C, H, W) per channel C, torch's ``F.batch_norm``.

    ``y = weight * (x - mu) / sqrt(var + eps) + bias``. With ``training=True`` mu and var are the
    batch's (biased var, over N or N, H, W), and ``running_mean``/``running_var`` (Tensors of
    shape (C,), or None) are updated IN PLACE: ``r = (1 - momentum) * r + momentum * stat``, the
    variance unbiased (times m/(m-1)). With ``training=False`` the running statistics are used.
    """
    check_floating("batch_norm", x, running_mean=running_mean, running_var=running_var,
                   weight=weight, bias=bias)
    eps = finite("batch_norm", "eps", eps, low=0.0)
    momentum = finite("batch_norm", "momentum", momentum, low=0.0, high=1.0)
    if x.ndim not in (2, 3, 4):
        raise ValueError(f"batch_norm: expected input (N, C), (N, C, L) or (N, C, H, W), got "
                         f"shape {x.shape}")
    c = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (c,):
            raise ValueError(f"batch_norm: {name} has shape {t.shape}, expected ({c},) for input "
                             f"of shape {x.shape}")
    xd = x.data
    centered = None
    if training:
        m = xd.size // c
        if m <= 1:
            raise ValueError(f"batch_norm: expected more than 1 value per channel when training, "
                             f"got input of shape {x.shape}")
        mean, var, centered = _batch_statistics(xd)
        if running_mean is not None:
            running_mean.data *= (1 - momentum)
            running_mean.data += momentum * mean.astype(running_mean.dtype, copy=False)
        if running_var is not None:
            running_var.data *= (1 - momentum)
            running_var.data += (momentum * m / (m - 1)) * var.astype(running_var.dtype,
                                                                     copy=False)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: evaluation (training=False) needs running_mean and "
                             "running_var")
        mean = running_mean.data.astype(xd.dtype, copy=False)
        var = running_var.data.astype(xd.dtype, copy=False)
    return BatchNormFunction.apply(x, weight, bias, mean=mean, var=var, eps=eps,
                                   training=bool(training), centered=centered)
