"""Pooling: max (overlapping, ceil_mode, padding, ties, NaN), average (both divisor rules),
adaptive and SPP, against loop references written from the definitions; float64 gradient
checks on tie-free inputs; errors naming the shapes."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minidl.functional as F
from minidl import Tensor, gradcheck

from conftest import require


def out_size(size, k, s, p, ceil_mode):
    """PyTorch/Caffe: floor (or ceil) of (size + 2p - k)/s + 1, dropping a last window that
    would start in the padding."""
    if ceil_mode:
        o = math.ceil((size + 2 * p - k) / s) + 1
        if (o - 1) * s >= size + p:
            o -= 1
    else:
        o = (size + 2 * p - k) // s + 1
    return o


def naive_max_pool(x, k, s, p, ceil_mode):
    """Loops over windows, scanning the real (non-padding) elements row-major; a value wins if
    v > best or isnan(v). Returns values and per-plane indices h*W + w."""
    n, c, h, w = x.shape
    oh, ow = out_size(h, k[0], s[0], p[0], ceil_mode), out_size(w, k[1], s[1], p[1], ceil_mode)
    y = np.zeros((n, c, oh, ow))
    idx = np.zeros((n, c, oh, ow), dtype=np.int64)
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    h0, w0 = i * s[0] - p[0], j * s[1] - p[1]
                    rows = [r for r in range(h0, h0 + k[0]) if 0 <= r < h]
                    cols = [q for q in range(w0, w0 + k[1]) if 0 <= q < w]
                    best, arg = -np.inf, rows[0] * w + cols[0]
                    for r in rows:
                        for q in cols:
                            v = x[b, ch, r, q]
                            if v > best or np.isnan(v):
                                best, arg = v, r * w + q
                    y[b, ch, i, j], idx[b, ch, i, j] = best, arg
    return y, idx


def naive_avg_pool(x, k, s, p, ceil_mode, count_include_pad):
    n, c, h, w = x.shape
    oh, ow = out_size(h, k[0], s[0], p[0], ceil_mode), out_size(w, k[1], s[1], p[1], ceil_mode)
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            h0, w0 = i * s[0] - p[0], j * s[1] - p[1]
            # the window counted with padding stops at the padded border (H + p)
            h1, w1 = min(h0 + k[0], h + p[0]), min(w0 + k[1], w + p[1])
            rows = [r for r in range(h0, h1) if 0 <= r < h]
            cols = [q for q in range(w0, w1) if 0 <= q < w]
            total = sum(x[:, :, r, q] for r in rows for q in cols)
            div = (h1 - h0) * (w1 - w0) if count_include_pad else len(rows) * len(cols)
            y[:, :, i, j] = total / div
    return y


def tie_free(shape, seed):
    """A shuffled linspace: distinct values, spaced far beyond gradcheck's eps."""
    rng = np.random.default_rng(seed)
    return rng.permutation(np.linspace(-1, 1, int(np.prod(shape)))).reshape(shape)


@st.composite
def pool_cases(draw):
    # kernels up to 6 (AlexNet's 3, SPP-like larger bins); the stride is drawn independently of
    # the kernel, so windows overlap (s < k), tile (s = k) or skip input (s > k)
    kh, kw = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    # inputs down to smaller than the window: the padded input must still hold one window
    h = draw(st.integers(max(1, kh - 2 * ph), 8))
    w = draw(st.integers(max(1, kw - 2 * pw), 8))
    return dict(n=draw(st.integers(1, 4)), c=draw(st.integers(1, 8)), hw=(h, w), k=(kh, kw),
                s=(sh, sw), p=(ph, pw), ceil=draw(st.booleans()), seed=draw(st.integers(0, 999)))


@given(pool_cases())
def test_max_pool_forward_and_indices_match_naive(case):
    x = tie_free((case["n"], case["c"]) + case["hw"], case["seed"])
    y = F.max_pool2d(Tensor(x), case["k"], case["s"], case["p"], case["ceil"])
    ref, ref_idx = naive_max_pool(x, case["k"], case["s"], case["p"], case["ceil"])
    np.testing.assert_array_equal(y.numpy(), ref)
    # the saved per-plane argmax (h*W + w), the indices the CUDA kernel must reproduce
    xt = Tensor(x, requires_grad=True)
    y = F.max_pool2d(xt, case["k"], case["s"], case["p"], case["ceil"])
    np.testing.assert_array_equal(y._ctx.saved_arrays[0], ref_idx)


