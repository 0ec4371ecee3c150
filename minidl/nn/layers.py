"""Layers with PyTorch's signatures, attributes, parameter layouts and default initializations.

Each layer holds its parameters (and buffers) and calls :mod:`minidl.functional` in ``forward``.
Default initializations are torch's:

* Conv2d / Linear weight: ``kaiming_uniform_(w, a=sqrt(5))``, i.e. U[-1/sqrt(fan_in),
  1/sqrt(fan_in)]; bias U[-1/sqrt(fan_in), 1/sqrt(fan_in)] (fan_in = C/groups*KH*KW or in);
* PReLU slopes 0.25 (the PReLU paper's init); BatchNorm weight 1, bias 0, running mean 0,
  running var 1.

The models replace these with the papers' inits where the papers say so (AlexNet's N(0, 0.01^2),
He init for the PReLU nets and ResNets) through :mod:`minidl.nn.init`.
"""
import math

import numpy as np

from minidl import functional as F
from minidl import ops
from minidl.geometry import pair, pool_window
from minidl.nn import init
from minidl.nn.module import Module, Parameter
from minidl.tensor import Tensor

__all__ = [
    "Conv2d", "Linear", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d",
    "SPP", "LocalResponseNorm", "ReLU", "LeakyReLU", "PReLU", "Tanh", "Sigmoid", "BatchNorm1d",
    "BatchNorm2d", "Dropout", "Flatten", "Identity",
]


def _empty(*shape):
    return Parameter(np.zeros(shape, dtype=np.float32))


# ----------------------------------------------------------------------------------------------
# convolution and fully connected


class Conv2d(Module):
    """2-D convolution, ``y = conv2d(x, weight, bias, stride, padding, dilation, groups)``.

    ``weight`` (out_channels, in_channels/groups, KH, KW), ``bias`` (out_channels,) or None.
    x (N, in_channels, H, W) -> (N, out_channels, OH, OW),
    ``OH = floor((H + 2*padding - dilation*(KH - 1) - 1) / stride) + 1``.
    ``groups=2`` is AlexNet's two-tower layout; layers that feed a batch norm take bias=False.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = pair(kernel_size, "kernel_size", 1)
        self.stride = pair(stride, "stride", 1)
        self.padding = pair(padding, "padding", 0)
        self.dilation, self.groups = pair(dilation, "dilation", 1), int(groups)
        self.weight = _empty(out_channels, in_channels // groups, *self.kernel_size)
        if bias:
            self.bias = _empty(out_channels)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d({self.in_channels}, {self.out_channels}): expected input "
                             f"(N, {self.in_channels}, H, W), got shape {x.shape}")
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class Linear(Module):
    """Fully connected, ``y = x @ weight.T + bias``: weight (out_features, in_features)."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = _empty(out_features, in_features)
        if bias:
            self.bias = _empty(out_features)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


# ----------------------------------------------------------------------------------------------
# pooling


