"""Pooling: max (overlapping windows, AlexNet's 3x3 stride 2), average, adaptive, and spatial
pyramid pooling (SPP, the PReLU paper's {6, 3, 2, 1} / {7, 3, 2, 1} heads).

Shapes: x (N, C, H, W) -> (N, C, OH, OW). Output sizes follow PyTorch (and Caffe):

    OH = floor((H + 2p - k) / s) + 1          (ceil instead of floor with ceil_mode)

and with ``ceil_mode`` a last window that would start in the bottom/right padding
(``(OH - 1) * s >= H + p``) is dropped. Padding never wins a max and, for the average, is counted
in the divisor only with ``count_include_pad`` (and only up to ``H + p``, as PyTorch).

Max pooling (docs/design.md): in each window, scanned in row-major order, a value wins if
``v > max or isnan(v)`` -- the first maximum wins ties and NaN propagates. The forward keeps the
winner's per-plane index ``h*W + w`` (int32); the backward sends each output gradient to that
input element (summing where overlapping windows pick the same one), deterministically.

The geometry (pairs, output sizes, the padding rule) is :func:`minidl.geometry.pool_geometry`,
shared with the CUDA wrappers. NumPy path (``forward``/``backward``): strided views over the
KH*KW kernel offsets (a loop over the window, never over pixels). CuPy path
(``forward_cuda``/``backward_cuda``): the CUDA kernels of :mod:`minidl.cuda.kernels`.
"""
import operator

import numpy as np

from minidl import ops
from minidl.backend import get_array_module
from minidl.functional._checks import check_floating
from minidl.functional._utils import kernels
from minidl.geometry import pool_geometry
from minidl.tensor import Function


def _padded_shape(g):
    """(Hp, Wp): the input padded by p on the top/left and enough on the bottom/right for every
    window (ceil_mode windows may run past ``H + p``)."""
    return (max(g.h + 2 * g.ph, (g.oh - 1) * g.sh + g.kh),
            max(g.w + 2 * g.pw, (g.ow - 1) * g.sw + g.kw))


def _padded(x, g, fill):
    """x padded as :func:`_padded_shape` says, filled with ``fill``."""
    hp, wp = _padded_shape(g)
    if (hp, wp) == (g.h, g.w):
        return x
    out = np.full((g.n, g.c, hp, wp), fill, dtype=x.dtype)
    out[:, :, g.ph:g.ph + g.h, g.pw:g.pw + g.w] = x
    return out


def _offset_view(xpad, i, j, g):
    """x_pad[:, :, i + s*oh', j + s*ow'] for every output position: kernel offset (i, j)."""
    return xpad[:, :, i:i + g.sh * (g.oh - 1) + 1:g.sh, j:j + g.sw * (g.ow - 1) + 1:g.sw]


# ----------------------------------------------------------------------------------------------
# max pooling


def _max_pool_forward(x, g):
    n, c, h, w = x.shape
    oh, ow = g.oh, g.ow
    xpad = _padded(x, g, -np.inf)
    has_nan = bool(np.isnan(x).any())
    # running maximum and the window offset o = kh*KW + kw it came from; -1: nothing won yet
    best = np.full((n, c, oh, ow), -np.inf, dtype=x.dtype)
    ctype = np.int16 if g.kh * g.kw < 2 ** 15 else np.int32
    code = np.full((n, c, oh, ow), -1, dtype=ctype)
    for i in range(g.kh):
        for j in range(g.kw):
            v = _offset_view(xpad, i, j, g)
            o = i * g.kw + j
            win = v > best
            if has_nan:  # the exact rule, v > max || isnan(v): a later NaN replaces a NaN
                win |= np.isnan(v)
                np.copyto(best, v, where=win)
            else:        # without NaN, max() keeps exactly the values the rule keeps
                np.maximum(best, v, out=best)
            # code = where(win, o, code), branch-free (masked copies are slow on random masks)
            code += win * (code.dtype.type(o) - code)
    # per-plane index h*W + w of the winner; when nothing won (every real input -inf) the
    # window's first real position, as the reference and the CUDA kernel do
    base = ((np.arange(oh) * g.sh - g.ph)[:, None] * w
            + (np.arange(ow) * g.sw - g.pw)[None, :]).astype(np.int32)
    offs = np.array([i * w + j for i in range(g.kh) for j in range(g.kw)], dtype=np.int32)
    arg = np.take(offs, code, mode="wrap") + base
    nowin = code < 0
    if bool(nowin.any()):
        first = (np.maximum(np.arange(oh) * g.sh - g.ph, 0)[:, None] * w
                 + np.maximum(np.arange(ow) * g.sw - g.pw, 0)[None, :]).astype(np.int32)
        np.copyto(arg, np.broadcast_to(first, arg.shape), where=nowin)
    return best, arg


