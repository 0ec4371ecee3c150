"""conv2d, im2col and col2im: naive loop references written from the formula, float64 gradient
checks on hypothesis-drawn geometries, properties (groups = separate convs; col2im is the adjoint
of im2col), non-contiguous inputs and errors that name the shapes."""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import minidl
import minidl.functional as F
from minidl import Tensor, gradcheck

from conftest import require


def naive_conv2d(x, w, b, stride, padding, dilation, groups):
    """y[n,o,i,j] = b[o] + sum_{c in group(o), kh, kw} w[o,c,kh,kw] x[n, c, i*s-p+kh*d, ...]."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    og = o // groups
    y = np.zeros((n, o, oh, ow))
    for b_ in range(n):
        for oc in range(o):
            g = oc // og
            for i in range(oh):
                for j in range(ow):
                    acc = 0.0 if b is None else b[oc]
                    for ci in range(cg):
                        for a in range(kh):
                            for e in range(kw):
                                r, q = i * sh - ph + a * dh, j * sw - pw + e * dw
                                if 0 <= r < h and 0 <= q < wd:
                                    acc += w[oc, ci, a, e] * x[b_, g * cg + ci, r, q]
                    y[b_, oc, i, j] = acc
    return y


def naive_im2col(x, k, s, p, d):
    n, c, h, w = x.shape
    oh = (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    ow = (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    col = np.zeros((n, c * k[0] * k[1], oh * ow))
    for b in range(n):
        for ci in range(c):
            for a in range(k[0]):
                for e in range(k[1]):
                    for i in range(oh):
                        for j in range(ow):
                            r, q = i * s[0] - p[0] + a * d[0], j * s[1] - p[1] + e * d[1]
                            if 0 <= r < h and 0 <= q < w:
                                col[b, ci * k[0] * k[1] + a * k[1] + e, i * ow + j] = x[b, ci, r, q]
    return col


@st.composite
def conv_cases(draw):
    groups = draw(st.integers(1, 3))
    # up to 8 input and 8 output channels, batch up to 4
    cg, og = draw(st.integers(1, 8 // groups)), draw(st.integers(1, 8 // groups))
    n = draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 1))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    assume(h + 2 * ph >= dh * (kh - 1) + 1 and w + 2 * pw >= dw * (kw - 1) + 1)
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2 ** 16))
    return dict(n=n, c=cg * groups, o=og * groups, groups=groups, k=(kh, kw), s=(sh, sw),
                p=(ph, pw), d=(dh, dw), hw=(h, w), bias=bias, seed=seed)


def _arrays(case):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["n"], case["c"]) + case["hw"])
    w = rng.standard_normal((case["o"], case["c"] // case["groups"]) + case["k"])
    b = rng.standard_normal(case["o"]) if case["bias"] else None
    return x, w, b


@given(conv_cases())
def test_conv2d_forward_matches_naive_loops(case):
    x, w, b = _arrays(case)
    y = F.conv2d(Tensor(x), Tensor(w), None if b is None else Tensor(b), case["s"], case["p"],
                 case["d"], case["groups"])
    ref = naive_conv2d(x, w, b, case["s"], case["p"], case["d"], case["groups"])
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-10, atol=1e-10)


@given(conv_cases())
def test_conv2d_gradcheck(case):
    x, w, b = _arrays(case)
    ins = [Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)]
    if b is not None:
        ins.append(Tensor(b, requires_grad=True))

    def fn(x, w, b=None):
        return F.conv2d(x, w, b, case["s"], case["p"], case["d"], case["groups"])
    assert gradcheck(fn, ins)


def test_conv2d_device_float32(device):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    y = F.conv2d(Tensor(x, device=device), Tensor(w, device=device), Tensor(b, device=device),
                 stride=(2, 1), padding=1, groups=2)
    assert y.dtype == np.float32 and y.device == device
    ref = naive_conv2d(x.astype(np.float64), w, b, (2, 1), (1, 1), (1, 1), 2)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_conv2d_groups_equal_separate_convs_concatenated():
    rng = np.random.default_rng(2)
    g, cg, og = 3, 2, 2
    x = Tensor(rng.standard_normal((2, g * cg, 6, 5)))
    w = Tensor(rng.standard_normal((g * og, cg, 3, 2)))
    b = Tensor(rng.standard_normal(g * og))
    y = F.conv2d(x, w, b, stride=1, padding=(1, 0), groups=g)
    parts = [F.conv2d(x[:, i * cg:(i + 1) * cg], w[i * og:(i + 1) * og], b[i * og:(i + 1) * og],
                      padding=(1, 0)) for i in range(g)]
    np.testing.assert_allclose(y.numpy(), minidl.concatenate(parts, axis=1).numpy(), atol=1e-12)


def test_conv2d_non_contiguous_input_and_weight():
    rng = np.random.default_rng(3)
    xa = rng.standard_normal((2, 3, 6, 5)).transpose(0, 1, 3, 2)   # (2, 3, 5, 6), transposed view
    wa = rng.standard_normal((3, 4, 3, 3)).transpose(1, 0, 3, 2)   # (4, 3, 3, 3)
    assert not xa.flags.c_contiguous and not wa.flags.c_contiguous
    y = F.conv2d(Tensor(xa), Tensor(wa), None, stride=2, padding=1)
    np.testing.assert_allclose(y.numpy(), naive_conv2d(xa, wa, None, (2, 2), (1, 1), (1, 1), 1),
                               atol=1e-12)
    x, w = Tensor(xa, requires_grad=True), Tensor(wa, requires_grad=True)
    assert gradcheck(lambda x, w: F.conv2d(x, w, padding=1), [x, w])


def test_conv2d_alexnet_like_geometry_stride4():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 3, 23, 23))
    w = rng.standard_normal((2, 3, 11, 11))
    y = F.conv2d(Tensor(x), Tensor(w), stride=4)
    assert y.shape == (1, 2, 4, 4)
    np.testing.assert_allclose(y.numpy(), naive_conv2d(x, w, None, (4, 4), (0, 0), (1, 1), 1),
                               atol=1e-10)


def test_conv2d_only_some_inputs_require_grad():
    rng = np.random.default_rng(5)
    x = Tensor(rng.standard_normal((1, 2, 4, 4)))
    w = Tensor(rng.standard_normal((3, 2, 3, 3)), requires_grad=True)
    F.conv2d(x, w, padding=1).sum().backward()
    assert x.grad is None and w.grad.shape == (3, 2, 3, 3)
    # d(sum y)/dw[o, c, kh, kw] = sum of the inputs that weight touches
    ref = naive_im2col(x.numpy(), (3, 3), (1, 1), (1, 1), (1, 1)).sum(axis=(0, 2))
    np.testing.assert_allclose(w.grad.numpy(), np.broadcast_to(ref.reshape(1, 2, 3, 3),
                                                               (3, 2, 3, 3)), atol=1e-12)


# ----------------------------------------------------------------------------------------------
# im2col / col2im


@given(conv_cases())
def test_im2col_matches_naive_and_col2im_is_its_adjoint(case):
    x, _, _ = _arrays(case)
    k, s, p, d = case["k"], case["s"], case["p"], case["d"]
    col = F.im2col(x, k, s, p, d)
    ref = naive_im2col(x, k, s, p, d)
    np.testing.assert_array_equal(col, ref)
    # <im2col(x), c> == <x, col2im(c)>
    c = np.random.default_rng(case["seed"] + 1).standard_normal(col.shape)
    back = F.col2im(c, case["hw"], k, s, p, d)
    assert back.shape == x.shape
    np.testing.assert_allclose(np.sum(col * c), np.sum(x * back), rtol=1e-10)


def test_col2im_naive_accumulation_with_overlap():
    rng = np.random.default_rng(6)
    h, w, k, s, p = 5, 4, (3, 2), (1, 2), (1, 0)
    oh, ow = (h + 2 - 3) // 1 + 1, (w - 2) // 2 + 1
    col = rng.standard_normal((2, 2 * 6, oh * ow))
    ref = np.zeros((2, 2, h, w))
    for b in range(2):
        for c in range(2):
            for a in range(3):
                for e in range(2):
                    for i in range(oh):
                        for j in range(ow):
                            r, q = i - 1 + a, j * 2 + e
                            if 0 <= r < h and 0 <= q < w:
                                ref[b, c, r, q] += col[b, c * 6 + a * 2 + e, i * ow + j]
    np.testing.assert_allclose(F.col2im(col, (h, w), k, s, p), ref, atol=1e-12)


def test_im2col_col2im_tensors_are_differentiable():
    rng = np.random.default_rng(7)
    x = Tensor(rng.standard_normal((1, 2, 4, 5)), requires_grad=True)
    assert gradcheck(lambda x: F.im2col(x, 3, stride=(1, 2), padding=1, dilation=1), [x])
    c = Tensor(rng.standard_normal((1, 2 * 4, 6)), requires_grad=True)
    assert gradcheck(lambda c: F.col2im(c, (3, 4), 2, stride=1), [c])


def test_im2col_matches_torch_unfold():
    torch = require("torch")
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 9, 7))
    col = F.im2col(x, (3, 2), (2, 1), (1, 1), (2, 1))
    ref = torch.nn.functional.unfold(torch.tensor(x), (3, 2), (2, 1), (1, 1), (2, 1)).numpy()
    np.testing.assert_array_equal(col, ref)
    back = F.col2im(col, (9, 7), (3, 2), (2, 1), (1, 1), (2, 1))
    ref = torch.nn.functional.fold(torch.tensor(col), (9, 7), (3, 2), (2, 1), (1, 1),
                                   (2, 1)).numpy()
    np.testing.assert_allclose(back, ref, atol=1e-12)


def test_conv2d_matches_torch_forward_and_backward():
    torch = require("torch")
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 4, 9, 8))
    w = rng.standard_normal((6, 2, 3, 3))
    b = rng.standard_normal(6)
    gy_shape = None
    xs, ws, bs = (Tensor(a, requires_grad=True) for a in (x, w, b))
    y = F.conv2d(xs, ws, bs, stride=2, padding=(1, 2), dilation=(2, 1), groups=2)
    gy_shape = y.shape
    gy = rng.standard_normal(gy_shape)
    y.backward(gy)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.conv2d(xt, wt, bt, 2, (1, 2), (2, 1), 2)
    yt.backward(torch.tensor(gy))
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), atol=1e-10)
    for a, t in ((xs, xt), (ws, wt), (bs, bt)):
        np.testing.assert_allclose(a.grad.numpy(), t.grad.numpy(), atol=1e-10)


# ----------------------------------------------------------------------------------------------
# errors


def test_conv2d_wrong_channel_count_names_shapes():
    x = Tensor(np.zeros((1, 5, 8, 8)))
    w = Tensor(np.zeros((4, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"\(4, 3, 3, 3\).*\(1, 5, 8, 8\)"):
        F.conv2d(x, w)


def test_conv2d_groups_not_dividing_channels():
    x = Tensor(np.zeros((1, 6, 8, 8)))
    w = Tensor(np.zeros((4, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"groups=4.*\(1, 6, 8, 8\)"):
        F.conv2d(x, w, groups=4)


def test_conv2d_kernel_larger_than_padded_input():
    x = Tensor(np.zeros((1, 1, 4, 4)))
    w = Tensor(np.zeros((1, 1, 7, 7)))
    with pytest.raises(ValueError, match=r"larger than the padded input \(6, 6\).*\(1, 1, 4, 4\)"):
        F.conv2d(x, w, padding=1)


def test_conv2d_bad_bias_and_rank():
    with pytest.raises(ValueError, match=r"bias has shape \(3,\)"):
        F.conv2d(Tensor(np.zeros((1, 1, 4, 4))), Tensor(np.zeros((2, 1, 3, 3))),
                 Tensor(np.zeros(3)))
    with pytest.raises(ValueError, match=r"4-d input.*\(1, 4, 4\)"):
        F.conv2d(Tensor(np.zeros((1, 4, 4))), Tensor(np.zeros((2, 1, 3, 3))))


def test_col2im_rejects_mismatched_columns():
    with pytest.raises(ValueError, match=r"\(1, 9, 5\)"):
        F.col2im(np.zeros((1, 9, 5)), (4, 4), 3)


@given(conv_cases(), st.integers(1, 2))
def test_stride1_input_grad_as_conv_equals_col2im_path(case, extra):
    """The stride-1 input gradient computed as a convolution of dy (used when O <= C) is the
    col2im adjoint's result, for every padding the shortcut accepts (p <= d*(K-1))."""
    from minidl.functional import conv as C
    from minidl.geometry import conv_geometry
    case = dict(case, s=(1, 1), c=case["c"] * extra)  # O <= C: the shortcut's condition
    assume(case["o"] <= case["c"] and case["c"] % case["groups"] == 0)
    kh, kw = case["k"]
    assume(case["p"][0] <= case["d"][0] * (kh - 1) and case["p"][1] <= case["d"][1] * (kw - 1))
    x, w, _ = _arrays(case)
    geo = conv_geometry("conv2d", x.shape, case["k"], 1, case["p"], case["d"])
    gy = np.random.default_rng(case["seed"] + 1).standard_normal(
        (case["n"], case["o"], geo.oh, geo.ow))
    gx = C._input_grad_as_conv(gy, w, x.shape, geo, case["groups"])
    assert gx is not None
    g, og = case["groups"], case["o"] // case["groups"]
    # the col2im path: dcol = W_g^T dY_g per group, then the adjoint of im2col
    gy_g = gy.transpose(1, 0, 2, 3).reshape(g, og, -1)
    dcol = np.concatenate([w.reshape(g, og, -1)[i].T @ gy_g[i] for i in range(g)])
    ref = C._col2im_cn(dcol.reshape(case["c"], kh, kw, case["n"], geo.oh, geo.ow), x.shape, geo)
    np.testing.assert_allclose(gx, ref, rtol=1e-10, atol=1e-10)
