"""2-D convolution by im2col + GEMM, and the im2col / col2im transforms themselves.

Shapes (NCHW): x (N, C, H, W), weight (O, C/G, KH, KW), bias (O,), y (N, O, OH, OW) with

    OH = floor((H + 2*pH - dH*(KH - 1) - 1) / sH) + 1     (OW likewise)

    y[n, o, i, j] = b[o] + sum_{c in group(o), kh, kw}
                    w[o, c, kh, kw] * x_pad[n, c, i*sH + kh*dH, j*sW + kw*dW]

im2col unrolls every receptive field into a column so the convolution becomes one matrix product
per group (G = groups; AlexNet's two-tower layers are G = 2):

    col[(c, kh, kw), (n, i, j)] = x_pad[n, c, i*sH + kh*dH, j*sW + kw*dW]
    y_g = W_g (O/G, C/G*KH*KW) @ col_g (C/G*KH*KW, N*OH*OW)

The backward is two more GEMMs and the adjoint of im2col (col2im, a sum of KH*KW shifted slices):

    dW_g = dY_g @ col_g^T,   dcol_g = W_g^T @ dY_g,   dx = col2im(dcol),   db = sum_{n,i,j} dY

The public :func:`im2col` / :func:`col2im` use PyTorch's ``unfold`` / ``fold`` layout
(N, C*KH*KW, OH*OW), row index ``c*KH*KW + kh*KW + kw``; :func:`conv2d` internally uses the
(C*KH*KW, N*OH*OW) layout above, so each group's forward is a single BLAS call over the whole
batch. The columns are rebuilt in backward rather than kept alive between forward and backward:
they are the largest array of a network (AlexNet conv2 at batch 128 is ~0.9 GB), and copying
them again costs far less than the GEMMs.

The geometry (pairs, output size, argument checks) is :func:`minidl.geometry.conv_geometry`,
shared with the CUDA wrappers. Each Function's ``forward``/``backward`` is the NumPy path; its
``forward_cuda``/``backward_cuda`` (CuPy arrays) call the handwritten kernels in
:mod:`minidl.cuda.kernels`.
"""
import operator

import numpy as np

from minidl.backend import get_array_module
from minidl.functional._checks import check_floating
from minidl.functional._utils import kernels
from minidl.geometry import ConvGeometry, conv_geometry, pair
from minidl.tensor import Function, Tensor

# ----------------------------------------------------------------------------------------------
# strided views (NumPy path)


def _pad_hw(x, ph, pw):
    if ph == 0 and pw == 0:
        return x
    out = np.zeros(x.shape[:2] + (x.shape[2] + 2 * ph, x.shape[3] + 2 * pw), dtype=x.dtype)
    out[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]] = x
    return out


def _window_view(x, geo, order):
    """A read-only view of every kernel offset of every window of ``x`` (N, C, H, W), padded by
    ``geo.padding``.

    ``order="nc"``: (N, C, KH, KW, OH, OW) -- torch's unfold layout;
    ``order="cn"``: (C, KH, KW, N, OH, OW) -- conv2d's GEMM layout.
    """
    xpad = _pad_hw(x, geo.ph, geo.pw)
    sn, sc, sh, sw = xpad.strides
    n, c = xpad.shape[:2]
    taps = (sh * geo.dh, sw * geo.dw)
    steps = (sh * geo.sh, sw * geo.sw)
    if order == "nc":
        shape = (n, c, geo.kh, geo.kw, geo.oh, geo.ow)
        strides = (sn, sc, *taps, *steps)
    else:
        shape = (c, geo.kh, geo.kw, n, geo.oh, geo.ow)
        strides = (sc, *taps, sn, *steps)
    return np.lib.stride_tricks.as_strided(xpad, shape=shape, strides=strides, writeable=False)


def _col2im_cn(dcol, x_shape, geo):
    """Adjoint of the "cn" im2col: dcol (C, KH, KW, N, OH, OW) -> dx (N, C, H, W).

    Sum of KH*KW shifted (strided) slice-adds; accumulates in (C, N, Hp, Wp) so every source
    slice ``dcol[:, kh, kw]`` is read contiguously, then one transpose copy at the end.
    """
    n, c, h, w = x_shape
    (ph, pw), (sh, sw), (oh, ow) = geo.padding, geo.stride, geo.output_size
    acc = np.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=dcol.dtype)
    for i in range(geo.kh):
        h0 = i * geo.dh
        for j in range(geo.kw):
            w0 = j * geo.dw
            acc[:, :, h0:h0 + sh * (oh - 1) + 1:sh, w0:w0 + sw * (ow - 1) + 1:sw] += dcol[:, i, j]
    acc = acc[:, :, ph:ph + h, pw:pw + w]
    return np.ascontiguousarray(acc.transpose(1, 0, 2, 3))


