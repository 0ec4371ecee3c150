"""The handwritten CUDA kernels (kernels/*.cu) through their launch wrappers (minidl.cuda.kernels).

Every test runs on three runners:

* ``emu-forward`` -- NumPy arrays: the kernel runs under the CPU emulation, threads of a block
  in forward order, with the grid capped at 3 blocks so every grid-stride loop really loops;
* ``emu-reverse`` -- the same with threads (and blocks) in reverse order and the full grid;
* ``cuda``        -- CuPy arrays on a GPU (skipped cleanly without one).

Each result is held to three references: a naive loop written here (always), the NumPy path
``minidl.functional`` (forward and backward through autograd), and PyTorch on the CPU where it is
importable (LRN compared with alpha*n, PyTorch dividing alpha by n). float32 results are
compared with float32 tolerances (never bit-exactly); the float64 variants with tight ones and
with finite-difference gradient checks of the wrappers themselves.
"""
import os

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minidl import backend
from minidl.cuda import kernels as K
from minidl.cuda.emulator import thread_order
from minidl.geometry import conv_geometry

from conftest import require

_ORDERS = os.environ.get("MINIDL_TEST_EMU_ORDERS", "forward,reverse").split(",")


class Runner:
    def __init__(self, name, xp):
        self.name, self.xp = name, xp

    def dev(self, a):
        return a if self.xp is np else self.xp.asarray(a)

    @staticmethod
    def host(a):
        return None if a is None else backend.to_numpy(a)


@pytest.fixture(params=[pytest.param("emu-" + o, id="emu-" + o) for o in _ORDERS]
                + [pytest.param("cuda", marks=pytest.mark.cuda)])
def run(request):
    if request.param == "cuda":
        if not backend.is_available():
            pytest.skip("CUDA not available (needs CuPy and a GPU)")
        yield Runner("cuda", backend.cupy_module())
        return
    order = request.param.split("-")[1]
    with thread_order(order), K.launch_limits(max_blocks=3 if order == "forward" else None):
        yield Runner(request.param, np)


def _functional():
    # imported, never skipped: a broken minidl.functional must fail these tests loudly
    import minidl
    import minidl.functional as F
    return minidl, F


def _torch():
    return require("torch")  # skips locally when missing, fails in CI (conftest.require)


def close(got, want, dtype=np.float32, scale=1.0, what=""):
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if dtype == np.float64:
        rtol, atol = 1e-9, 1e-11 * scale
    else:
        rtol, atol = 2e-5, 2e-6 * scale
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what, equal_nan=True)


# ---- naive references (loops; written independently of the kernels) ------------------------

def naive_im2col(x, k, s, p, d):
    N, C, H, W = x.shape
    (KH, KW), (SH, SW), (PH, PW), (DH, DW) = k, s, p, d
    OH = (H + 2 * PH - DH * (KH - 1) - 1) // SH + 1
    OW = (W + 2 * PW - DW * (KW - 1) - 1) // SW + 1
    col = np.zeros((N, C * KH * KW, OH * OW), x.dtype)
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                for oh in range(OH):
                    for ow in range(OW):
                        h, w = oh * SH - PH + kh * DH, ow * SW - PW + kw * DW
                        if 0 <= h < H and 0 <= w < W:
                            col[:, (c * KH + kh) * KW + kw, oh * OW + ow] = x[:, c, h, w]
    return col


def naive_col2im(col, out_hw, k, s, p, d):
    """Scatter-add (the opposite loop order to the kernel's gather)."""
    H, W = out_hw
    (KH, KW), (SH, SW), (PH, PW), (DH, DW) = k, s, p, d
    N, rows, L = col.shape
    C = rows // (KH * KW)
    OH = (H + 2 * PH - DH * (KH - 1) - 1) // SH + 1
    OW = (W + 2 * PW - DW * (KW - 1) - 1) // SW + 1
    x = np.zeros((N, C, H, W), np.float64)
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                for oh in range(OH):
                    for ow in range(OW):
                        h, w = oh * SH - PH + kh * DH, ow * SW - PW + kw * DW
                        if 0 <= h < H and 0 <= w < W:
                            x[:, c, h, w] += col[:, (c * KH + kh) * KW + kw, oh * OW + ow]
    return x


def naive_conv(x, w, b, s, p, d, groups):
    x, w = x.astype(np.float64), w.astype(np.float64)
    N, C, H, W = x.shape
    F, Cg, KH, KW = w.shape
    OH = (H + 2 * p[0] - d[0] * (KH - 1) - 1) // s[0] + 1
    OW = (W + 2 * p[1] - d[1] * (KW - 1) - 1) // s[1] + 1
    xpad = np.zeros((N, C, H + 2 * p[0], W + 2 * p[1]))
    xpad[:, :, p[0]:p[0] + H, p[1]:p[1] + W] = x
    y = np.zeros((N, F, OH, OW))
    Fg = F // groups
    for f in range(F):
        g = f // Fg
        for oh in range(OH):
            for ow in range(OW):
                win = xpad[:, g * Cg:(g + 1) * Cg, oh * s[0]:oh * s[0] + d[0] * (KH - 1) + 1:d[0],
                           ow * s[1]:ow * s[1] + d[1] * (KW - 1) + 1:d[1]]
                y[:, f, oh, ow] = (win * w[f]).sum(axis=(1, 2, 3))
    if b is not None:
        y += b.reshape(1, F, 1, 1)
    return y