@given(pool_cases())
def test_max_pool_gradcheck_tie_free(case):
    x = Tensor(tie_free((case["n"], case["c"]) + case["hw"], case["seed"]), requires_grad=True)
    assert gradcheck(lambda x: F.max_pool2d(x, case["k"], case["s"], case["p"], case["ceil"]),
                     [x])


@given(pool_cases(), st.booleans())
def test_avg_pool_forward_matches_naive_and_gradcheck(case, cip):
    x = np.random.default_rng(case["seed"]).standard_normal((case["n"], case["c"]) + case["hw"])
    y = F.avg_pool2d(Tensor(x), case["k"], case["s"], case["p"], case["ceil"], cip)
    np.testing.assert_allclose(y.numpy(), naive_avg_pool(x, case["k"], case["s"], case["p"],
                                                         case["ceil"], cip), atol=1e-12)
    xt = Tensor(x, requires_grad=True)
    assert gradcheck(lambda x: F.avg_pool2d(x, case["k"], case["s"], case["p"], case["ceil"],
                                            cip), [xt])


def test_max_pool_output_is_one_of_the_window_inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 9))
    y = F.max_pool2d(Tensor(x), 3, 2).numpy()
    for i in range(y.shape[2]):
        for j in range(y.shape[3]):
            win = x[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].reshape(2, 3, -1)
            assert np.all(np.any(win == y[:, :, i, j][..., None], axis=2))
            assert np.all(y[:, :, i, j] >= win.max(axis=2))


def test_max_pool_ties_go_to_first_maximum():
    x = Tensor(np.ones((1, 1, 4, 4)), requires_grad=True)
    y = F.max_pool2d(x, 3, 1)                                    # 2x2 overlapping windows
    y.backward(np.array([[[[1.0, 10.0], [100.0, 1000.0]]]]))
    g = np.zeros((4, 4))
    g[0, 0], g[0, 1], g[1, 0], g[1, 1] = 1, 10, 100, 1000       # each window's first element
    np.testing.assert_array_equal(x.grad.numpy()[0, 0], g)


def test_max_pool_nan_propagates():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    x[0, 0, 1, 1] = np.nan
    y = F.max_pool2d(Tensor(x), 2, 2).numpy()
    assert np.isnan(y[0, 0, 0, 0]) and not np.isnan(y[0, 0, 1, 1])
    ref, _ = naive_max_pool(x, (2, 2), (2, 2), (0, 0), False)
    np.testing.assert_array_equal(y, ref)
    # two NaNs in one window: the later one wins (v > max || isnan(v) scanned row-major)
    x[0, 0, 0, 3], x[0, 0, 1, 2] = np.nan, np.nan
    xt = Tensor(x, requires_grad=True)
    y = F.max_pool2d(xt, 2, 2)
    ref, ref_idx = naive_max_pool(x, (2, 2), (2, 2), (0, 0), False)
    np.testing.assert_array_equal(y._ctx.saved_arrays[0], ref_idx)
    assert ref_idx[0, 0, 0, 1] == 1 * 4 + 2


def test_max_pool_all_minus_inf_window_points_inside_the_input():
    x = Tensor(np.full((1, 1, 3, 3), -np.inf), requires_grad=True)
    y = F.max_pool2d(x, 2, 2, padding=1)
    y.backward(np.ones(y.shape))
    assert np.all(np.isneginf(y.numpy()))
    assert x.grad.numpy().sum() == 4                             # no gradient lost to padding


def test_ceil_mode_drops_window_starting_in_padding():
    # H=5, k=2, s=2, p=1: ceil((5+2-2)/2)+1 = 4, but window 3 would start at 6-1=5 >= H: dropped
    x = tie_free((1, 1, 5, 5), 1)
    y = F.max_pool2d(Tensor(x), 2, 2, padding=1, ceil_mode=True)
    assert y.shape == (1, 1, 3, 3)
    np.testing.assert_array_equal(y.numpy(), naive_max_pool(x, (2, 2), (2, 2), (1, 1), True)[0])
    assert F.avg_pool2d(Tensor(x), 2, 2, padding=1, ceil_mode=True).shape == (1, 1, 3, 3)
    # without padding the extra ceil window is kept: (6 - 3)/2 -> ceil 2 -> 3 windows
    assert F.max_pool2d(Tensor(np.zeros((1, 1, 6, 6))), 3, 2, ceil_mode=True).shape == \
        (1, 1, 3, 3)
    assert F.max_pool2d(Tensor(np.zeros((1, 1, 6, 6))), 3, 2).shape == (1, 1, 2, 2)


