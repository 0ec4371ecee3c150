"""Activations (PReLU, leaky ReLU, re-exports), dropout, linear, softmax / log-softmax /
cross-entropy / nll, pad: references from the formulas, gradient checks, properties, errors."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import minidl
import minidl.functional as F
from minidl import Tensor, gradcheck

from conftest import require


def away_from_zero(shape, seed, margin=0.1):
    """Random values with |x| >= margin: finite differences never cross PReLU's kink."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    return np.sign(x) * (np.abs(x) + margin)


def test_api_names_exist():
    for name in ["conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
                 "adaptive_max_pool2d", "spp", "local_response_norm", "prelu", "relu",
                 "leaky_relu", "tanh", "sigmoid", "batch_norm", "dropout", "linear", "softmax",
                 "log_softmax", "cross_entropy", "nll_loss", "pad", "im2col", "col2im"]:
        assert callable(getattr(F, name)), name
    assert F.relu is minidl.ops.relu and F.tanh is minidl.ops.tanh
    assert F.matmul is minidl.ops.matmul and F.sum is minidl.ops.sum   # generic ops too
    assert F.pad is not minidl.ops.pad                                   # torch-style pad
    star = {}
    exec("from minidl.functional import *", star)
    assert "conv2d" in star and "sum" not in star and "max" not in star  # builtins kept


# ----------------------------------------------------------------------------------------------
# PReLU


@given(st.integers(1, 4), st.integers(1, 8), st.booleans(), st.integers(0, 999),
       st.sampled_from([2, 3, 4]))
def test_prelu_forward_and_gradcheck(n, c, shared, seed, ndim):
    shape = (n, c) + (3, 2)[:ndim - 2]
    x = away_from_zero(shape, seed)
    a = np.random.default_rng(seed + 1).uniform(-0.5, 1.5, 1 if shared else c)
    y = F.prelu(Tensor(x), Tensor(a)).numpy()
    ref = np.empty_like(x)
    for idx in np.ndindex(*shape):           # f(y_i) = max(0, y_i) + a_i min(0, y_i)
        ai = a[0] if shared else a[idx[1]]
        ref[idx] = max(0.0, x[idx]) + ai * min(0.0, x[idx])
    np.testing.assert_allclose(y, ref, rtol=1e-14)
    ins = [Tensor(x, requires_grad=True), Tensor(a, requires_grad=True)]
    assert gradcheck(F.prelu, ins)


def test_prelu_slope_gradient_formula_and_zero_takes_negative_branch():
    x = np.array([[[-2.0, 0.0, 3.0]], [[-1.0, 4.0, 0.0]]]).reshape(2, 1, 3)
    x = np.concatenate([x, -x], axis=1)                             # (2, 2, 3), channel 1 negated
    a = Tensor(np.array([0.25, -0.5]), requires_grad=True)
    xt = Tensor(x, requires_grad=True)
    g = np.arange(1.0, 13.0).reshape(2, 2, 3)
    F.prelu(xt, a).backward(g)
    # dE/da_c = sum of g * x where x <= 0;  dE/dx = g if x > 0 else a * g (x == 0 included)
    exp_a = [np.sum(np.where(x[:, c] <= 0, g[:, c] * x[:, c], 0)) for c in range(2)]
    np.testing.assert_allclose(a.grad.numpy(), exp_a)
    exp_x = np.where(x > 0, g, g * np.array([0.25, -0.5]).reshape(1, 2, 1))
    np.testing.assert_allclose(xt.grad.numpy(), exp_x)
    assert xt.grad.numpy()[0, 0, 1] == 0.25 * g[0, 0, 1]             # x == 0 -> a * g


def test_prelu_a_zero_is_relu_and_leaky_is_fixed_slope(device):
    x = away_from_zero((2, 3, 4, 4), 0)
    xt = Tensor(x, device=device)
    np.testing.assert_array_equal(F.prelu(xt, Tensor(np.zeros(3), device=device)).numpy(),
                                  F.relu(xt).numpy())
    np.testing.assert_allclose(F.leaky_relu(xt, 0.01).numpy(),
                               F.prelu(xt, Tensor(np.array([0.01]), device=device)).numpy())
    y32 = F.prelu(Tensor(x.astype(np.float32), device=device),
                  Tensor(np.full(3, 0.25, np.float32), device=device))
    assert y32.dtype == np.float32


def test_prelu_non_contiguous_input():
    x = away_from_zero((2, 3, 5, 4), 1).transpose(0, 1, 3, 2)
    a = np.array([0.1, 0.2, 0.3])
    y = F.prelu(Tensor(x), Tensor(a)).numpy()
    np.testing.assert_allclose(y, np.where(x > 0, x, x * a.reshape(1, 3, 1, 1)))
    ins = [Tensor(x, requires_grad=True), Tensor(a, requires_grad=True)]
    assert gradcheck(F.prelu, ins)


