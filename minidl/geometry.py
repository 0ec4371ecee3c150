"""Geometry of the sliding-window ops: argument pairs, output sizes and each op family's
validated geometry, in ONE place.

The NumPy ops (:mod:`minidl.functional`), the layers (:mod:`minidl.nn`) and the CUDA launch
wrappers (:mod:`minidl.cuda.kernels`) must agree exactly on these rules -- the kernels index with
the very numbers computed here -- so all three import them from this module, which depends on
nothing else in minidl (it sits below ``backend``; no NumPy or CuPy arrays are involved).

* :func:`pair` -- ``3 -> (3, 3)``, ``(2, 3) -> (2, 3)``; integers only (``operator.index``: 2.5 is
  a TypeError naming the argument), with an optional lower bound (``kernel_size=0`` or
  ``stride=0`` is a ValueError naming it, as is a negative padding).
* :func:`conv_output_size`, :func:`pool_output_size` -- PyTorch's output sizes along one axis.
* :class:`ConvGeometry` / :func:`conv_geometry` -- convolution and im2col/col2im.
* :class:`PoolGeometry` / :func:`pool_geometry` -- max and average pooling, with PyTorch's rule
  that the padding is at most half the window (:func:`pool_window`, also used by the layers).

The geometries are NamedTuples of plain ints, fields named as in the kernels' signatures
(``kh, kw, sh, sw, ...``), with ``(h, w)`` pairs as properties (``geo.kernel_size``...).
"""
import operator
from typing import NamedTuple

__all__ = ["pair", "conv_output_size", "pool_output_size", "ConvGeometry", "conv_geometry",
           "PoolGeometry", "pool_window", "pool_geometry"]


def _index(v, name, whole):
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {whole!r} "
                        f"(an element of type {type(v).__name__})") from None


def pair(value, name="argument", minimum=None):
    """``value`` as a pair of Python ints: ``3 -> (3, 3)``, ``(2, 3) -> (2, 3)``.

    Integers only (anything ``operator.index`` accepts: int, NumPy integers); a float such as
    2.5 raises TypeError naming ``name``; a sequence of other than two values raises ValueError.
    With ``minimum``, a value below it raises ValueError naming ``name`` (``minimum=1`` for
    kernel sizes, strides and dilations, ``minimum=0`` for padding).
    """
    try:
        a = b = operator.index(value)
    except TypeError:
        try:
            items = tuple(value)
        except TypeError:
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r} "
                            f"({type(value).__name__})") from None
        if len(items) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r} "
                             f"({len(items)} values)") from None
        a, b = (_index(v, name, value) for v in items)
    if minimum is not None and min(a, b) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return a, b