def test_alexnet_overlapping_pool_shapes():
    assert F.max_pool2d(Tensor(np.zeros((1, 1, 55, 55))), 3, 2).shape == (1, 1, 27, 27)
    assert F.max_pool2d(Tensor(np.zeros((1, 1, 27, 27))), 3, 2).shape == (1, 1, 13, 13)


def test_pooling_non_contiguous_input(device):
    x = tie_free((2, 3, 7, 6), 3).transpose(0, 1, 3, 2)          # (2, 3, 6, 7) view
    y = F.max_pool2d(Tensor(x, device=device), 3, 2, padding=1)
    np.testing.assert_array_equal(y.numpy(), naive_max_pool(x, (3, 3), (2, 2), (1, 1), False)[0])
    y = F.avg_pool2d(Tensor(x, device=device), (2, 3), (1, 2), padding=(1, 1),
                     count_include_pad=False)
    np.testing.assert_allclose(y.numpy(), naive_avg_pool(x, (2, 3), (1, 2), (1, 1), False, False),
                               atol=1e-12)


def test_pooling_float32_keeps_dtype(device):
    x = Tensor(tie_free((1, 2, 5, 5), 4).astype(np.float32), device=device)
    for y in (F.max_pool2d(x, 2), F.avg_pool2d(x, 2), F.adaptive_avg_pool2d(x, 3),
              F.adaptive_max_pool2d(x, 3)):
        assert y.dtype == np.float32


def test_pool_matches_torch():
    torch = require("torch")
    x = tie_free((2, 3, 9, 8), 5)
    for k, s, p, cm in [(3, 2, 0, False), (3, 2, 1, True), ((2, 3), (2, 1), (1, 1), True)]:
        np.testing.assert_array_equal(
            F.max_pool2d(Tensor(x), k, s, p, ceil_mode=cm).numpy(),
            torch.nn.functional.max_pool2d(torch.tensor(x), k, s, p, ceil_mode=cm).numpy())
        for cip in (True, False):
            np.testing.assert_allclose(
                F.avg_pool2d(Tensor(x), k, s, p, cm, count_include_pad=cip).numpy(),
                torch.nn.functional.avg_pool2d(torch.tensor(x), k, s, p, cm,
                                               count_include_pad=cip).numpy(), atol=1e-12)


def test_pool_errors_name_shapes():
    x = Tensor(np.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError, match=r"window \(5, 5\) is larger than the padded input "
                                         r"\(4, 4\).*\(1, 1, 2, 2\)"):
        F.max_pool2d(x, 5, padding=1)
    with pytest.raises(ValueError, match=r"larger than the padded input"):
        F.avg_pool2d(x, 3)
    with pytest.raises(ValueError, match=r"4-d input.*\(2, 2\)"):
        F.max_pool2d(Tensor(np.zeros((2, 2))), 2)
    with pytest.raises(ValueError, match="at most half"):
        F.max_pool2d(Tensor(np.zeros((1, 1, 8, 8))), 2, padding=2)


# ----------------------------------------------------------------------------------------------
# adaptive pooling and SPP


def bins(size, n):
    return [(math.floor(i * size / n), math.ceil((i + 1) * size / n)) for i in range(n)]


def naive_adaptive(x, out, reduce):
    n, c, h, w = x.shape
    y = np.zeros((n, c, out[0], out[1]))
    for i, (h0, h1) in enumerate(bins(h, out[0])):
        for j, (w0, w1) in enumerate(bins(w, out[1])):
            y[:, :, i, j] = reduce(x[:, :, h0:h1, w0:w1].reshape(n, c, -1), axis=2)
    return y


@given(st.integers(1, 7), st.integers(1, 7), st.integers(1, 4), st.integers(1, 4),
       st.integers(0, 99), st.integers(1, 4), st.integers(1, 8))
def test_adaptive_pools_match_bins_and_gradcheck(h, w, oh, ow, seed, n, c):
    x = tie_free((n, c, h, w), seed)
    np.testing.assert_array_equal(F.adaptive_max_pool2d(Tensor(x), (oh, ow)).numpy(),
                                  naive_adaptive(x, (oh, ow), np.max))
    np.testing.assert_allclose(F.adaptive_avg_pool2d(Tensor(x), (oh, ow)).numpy(),
                               naive_adaptive(x, (oh, ow), np.mean), atol=1e-12)
    xt = Tensor(x, requires_grad=True)
    assert gradcheck(lambda x: F.adaptive_max_pool2d(x, (oh, ow)), [xt])
    assert gradcheck(lambda x: F.adaptive_avg_pool2d(x, (oh, ow)), [xt])


