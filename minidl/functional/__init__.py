"""minidl.functional (``import minidl.functional as F``): the operations of the three papers,
with ``torch.nn.functional``'s names and argument order.

==============  =============================================================================
module          names
==============  =============================================================================
conv            ``conv2d``, ``im2col``, ``col2im``
pooling         ``max_pool2d``, ``avg_pool2d``, ``adaptive_avg_pool2d``,
                ``adaptive_max_pool2d``, ``spp``
norm            ``local_response_norm`` (AlexNet's alpha: NOT divided by size), ``batch_norm``
activation      ``relu``, ``tanh``, ``sigmoid`` (engine ops), ``leaky_relu``, ``prelu``
dropout         ``dropout``
linear          ``linear``
loss            ``softmax``, ``log_softmax``, ``cross_entropy``, ``nll_loss``, ``mse_loss``,
                ``l1_loss``, ``smooth_l1_loss``, ``binary_cross_entropy(_with_logits)``
padding         ``pad`` (torch's flat tuple, last dimension first)
==============  =============================================================================

The engine's generic ops (:mod:`minidl.ops`: ``add, mul, matmul, exp, log, sum, mean, max,
reshape, transpose, flatten, concatenate, where, clip, ...``) are re-exported too, so ``F`` is
the one namespace of operations (as attributes, not in ``__all__``); ``F.pad`` is torch's
(flat tuple), ``minidl.ops.pad`` NumPy's.

Each op is a :class:`~minidl.tensor.Function` (named ``<Op>Function``, e.g. ``Conv2dFunction``,
so it is never confused with the nn Module of the same op) whose ``forward``/``backward`` work on
NumPy arrays; conv, im2col/col2im, pooling, LRN and PReLU add ``forward_cuda``/``backward_cuda``,
which the engine calls for CuPy arrays and which launch the CUDA kernels. The other ops serve
both devices with the same code through ``xp = backend.get_array_module(x)``. Window geometry
(pairs, output sizes) is :mod:`minidl.geometry`'s.

Dtypes, one rule for every op above: the layers compute in floating point (float16, float32,
float64), and every Tensor argument (weight, bias, running statistics, PReLU slopes, a loss's
class weights) must have the input's dtype. A float32/float64 mix raises TypeError naming both
dtypes and shapes (nothing is promoted silently; cast with ``.to(dtype=...)``); a bool, integer
or complex input raises TypeError naming its dtype (cast with ``.float()``). PyTorch also refuses
the mixes; it accepts integer inputs to conv2d, linear and max/avg pooling, which minidl does
not. The one integer argument is the class-index ``target`` of ``cross_entropy``/``nll_loss``
(a Tensor or array of an integer dtype, each value in ``[0, C)`` or ``ignore_index``).
Hyperparameters (``p``, ``eps``, ``momentum``, LRN's ``alpha``/``beta``/``k``, slopes) must be
finite real numbers in their range. Errors name the op and the argument.
"""
# The engine's generic ops, re-exported explicitly (``name as name``) but kept out of __all__.
from minidl.ops import (abs as abs, add as add, argmax as argmax, argmin as argmin, clip as clip,
                        concatenate as concatenate, div as div, exp as exp, flatten as flatten,
                        log as log, matmul as matmul, max as max, maximum as maximum, mean as mean,
                        min as min, minimum as minimum, mul as mul, neg as neg, permute as permute,
                        pow as pow, reshape as reshape, sqrt as sqrt, squeeze as squeeze,
                        stack as stack, sub as sub, sum as sum, transpose as transpose,
                        unsqueeze as unsqueeze, var as var, where as where)
from minidl.functional.activation import leaky_relu, prelu, relu, sigmoid, tanh
from minidl.functional.conv import col2im, conv2d, im2col
from minidl.functional.dropout import dropout
from minidl.functional.linear import linear
from minidl.functional.loss import (binary_cross_entropy, binary_cross_entropy_with_logits,
                                   cross_entropy, l1_loss, log_softmax, mse_loss, nll_loss,
                                   smooth_l1_loss, softmax)
from minidl.functional.norm import batch_norm, local_response_norm
from minidl.functional.padding import pad
from minidl.functional.pooling import (adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d,
                                       max_pool2d, spp)

__all__ = [
    "conv2d", "im2col", "col2im",
    "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "spp",
    "local_response_norm", "batch_norm",
    "relu", "tanh", "sigmoid", "leaky_relu", "prelu",
    "dropout", "linear",
    "softmax", "log_softmax", "cross_entropy", "nll_loss", "mse_loss", "l1_loss",
    "smooth_l1_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
    "pad",
]
# The generic ops are attributes (F.sum, F.max...) but not in __all__: a star import must not
# shadow the builtins sum, max, min, abs and pow.