# ----------------------------------------------------------------------------------------------
# public im2col / col2im (torch unfold / fold layout)


def _im2col_numpy(x, geo):
    n, c = x.shape[:2]
    view = _window_view(x, geo, "nc")
    return np.ascontiguousarray(view).reshape(n, c * geo.kh * geo.kw, geo.oh * geo.ow)


def _im2col_cuda(x, geo):
    return kernels().im2col(x, geo.kernel_size, geo.stride, geo.padding, geo.dilation)


def _col2im_numpy(col, output_size, geo):
    n, ckk = col.shape[:2]
    c = ckk // (geo.kh * geo.kw)
    # (N, C, KH, KW, OH, OW) -> (C, KH, KW, N, OH, OW): the layout _col2im_cn reads
    dcol = col.reshape(n, c, geo.kh, geo.kw, geo.oh, geo.ow).transpose(1, 2, 3, 0, 4, 5)
    return _col2im_cn(dcol, (n, c) + tuple(output_size), geo)


def _col2im_cuda(col, output_size, geo):
    return kernels().col2im(col, output_size, geo.kernel_size, geo.stride, geo.padding,
                            geo.dilation)


class Im2ColFunction(Function):
    def forward(self, x, geo):
        self.x_hw, self.geo = x.shape[2:], geo
        return _im2col_numpy(x, geo)

    def forward_cuda(self, x, geo):
        self.x_hw, self.geo = x.shape[2:], geo
        return _im2col_cuda(x, geo)

    def backward(self, gy):
        return _col2im_numpy(gy, self.x_hw, self.geo)

    def backward_cuda(self, gy):
        return _col2im_cuda(gy, self.x_hw, self.geo)


class Col2ImFunction(Function):
    def forward(self, col, output_size, geo):
        self.geo = geo
        return _col2im_numpy(col, output_size, geo)

    def forward_cuda(self, col, output_size, geo):
        self.geo = geo
        return _col2im_cuda(col, output_size, geo)

    def backward(self, gy):
        return _im2col_numpy(gy, self.geo)

    def backward_cuda(self, gy):
        return _im2col_cuda(gy, self.geo)


def _check4d(name, x):
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a 4-d input (N, C, H, W), got shape {tuple(x.shape)}")


def im2col(x, kernel_size, stride=1, padding=0, dilation=1):
    """Unroll the sliding windows of ``x`` (N, C, H, W) into columns (torch's ``F.unfold``).

    Returns (N, C*KH*KW, OH*OW) with ``col[n, c*KH*KW + kh*KW + kw, i*OW + j] =
    x_pad[n, c, i*sH + kh*dH, j*sW + kw*dW]`` (zero in the padding). Built from one strided
    view of the padded input and a single copy. Accepts a Tensor (differentiable: the backward
    is :func:`col2im`) or a raw NumPy/CuPy array (returns an array).
    """
    _check4d("im2col", x)
    geo = conv_geometry("im2col", x.shape, kernel_size, stride, padding, dilation)
    if isinstance(x, Tensor):
        return Im2ColFunction.apply(x, geo=geo)
    if get_array_module(x) is np:
        return _im2col_numpy(x, geo)
    return _im2col_cuda(x, geo)