def test_global_average_pooling():
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 4))
    y = F.adaptive_avg_pool2d(Tensor(x), 1)
    assert y.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(y.numpy()[:, :, 0, 0], x.mean(axis=(2, 3)), atol=1e-12)


def test_spp_levels_concatenated_and_any_input_size():
    x = tie_free((2, 3, 5, 7), 7)
    y = F.spp(Tensor(x), levels=(6, 3, 2, 1))
    assert y.shape == (2, 3 * (36 + 9 + 4 + 1))
    parts = [naive_adaptive(x, (n, n), np.max).reshape(2, -1) for n in (6, 3, 2, 1)]
    np.testing.assert_array_equal(y.numpy(), np.concatenate(parts, axis=1))
    small = tie_free((1, 2, 2, 3), 8)                            # smaller than the 6x6 level
    ys = F.spp(Tensor(small), levels=(6, 1))
    assert ys.shape == (1, 2 * 37)
    xt = Tensor(small, requires_grad=True)
    assert gradcheck(lambda x: F.spp(x, (3, 2, 1)), [xt])


def test_adaptive_max_pool_nan_and_ties_follow_max_pool_rule():
    x = np.ones((1, 1, 3, 5))
    x[0, 0, 1, 3] = np.nan
    y = F.adaptive_max_pool2d(Tensor(x), (2, 2)).numpy()
    ref = naive_adaptive(x, (2, 2), np.max)                      # np.max propagates NaN too
    np.testing.assert_array_equal(y, ref)
    xt = Tensor(np.ones((1, 1, 3, 5)), requires_grad=True)
    F.adaptive_max_pool2d(xt, (2, 2)).sum().backward()
    # bins rows [0,2),[1,3) cols [0,3),[2,5): ties go to each bin's first (top-left) element
    g = np.zeros((3, 5))
    g[0, 0] += 1
    g[0, 2] += 1
    g[1, 0] += 1
    g[1, 2] += 1
    np.testing.assert_array_equal(xt.grad.numpy()[0, 0], g)


@given(st.integers(2, 7), st.integers(1, 4), st.integers(0, 99), st.integers(0, 99),
       st.integers(0, 999), st.booleans(), st.integers(1, 4), st.integers(1, 8))
def test_padded_input_smaller_than_the_window_is_refused_naming_both(k, s, pr, hr, seed, ceil,
                                                                     n, c):
    """minidl refuses a window larger than the padded input, with or without ceil_mode. (PyTorch
    refuses it without ceil_mode too; with ceil_mode it returns one window clipped to the input.)"""
    p = pr % ((k - 2) // 2 + 1)                     # p <= k/2 and room for h >= 1 below
    h = 1 + hr % (k - 2 * p - 1)                    # 1 <= h, h + 2p < k
    x = Tensor(tie_free((n, c, h, h), seed))
    for fn in (F.max_pool2d, F.avg_pool2d):
        with pytest.raises(ValueError, match=rf"window \({k}, {k}\) is larger than the padded "
                                             rf"input \({h + 2 * p}, {h + 2 * p}\)"):
            fn(x, k, s, p, ceil)


def test_max_pool_with_a_window_above_2_to_the_15_elements_runs_the_int32_code_branch():
    """The winner's window offset is kept as int16 below 2**15 window elements and as int32 from
    there; a (1, 32772) window reaches the int32 branch, and offsets above 32767 (which int16
    would wrap to negative numbers) must come back exact."""
    kw = 2 ** 15 + 4
    x = tie_free((1, 2, 1, kw + 3), 3)
    x[0, 0, 0, kw - 1] = 5.0                         # offset 32771 in the first window
    x[0, 1, 0, 100] = 5.0                            # offset 100 in the first window
    x[0, 1, 0, kw + 2] = 6.0                         # offset 32771 in the second (stride 3)
    xt = Tensor(x, requires_grad=True)
    y = F.max_pool2d(xt, (1, kw), (1, 3))
    assert y.shape == (1, 2, 1, 2)
    np.testing.assert_array_equal(y.numpy()[0, :, 0], [[5.0, 5.0], [5.0, 6.0]])
    np.testing.assert_array_equal(y._ctx.saved_arrays[0][0, :, 0], [[kw - 1, kw - 1], [100, kw + 2]])
    y.backward(np.ones(y.shape))
    g = np.zeros_like(x)
    g[0, 0, 0, kw - 1] = 2.0
    g[0, 1, 0, 100] = 1.0
    g[0, 1, 0, kw + 2] = 1.0
    np.testing.assert_array_equal(xt.grad.numpy(), g)
