"""minidl: a from-scratch deep-learning framework over NumPy (CPU) and CuPy (GPU).

    import numpy as np
    import minidl
    import minidl.functional as F

    x = minidl.Tensor(np.random.randn(2, 3, 32, 32).astype("float32"), requires_grad=True)
    w = minidl.randn(8, 3, 3, 3, requires_grad=True)
    y = F.conv2d(x, w, padding=1).relu().sum()
    y.backward()                       # x.grad, w.grad

What ``import minidl`` does: it needs NumPy only, and loads the engine (``Tensor``,
``Function``, grad modes, constructors; ``minidl.autograd.Function`` in PyTorch's static form),
the generic ops, the random state, ``gradcheck``, ``save``/``load``, and the subpackages
``functional``, ``nn``, ``optim``, ``data``, ``models``, ``train`` and ``cuda`` (so ``minidl.nn.Conv2d`` works after ``import minidl`` alone). Optional
dependencies are imported only when used: CuPy through :mod:`minidl.backend` (guarded: without
it the "cuda" device raises a clear error), Pillow when an image is decoded, matplotlib when a
plot is drawn, tqdm for progress bars, mpi4py by :mod:`minidl.distributed` (not imported here:
``import minidl.distributed``).

The public names are those in ``__all__``; docs/design.md describes the layers and
conventions.
"""
from minidl import backend
from minidl.tensor import (Function, Tensor, arange, enable_grad, full, is_grad_enabled,
                           no_grad, ones, ones_like, randn, zeros, zeros_like)
from minidl.ops import concatenate, stack, where
from minidl import random
from minidl.random import manual_seed
from minidl.gradcheck import GradcheckError, gradcheck
from minidl import autograd
from minidl import cuda
from minidl import functional, nn, optim, data, models, train
from minidl.serialization import load, save

__version__ = "0.1.0"

__all__ = [
    # the engine
    "Tensor", "Function", "no_grad", "enable_grad", "is_grad_enabled",
    "zeros", "zeros_like", "ones", "ones_like", "full", "randn", "arange",
    "concatenate", "stack", "where",
    # randomness, gradient checks, weights in and out
    "manual_seed", "random", "gradcheck", "GradcheckError", "save", "load",
    # subpackages
    "autograd", "backend", "cuda", "functional", "nn", "optim", "data", "models", "train",
]