def conv_output_size(size, k, s, p, d):
    """A convolution's output size along one axis, PyTorch's formula:
    ``floor((size + 2p - d(k - 1) - 1) / s) + 1``."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def pool_output_size(size, k, s, p, ceil_mode):
    """A pooling's output size along one axis, PyTorch's (and Caffe's) rule:
    ``floor((size + 2p - k) / s) + 1`` (ceil instead of floor with ``ceil_mode``), except that a
    last ``ceil_mode`` window that would start in the right/bottom padding (past ``size + p``)
    is dropped. Assumes ``size + 2p >= k`` (:func:`pool_geometry` checks it)."""
    num = size + 2 * p - k
    out = (num + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


# ----------------------------------------------------------------------------------------------
# convolution (and im2col / col2im)


class ConvGeometry(NamedTuple):
    """A convolution's window: kernel (kh, kw), stride (sh, sw), zero padding (ph, pw),
    dilation (dh, dw) and the output size (oh, ow) they give."""
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    oh: int
    ow: int

    @property
    def kernel_size(self):
        return (self.kh, self.kw)

    @property
    def stride(self):
        return (self.sh, self.sw)

    @property
    def padding(self):
        return (self.ph, self.pw)

    @property
    def dilation(self):
        return (self.dh, self.dw)

    @property
    def output_size(self):
        return (self.oh, self.ow)


def conv_geometry(name, input_shape, kernel_size, stride=1, padding=0, dilation=1):
    """Validate a convolution's arguments for an input of shape (..., H, W) and return its
    :class:`ConvGeometry`.

    kernel_size, stride and dilation must be >= 1 and padding >= 0 (ValueError naming the
    argument); a (dilated) kernel larger than the padded input raises ValueError naming the
    shapes. ``name`` (``"conv2d"``, ``"im2col"``...) starts every message.
    """
    kh, kw = pair(kernel_size, "kernel_size", 1)
    sh, sw = pair(stride, "stride", 1)
    ph, pw = pair(padding, "padding", 0)
    dh, dw = pair(dilation, "dilation", 1)
    h, w = (int(v) for v in tuple(input_shape)[-2:])
    oh, ow = conv_output_size(h, kh, sh, ph, dh), conv_output_size(w, kw, sw, pw, dw)
    if oh < 1 or ow < 1:
        raise ValueError(
            f"{name}: the (dilated) kernel {((kh - 1) * dh + 1, (kw - 1) * dw + 1)} is larger "
            f"than the padded input {(h + 2 * ph, w + 2 * pw)} (input shape "
            f"{tuple(input_shape)}, kernel_size={(kh, kw)}, padding={(ph, pw)}, "
            f"dilation={(dh, dw)})")
    return ConvGeometry(kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)


# ----------------------------------------------------------------------------------------------
# pooling


class PoolGeometry(NamedTuple):
    """A max/average pooling of an (n, c, h, w) input: window (kh, kw), stride (sh, sw),
    padding (ph, pw), output size (oh, ow), and whether the size was rounded up (ceil_mode)."""
    n: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    oh: int
    ow: int
    ceil_mode: bool

    @property
    def input_shape(self):
        return (self.n, self.c, self.h, self.w)

    @property
    def output_shape(self):
        return (self.n, self.c, self.oh, self.ow)

    @property
    def kernel_size(self):
        return (self.kh, self.kw)

    @property
    def stride(self):
        return (self.sh, self.sw)

    @property
    def padding(self):
        return (self.ph, self.pw)


def pool_window(kernel_size, stride=None, padding=0, name="pooling"):
    """A pooling window's ``(kernel_size, stride, padding)`` as pairs, validated.

    ``stride`` defaults to ``kernel_size`` (None or an empty sequence, as torch). The window and
    stride must be >= 1, padding >= 0 and at most half the window (PyTorch's rule, which also
    keeps every window overlapping the input): ValueError naming the argument.
    """
    k = pair(kernel_size, "kernel_size", 1)
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        s = k
    else:
        s = pair(stride, "stride", 1)
    p = pair(padding, "padding", 0)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"{name}: padding {p} must be at most half the kernel size {k}")
    return k, s, p


def pool_geometry(name, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Validate a pooling's arguments for an input of shape (N, C, H, W) and return its
    :class:`PoolGeometry`.

    The window's rules are :func:`pool_window`'s; the window must also fit the padded input.
    Errors are ValueErrors naming the argument or the shapes, starting with ``name``.
    """
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 4:
        raise ValueError(f"{name}: expected a 4-d input (N, C, H, W), got shape {shape}")
    k, s, p = pool_window(kernel_size, stride, padding, name)
    n, c, h, w = shape
    if h + 2 * p[0] < k[0] or w + 2 * p[1] < k[1]:
        raise ValueError(f"{name}: the window {k} is larger than the padded input "
                         f"{(h + 2 * p[0], w + 2 * p[1])} (input shape {shape}, padding {p})")
    ceil_mode = bool(ceil_mode)
    oh = pool_output_size(h, k[0], s[0], p[0], ceil_mode)
    ow = pool_output_size(w, k[1], s[1], p[1], ceil_mode)
    return PoolGeometry(n, c, h, w, k[0], k[1], s[0], s[1], p[0], p[1], oh, ow, ceil_mode)