class MaxPool2d(Module):
    """Max pooling (AlexNet: ``MaxPool2d(3, stride=2)``, overlapping); stride defaults to the
    kernel size. See :func:`minidl.functional.max_pool2d`."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__()
        pool_window(kernel_size, stride, padding, "MaxPool2d")  # fail early; keep values as given
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.ceil_mode = padding, bool(ceil_mode)

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation=1, ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    """Average pooling; see :func:`minidl.functional.avg_pool2d`."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True):
        super().__init__()
        pool_window(kernel_size, stride, padding, "AvgPool2d")  # fail early; keep values as given
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.ceil_mode = padding, bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed ``output_size`` (``AdaptiveAvgPool2d(1)`` is ResNet's global
    average pooling)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveMaxPool2d(Module):
    """Max pooling to a fixed ``output_size`` whatever the input size."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_max_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class SPP(Module):
    """Spatial pyramid pooling: (N, C, H, W) -> (N, C * sum(n^2 for n in levels)) for any H, W
    (the PReLU paper's {6, 3, 2, 1} and {7, 3, 2, 1} heads)."""

    def __init__(self, levels=(6, 3, 2, 1)):
        super().__init__()
        self.levels = tuple(int(n) for n in levels)

    def output_features(self, channels):
        """Number of output features for ``channels`` input channels."""
        return channels * sum(n * n for n in self.levels)

    def forward(self, x):
        return F.spp(x, self.levels)

    def extra_repr(self):
        return f"levels={self.levels}"


# ----------------------------------------------------------------------------------------------
# normalization


class LocalResponseNorm(Module):
    """AlexNet's LRN across channels: ``b_i = a_i / (k + alpha * sum_window a_j^2)^beta``.

    alpha is the paper's (NOT divided by ``size``): ``LocalResponseNorm(n, alpha, beta, k)`` here
    equals ``torch.nn.LocalResponseNorm(n, alpha * n, beta, k)``.
    """

    def __init__(self, size, alpha=1e-4, beta=0.75, k=2.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    def forward(self, x):
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self):
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class _BatchNorm(Module):
    _expected_dims = (2, 4)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True):
        super().__init__()
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), momentum
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype=np.float32))
            self.bias = Parameter(np.zeros(num_features, dtype=np.float32))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", Tensor(np.zeros(num_features, np.float32)))
            self.register_buffer("running_var", Tensor(np.ones(num_features, np.float32)))
            self.register_buffer("num_batches_tracked", Tensor(np.zeros((), np.int64)))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean.data[...] = 0
            self.running_var.data[...] = 1
            self.num_batches_tracked.data[...] = 0

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            init.zeros_(self.bias)

    def _check_input(self, x):
        if x.ndim not in self._expected_dims or x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}): expected input with "
                             f"{' or '.join(str(d) for d in self._expected_dims)} dimensions "
                             f"and {self.num_features} channels in dim 1, got shape {x.shape}")

    def forward(self, x):
        self._check_input(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data += 1
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked.item())
        use_batch = self.training or not self.track_running_stats
        rm = self.running_mean if (not self.training or self.track_running_stats) else None
        rv = self.running_var if (not self.training or self.track_running_stats) else None
        return F.batch_norm(x, rm, rv, self.weight, self.bias, use_batch, factor, self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L) input, per feature C (running stats as buffers)."""
    _expected_dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W) input, per channel (ResNet: after every conv)."""
    _expected_dims = (4,)


# ----------------------------------------------------------------------------------------------
# activations, dropout, shapes


class ReLU(Module):
    """``max(0, x)``. ``inplace`` is accepted for torch compatibility and ignored."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        return F.relu(x)


class LeakyReLU(Module):
    """``max(0, x) + negative_slope * min(0, x)``. ``inplace`` is accepted for torch
    compatibility and ignored."""

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        self.negative_slope, self.inplace = float(negative_slope), inplace

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class PReLU(Module):
    """Parametric ReLU, ``y = x if x > 0 else a * x``, with learned slopes ``weight`` of shape
    (num_parameters,): 1 (channel-shared) or C (channel-wise), initialized to ``init`` (0.25).
    Exclude it from weight decay (the paper's advice; see ``optim.decay_groups``)."""

    def __init__(self, num_parameters=1, init=0.25):
        super().__init__()
        self.num_parameters, self.init = int(num_parameters), float(init)
        self.weight = Parameter(np.full(num_parameters, init, dtype=np.float32))

    def reset_parameters(self):
        init.constant_(self.weight, self.init)

    def forward(self, x):
        return F.prelu(x, self.weight)

    def extra_repr(self):
        return f"num_parameters={self.num_parameters}"


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class Dropout(Module):
    """Inverted dropout with probability ``p`` in training mode; identity in eval mode.

    ``inplace=True`` is not implemented (it raises): the output is always a new tensor."""

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        if inplace:
            raise NotImplementedError("Dropout(inplace=True) is not implemented: minidl's "
                                      "dropout always returns a new tensor; use inplace=False")
        self.p, self.inplace = float(p), False

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"


class Flatten(Module):
    """Merge dims ``start_dim..end_dim`` (default: all but the batch dimension)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def forward(self, x):
        return ops.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    """Returns its input (accepts and ignores any constructor arguments, as torch)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x
