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

On the GPU (CuPy arrays) the same signatures call the handwritten kernels in
:mod:`minidl.cuda.kernels`.
"""
import numpy as np

from minidl.functional._utils import conv_out_size, is_numpy, kernels, pair, xp_of
from minidl.tensor import Function, Tensor

# ----------------------------------------------------------------------------------------------
# strided views


def _as_strided(xp, a, shape, strides):
    if is_numpy(xp):
        return np.lib.stride_tricks.as_strided(a, shape=shape, strides=strides, writeable=False)
    return xp.lib.stride_tricks.as_strided(a, shape=shape, strides=strides)


def _pad_hw(x, ph, pw):
    if ph == 0 and pw == 0:
        return x
    xp = xp_of(x)
    out = xp.zeros(x.shape[:2] + (x.shape[2] + 2 * ph, x.shape[3] + 2 * pw), dtype=x.dtype)
    out[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]] = x
    return out


def _window_view(xp_, xpad, kh, kw, oh, ow, s, d, order):
    """A read-only view of every kernel offset of every window of ``xpad`` (N, C, Hp, Wp).

    ``order="nc"``: (N, C, KH, KW, OH, OW) -- torch's unfold layout;
    ``order="cn"``: (C, KH, KW, N, OH, OW) -- conv2d's GEMM layout.
    """
    sn, sc, sh, sw = xpad.strides
    n, c = xpad.shape[:2]
    if order == "nc":
        shape = (n, c, kh, kw, oh, ow)
        strides = (sn, sc, sh * d[0], sw * d[1], sh * s[0], sw * s[1])
    else:
        shape = (c, kh, kw, n, oh, ow)
        strides = (sc, sh * d[0], sw * d[1], sn, sh * s[0], sw * s[1])
    return _as_strided(xp_, xpad, shape, strides)


def _out_hw(name, x_shape, k, s, p, d):
    h, w = x_shape[2:]
    oh, ow = conv_out_size(h, k[0], s[0], p[0], d[0]), conv_out_size(w, k[1], s[1], p[1], d[1])
    if oh < 1 or ow < 1:
        raise ValueError(
            f"{name}: the (dilated) kernel {((k[0] - 1) * d[0] + 1, (k[1] - 1) * d[1] + 1)} is "
            f"larger than the padded input {(h + 2 * p[0], w + 2 * p[1])} (input shape "
            f"{tuple(x_shape)}, kernel_size={k}, padding={p}, dilation={d})")
    return oh, ow


def _col2im_cn(dcol, x_shape, k, s, p, d, oh, ow):
    """Adjoint of the "cn" im2col: dcol (C, KH, KW, N, OH, OW) -> dx (N, C, H, W).

    Sum of KH*KW shifted (strided) slice-adds; accumulates in (C, N, Hp, Wp) so every source
    slice ``dcol[:, kh, kw]`` is read contiguously, then one transpose copy at the end.
    """
    xp = xp_of(dcol)
    n, c, h, w = x_shape
    hp, wp = h + 2 * p[0], w + 2 * p[1]
    acc = xp.zeros((c, n, hp, wp), dtype=dcol.dtype)
    for i in range(k[0]):
        h0 = i * d[0]
        for j in range(k[1]):
            w0 = j * d[1]
            acc[:, :, h0:h0 + s[0] * (oh - 1) + 1:s[0], w0:w0 + s[1] * (ow - 1) + 1:s[1]] \
                += dcol[:, i, j]
    acc = acc[:, :, p[0]:p[0] + h, p[1]:p[1] + w]
    return xp.ascontiguousarray(acc.transpose(1, 0, 2, 3))


# ----------------------------------------------------------------------------------------------
# public im2col / col2im (torch unfold / fold layout)


def _im2col_array(x, k, s, p, d):
    xp = xp_of(x)
    if not is_numpy(xp):
        return kernels().im2col(x, k, s, p, d)
    oh, ow = _out_hw("im2col", x.shape, k, s, p, d)
    n, c = x.shape[:2]
    view = _window_view(xp, _pad_hw(x, *p), k[0], k[1], oh, ow, s, d, "nc")
    return xp.ascontiguousarray(view).reshape(n, c * k[0] * k[1], oh * ow)


def _col2im_array(col, output_size, k, s, p, d):
    xp = xp_of(col)
    if not is_numpy(xp):
        return kernels().col2im(col, output_size, k, s, p, d)
    n, ckk, l_ = col.shape
    h, w = output_size
    oh, ow = _out_hw("col2im", (n, 0, h, w), k, s, p, d)
    if ckk % (k[0] * k[1]) or l_ != oh * ow:
        raise ValueError(f"col2im: columns of shape {tuple(col.shape)} do not fit output_size "
                         f"{(h, w)} with kernel_size={k}, stride={s}, padding={p}, dilation={d} "
                         f"(expected (N, C*{k[0] * k[1]}, {oh * ow}))")
    c = ckk // (k[0] * k[1])
    # (N, C, KH, KW, OH, OW) -> (C, KH, KW, N, OH, OW): the layout _col2im_cn reads
    dcol = col.reshape(n, c, k[0], k[1], oh, ow).transpose(1, 2, 3, 0, 4, 5)
    return _col2im_cn(dcol, (n, c, h, w), k, s, p, d, oh, ow)


class Im2Col(Function):
    def forward(self, x, k, s, p, d):
        self.x_hw, self.args = x.shape[2:], (k, s, p, d)
        return _im2col_array(x, k, s, p, d)

    def backward(self, gy):
        return _col2im_array(gy, self.x_hw, *self.args)


class Col2Im(Function):
    def forward(self, col, output_size, k, s, p, d):
        self.args = (k, s, p, d)
        return _col2im_array(col, output_size, k, s, p, d)

    def backward(self, gy):
        return _im2col_array(gy, *self.args)


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
    k, s, p, d = (pair(kernel_size, "kernel_size"), pair(stride, "stride"),
                  pair(padding, "padding"), pair(dilation, "dilation"))
    _check4d("im2col", x)
    if isinstance(x, Tensor):
        return Im2Col.apply(x, k=k, s=s, p=p, d=d)
    return _im2col_array(x, k, s, p, d)


def col2im(col, output_size, kernel_size, stride=1, padding=0, dilation=1):
    """Sum the columns back into an image (torch's ``F.fold``): the adjoint of :func:`im2col`.

    ``col`` (N, C*KH*KW, OH*OW) -> x (N, C, H, W), ``output_size = (H, W)``; every element
    receives the sum of the column entries that were copied from it (overlapping windows add).
    Implemented as KH*KW strided slice-adds. Tensor in, Tensor out (differentiable); array in,
    array out.
    """
    k, s, p, d = (pair(kernel_size, "kernel_size"), pair(stride, "stride"),
                  pair(padding, "padding"), pair(dilation, "dilation"))
    output_size = pair(output_size, "output_size")
    if col.ndim != 3:
        raise ValueError(f"col2im: expected columns of shape (N, C*KH*KW, L), got "
                         f"{tuple(col.shape)}")
    if isinstance(col, Tensor):
        return Col2Im.apply(col, output_size=output_size, k=k, s=s, p=p, d=d)
    return _col2im_array(col, output_size, k, s, p, d)


# ----------------------------------------------------------------------------------------------
# conv2d


def _cols_cn(x, k, s, p, d, oh, ow, groups):
    """conv2d's column buffer: (G, C/G*KH*KW, N*OH*OW), one contiguous copy."""
    xp = xp_of(x)
    n, c = x.shape[:2]
    view = _window_view(xp, _pad_hw(x, *p), k[0], k[1], oh, ow, s, d, "cn")
    return xp.ascontiguousarray(view).reshape(groups, (c // groups) * k[0] * k[1], n * oh * ow)


class Conv2d(Function):
    def forward(self, x, w, b, stride, padding, dilation, groups):
        xp = xp_of(x)
        self.args = (stride, padding, dilation, groups)
        self.save_for_backward(x, w)
        if not is_numpy(xp):
            return kernels().conv2d_forward(x, w, b, stride, padding, dilation, groups)
        n = x.shape[0]
        o, cg, kh, kw = w.shape
        og = o // groups
        oh, ow = _out_hw("conv2d", x.shape, (kh, kw), stride, padding, dilation)
        col = _cols_cn(x, (kh, kw), stride, padding, dilation, oh, ow, groups)
        wg = w.reshape(groups, og, cg * kh * kw)
        out = xp.empty((n, o, oh, ow), dtype=x.dtype)
        for g in range(groups):  # one GEMM per group over the whole batch
            y = xp.matmul(wg[g], col[g])                           # (O/G, N*OH*OW)
            src = y.reshape(og, n, oh, ow).transpose(1, 0, 2, 3)
            dst = out[:, g * og:(g + 1) * og]
            if b is not None:
                xp.add(src, b[g * og:(g + 1) * og].reshape(1, og, 1, 1), out=dst)
            else:
                dst[...] = src
        return out

    def backward(self, gy):
        x, w = self.saved_arrays
        stride, padding, dilation, groups = self.args
        need_x, need_w, need_b = self.needs_input_grad
        xp = xp_of(gy)
        if not is_numpy(xp):
            return kernels().conv2d_backward(x, w, gy, stride, padding, dilation, groups,
                                             need_x=need_x, need_w=need_w, need_b=need_b)
        n, o, oh, ow = gy.shape
        _, cg, kh, kw = w.shape
        og, kg = o // groups, cg * kh * kw
        gb = gy.sum(axis=(0, 2, 3)) if need_b else None
        # dY as (G, O/G, N*OH*OW): the layout of the forward GEMM's output
        gy_g = xp.ascontiguousarray(gy.transpose(1, 0, 2, 3)).reshape(groups, og, n * oh * ow)
        gw = gx = None
        if need_w:
            col = _cols_cn(x, (kh, kw), stride, padding, dilation, oh, ow, groups)
            # dW_g^T = col_g @ dY_g^T: OpenBLAS is markedly faster with the long (N*OH*OW)
            # contraction in this orientation than as dY_g @ col_g^T (measured, 1-2 threads)
            gwt = xp.empty((groups, kg, og), dtype=w.dtype)
            for g in range(groups):
                xp.matmul(col[g], gy_g[g].T, out=gwt[g])
            gw = xp.ascontiguousarray(gwt.transpose(0, 2, 1)).reshape(w.shape)
            del col
        if need_x:
            wg = w.reshape(groups, og, kg)
            dcol = xp.empty((groups, kg, n * oh * ow), dtype=gy.dtype)
            for g in range(groups):
                xp.matmul(wg[g].T, gy_g[g], out=dcol[g])
            dcol = dcol.reshape(x.shape[1], kh, kw, n, oh, ow)
            gx = _col2im_cn(dcol, x.shape, (kh, kw), stride, padding, dilation, oh, ow)
        return gx, gw, gb


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, torch's ``F.conv2d``: x (N, C, H, W), weight (O, C/groups, KH, KW),
    bias (O,) or None -> (N, O, OH, OW).

    ``y[n, o] = b[o] + sum_{c in group(o)} w[o, c] (*) x_pad[n, c]`` with stride, zero padding,
    dilation; ``groups=G`` splits the C input and O output channels into G independent
    convolutions (group g: output channels g*O/G.., input channels g*C/G..). ``stride``,
    ``padding``, ``dilation`` are ints or (h, w) pairs. See the module docstring for the GEMMs.
    """
    s, p, d = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    groups = int(groups)
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
    if min(s) < 1 or min(d) < 1 or min(p) < 0:
        raise ValueError(f"conv2d: stride {s} and dilation {d} must be >= 1, padding {p} >= 0")
    _out_hw("conv2d", x.shape, weight.shape[2:], s, p, d)
    if weight.dtype != x.dtype:
        raise TypeError(f"conv2d: input is {x.dtype} (shape {x.shape}) but weight is "
                        f"{weight.dtype} (shape {weight.shape}); cast one with .to(dtype=...)")
    return Conv2d.apply(x, weight, bias, stride=s, padding=p, dilation=d, groups=groups)