def naive_lrn(x, size, alpha, beta, k):
    x = x.astype(np.float64)
    C = x.shape[1]
    scale = np.empty_like(x)
    for c in range(C):
        lo, hi = max(0, c - size // 2), min(C - 1, c + (size - 1) // 2)
        scale[:, c] = k + alpha * (x[:, lo:hi + 1] ** 2).sum(axis=1)
    return x * scale ** -beta, scale


def numeric_vjp(f, x, gy, eps=1e-6):
    """d/dx sum(gy * f(x)) by central differences in float64."""
    x = x.astype(np.float64).copy()
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = (gy * f(x)).sum()
        flat[i] = old - eps
        down = (gy * f(x)).sum()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return g


def pool_out(size, k, s, p, ceil_mode):
    # Direct reading of torch's documented rule, written apart from geometry.pool_output_size.
    import math
    v = (size + 2 * p - k) / s
    out = (math.ceil(v) if ceil_mode else math.floor(v)) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def naive_max_pool(x, k, s, p, ceil_mode):
    N, C, H, W = x.shape
    OH, OW = pool_out(H, k[0], s[0], p[0], ceil_mode), pool_out(W, k[1], s[1], p[1], ceil_mode)
    y = np.empty((N, C, OH, OW), x.dtype)
    am = np.empty((N, C, OH, OW), np.int32)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    best, arg = None, None
                    for h in range(oh * s[0] - p[0], oh * s[0] - p[0] + k[0]):
                        for w in range(ow * s[1] - p[1], ow * s[1] - p[1] + k[1]):
                            if not (0 <= h < H and 0 <= w < W):
                                continue
                            v = x[n, c, h, w]
                            if best is None or v > best or np.isnan(v):
                                best, arg = v, h * W + w
                    y[n, c, oh, ow], am[n, c, oh, ow] = best, arg
    return y, am


def naive_max_pool_backward(gy, am, shape):
    gx = np.zeros(shape, np.float64)
    N, C = shape[:2]
    W = shape[3]
    for n in range(N):
        for c in range(C):
            for (oh, ow), a in np.ndenumerate(am[n, c]):
                gx[n, c, a // W, a % W] += gy[n, c, oh, ow]
    return gx


def naive_avg_pool(x, k, s, p, ceil_mode, cip, gy=None):
    """Forward, or (with gy) the backward by scatter. Divisor counted by enumeration."""
    N, C, H, W = x.shape
    OH, OW = pool_out(H, k[0], s[0], p[0], ceil_mode), pool_out(W, k[1], s[1], p[1], ceil_mode)
    y = np.zeros((N, C, OH, OW))
    gx = np.zeros(x.shape)
    for oh in range(OH):
        for ow in range(OW):
            cells = [(h, w) for h in range(oh * s[0] - p[0], oh * s[0] - p[0] + k[0])
                     for w in range(ow * s[1] - p[1], ow * s[1] - p[1] + k[1])]
            inside = [(h, w) for h, w in cells if 0 <= h < H and 0 <= w < W]
            padded = [(h, w) for h, w in cells if -p[0] <= h < H + p[0] and -p[1] <= w < W + p[1]]
            div = len(padded) if cip else len(inside)
            for h, w in inside:
                y[:, :, oh, ow] += x[:, :, h, w]
                if gy is not None:
                    gx[:, :, h, w] += gy[:, :, oh, ow] / div
            y[:, :, oh, ow] /= div
    return gx if gy is not None else y


def naive_prelu(x, a):
    x = x.astype(np.float64)
    shape = [1] * x.ndim
    if a.size > 1:
        shape[1] = a.size
    return np.where(x > 0, x, a.reshape(shape) * x)


# ---- im2col / col2im ---------------------------------------------------------------------------

GEOMETRIES = [  # (N, C, H, W), kernel, stride, padding, dilation
    ((1, 1, 5, 5), (3, 3), (1, 1), (0, 0), (1, 1)),
    ((2, 3, 7, 9), (3, 2), (2, 1), (1, 0), (1, 2)),
    ((3, 2, 11, 11), (11, 11), (4, 4), (0, 0), (1, 1)),  # AlexNet conv1-like, tiny
    ((1, 4, 6, 5), (5, 5), (1, 1), (2, 2), (1, 1)),
    ((2, 2, 9, 8), (3, 3), (3, 2), (1, 2), (2, 1)),
]


@pytest.mark.parametrize("shape,k,s,p,d", GEOMETRIES)
def test_im2col_col2im(run, rng, shape, k, s, p, d):
    x = rng.standard_normal(shape).astype(np.float32)
    col = run.host(K.im2col(run.dev(x), k, s, p, d))
    close(col, naive_im2col(x, k, s, p, d), what="im2col")
    g = rng.standard_normal(col.shape).astype(np.float32)
    back = run.host(K.col2im(run.dev(g), shape[2:], k, s, p, d))
    close(back, naive_col2im(g, shape[2:], k, s, p, d), scale=10, what="col2im")


@pytest.mark.parametrize("shape,k,s,p,d", GEOMETRIES[:3])
def test_im2col_float64_and_noncontiguous(run, rng, shape, k, s, p, d):
    # A transposed (non-contiguous) float64 input: the wrapper makes it contiguous, f64 kernel.
    x = rng.standard_normal(shape[::-1]).transpose(3, 2, 1, 0)
    col = K.im2col(run.dev(x), k, s, p, d)
    assert col.dtype == np.float64
    close(run.host(col), naive_im2col(np.ascontiguousarray(x), k, s, p, d), np.float64)


def test_im2col_matches_numpy_path_and_torch(run, rng):
    minidl, F = _functional()
    shape, k, s, p, d = GEOMETRIES[1]
    x = rng.standard_normal(shape).astype(np.float32)
    col = run.host(K.im2col(run.dev(x), k, s, p, d))
    close(col, F.im2col(minidl.Tensor(x), k, s, p, d).data, what="vs minidl.functional")
    back = run.host(K.col2im(run.dev(col), shape[2:], k, s, p, d))
    close(back, F.col2im(minidl.Tensor(col), shape[2:], k, s, p, d).data, scale=10)
    torch = _torch()
    tu = torch.nn.functional.unfold(torch.tensor(x), k, dilation=d, padding=p, stride=s)
    close(col, tu.numpy(), what="vs torch unfold")


@given(data=st.data())
def test_im2col_col2im_hypothesis_shapes(data):
    kh, kw = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    s = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    p = (data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2)))
    d = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)))
    h = data.draw(st.integers(max(1, d[0] * (kh - 1) + 1 - 2 * p[0]), 9))
    w = data.draw(st.integers(max(1, d[1] * (kw - 1) + 1 - 2 * p[1]), 9))
    n, c = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    r = np.random.default_rng(data.draw(st.integers(0, 2 ** 16)))
    x = r.standard_normal((n, c, h, w)).astype(np.float32)
    with thread_order("reverse"), K.launch_limits(max_blocks=2):
        col = K.im2col(x, (kh, kw), s, p, d)
        back = K.col2im(col, (h, w), (kh, kw), s, p, d)
    close(col, naive_im2col(x, (kh, kw), s, p, d))
    close(back, naive_col2im(col, (h, w), (kh, kw), s, p, d), scale=10)