def _scatter_to_planes(gy, arg, input_shape):
    """gx[n, c].flat[arg[n, c, i, j]] += gy[n, c, i, j], summed deterministically (the NumPy
    path of max pooling; CuPy runs the CUDA kernel, adaptive pooling _scatter_by_bins)."""
    xp = get_array_module(gy)
    n, c, h, w = input_shape
    planes = xp.arange(n * c, dtype=np.int64).reshape(n, c, 1, 1) * (h * w)
    flat = (planes + arg).ravel()
    gx = xp.bincount(flat, weights=gy.ravel(), minlength=n * c * h * w)
    return gx.astype(gy.dtype, copy=False).reshape(input_shape)


class MaxPool2dFunction(Function):
    """Max pooling; saves the winners' per-plane indices (int32, the output's shape) for
    backward. ``geo`` is the :class:`~minidl.geometry.PoolGeometry`."""

    def forward(self, x, geo):
        self.geo = geo
        y, arg = _max_pool_forward(x, geo)
        self.save_for_backward(arg)
        return y

    def forward_cuda(self, x, geo):
        self.geo = geo
        y, arg = kernels().max_pool2d_forward(x, geo.kernel_size, geo.stride, geo.padding,
                                              geo.ceil_mode)
        self.save_for_backward(arg)
        return y

    def backward(self, gy):
        arg, = self.saved_arrays
        return _scatter_to_planes(gy, arg, self.geo.input_shape)

    def backward_cuda(self, gy):
        arg, = self.saved_arrays
        g = self.geo
        return kernels().max_pool2d_backward(gy, arg, g.input_shape, g.kernel_size, g.stride,
                                             g.padding, g.ceil_mode)


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Max pooling over (KH, KW) windows, x (N, C, H, W) -> (N, C, OH, OW).

    ``y[n, c, i, j] = max_{kh, kw} x_pad[n, c, i*sH + kh, j*sW + kw]`` (padding is -inf);
    ``stride`` defaults to ``kernel_size``; overlapping windows (AlexNet: 3, stride 2) are fine.
    Ties go to the first maximum in row-major window order, NaN propagates.
    """
    check_floating("max_pool2d", x)
    geo = pool_geometry("max_pool2d", x.shape, kernel_size, stride, padding, ceil_mode)
    return MaxPool2dFunction.apply(x, geo=geo)


# ----------------------------------------------------------------------------------------------
# average pooling


def _avg_divisor(size, k, s, p, out, count_include_pad):
    """Per output row (or column): the number of elements averaged, PyTorch's rule."""
    start = np.arange(out) * s - p
    end = np.minimum(start + k, size + p)
    full = end - start
    lo, hi = np.maximum(start, 0), np.minimum(end, size)
    return full if count_include_pad else hi - lo


def _avg_divisors(g, count_include_pad):
    """(OH, OW) divisors of an average pooling of geometry ``g``."""
    return np.outer(_avg_divisor(g.h, g.kh, g.sh, g.ph, g.oh, count_include_pad),
                    _avg_divisor(g.w, g.kw, g.sw, g.pw, g.ow, count_include_pad))


