"""Local response normalization (AlexNet form) and batch normalization: loop references from the
formulas, float64 gradient checks, properties, running statistics."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import minidl.functional as F
from minidl import Tensor, gradcheck

from conftest import require


def naive_lrn(x, n, alpha, beta, k):
    """b_i = a_i / (k + alpha * sum_{j=max(0, i-n//2)}^{min(C-1, i+(n-1)//2)} a_j^2)^beta."""
    c = x.shape[1]
    y = np.zeros_like(x)
    for i in range(c):
        lo, hi = max(0, i - n // 2), min(c - 1, i + (n - 1) // 2)
        s = sum(x[:, j] ** 2 for j in range(lo, hi + 1))
        y[:, i] = x[:, i] / (k + alpha * s) ** beta
    return y


LRN_PARAMS = [(1, 1.0, 1.0), (3, 1.0, 1.0), (4, 1.0, 1.0), (5, 1.0, 1.0),
              (5, 1e-4, 2.0), (4, 1e-4, 2.0), (1, 1e-4, 2.0), (7, 0.5, 1.5)]


@pytest.mark.parametrize("n,alpha,k", LRN_PARAMS)
def test_lrn_forward_matches_paper_formula(n, alpha, k):
    x = np.random.default_rng(n).standard_normal((2, 6, 3, 4)) * 3
    y = F.local_response_norm(Tensor(x), n, alpha, 0.75, k)
    np.testing.assert_allclose(y.numpy(), naive_lrn(x, n, alpha, 0.75, k), rtol=1e-12)


@pytest.mark.parametrize("n,alpha,k", LRN_PARAMS)
def test_lrn_gradcheck(n, alpha, k):
    x = Tensor(np.random.default_rng(10 + n).standard_normal((2, 5, 2, 3)) * 2,
               requires_grad=True)
    assert gradcheck(lambda x: F.local_response_norm(x, n, alpha, 0.75, k), [x])


@given(st.integers(1, 4), st.integers(1, 8), st.integers(1, 7), st.integers(1, 4),
       st.integers(1, 4), st.sampled_from([1e-4, 0.01, 0.5, 1.0, 2.0]),
       st.sampled_from([0.25, 0.5, 0.75, 1.0, 1.5]), st.sampled_from([0.5, 1.0, 2.0]),
       st.integers(0, 999))
def test_lrn_hypothesis_shapes(b, c, n, h, w, alpha, beta, k, seed):
    x = np.random.default_rng(seed).standard_normal((b, c, h, w)) * 2
    y = F.local_response_norm(Tensor(x), n, alpha, beta, k)
    np.testing.assert_allclose(y.numpy(), naive_lrn(x, n, alpha, beta, k), rtol=1e-12)
    xt = Tensor(x, requires_grad=True)
    assert gradcheck(lambda x: F.local_response_norm(x, n, alpha, beta, k), [xt])


def test_lrn_even_size_window_is_n_channels():
    # size 4 at channel i covers [i-2, i+1]: one-hot inputs show which channels count
    c = 6
    for j in range(c):
        x = np.zeros((1, c, 1, 1))
        x[0, j] = 1.0
        x += 1.0                                                # every channel 1, channel j 2
        y = F.local_response_norm(Tensor(x), 4, 1.0, 1.0, 0.0).numpy()[0, :, 0, 0]
        for i in range(c):
            window = range(max(0, i - 2), min(c - 1, i + 1) + 1)
            s = sum(4.0 if jj == j else 1.0 for jj in window)
            assert y[i] == pytest.approx(x[0, i, 0, 0] / s)


def test_lrn_alpha_zero_is_x_over_k_pow_beta():
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 3))
    y = F.local_response_norm(Tensor(x), 5, 0.0, 0.75, 2.0)
    np.testing.assert_allclose(y.numpy(), x / 2.0 ** 0.75, rtol=1e-14)


def test_lrn_non_contiguous_and_float32(device):
    x = np.random.default_rng(1).standard_normal((2, 5, 4, 3)).transpose(0, 1, 3, 2)
    y = F.local_response_norm(Tensor(x, device=device), 3, 1.0, 0.75, 1.0)
    np.testing.assert_allclose(y.numpy(), naive_lrn(x, 3, 1.0, 0.75, 1.0), rtol=1e-12)
    y32 = F.local_response_norm(Tensor(x.astype(np.float32), device=device), 5)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32.numpy(), naive_lrn(x, 5, 1e-4, 0.75, 2.0), rtol=1e-5)


def test_lrn_matches_torch_with_alpha_times_n():
    torch = require("torch")
    x = np.random.default_rng(2).standard_normal((2, 7, 3, 3)) * 5
    for n in (3, 4, 5):
        xt = torch.tensor(x, requires_grad=True)
        yt = torch.nn.functional.local_response_norm(xt, n, 0.1 * n, 0.75, 1.5)
        ours = Tensor(x, requires_grad=True)
        y = F.local_response_norm(ours, n, 0.1, 0.75, 1.5)
        np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-12)
        g = np.random.default_rng(n).standard_normal(x.shape)
        y.backward(g)
        yt.backward(torch.tensor(g))
        np.testing.assert_allclose(ours.grad.numpy(), xt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_lrn_3d_input_and_errors():
    x = np.random.default_rng(3).standard_normal((2, 4, 5))
    y = F.local_response_norm(Tensor(x), 3, 1.0, 0.75, 1.0)
    np.testing.assert_allclose(y.numpy(), naive_lrn(x, 3, 1.0, 0.75, 1.0), rtol=1e-12)
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        F.local_response_norm(Tensor(np.zeros((4, 5))), 3)


# ----------------------------------------------------------------------------------------------
# batch norm


def naive_bn_train(x, gamma, beta, eps):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = [1] * x.ndim
    shape[1] = x.shape[1]
    mu = x.mean(axis=axes).reshape(shape)
    var = ((x - mu) ** 2).mean(axis=axes).reshape(shape)
    return gamma.reshape(shape) * (x - mu) / np.sqrt(var + eps) + beta.reshape(shape)


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 4, 3), (1, 2, 3, 3), (4, 3, 5)])
def test_batch_norm_training_forward_and_gradcheck(shape):
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape) * 2 + 1
    c = shape[1]
    g, b = rng.standard_normal(c), rng.standard_normal(c)
    y = F.batch_norm(Tensor(x), None, None, Tensor(g), Tensor(b), training=True, eps=1e-5)
    np.testing.assert_allclose(y.numpy(), naive_bn_train(x, g, b, 1e-5), atol=1e-12)
    ins = [Tensor(a, requires_grad=True) for a in (x, g, b)]
    assert gradcheck(lambda x, g, b: F.batch_norm(x, None, None, g, b, training=True), ins)
    xt = Tensor(x, requires_grad=True)
    assert gradcheck(lambda x: F.batch_norm(x, None, None, None, None, training=True), [xt])