# ---- convolution -------------------------------------------------------------------------------

CONVS = [  # x shape, (F, KH, KW), stride, padding, dilation, groups
    ((1, 3, 8, 8), (4, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((2, 4, 9, 7), (6, 3, 2), (2, 1), (1, 0), (1, 2), 2),  # AlexNet's two towers
    ((3, 6, 5, 6), (6, 1, 1), (1, 1), (0, 0), (1, 1), 3),
]


@pytest.mark.parametrize("xs,ws,s,p,d,groups", CONVS)
@pytest.mark.parametrize("chunked", [False, True])
def test_conv2d_forward_backward(run, rng, xs, ws, s, p, d, groups, chunked):
    F_, KH, KW = ws
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal((F_, xs[1] // groups, KH, KW)).astype(np.float32)
    b = rng.standard_normal(F_).astype(np.float32)
    budget = 1 if chunked else None  # 1 byte: one image per column buffer
    with K.launch_limits(col_budget_bytes=budget):
        y = run.host(K.conv2d_forward(run.dev(x), run.dev(w), run.dev(b), s, p, d, groups))
        close(y, naive_conv(x, w, b, s, p, d, groups), scale=10, what="conv forward")
        gy = rng.standard_normal(y.shape).astype(np.float32)
        gx, gw, gb = (run.host(a) for a in K.conv2d_backward(
            run.dev(x), run.dev(w), run.dev(gy), s, p, d, groups))
    # Independent backward: finite differences would be slow in float32; the conv is linear, so
    # the exact vjp is sum(gy * conv(x, w)) differentiated by linearity in float64.
    want_gb = gy.astype(np.float64).sum(axis=(0, 2, 3))
    want_gw = np.zeros(w.shape)
    for i in np.ndindex(*w.shape):
        e = np.zeros(w.shape)
        e[i] = 1
        want_gw[i] = (gy * naive_conv(x, e, None, s, p, d, groups)).sum()
    close(gb, want_gb, scale=10, what="gb")
    close(gw, want_gw, scale=30, what="gw")
    want_gx = np.zeros(x.shape)
    for i in np.ndindex(*x.shape):
        e = np.zeros(x.shape)
        e[i] = 1
        want_gx[i] = (gy * naive_conv(e, w, None, s, p, d, groups)).sum()
    close(gx, want_gx, scale=30, what="gx")
    gx2, gw2, gb2 = K.conv2d_backward(run.dev(x), run.dev(w), run.dev(gy), s, p, d, groups,
                                      need_x=False, need_w=True, need_b=False)
    assert gx2 is None and gb2 is None
    close(run.host(gw2), want_gw, scale=30)


@pytest.mark.parametrize("xs,ws,s,p,d,groups", CONVS[1:2])
def test_conv2d_matches_numpy_path_and_torch(run, rng, xs, ws, s, p, d, groups):
    minidl, F = _functional()
    F_, KH, KW = ws
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal((F_, xs[1] // groups, KH, KW)).astype(np.float32)
    b = rng.standard_normal(F_).astype(np.float32)
    y = run.host(K.conv2d_forward(run.dev(x), run.dev(w), run.dev(b), s, p, d, groups))
    gy = rng.standard_normal(y.shape).astype(np.float32)
    gx, gw, gb = (run.host(a) for a in K.conv2d_backward(
        run.dev(x), run.dev(w), run.dev(gy), s, p, d, groups))
    tx, tw, tb = (minidl.Tensor(a, requires_grad=True) for a in (x, w, b))
    ty = F.conv2d(tx, tw, tb, s, p, d, groups)
    ty.backward(minidl.Tensor(gy))
    close(y, ty.data, scale=10, what="y vs functional")
    close(gx, tx.grad.data, scale=30, what="gx vs functional")
    close(gw, tw.grad.data, scale=30, what="gw vs functional")
    close(gb, tb.grad.data, scale=30, what="gb vs functional")
    torch = _torch()
    torch.backends.cudnn.allow_tf32 = False
    ax, aw, ab = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ay = torch.nn.functional.conv2d(ax, aw, ab, s, p, d, groups)
    ay.backward(torch.tensor(gy))
    close(y, ay.detach().numpy(), scale=10, what="y vs torch")
    close(gw, aw.grad.numpy(), scale=30, what="gw vs torch")


# ---- LRN ---------------------------------------------------------------------------------------

LRN_CASES = [  # shape, size, alpha, beta, k
    ((2, 7, 3, 5), 5, 1e-2, 0.75, 2.0),
    ((1, 6, 4, 3), 4, 5e-2, 0.75, 2.0),  # even size: asymmetric window
    ((3, 3, 2, 2), 1, 1e-1, 0.5, 1.0),
    ((2, 5, 3, 3), 8, 1e-2, 0.75, 2.0),  # window wider than C
    ((2, 9, 5), 3, 2e-2, 0.75, 2.0),     # (N, C, L)
]


@pytest.mark.parametrize("shape,size,alpha,beta,k", LRN_CASES)
def test_lrn(run, rng, shape, size, alpha, beta, k):
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    y, scale = (run.host(a) for a in K.lrn_forward(run.dev(x), size, alpha, beta, k))
    want_y, want_s = naive_lrn(x, size, alpha, beta, k)
    close(y, want_y, what="y")
    close(scale, want_s, what="scale")
    gy = rng.standard_normal(shape).astype(np.float32)
    gx = run.host(K.lrn_backward(*(run.dev(a) for a in (x, y, scale, gy)), size, alpha, beta))
    want = numeric_vjp(lambda v: naive_lrn(v, size, alpha, beta, k)[0], x, gy)
    np.testing.assert_allclose(gx, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape,size,alpha,beta,k", LRN_CASES[:2])
def test_lrn_matches_numpy_path_and_torch(run, rng, shape, size, alpha, beta, k):
    minidl, F = _functional()
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    gy = rng.standard_normal(shape).astype(np.float32)
    y, scale = K.lrn_forward(run.dev(x), size, alpha, beta, k)
    gx = run.host(K.lrn_backward(run.dev(x), y, scale, run.dev(gy), size, alpha, beta))
    y = run.host(y)
    t = minidl.Tensor(x, requires_grad=True)
    ty = F.local_response_norm(t, size, alpha, beta, k)
    ty.backward(minidl.Tensor(gy))
    close(y, ty.data, what="y vs functional")
    close(gx, t.grad.data, what="gx vs functional")
    torch = _torch()
    a = torch.tensor(x, requires_grad=True)
    ay = torch.nn.functional.local_response_norm(a, size, alpha=alpha * size, beta=beta, k=k)
    ay.backward(torch.tensor(gy))
    close(y, ay.detach().numpy(), what="y vs torch (alpha*n)")
    close(gx, a.grad.numpy(), what="gx vs torch (alpha*n)")


def test_lrn_running_sum_survives_spikes(run, rng):
    """Channels of ~1 between spikes of ~3000: a plain float32 running sum would keep an ulp of
    the spike's square (~1e-4 relative error in the scale) after it left the window."""
    x = rng.standard_normal((2, 40, 2, 3)).astype(np.float32)
    x[:, ::7] *= 3000
    gy = rng.standard_normal(x.shape).astype(np.float32)
    y, scale = K.lrn_forward(run.dev(x), 5, 1e-4, 0.75, 2.0)
    gx = run.host(K.lrn_backward(run.dev(x), y, scale, run.dev(gy), 5, 1e-4, 0.75))
    want_y, want_s = naive_lrn(x, 5, 1e-4, 0.75, 2.0)
    np.testing.assert_allclose(run.host(scale), want_s, rtol=2e-6)
    np.testing.assert_allclose(run.host(y), want_y, rtol=2e-6)
    want = numeric_vjp(lambda v: naive_lrn(v, 5, 1e-4, 0.75, 2.0)[0], x, gy, eps=1e-4)
    np.testing.assert_allclose(gx, want, rtol=1e-4, atol=1e-5)


@given(n=st.integers(1, 2), c=st.integers(1, 9), h=st.integers(1, 4), w=st.integers(1, 5),
       size=st.integers(1, 7), seed=st.integers(0, 2 ** 16))
def test_lrn_hypothesis_shapes(n, c, h, w, size, seed):
    r = np.random.default_rng(seed)
    x = (r.standard_normal((n, c, h, w)) * 4).astype(np.float32)
    gy = r.standard_normal(x.shape).astype(np.float32)
    with thread_order("reverse"):
        y, s = K.lrn_forward(x, size, 1e-2, 0.75, 2.0)
        gx = K.lrn_backward(x, y, s, gy, size, 1e-2, 0.75)
    close(y, naive_lrn(x, size, 1e-2, 0.75, 2.0)[0])
    want = numeric_vjp(lambda v: naive_lrn(v, size, 1e-2, 0.75, 2.0)[0], x, gy)
    np.testing.assert_allclose(gx, want, rtol=1e-4, atol=1e-5)


# ---- pooling -----------------------------------------------------------------------------------

POOLS = [  # shape, kernel, stride, padding, ceil_mode
    ((2, 3, 11, 10), (3, 3), (2, 2), (0, 0), False),  # AlexNet: overlapping
    ((1, 2, 8, 8), (2, 2), (2, 2), (0, 0), False),    # non-overlapping
    ((2, 2, 9, 7), (3, 3), (2, 2), (1, 1), True),     # padding + ceil_mode
    ((1, 1, 10, 10), (3, 3), (3, 3), (1, 1), True),   # ceil_mode with a dropped window
    ((3, 2, 7, 9), (3, 2), (1, 2), (1, 1), True),     # rectangular
    ((1, 3, 5, 5), (5, 5), (1, 1), (2, 2), False),    # stride 1, big window: k/s = 5 windows
]


@pytest.mark.parametrize("shape,k,s,p,ceil", POOLS)
def test_max_pool(run, rng, shape, k, s, p, ceil):
    x = rng.standard_normal(shape).astype(np.float32)
    x[0, 0, 1, 1] = np.nan                       # NaN propagates
    x[-1, -1, 2, :] = 7.0                        # ties: the first in row-major order wins
    y, am = K.max_pool2d_forward(run.dev(x), k, s, p, ceil)
    y, am = run.host(y), run.host(am)
    want_y, want_am = naive_max_pool(x, k, s, p, ceil)
    assert am.dtype == np.int32
    np.testing.assert_array_equal(am, want_am)
    close(y, want_y)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    gx = run.host(K.max_pool2d_backward(run.dev(gy), run.dev(am), shape, k, s, p, ceil))
    close(gx, naive_max_pool_backward(gy, am, shape), scale=10)


@pytest.mark.parametrize("shape,k,s,p,ceil", POOLS)
@pytest.mark.parametrize("cip", [True, False])
def test_avg_pool(run, rng, shape, k, s, p, ceil, cip):
    x = rng.standard_normal(shape).astype(np.float32)
    y = run.host(K.avg_pool2d_forward(run.dev(x), k, s, p, ceil, cip))
    close(y, naive_avg_pool(x, k, s, p, ceil, cip))
    gy = rng.standard_normal(y.shape).astype(np.float32)
    gx = run.host(K.avg_pool2d_backward(run.dev(gy), shape, k, s, p, ceil, cip))
    close(gx, naive_avg_pool(x, k, s, p, ceil, cip, gy=gy.astype(np.float64)))


@pytest.mark.parametrize("shape,k,s,p,ceil", [POOLS[0], POOLS[2], POOLS[3]])
def test_pools_match_numpy_path_and_torch(run, rng, shape, k, s, p, ceil):
    minidl, F = _functional()
    x = rng.standard_normal(shape).astype(np.float32)
    y, am = K.max_pool2d_forward(run.dev(x), k, s, p, ceil)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    gx = run.host(K.max_pool2d_backward(run.dev(gy), am, shape, k, s, p, ceil))
    t = minidl.Tensor(x, requires_grad=True)
    ty = F.max_pool2d(t, k, s, p, ceil)
    ty.backward(minidl.Tensor(gy))
    close(run.host(y), ty.data, what="max y vs functional")
    close(gx, t.grad.data, what="max gx vs functional")
    for cip in (True, False):
        ya = run.host(K.avg_pool2d_forward(run.dev(x), k, s, p, ceil, cip))
        gxa = run.host(K.avg_pool2d_backward(run.dev(gy), shape, k, s, p, ceil, cip))
        t = minidl.Tensor(x, requires_grad=True)
        ty = F.avg_pool2d(t, k, s, p, ceil, cip)
        ty.backward(minidl.Tensor(gy))
        close(ya, ty.data, what="avg y vs functional")
        close(gxa, t.grad.data, what="avg gx vs functional")
    torch = _torch()
    a = torch.tensor(x, requires_grad=True)
    ay, ai = torch.nn.functional.max_pool2d(a, k, s, p, ceil_mode=ceil, return_indices=True)
    ay.backward(torch.tensor(gy))
    np.testing.assert_array_equal(run.host(am), ai.numpy())
    close(gx, a.grad.numpy(), what="max gx vs torch")
    for cip in (True, False):
        a = torch.tensor(x, requires_grad=True)
        ay = torch.nn.functional.avg_pool2d(a, k, s, p, ceil_mode=ceil, count_include_pad=cip)
        ay.backward(torch.tensor(gy))
        close(run.host(K.avg_pool2d_forward(run.dev(x), k, s, p, ceil, cip)), ay.detach().numpy())
        close(run.host(K.avg_pool2d_backward(run.dev(gy), shape, k, s, p, ceil, cip)),
              a.grad.numpy())


@given(data=st.data())
def test_pool_hypothesis_shapes(data):
    kh, kw = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    sh, sw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    ph, pw = data.draw(st.integers(0, kh // 2)), data.draw(st.integers(0, kw // 2))
    h, w = data.draw(st.integers(kh, kh + 6)), data.draw(st.integers(kw, kw + 6))
    n, c = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    ceil, cip = data.draw(st.booleans()), data.draw(st.booleans())
    r = np.random.default_rng(data.draw(st.integers(0, 2 ** 16)))
    x = r.standard_normal((n, c, h, w)).astype(np.float32)
    k, s, p = (kh, kw), (sh, sw), (ph, pw)
    with thread_order("reverse"):
        y, am = K.max_pool2d_forward(x, k, s, p, ceil)
        gy = r.standard_normal(y.shape).astype(np.float32)
        gx = K.max_pool2d_backward(gy, am, x.shape, k, s, p, ceil)
        ya = K.avg_pool2d_forward(x, k, s, p, ceil, cip)
        gxa = K.avg_pool2d_backward(gy, x.shape, k, s, p, ceil, cip)
    want_y, want_am = naive_max_pool(x, k, s, p, ceil)
    np.testing.assert_array_equal(am, want_am)
    close(y, want_y)
    close(gx, naive_max_pool_backward(gy, am, x.shape), scale=10)
    close(ya, naive_avg_pool(x, k, s, p, ceil, cip))
    close(gxa, naive_avg_pool(x, k, s, p, ceil, cip, gy=gy.astype(np.float64)))


# ---- PReLU -------------------------------------------------------------------------------------

PRELUS = [  # x shape, channel-wise?
    ((2, 5, 7, 3), True),
    ((2, 5, 7, 3), False),
    ((9, 4), True),        # (N, C)
    ((1, 3, 37, 29), True),  # one item, many elements per channel: several partial blocks
    ((3, 2, 41, 41), False),
]


@pytest.mark.parametrize("shape,channelwise", PRELUS)
def test_prelu(run, rng, shape, channelwise):
    x = rng.standard_normal(shape).astype(np.float32)
    x.reshape(-1)[::7] = 0.0  # x <= 0 takes the slope branch, x == 0 included
    a = (rng.standard_normal(shape[1] if channelwise else 1) * 0.3).astype(np.float32)
    y = run.host(K.prelu_forward(run.dev(x), run.dev(a)))
    close(y, naive_prelu(x, a))
    gy = rng.standard_normal(shape).astype(np.float32)
    gx, ga = (run.host(v) for v in K.prelu_backward(run.dev(x), run.dev(a), run.dev(gy)))
    slope = a.reshape([1, -1] + [1] * (len(shape) - 2)) if channelwise else a
    close(gx, np.where(x > 0, gy, slope * gy))
    axes = tuple(i for i in range(len(shape)) if not (channelwise and i == 1))
    want_ga = (gy.astype(np.float64) * np.where(x <= 0, x, 0)).sum(axis=axes).reshape(a.shape)
    close(ga, want_ga, scale=100, what="slope gradient")
    assert ga.shape == a.shape
    gx2, none = K.prelu_backward(run.dev(x), run.dev(a), run.dev(gy), need_weight=False)
    assert none is None


@pytest.mark.parametrize("blocks", [1, 2, 5])
def test_prelu_grid_strides(run, rng, blocks):
    # The kernels walk (channel, offset) along their grid-stride sequence by additions; strides
    # of 256, 512 and 1280 against planes of 37 elements and 6 channels exercise every carry
    # (the slope kernel walks its 20*37 terms per channel with stride 256).
    x = rng.standard_normal((20, 6, 37)).astype(np.float32)
    a = rng.standard_normal(6).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    with K.launch_limits(max_blocks=blocks):
        y = run.host(K.prelu_forward(run.dev(x), run.dev(a)))
        gx, ga = (run.host(v) for v in K.prelu_backward(run.dev(x), run.dev(a), run.dev(gy)))
    close(y, naive_prelu(x, a))
    close(gx, np.where(x > 0, gy, a.reshape(1, 6, 1) * gy))
    close(ga, (gy.astype(np.float64) * np.minimum(x, 0)).sum(axis=(0, 2)), scale=100)


def test_prelu_slope_gradient_is_deterministic(run, rng):
    x = rng.standard_normal((4, 3, 33, 31)).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    a = np.full(1, 0.25, np.float32)
    first = run.host(K.prelu_backward(run.dev(x), run.dev(a), run.dev(gy))[1])
    for _ in range(2):
        again = run.host(K.prelu_backward(run.dev(x), run.dev(a), run.dev(gy))[1])
        np.testing.assert_array_equal(again, first)  # same sizes -> same summation tree


@pytest.mark.parametrize("shape,channelwise", PRELUS[:3])
def test_prelu_matches_numpy_path_and_torch(run, rng, shape, channelwise):
    minidl, F = _functional()
    x = rng.standard_normal(shape).astype(np.float32)
    a = (rng.standard_normal(shape[1] if channelwise else 1) * 0.3).astype(np.float32)
    gy = rng.standard_normal(shape).astype(np.float32)
    y = run.host(K.prelu_forward(run.dev(x), run.dev(a)))
    gx, ga = (run.host(v) for v in K.prelu_backward(run.dev(x), run.dev(a), run.dev(gy)))
    tx, ta = minidl.Tensor(x, requires_grad=True), minidl.Tensor(a, requires_grad=True)
    ty = F.prelu(tx, ta)
    ty.backward(minidl.Tensor(gy))
    close(y, ty.data)
    close(gx, tx.grad.data)
    close(ga, ta.grad.data, scale=100)
    torch = _torch()
    bx, ba = torch.tensor(x, requires_grad=True), torch.tensor(a, requires_grad=True)
    by = torch.nn.functional.prelu(bx, ba)
    by.backward(torch.tensor(gy))
    close(y, by.detach().numpy())
    close(ga, ba.grad.numpy(), scale=100)


# ---- float64 variants: finite-difference gradient checks of the wrappers themselves ------------

def _fd_check(fwd, bwd, x, gy, rtol=1e-6, atol=1e-8):
    want = numeric_vjp(lambda v: backend.to_numpy(fwd(v)), x, gy, eps=1e-6)
    np.testing.assert_allclose(backend.to_numpy(bwd()), want, rtol=rtol, atol=atol)


def test_float64_gradchecks(run, rng):
    d = run.dev
    # LRN
    x = rng.standard_normal((2, 6, 3, 2)) * 2
    gy = rng.standard_normal(x.shape)
    y, s = K.lrn_forward(d(x), 4, 0.05, 0.75, 2.0)
    assert y.dtype == np.float64
    _fd_check(lambda v: K.lrn_forward(d(v), 4, 0.05, 0.75, 2.0)[0],
              lambda: K.lrn_backward(d(x), y, s, d(gy), 4, 0.05, 0.75), x, gy)
    # average pooling (linear) and max pooling (piecewise linear; distinct values)
    x = rng.permutation(60).reshape(1, 3, 5, 4) / 7.0
    yp = K.avg_pool2d_forward(d(x), 3, 2, 1, True, False)
    gy = rng.standard_normal(yp.shape)
    _fd_check(lambda v: K.avg_pool2d_forward(d(v), 3, 2, 1, True, False),
              lambda: K.avg_pool2d_backward(d(gy), x.shape, 3, 2, 1, True, False), x, gy)
    ym, am = K.max_pool2d_forward(d(x), 3, 2, 1, True)
    _fd_check(lambda v: K.max_pool2d_forward(d(v), 3, 2, 1, True)[0],
              lambda: K.max_pool2d_backward(d(gy), am, x.shape, 3, 2, 1, True), x, gy)
    # PReLU, input and slope (away from the kink at 0)
    x = rng.standard_normal((2, 3, 4))
    x[np.abs(x) < 0.05] = 0.3
    a = np.array([0.2, -0.1, 0.7])
    gy = rng.standard_normal(x.shape)
    _fd_check(lambda v: K.prelu_forward(d(v), d(a)),
              lambda: K.prelu_backward(d(x), d(a), d(gy))[0], x, gy)
    _fd_check(lambda v: K.prelu_forward(d(x), d(v)),
              lambda: K.prelu_backward(d(x), d(a), d(gy))[1], a, gy)
    # convolution
    x = rng.standard_normal((2, 2, 5, 4))
    w = rng.standard_normal((4, 1, 3, 2))
    y = K.conv2d_forward(d(x), d(w), None, 1, 1, (1, 2), 2)
    gy = rng.standard_normal(y.shape)
    _fd_check(lambda v: K.conv2d_forward(d(v), d(w), None, 1, 1, (1, 2), 2),
              lambda: K.conv2d_backward(d(x), d(w), d(gy), 1, 1, (1, 2), 2)[0], x, gy)
    _fd_check(lambda v: K.conv2d_forward(d(x), d(v), None, 1, 1, (1, 2), 2),
              lambda: K.conv2d_backward(d(x), d(w), d(gy), 1, 1, (1, 2), 2)[1], w, gy)


# ---- wrapper argument handling -----------------------------------------------------------------

def test_wrappers_reject_bad_inputs(rng):
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    with pytest.raises(TypeError, match="float32 or float64"):
        K.lrn_forward(x.astype(np.float16), 5)
    with pytest.raises(TypeError, match="float32 or float64"):
        K.prelu_forward(x.astype(np.int32), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="channel-wise PReLU"):
        K.prelu_forward(x, np.ones(4, np.float32))
    with pytest.raises(ValueError, match="at most half"):
        K.max_pool2d_forward(x, 2, 2, 2)
    with pytest.raises(ValueError, match="groups"):
        K.conv2d_forward(x, np.ones((4, 2, 3, 3), np.float32), None, 1, 0, 1, 2)
    with pytest.raises(ValueError, match="gy"):
        K.max_pool2d_backward(np.ones((2, 3, 1, 1), np.float32), np.zeros((2, 3, 1, 1), np.int32),
                              x.shape, 2, 2)
    with pytest.raises(ValueError, match="does not match"):
        K.col2im(np.ones((1, 8, 4), np.float32), (4, 4), 3)
    with pytest.raises(TypeError, match="numpy or cupy"):
        K.lrn_forward(x.tolist(), 5)


def test_chunking_keeps_indices_in_32_bits(rng, monkeypatch):
    # Pretend the 32-bit limit is 700 elements: im2col/col2im/conv must split the batch into
    # launches that stay below it (and still be right); single arrays beyond it are refused.
    monkeypatch.setattr(K, "INDEX_LIMIT", 700)
    x = rng.standard_normal((5, 2, 6, 7)).astype(np.float32)  # 84 elements/image, col 2*9*30
    col = K.im2col(x, 3, 1, 0, 1)
    close(col, naive_im2col(x, (3, 3), (1, 1), (0, 0), (1, 1)))
    close(K.col2im(col, (6, 7), 3), naive_col2im(col, (6, 7), (3, 3), (1, 1), (0, 0), (1, 1)),
          scale=10)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    close(K.conv2d_forward(x, w, None), naive_conv(x, w, None, (1, 1), (0, 0), (1, 1), 1),
          scale=10)
    with pytest.raises(ValueError, match="32-bit"):
        K.lrn_forward(rng.standard_normal((5, 2, 10, 10)).astype(np.float32), 3)
    with pytest.raises(ValueError, match="32-bit"):
        K.im2col(rng.standard_normal((1, 2, 30, 30)).astype(np.float32), 3)


def test_gpu_arrays_without_a_gpu_raise_clearly():
    if backend.cupy_module() is None or backend.is_available():
        pytest.skip("needs CuPy importable and no GPU")
    from minidl.cuda.module import load_module
    with pytest.raises(backend.DeviceError, match="CUDA is not available"):
        load_module("lrn.cu")


def test_empty_batch(rng):
    x = np.zeros((0, 3, 4, 4), np.float32)
    y, s = K.lrn_forward(x, 3)
    assert y.shape == x.shape
    y = K.prelu_forward(x, np.ones(3, np.float32))
    assert y.shape == x.shape
    gx, ga = K.prelu_backward(x, np.ones(3, np.float32), x)
    np.testing.assert_array_equal(ga, np.zeros(3, np.float32))


def test_tf32_switch():
    """minidl.cuda.set_tf32: off by default, a bool only, returns the previous setting, and (where
    a GPU is present) sets CuPy's float32 GEMM compute type."""
    import minidl.cuda as mc
    old = mc.set_tf32(False)
    try:
        assert mc.tf32_enabled() is False
        with pytest.raises(TypeError, match="True or False"):
            mc.set_tf32(1)
        assert mc.set_tf32(True) is False and mc.tf32_enabled() is True
        if backend.is_available():
            linalg = backend.cupy_module()._core._routines_linalg
            assert linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32
            mc.set_tf32(False)
            assert linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_DEFAULT
    finally:
        mc.set_tf32(old)


def test_tf32_default_off_and_env(monkeypatch):
    import minidl.cuda as mc
    monkeypatch.setitem(mc._tf32, "on", None)  # as in a fresh process
    monkeypatch.delenv("MINIDL_TF32", raising=False)
    assert mc.tf32_enabled() is False
    monkeypatch.setenv("MINIDL_TF32", "1")
    assert mc.tf32_enabled() is True
    monkeypatch.setenv("MINIDL_TF32", "off")
    assert mc.tf32_enabled() is False


# ---- fast division, LRN channel chunks, the batch-wide column layout ---------------------------

def _fast_div_ref(n, m):
    """What the kernels' fast_div computes: umulhi(n, mul) >> shr (mul = 0: n itself)."""
    m = int(m)
    mul, shr = m & 0xFFFFFFFF, m >> 32
    return np.where(mul == 0, n, ((n.astype(np.uint64) * np.uint64(mul)) >> np.uint64(32))
                    >> np.uint64(shr)).astype(np.int64)


def test_fast_divisor_is_exact_for_every_31_bit_dividend():
    """n / d by multiply-high and shift must equal n // d for EVERY 0 <= n < 2^31: checked at
    the edges where it could fail (multiples of d and their neighbours, the top of the range)
    for every d up to 4096, powers of two and their neighbours, and large d; plus random n."""
    r = np.random.default_rng(1)
    top = 2 ** 31 - 1
    ds = list(range(1, 4097)) + [2 ** k + e for k in range(12, 31) for e in (-1, 0, 1)] \
        + [int(v) for v in r.integers(4097, top, 200)] + [top]
    for d in ds:
        q = np.unique(np.concatenate([np.arange(0, 64), top // d - np.arange(0, 64),
                                      r.integers(0, top // d + 1, 256)]))
        q = q[(q >= 0) & (q <= top // d)]
        n = np.concatenate([q * d, q * d - 1, q * d + 1, q * d + d - 1, [top, 0]])
        n = n[(n >= 0) & (n <= top)]
        got = _fast_div_ref(n, K.fast_divisor(d))
        bad = np.nonzero(got != n // d)[0]
        assert bad.size == 0, f"d={d}: n={n[bad[:3]]} gives {got[bad[:3]]}, want {n[bad[:3]] // d}"
    with pytest.raises(ValueError, match="divisor"):
        K.fast_divisor(0)


@pytest.mark.parametrize("size", [5, 3, 4, 6])
@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 13, 64])
def test_lrn_channel_chunks(run, rng, size, chunk):
    """Threads own `chunk` consecutive channels and re-read the window's halo below them: every
    chunk size (smaller than the window, not dividing C, larger than C) gives the same result.
    Sizes 5 and 3 run the register-ring path, 4 and 6 the generic one."""
    x = (rng.standard_normal((2, 13, 3, 2)) * 3).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    y, scale = K.lrn_forward(run.dev(x), size, 1e-2, 0.75, 2.0, chunk=chunk)
    gx = run.host(K.lrn_backward(run.dev(x), y, scale, run.dev(gy), size, 1e-2, 0.75,
                                 chunk=chunk))
    want_y, want_s = naive_lrn(x, size, 1e-2, 0.75, 2.0)
    close(run.host(y), want_y, what="y")
    close(run.host(scale), want_s, what="scale")
    want = numeric_vjp(lambda v: naive_lrn(v, size, 1e-2, 0.75, 2.0)[0], x, gy)
    np.testing.assert_allclose(gx, want, rtol=1e-4, atol=1e-5)


def test_lrn_chunk_choice_fills_the_gpu():
    # AlexNet batch 128: lrn1 (96 channels of 55x55) and lrn2 (256 of 27x27)
    assert K._lrn_chunk(128, 96, 55 * 55) == 32
    assert K._lrn_chunk(128, 256, 27 * 27) == 16
    assert K._lrn_chunk(1, 3, 4) == 3  # never more than C
    with pytest.raises(ValueError, match="chunk"):
        K._lrn_chunk(1, 3, 4, chunk=0)


@pytest.mark.parametrize("shape,k,s,p,d", GEOMETRIES[:4])
def test_batch_wide_column_layout(run, rng, shape, k, s, p, d):
    """The (C*KH*KW, N*L) layout the convolution multiplies in one GEMM: im2col writes column
    n*L + l of row r, col2im reads it back (its adjoint)."""
    x = rng.standard_normal(shape).astype(np.float32)
    N, C = shape[:2]
    geo = conv_geometry("im2col", shape, k, s, p, d)
    L = geo.oh * geo.ow
    want = naive_im2col(x, k, s, p, d)  # (N, R, L)
    xp = run.xp
    col = xp.empty((want.shape[1], N * L), np.float32)
    K._im2col_into(xp, run.dev(x), col, geo, batch_wide=True)
    close(run.host(col), want.transpose(1, 0, 2).reshape(want.shape[1], N * L), what="im2col")
    g = rng.standard_normal(col.shape).astype(np.float32)
    gx = xp.empty(shape, np.float32)
    K._col2im_into(xp, run.dev(g), gx, geo, batch_wide=True)
    per_image = g.reshape(-1, N, L).transpose(1, 0, 2)
    close(run.host(gx), naive_col2im(per_image, shape[2:], k, s, p, d), scale=10, what="col2im")


EDGE_POOLS = [  # sizes where index splitting by fast division meets its edge cases
    ((1, 1, 1, 17), (1, 3), (1, 2), (0, 1), False),
    ((2, 3, 16, 1), (4, 1), (4, 1), (2, 0), True),
    ((1, 2, 33, 32), (3, 3), (7, 5), (1, 1), True),   # stride > kernel: uncovered inputs
    ((1, 1, 2, 2), (2, 2), (1, 1), (1, 1), False),
]


@pytest.mark.parametrize("shape,k,s,p,ceil", EDGE_POOLS)
def test_pool_edge_sizes(run, rng, shape, k, s, p, ceil):
    minidl, F = _functional()
    x = rng.standard_normal(shape).astype(np.float32)
    gy_shape = K.max_pool2d_forward(x, k, s, p, ceil)[0].shape
    gy = rng.standard_normal(gy_shape).astype(np.float32)
    y, am = K.max_pool2d_forward(run.dev(x), k, s, p, ceil)
    gx = K.max_pool2d_backward(run.dev(gy), am, shape, k, s, p, ceil)
    t = minidl.Tensor(x, requires_grad=True)
    ty = F.max_pool2d(t, k, s, p, ceil)
    ty.backward(minidl.Tensor(gy))
    close(run.host(y), ty.data, what="max y")
    close(run.host(gx), t.grad.data, what="max gx")
    for cip in (True, False):
        y = K.avg_pool2d_forward(run.dev(x), k, s, p, ceil, cip)
        gx = K.avg_pool2d_backward(run.dev(gy), shape, k, s, p, ceil, cip)
        t = minidl.Tensor(x, requires_grad=True)
        ty = F.avg_pool2d(t, k, s, p, ceil, cip)
        ty.backward(minidl.Tensor(gy))
        close(run.host(y), ty.data, what=f"avg y cip={cip}")
        close(run.host(gx), t.grad.data, what=f"avg gx cip={cip}")


def test_gpu_kernel_argument_checks(monkeypatch):
    """GpuKernel's launch-time checks (fast path and the detailed errors), with NumPy arrays
    standing in for CuPy's (no GPU needed): the raw kernel is reached only with exact types."""
    import types

    from minidl.cuda import module as M
    from minidl.cuda import source
    monkeypatch.setattr(M, "_cupy", lambda: types.SimpleNamespace(ndarray=np.ndarray))
    sig = source.parse_kernels('extern "C" __global__ void k(const float* x, float* y, int n, '
                               'float a) {}')["k"]
    calls = []
    k = M.GpuKernel(lambda grid, block, args, **kw: calls.append((grid, block, args, kw)), sig)
    x, y = np.zeros(4, np.float32), np.zeros(4, np.float32)
    k((1,), (32,), (x, y, np.int32(4), np.float32(2)))
    assert len(calls) == 1 and calls[0][0] == (1,) and calls[0][3] == {"shared_mem": 0}
    bad = [((x.astype(np.float64), y, np.int32(4), np.float32(2)), "argument 0 'x'.*float32"),
           ((x, y[::2], np.int32(2), np.float32(2)), "argument 1 'y'.*not C-contiguous"),
           ((x, y, 4, np.float32(2)), "argument 2 'n'.*np.int32"),
           ((x, y, np.int64(4), np.float32(2)), "argument 2 'n'.*np.int32"),
           ((x, y, np.int32(4)), "expected 4 arguments")]
    for args, msg in bad:
        with pytest.raises(TypeError, match=msg):
            k((1,), (32,), args)
    assert len(calls) == 1