class AvgPool2dFunction(Function):
    """Average pooling; ``geo`` is the :class:`~minidl.geometry.PoolGeometry`. The divisors
    depend on the geometry only (recomputed in backward, not saved)."""

    def forward(self, x, geo, count_include_pad):
        self.geo, self.count_include_pad = geo, count_include_pad
        xpad = _padded(x, geo, 0)
        acc = np.zeros(geo.output_shape, dtype=x.dtype)
        for i in range(geo.kh):
            for j in range(geo.kw):
                acc += _offset_view(xpad, i, j, geo)
        acc /= _avg_divisors(geo, count_include_pad).astype(x.dtype)
        return acc

    def forward_cuda(self, x, geo, count_include_pad):
        self.geo, self.count_include_pad = geo, count_include_pad
        return kernels().avg_pool2d_forward(x, geo.kernel_size, geo.stride, geo.padding,
                                            geo.ceil_mode, count_include_pad)

    def backward(self, gy):
        geo = self.geo
        g = gy / _avg_divisors(geo, self.count_include_pad).astype(gy.dtype)
        gpad = np.zeros((geo.n, geo.c) + _padded_shape(geo), dtype=gy.dtype)
        for i in range(geo.kh):
            for j in range(geo.kw):
                _offset_view(gpad, i, j, geo)[...] += g
        return np.ascontiguousarray(gpad[:, :, geo.ph:geo.ph + geo.h, geo.pw:geo.pw + geo.w])

    def backward_cuda(self, gy):
        g = self.geo
        return kernels().avg_pool2d_backward(gy, g.input_shape, g.kernel_size, g.stride,
                                             g.padding, g.ceil_mode, self.count_include_pad)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """Average pooling, x (N, C, H, W) -> (N, C, OH, OW), torch's ``F.avg_pool2d``.

    ``y[n, c, i, j] = sum_{window} x_pad / divisor``: the divisor is the window's size clipped
    to the padded input (``count_include_pad=True``) or the number of real input elements in it.
    """
    check_floating("avg_pool2d", x)
    geo = pool_geometry("avg_pool2d", x.shape, kernel_size, stride, padding, ceil_mode)
    return AvgPool2dFunction.apply(x, geo=geo, count_include_pad=bool(count_include_pad))


# ----------------------------------------------------------------------------------------------
# adaptive pooling and SPP