def test_batch_norm_running_stats_updated_in_place_unbiased():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 2, 2)) * 3 + 2
    rm, rv = Tensor(np.full(3, 0.5)), Tensor(np.full(3, 2.0))
    rm_arr, rv_arr = rm.data, rv.data
    F.batch_norm(Tensor(x), rm, rv, training=True, momentum=0.2)
    m = 4 * 2 * 2
    mu = x.mean(axis=(0, 2, 3))
    unbiased = ((x - mu[None, :, None, None]) ** 2).sum(axis=(0, 2, 3)) / (m - 1)
    np.testing.assert_allclose(rm.numpy(), 0.8 * 0.5 + 0.2 * mu, rtol=1e-12)
    np.testing.assert_allclose(rv.numpy(), 0.8 * 2.0 + 0.2 * unbiased, rtol=1e-12)
    assert rm.data is rm_arr and rv.data is rv_arr          # in place


def test_batch_norm_eval_uses_running_stats_and_gradcheck():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 3, 3))
    rm, rv = rng.standard_normal(2), rng.random(2) + 0.5
    g, b = rng.standard_normal(2), rng.standard_normal(2)
    y = F.batch_norm(Tensor(x), Tensor(rm), Tensor(rv), Tensor(g), Tensor(b), training=False)
    s = (1, 2, 1, 1)
    ref = g.reshape(s) * (x - rm.reshape(s)) / np.sqrt(rv.reshape(s) + 1e-5) + b.reshape(s)
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-12)
    ins = [Tensor(a, requires_grad=True) for a in (x, g, b)]
    assert gradcheck(lambda x, g, b: F.batch_norm(x, Tensor(rm), Tensor(rv), g, b), ins)


def test_batch_norm_errors():
    with pytest.raises(ValueError, match=r"weight has shape \(3,\).*\(2, 4, 3, 3\)"):
        F.batch_norm(Tensor(np.zeros((2, 4, 3, 3))), None, None, Tensor(np.ones(3)), None, True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(Tensor(np.zeros((1, 4))), None, None, training=True)
    with pytest.raises(ValueError, match="running_mean"):
        F.batch_norm(Tensor(np.zeros((2, 4))), None, None, training=False)


def test_batch_norm_float32_statistics_with_a_large_mean():
    """Two-pass statistics: a channel with mean 1e4 and std 1 normalizes as float64 does (the
    one-pass E[x^2] - E[x]^2 would lose every digit of the variance in float32)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 5, 5)) + np.array([1e4, -3e3, 0.0]).reshape(1, 3, 1, 1)
    y32 = F.batch_norm(Tensor(x.astype(np.float32)), None, None, training=True)
    ref = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(
        x.var(axis=(0, 2, 3), keepdims=True) + 1e-5)
    np.testing.assert_allclose(y32.numpy(), ref, rtol=0, atol=2e-3)
