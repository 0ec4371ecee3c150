"""Tensor methods with PyTorch's names and meanings (issue 11), each compared with torch where
it is installed and with NumPy / hand-computed values always."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minidl
from minidl import Tensor, gradcheck

from conftest import require


def _torch():
    return require("torch")  # a skip locally, a failure in CI when torch is missing


def T(a, grad=False):
    return Tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


X = np.array([[1.0, 5.0, 2.0], [7.0, 0.0, 7.0]])


def test_size_numel_dim():
    x = Tensor(np.zeros((2, 3, 4)))
    assert x.size() == (2, 3, 4) and x.size(1) == 3 and x.size(-1) == 4
    assert x.numel() == 24 and x.dim() == 3
    with pytest.raises(IndexError, match=r"size: dim 3 is out of range.*\(2, 3, 4\)"):
        x.size(3)
    t = _torch().zeros(2, 3, 4)
    assert tuple(t.size()) == x.size() and t.size(-1) == x.size(-1) and t.numel() == x.numel()


@pytest.mark.parametrize("name", ["sum", "mean"])
def test_dim_keepdim_and_axis_keepdims_spellings(name):
    x = T(X)
    ref = getattr(np, name)(X, axis=1, keepdims=True)
    for r in (getattr(x, name)(1, True), getattr(x, name)(dim=1, keepdim=True),
              getattr(x, name)(axis=1, keepdims=True), getattr(x, name)(dim=(1,), keepdim=True)):
        np.testing.assert_allclose(r.numpy(), ref)
    with pytest.raises(TypeError, match="both dim=1 and axis=0"):
        getattr(x, name)(dim=1, axis=0)
    torch = _torch()
    np.testing.assert_allclose(getattr(torch.tensor(X), name)(dim=1, keepdim=True).numpy(), ref)


def test_max_min_with_dim_return_values_and_indices_like_torch():
    x = T(X, grad=True)
    v, i = x.max(1)
    np.testing.assert_array_equal(v.numpy(), [5.0, 7.0])
    np.testing.assert_array_equal(i.numpy(), [1, 0])   # the first of the tied 7s, as torch
    assert i.dtype == np.int64 and not i.requires_grad
    r = x.min(dim=0, keepdim=True)
    np.testing.assert_array_equal(r.values.numpy(), [[1.0, 0.0, 2.0]])
    np.testing.assert_array_equal(r.indices.numpy(), [[0, 1, 0]])
    v.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 1, 0], [1, 0, 0]])  # to the index only

    torch = _torch()
    xt = torch.tensor(X, requires_grad=True)
    vt, it = xt.max(1)
    vt.sum().backward()
    np.testing.assert_array_equal(it.numpy(), i.numpy())
    np.testing.assert_array_equal(xt.grad.numpy(), x.grad.numpy())
    rt = xt.min(dim=0, keepdim=True)
    np.testing.assert_array_equal(rt.indices.numpy(), r.indices.numpy())


def test_max_without_dim_with_axis_and_with_a_tensor():
    x = T(X, grad=True)
    m = x.max()
    assert m.shape == () and m.item() == 7.0
    m.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 0, 0], [0.5, 0, 0.5]])  # ties share
    np.testing.assert_array_equal(x.max(axis=1).numpy(), [5.0, 7.0])          # NumPy: values
    np.testing.assert_array_equal(x.amax(dim=(0, 1)).numpy(), 7.0)
    np.testing.assert_array_equal(x.max(T(np.full((2, 3), 3.0))).numpy(),
                                  np.maximum(X, 3.0))
    torch = _torch()
    xt = torch.tensor(X, requires_grad=True)
    xt.max().backward()
    np.testing.assert_array_equal(xt.grad.numpy(), x.grad.numpy())


@given(seed=st.integers(0, 2**16), dim=st.integers(-3, 2), keepdim=st.booleans())
def test_max_dim_gradcheck(seed, dim, keepdim):
    rng = np.random.default_rng(seed)
    x = T(rng.permutation(24).reshape(2, 3, 4) / 7.0, grad=True)   # tie-free
    assert gradcheck(lambda x: x.max(dim, keepdim).values * 1.5, [x])
    assert gradcheck(lambda x: x.min(dim=dim, keepdim=keepdim)[0], [x])


def test_var_std_defaults_follow_the_spelling():
    x = T(X)
    np.testing.assert_allclose(x.var().item(), np.var(X, ddof=1))                 # torch
    np.testing.assert_allclose(x.var(1).numpy(), np.var(X, axis=1, ddof=1))
    np.testing.assert_allclose(x.var(1, unbiased=False).numpy(), np.var(X, axis=1))
    np.testing.assert_allclose(x.var(dim=1, correction=0).numpy(), np.var(X, axis=1))
    np.testing.assert_allclose(x.var(axis=1).numpy(), np.var(X, axis=1))          # NumPy
    np.testing.assert_allclose(x.std(0).numpy(), np.std(X, axis=0, ddof=1))
    torch = _torch()
    np.testing.assert_allclose(torch.tensor(X).var(1).numpy(), x.var(1).numpy())
    np.testing.assert_allclose(torch.tensor(X).std().item(), x.std().item())


def test_argmax_keepdim():
    x = T(X)
    np.testing.assert_array_equal(x.argmax(dim=1, keepdim=True).numpy(), [[1], [0]])
    assert x.argmax().item() == 3
    assert x.argmin(0).tolist() == [0, 1, 0]


def test_transpose_swaps_two_dims_like_torch():
    x = T(np.arange(24.0).reshape(2, 3, 4), grad=True)
    assert x.transpose(0, 2).shape == (4, 3, 2)
    assert x.transpose(1, -1).shape == (2, 4, 3)
    y = T(X)
    np.testing.assert_array_equal(y.transpose(0, 1).numpy(), X.T)   # NumPy would return X
    np.testing.assert_array_equal(y.t().numpy(), X.T)
    assert x.transpose(2, 0, 1).shape == (4, 2, 3)                  # a full permutation
    assert x.permute(2, 0, 1).shape == (4, 2, 3) and x.permute((1, 0, 2)).shape == (3, 2, 4)
    assert gradcheck(lambda x: x.transpose(0, 2) * 2, [x])
    torch = _torch()
    tt = torch.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(tt.transpose(1, -1).numpy(), x.transpose(1, -1).numpy())
    np.testing.assert_array_equal(tt.permute(2, 0, 1).numpy(), x.permute(2, 0, 1).numpy())


def test_view_clone_clamp_expand():
    x = T(np.arange(6.0), grad=True)
    assert x.view(2, 3).shape == (2, 3) and x.view(-1, 2).shape == (3, 2)
    assert x.view_as(T(np.zeros((3, 2)))).shape == (3, 2)
    c = x.clone()
    assert c.requires_grad and c.data is not x.data
    with minidl.no_grad():
        c.add_(1)
    np.testing.assert_array_equal(x.numpy(), np.arange(6.0))
    (c * 2).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.full(6, 2.0))
    np.testing.assert_array_equal(x.clamp(1, 4).numpy(), np.clip(np.arange(6.0), 1, 4))
    np.testing.assert_array_equal(x.clamp(min=2).numpy(), np.maximum(np.arange(6.0), 2))
    e = T([[1.0], [2.0]], grad=True)
    assert e.expand(2, 3).shape == (2, 3) and e.expand(-1, 4).shape == (2, 4)
    assert gradcheck(lambda e: e.expand(3, 2, 5) ** 2, [e])


def test_comparisons_and_dtype_conversions():
    a, b = T([1.0, 2.0, 3.0]), T([3.0, 2.0, 1.0])
    assert a.eq(b).tolist() == [False, True, False] and a.ne(b).tolist() == [True, False, True]
    assert a.lt(b).tolist() == [True, False, False] and a.le(b).tolist() == [True, True, False]
    assert a.gt(b).tolist() == [False, False, True] and a.ge(2).tolist() == [False, True, True]
    assert a.equal(T([1.0, 2.0, 3.0])) and not a.equal(b)
    assert a.long().dtype == np.int64 and a.int().dtype == np.int32
    assert a.bool().dtype == np.bool_ and a.float().dtype == np.float32
    assert a.half().dtype == np.float16 and a.double().dtype == np.float64
    f32 = Tensor(np.ones(2, np.float32))
    assert a.type_as(f32).dtype == np.float32
    assert a.to(np.float32).dtype == np.float32 and a.to(f32).dtype == np.float32
    assert a.to("cpu", np.float32).dtype == np.float32


def test_squeeze_unsqueeze_cat_stack_take_dim():
    x = T(np.zeros((2, 1, 3)))
    assert x.squeeze(dim=1).shape == (2, 3) and x.unsqueeze(dim=0).shape == (1, 2, 1, 3)
    assert minidl.concatenate([x, x], dim=2).shape == (2, 1, 6)
    assert minidl.stack([x, x], dim=1).shape == (2, 2, 1, 3)


def test_out_of_place_method_aliases():
    a, b = T([1.0, 2.0], grad=True), T([3.0, 4.0])
    np.testing.assert_array_equal(a.add(b, alpha=2).numpy(), [7.0, 10.0])
    np.testing.assert_array_equal(a.sub(b).numpy(), [-2.0, -2.0])
    np.testing.assert_array_equal(a.mul(b).numpy(), [3.0, 8.0])
    np.testing.assert_array_equal(a.div(b).numpy(), [1 / 3, 0.5])
    np.testing.assert_array_equal(a.pow(2).numpy(), [1.0, 4.0])
    np.testing.assert_allclose(a.softmax(0).numpy(), np.exp([1, 2]) / np.exp([1, 2]).sum())


def test_max_dim_and_argmax_on_device(device):
    x = Tensor(X, requires_grad=True, device=device)
    v, i = x.max(1, keepdim=True)
    assert v.device == device and i.device == device
    np.testing.assert_array_equal(i.numpy(), [[1], [0]])
    np.testing.assert_array_equal(x.argmax(dim=1, keepdim=True).numpy(), [[1], [0]])
    assert x.argmax(keepdim=True).shape == (1, 1) and x.argmax(keepdim=True).item() == 3
    v.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 1, 0], [1, 0, 0]])