def test_prelu_bad_weight_names_shapes():
    with pytest.raises(ValueError, match=r"\(4,\).*\(2, 3, 5, 5\)"):
        F.prelu(Tensor(np.zeros((2, 3, 5, 5))), Tensor(np.zeros(4)))


def test_leaky_relu_gradcheck():
    x = Tensor(away_from_zero((3, 4), 2), requires_grad=True)
    assert gradcheck(lambda x: F.leaky_relu(x, 0.2), [x])


# ----------------------------------------------------------------------------------------------
# dropout


def test_dropout_inverted_scaling_and_mask_gradient():
    minidl.manual_seed(0)
    x = Tensor(np.ones((200, 50)), requires_grad=True)
    y = F.dropout(x, 0.3, training=True)
    vals = np.unique(y.numpy())
    np.testing.assert_allclose(vals, [0.0, 1 / 0.7])
    frac = np.mean(y.numpy() == 0)
    assert abs(frac - 0.3) < 0.02
    y.backward(np.ones(y.shape))
    np.testing.assert_array_equal(x.grad.numpy(), y.numpy())      # d(x*m)/dx = m


def test_dropout_eval_identity_seeded_and_limits():
    x = Tensor(np.random.default_rng(0).standard_normal((4, 5)))
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x
    np.testing.assert_array_equal(F.dropout(x, 1.0).numpy(), np.zeros((4, 5)))
    minidl.manual_seed(3)
    a = F.dropout(x, 0.5).numpy()
    minidl.manual_seed(3)
    b = F.dropout(x, 0.5).numpy()
    np.testing.assert_array_equal(a, b)
    assert F.dropout(Tensor(np.ones(3, np.float32)), 0.5).dtype == np.float32
    with pytest.raises(ValueError, match="p must be in"):
        F.dropout(x, 1.5)


# ----------------------------------------------------------------------------------------------
# linear


def test_linear_forward_and_gradcheck():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    y = F.linear(Tensor(x), Tensor(w), Tensor(b)).numpy()
    ref = np.zeros((2, 3, 5))
    for i in range(2):
        for j in range(3):
            for o in range(5):
                ref[i, j, o] = b[o] + sum(x[i, j, k] * w[o, k] for k in range(4))
    np.testing.assert_allclose(y, ref, atol=1e-12)
    ins = [Tensor(a, requires_grad=True) for a in (x, w, b)]
    assert gradcheck(F.linear, ins)
    assert gradcheck(lambda x, w: F.linear(x, w), ins[:2])


def test_linear_shape_error():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(5, 4\)"):
        F.linear(Tensor(np.zeros((2, 3))), Tensor(np.zeros((5, 4))))


# ----------------------------------------------------------------------------------------------
# softmax, log-softmax, losses


def naive_ce(logits, target):
    losses = []
    for n in range(logits.shape[0]):
        z = logits[n]
        m = max(z)
        losses.append(-(z[target[n]] - m - np.log(sum(np.exp(v - m) for v in z))))
    return np.mean(losses)


@given(st.integers(1, 4), st.integers(1, 5), st.integers(0, 999))
def test_cross_entropy_matches_formula_and_gradcheck(n, c, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, c)) * 3
    target = rng.integers(0, c, n)
    loss = F.cross_entropy(Tensor(logits), target)
    assert loss.item() == pytest.approx(naive_ce(logits, target), rel=1e-12, abs=1e-12)
    x = Tensor(logits, requires_grad=True)
    assert gradcheck(lambda x: F.cross_entropy(x, target), [x])
    assert gradcheck(lambda x: F.log_softmax(x, 1), [x])
    assert gradcheck(lambda x: F.softmax(x, 1), [x])
    # analytic gradient of the mean CE: (softmax - onehot) / N
    x.grad = None
    F.cross_entropy(x, target).backward()
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(x.grad.numpy(), (p - np.eye(c)[target]) / n, atol=1e-12)