def col2im(col, output_size, kernel_size, stride=1, padding=0, dilation=1):
    """Sum the columns back into an image (torch's ``F.fold``): the adjoint of :func:`im2col`.

    ``col`` (N, C*KH*KW, OH*OW) -> x (N, C, H, W), ``output_size = (H, W)``; every element
    receives the sum of the column entries that were copied from it (overlapping windows add).
    Implemented as KH*KW strided slice-adds. Tensor in, Tensor out (differentiable); array in,
    array out.
    """
    output_size = pair(output_size, "output_size", 1)
    if col.ndim != 3:
        raise ValueError(f"col2im: expected columns of shape (N, C*KH*KW, L), got "
                         f"{tuple(col.shape)}")
    n, ckk, l_ = col.shape
    geo = conv_geometry("col2im", (n, 0) + output_size, kernel_size, stride, padding, dilation)
    if ckk % (geo.kh * geo.kw) or l_ != geo.oh * geo.ow:
        raise ValueError(f"col2im: columns of shape {tuple(col.shape)} do not fit output_size "
                         f"{output_size} with kernel_size={geo.kernel_size}, stride={geo.stride}, "
                         f"padding={geo.padding}, dilation={geo.dilation} (expected "
                         f"(N, C*{geo.kh * geo.kw}, {geo.oh * geo.ow}))")
    if isinstance(col, Tensor):
        return Col2ImFunction.apply(col, output_size=output_size, geo=geo)
    if get_array_module(col) is np:
        return _col2im_numpy(col, output_size, geo)
    return _col2im_cuda(col, output_size, geo)


# ----------------------------------------------------------------------------------------------
# conv2d


