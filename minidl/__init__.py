"""minidl: a from-scratch deep-learning framework over NumPy (CPU) and CuPy (GPU).

    import minidl
    import minidl.functional as F

    x = minidl.Tensor(np.random.randn(2, 3, 32, 32).astype("float32"), requires_grad=True)
    y = F.conv2d(x, w, padding=1).relu().sum()
    y.backward()

See ../shared/DESIGN.md (or README.md) for the layers and conventions.
"""
from minidl import backend  # noqa: F401
from minidl.tensor import (Function, Tensor, arange, enable_grad, full, is_grad_enabled,  # noqa
                           no_grad, ones, ones_like, randn, unbroadcast, zeros, zeros_like)
from minidl.ops import concatenate, stack, where  # noqa: F401
from minidl import random  # noqa: F401
from minidl.random import manual_seed  # noqa: F401
from minidl.gradcheck import GradcheckError, gradcheck  # noqa: F401
from minidl import autograd  # noqa: F401
from minidl import cuda  # noqa: F401
from minidl import functional, nn, optim, data, models  # noqa: F401
from minidl.serialization import load, save  # noqa: F401

__version__ = "0.1.0"