def test_cross_entropy_stable_for_huge_logits():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 6))
    target = np.array([0, 5, 2, 3])
    base = F.cross_entropy(Tensor(logits), target).item()
    for shift in (1e4, -1e4):
        x = Tensor(logits + shift, requires_grad=True)
        loss = F.cross_entropy(x, target)
        assert np.isfinite(loss.item()) and loss.item() == pytest.approx(base, rel=1e-9)
        loss.backward()
        assert np.all(np.isfinite(x.grad.numpy()))
    big = Tensor(np.array([[1e4, 0.0, -1e4]], dtype=np.float32))
    assert F.cross_entropy(big, np.array([1])).item() == pytest.approx(1e4, rel=1e-6)
    sm = F.softmax(Tensor(np.array([[1e4, 1e4 - 1.0]]))).numpy()
    np.testing.assert_allclose(sm, [[1 / (1 + np.exp(-1)), np.exp(-1) / (1 + np.exp(-1))]])
    assert np.all(np.isfinite(F.log_softmax(Tensor(np.array([[1e4, -1e4]]))).numpy()))


def test_cross_entropy_spatial_reductions_weights_and_ignore():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, 3, 2, 2))
    target = rng.integers(0, 3, (2, 2, 2))
    target[0, 0, 0] = -100
    w = np.array([1.0, 2.0, 0.5])
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    per = np.zeros((2, 2, 2))
    wsum = 0.0
    for idx in np.ndindex(2, 2, 2):
        t = target[idx]
        if t != -100:
            per[idx] = -w[t] * logp[idx[0], t, idx[1], idx[2]]
            wsum += w[t]
    x = Tensor(logits, requires_grad=True)
    none = F.cross_entropy(x, target, weight=w, reduction="none")
    np.testing.assert_allclose(none.numpy(), per, atol=1e-12)
    assert F.cross_entropy(x, target, weight=w, reduction="sum").item() == \
        pytest.approx(per.sum())
    assert F.cross_entropy(x, target, weight=w).item() == pytest.approx(per.sum() / wsum)
    for red in ("mean", "sum", "none"):
        assert gradcheck(lambda x, red=red: F.cross_entropy(x, target, weight=w, reduction=red),
                         [x])
    assert gradcheck(lambda x: F.nll_loss(F.log_softmax(x), target), [x])


def test_cross_entropy_matches_torch():
    torch = require("torch")
    rng = np.random.default_rng(2)
    logits, target = rng.standard_normal((5, 7)) * 10, rng.integers(0, 7, 5)
    ours = F.cross_entropy(Tensor(logits), target).item()
    ref = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(target)).item()
    assert ours == pytest.approx(ref, rel=1e-12)


def test_loss_errors_name_shapes():
    x = Tensor(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"target has shape \(3,\), expected \(4,\).*\(4, 3\)"):
        F.cross_entropy(x, np.zeros(3, dtype=np.int64))
    with pytest.raises(TypeError, match="integer class indices"):
        F.cross_entropy(x, np.zeros(4))
    with pytest.raises(IndexError, match=r"\[0, 3\)"):
        F.cross_entropy(x, np.array([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(x, np.zeros(4, dtype=np.int64), reduction="avg")


def test_softmax_sums_to_one_along_dim():
    x = np.random.default_rng(3).standard_normal((2, 3, 4))
    for dim in (0, 1, 2, -1):
        s = F.softmax(Tensor(x), dim).numpy().sum(axis=dim)
        np.testing.assert_allclose(s, 1.0)
        np.testing.assert_allclose(np.exp(F.log_softmax(Tensor(x), dim).numpy()),
                                   F.softmax(Tensor(x), dim).numpy(), rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# pad


def test_pad_torch_order_and_gradcheck():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    y = F.pad(Tensor(x), (1, 2, 0, 3), value=-1.0).numpy()
    assert y.shape == (2, 3, 7, 8)                   # last dim +1+2, second-to-last +0+3
    np.testing.assert_array_equal(y[:, :, 0:4, 1:6], x)
    assert np.all(y[:, :, 4:, :] == -1) and np.all(y[:, :, :, 0] == -1)
    # ResNet option A: zero-pad the channels
    z = F.pad(Tensor(x), (0, 0, 0, 0, 2, 2)).numpy()
    assert z.shape == (2, 7, 4, 5) and np.all(z[:, :2] == 0) and np.all(z[:, 5:] == 0)
    xt = Tensor(x[:1, :1], requires_grad=True)
    assert gradcheck(lambda x: F.pad(x, (1, 1, 2, 0)), [xt])
    with pytest.raises(ValueError, match="even number"):
        F.pad(Tensor(x), (1, 2, 3))
    with pytest.raises(NotImplementedError, match="reflect"):
        F.pad(Tensor(x), (1, 1), mode="reflect")


def test_dropout_gradcheck_with_a_fixed_mask():
    x = Tensor(np.random.default_rng(4).standard_normal((3, 5)), requires_grad=True)

    def fn(x):
        minidl.manual_seed(11)          # the same mask on every call
        return F.dropout(x, 0.4)
    assert gradcheck(fn, [x])