def _cols_cn(x, geo, groups):
    """conv2d's column buffer: (G, C/G*KH*KW, N*OH*OW), one contiguous copy."""
    n, c = x.shape[:2]
    view = _window_view(x, geo, "cn")
    return np.ascontiguousarray(view).reshape(groups, (c // groups) * geo.kh * geo.kw,
                                              n * geo.oh * geo.ow)


def _conv2d_numpy(x, w, b, geo, groups):
    """The forward on NumPy arrays: one column buffer, one GEMM per group over the batch."""
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    og, oh, ow = o // groups, geo.oh, geo.ow
    col = _cols_cn(x, geo, groups)
    wg = w.reshape(groups, og, cg * kh * kw)
    out = np.empty((n, o, oh, ow), dtype=x.dtype)
    y = np.empty((og, n * oh * ow), dtype=x.dtype)
    for g in range(groups):  # one GEMM per group over the whole batch
        np.matmul(wg[g], col[g], out=y)                            # (O/G, N*OH*OW)
        src = y.reshape(og, n, oh, ow).transpose(1, 0, 2, 3)
        dst = out[:, g * og:(g + 1) * og]
        if b is not None:
            np.add(src, b[g * og:(g + 1) * og].reshape(1, og, 1, 1), out=dst)
        else:
            dst[...] = src
    return out


def _input_grad_as_conv(gy, w, x_shape, geo, groups):
    """dx of a stride-1 convolution as a convolution of dy, or None where that does not apply.

    With stride 1 the adjoint of the convolution is again a convolution: dy padded by
    ``d*(K-1) - p`` and correlated with the kernels flipped in space and with their in/out
    channels swapped (per group). This builds one column buffer from dy and multiplies, instead
    of multiplying into a (C*KH*KW, N*OH*OW) column gradient and summing it back with col2im's
    KH*KW strided read-modify-writes. The two cost about the same when O > C (the column buffer
    is then built from the larger side), so it is used only for O <= C (the ResNets' 3x3
    layers, AlexNet's conv4/conv5); the result is the same sum in another order.
    """
    n, c, h, wd = x_shape
    o, cg, kh, kw = w.shape
    if (geo.sh, geo.sw) != (1, 1) or o > c:
        return None
    ph, pw = geo.dh * (kh - 1) - geo.ph, geo.dw * (kw - 1) - geo.pw
    if ph < 0 or pw < 0:
        return None
    og = o // groups
    # (O, C/G, KH, KW) -> per group (C/G, O/G, KH, KW), flipped: (C, O/G, KH, KW)
    wt = w.reshape(groups, og, cg, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    wt = np.ascontiguousarray(wt).reshape(c, og, kh, kw)
    tgeo = ConvGeometry(kh, kw, 1, 1, ph, pw, geo.dh, geo.dw, h, wd)
    return _conv2d_numpy(gy, wt, None, tgeo, groups)


class Conv2dFunction(Function):
    """conv2d as im2col + one GEMM per group (NumPy), or the im2col kernel + cuBLAS (CuPy)."""

    def forward(self, x, w, b, geo, groups):
        self.geo, self.groups = geo, groups
        self.save_for_backward(x, w)
        return _conv2d_numpy(x, w, b, geo, groups)

    def forward_cuda(self, x, w, b, geo, groups):
        self.geo, self.groups = geo, groups
        self.save_for_backward(x, w)
        return kernels().conv2d_forward(x, w, b, geo.stride, geo.padding, geo.dilation, groups)

    def backward(self, gy):
        x, w = self.saved_arrays
        geo, groups = self.geo, self.groups
        need_x, need_w, need_b = self.needs_input_grad
        n, o, oh, ow = gy.shape
        _, cg, kh, kw = w.shape
        og, kg = o // groups, cg * kh * kw
        # dY as (G, O/G, N*OH*OW): the layout of the forward GEMM's output
        gy_g = np.ascontiguousarray(gy.transpose(1, 0, 2, 3)).reshape(groups, og, n * oh * ow)
        gb = gy_g.sum(axis=2).reshape(o) if need_b else None  # contiguous rows: a fast sum
        gw = gx = None
        if need_w:
            col = _cols_cn(x, geo, groups)
            # dW_g^T = col_g @ dY_g^T: OpenBLAS is markedly faster with the long (N*OH*OW)
            # contraction in this orientation than as dY_g @ col_g^T (measured, 1-2 threads)
            gwt = np.empty((groups, kg, og), dtype=w.dtype)
            for g in range(groups):
                np.matmul(col[g], gy_g[g].T, out=gwt[g])
            gw = np.ascontiguousarray(gwt.transpose(0, 2, 1)).reshape(w.shape)
            del col
        if need_x:
            gx = _input_grad_as_conv(gy, w, x.shape, geo, groups)
        if need_x and gx is None:
            wg = w.reshape(groups, og, kg)
            dcol = np.empty((groups, kg, n * oh * ow), dtype=gy.dtype)
            for g in range(groups):
                np.matmul(wg[g].T, gy_g[g], out=dcol[g])
            dcol = dcol.reshape(x.shape[1], kh, kw, n, oh, ow)
            gx = _col2im_cn(dcol, x.shape, geo)
        return gx, gw, gb

    def backward_cuda(self, gy):
        x, w = self.saved_arrays
        geo = self.geo
        need_x, need_w, need_b = self.needs_input_grad
        return kernels().conv2d_backward(x, w, gy, geo.stride, geo.padding, geo.dilation,
                                         self.groups, need_x=need_x, need_w=need_w,
                                         need_b=need_b)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, torch's ``F.conv2d``: x (N, C, H, W), weight (O, C/groups, KH, KW),
    bias (O,) or None -> (N, O, OH, OW).

    ``y[n, o] = b[o] + sum_{c in group(o)} w[o, c] (*) x_pad[n, c]`` with stride, zero padding,
    dilation; ``groups=G`` splits the C input and O output channels into G independent
    convolutions (group g: output channels g*O/G.., input channels g*C/G..). ``stride``,
    ``padding``, ``dilation`` are ints or (h, w) pairs. See the module docstring for the GEMMs.
    """
    check_floating("conv2d", x, weight=weight, bias=bias)
    try:
        groups = operator.index(groups)
    except TypeError:
        raise TypeError(f"conv2d: groups must be an int, got {groups!r}") from None
    if x.ndim != 4:
        raise ValueError(f"conv2d: expected a 4-d input (N, C, H, W), got shape {x.shape}")
    if weight.ndim != 4:
        raise ValueError(f"conv2d: expected a 4-d weight (O, C/groups, KH, KW), got shape "
                         f"{weight.shape}")
    if groups < 1:
        raise ValueError(f"conv2d: groups must be >= 1, got {groups}")
    n, c, h, w = x.shape
    o, cg = weight.shape[:2]
    if c % groups or o % groups:
        raise ValueError(f"conv2d: groups={groups} must divide both the input channels ({c}, "
                         f"input shape {x.shape}) and the output channels ({o}, weight shape "
                         f"{weight.shape})")
    if cg * groups != c:
        raise ValueError(f"conv2d: weight of shape {weight.shape} expects {cg * groups} input "
                         f"channels (C/groups = {cg}, groups={groups}), but the input of shape "
                         f"{x.shape} has {c}")
    if bias is not None and tuple(bias.shape) != (o,):
        raise ValueError(f"conv2d: bias has shape {bias.shape}, expected ({o},) for weight of "
                         f"shape {weight.shape}")
    geo = conv_geometry("conv2d", x.shape, weight.shape[2:], stride, padding, dilation)
    return Conv2dFunction.apply(x, weight, bias, geo=geo, groups=groups)