def adaptive_bins(size, out):
    """Bin i of ``out`` spans ``[floor(i*size/out), ceil((i+1)*size/out))`` (any size, even
    size < out: bins then overlap/repeat)."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def _adaptive_size(output_size, shape):
    if output_size is None or isinstance(output_size, (int, np.integer)):
        oh = ow = output_size
    else:
        try:
            oh, ow = output_size
        except (TypeError, ValueError):
            raise TypeError(f"adaptive pooling: output_size must be an int or a pair of ints "
                            f"(None keeps that size), got {output_size!r}") from None
    try:
        oh = shape[2] if oh is None else operator.index(oh)
        ow = shape[3] if ow is None else operator.index(ow)
    except TypeError:
        raise TypeError(f"adaptive pooling: output_size must be an int or a pair of ints "
                        f"(None keeps that size), got {output_size!r}") from None
    if oh < 1 or ow < 1:
        raise ValueError(f"adaptive pooling: output_size must be positive, got {output_size}")
    return oh, ow


def _uniform_bins(size, out):
    """The kernel size (also the stride) when the adaptive bins of ``size`` into ``out`` are a
    regular pooling, i.e. when ``out`` divides ``size``; None otherwise."""
    if size % out == 0:
        return size // out
    return None


class AdaptiveMaxPool2dFunction(Function):
    """Adaptive max pooling by a loop over the OH*OW bins (each a vectorized reduction over N, C)
    with the max-pool winner rule (first maximum, NaN propagates)."""

    def forward(self, x, out_hw):
        xp = get_array_module(x)
        n, c, h, w = x.shape
        oh, ow = out_hw
        self.shape = x.shape
        y = xp.empty((n, c, oh, ow), dtype=x.dtype)
        arg = xp.empty((n, c, oh, ow), dtype=np.int32)
        for i, (h0, h1) in enumerate(adaptive_bins(h, oh)):
            for j, (w0, w1) in enumerate(adaptive_bins(w, ow)):
                win = x[:, :, h0:h1, w0:w1].reshape(n, c, -1)
                a = xp.argmax(win, axis=2)
                # the LAST NaN wins (v > max || isnan(v) scanned in order); decided per window
                # on the device, never by a host-side `if nan.any()` (a sync per bin on a GPU)
                nan = xp.isnan(win)
                last = win.shape[2] - 1 - xp.argmax(nan[:, :, ::-1], axis=2)
                a = xp.where(nan.any(axis=2), last, a)
                y[:, :, i, j] = xp.take_along_axis(win, a[:, :, None], axis=2)[:, :, 0]
                bw = w1 - w0
                arg[:, :, i, j] = (h0 + a // bw) * w + (w0 + a % bw)
        self.save_for_backward(arg)
        return y

    def backward(self, gy):
        arg, = self.saved_arrays
        return _scatter_by_bins(gy, arg, self.shape)


def _scatter_by_bins(gy, arg, input_shape):
    """``gx[n, c].flat[arg[n, c, i, j]] += gy[n, c, i, j]`` without a device-to-host sync: one
    scatter per output bin (i, j), in a fixed order (deterministic). Within one bin every
    (n, c) writes its own plane, so no two targets of a scatter collide; bins that pick the same
    input (overlapping adaptive bins) add up across the sequential scatters. (``bincount`` on
    CuPy synchronizes twice: a negative check and the max index.)"""
    xp = get_array_module(gy)
    n, c, h, w = input_shape
    oh, ow = gy.shape[2:]
    gx = xp.zeros((n * c, h * w), dtype=gy.dtype)
    rows = xp.arange(n * c)
    arg = arg.reshape(n * c, oh * ow)
    g = gy.reshape(n * c, oh * ow)
    for b in range(oh * ow):
        gx[rows, arg[:, b]] += g[:, b]
    return gx.reshape(input_shape)


class AdaptiveAvgPool2dFunction(Function):
    def forward(self, x, out_hw):
        xp = get_array_module(x)
        n, c, h, w = x.shape
        oh, ow = out_hw
        self.shape, self.bins = x.shape, (adaptive_bins(h, oh), adaptive_bins(w, ow))
        y = xp.empty((n, c, oh, ow), dtype=x.dtype)
        for i, (h0, h1) in enumerate(self.bins[0]):
            for j, (w0, w1) in enumerate(self.bins[1]):
                y[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
        return y

    def backward(self, gy):
        xp = get_array_module(gy)
        gx = xp.zeros(self.shape, dtype=gy.dtype)
        for i, (h0, h1) in enumerate(self.bins[0]):
            for j, (w0, w1) in enumerate(self.bins[1]):
                cnt = (h1 - h0) * (w1 - w0)
                gx[:, :, h0:h1, w0:w1] += (gy[:, :, i, j] / cnt)[:, :, None, None]
        return gx


def adaptive_avg_pool2d(x, output_size):
    """Average over adaptive bins so the output is ``output_size`` (int or (OH, OW)) whatever the
    input size; bin i of n spans [floor(i*H/n), ceil((i+1)*H/n)). ``(x, 1)`` is global average
    pooling (ResNet's head)."""
    check_floating("adaptive_avg_pool2d", x)
    if x.ndim != 4:
        raise ValueError(f"adaptive_avg_pool2d: expected a 4-d input (N, C, H, W), got shape "
                         f"{x.shape}")
    oh, ow = _adaptive_size(output_size, x.shape)
    if (oh, ow) == (1, 1):
        return ops.mean(x, axis=(2, 3), keepdims=True)
    kh, kw = _uniform_bins(x.shape[2], oh), _uniform_bins(x.shape[3], ow)
    if kh and kw:
        return avg_pool2d(x, (kh, kw), (kh, kw))
    return AdaptiveAvgPool2dFunction.apply(x, out_hw=(oh, ow))


def adaptive_max_pool2d(x, output_size):
    """Max over adaptive bins (bin i of n spans [floor(i*H/n), ceil((i+1)*H/n))), so any input
    size gives ``output_size``; the max-pool winner rule (first maximum, NaN propagates)."""
    check_floating("adaptive_max_pool2d", x)
    if x.ndim != 4:
        raise ValueError(f"adaptive_max_pool2d: expected a 4-d input (N, C, H, W), got shape "
                         f"{x.shape}")
    oh, ow = _adaptive_size(output_size, x.shape)
    kh, kw = _uniform_bins(x.shape[2], oh), _uniform_bins(x.shape[3], ow)
    if kh and kw:
        return max_pool2d(x, (kh, kw), (kh, kw))
    return AdaptiveMaxPool2dFunction.apply(x, out_hw=(oh, ow))


def spp(x, levels=(6, 3, 2, 1)):
    """Spatial pyramid pooling (He et al.): adaptive max pooling to n x n for each level n,
    flattened and concatenated -> (N, C * sum(n^2)) for any input size (even H < n)."""
    check_floating("spp", x)
    if x.ndim != 4:
        raise ValueError(f"spp: expected a 4-d input (N, C, H, W), got shape {x.shape}")
    outs = [ops.flatten(adaptive_max_pool2d(x, int(n)), 1) for n in levels]
    return outs[0] if len(outs) == 1 else ops.concatenate(outs, axis=1)
