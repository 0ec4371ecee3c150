"""Argument helpers shared by the functional ops (pairs, output sizes, tensor checks)."""
import numpy as np

from minidl import backend
from minidl.tensor import Tensor


def pair(v, name="argument"):
    """``3 -> (3, 3)``; ``(2, 3) -> (2, 3)``; ints only."""
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v))
    try:
        a, b = v
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}") from None
    return (int(a), int(b))


def as_tensor(x, name="input"):
    if isinstance(x, Tensor):
        return x
    raise TypeError(f"{name} must be a minidl Tensor, got {type(x).__name__}")


def is_numpy(xp):
    return xp is np


def conv_out_size(size, k, s, p, d):
    """floor((size + 2p - d(k-1) - 1) / s) + 1 (torch's formula)."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def pool_out_size(size, k, s, p, ceil_mode):
    """torch's pooling output size: rounds down, or up with ``ceil_mode`` -- but a window that
    would start in the right/bottom padding (past ``size + p``) is dropped."""
    num = size + 2 * p - k
    out = (num + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def xp_of(*arrays):
    return backend.get_array_module(*arrays)


def kernels():
    """The CUDA launch wrappers (imported lazily: only the GPU path needs them)."""
    from minidl.cuda import kernels as K
    return K
