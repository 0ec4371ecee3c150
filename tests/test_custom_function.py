"""``minidl.autograd.Function``: PyTorch's custom-op API, ported examples checked against torch
and by float64 finite differences."""

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import minidl
from minidl import Tensor, gradcheck
from minidl.autograd import Function, once_differentiable

from conftest import require


def _torch():
    return require("torch")  # a skip locally, a failure in CI when torch is missing


# PyTorch's tutorial example ("Defining new autograd functions", LegendrePolynomial3), with
# only the import changed.
class LegendrePolynomial3(Function):
    @staticmethod
    def forward(ctx, input):
        ctx.save_for_backward(input)
        return 0.5 * (5 * input ** 3 - 3 * input)

    @staticmethod
    def backward(ctx, grad_output):
        input, = ctx.saved_tensors
        return grad_output * 1.5 * (5 * input ** 2 - 1)


# The same with NumPy inside: forward gets Tensors, computes with np.*, returns an array.
class LegendreNumPy(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return 0.5 * (5 * np.power(x, 3) - 3 * np.asarray(x))

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, = ctx.saved_tensors
        return np.asarray(g) * 1.5 * (5 * np.asarray(x) ** 2 - 1)


class ScaledMul(Function):
    """Two Tensor inputs and a non-Tensor parameter."""

    @staticmethod
    def forward(ctx, a, b, scale):
        ctx.save_for_backward(a, b)
        ctx.scale = scale
        return a * b * scale

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ga = g * b * ctx.scale if ctx.needs_input_grad[0] else None
        gb = g * a * ctx.scale if ctx.needs_input_grad[1] else None
        return ga, gb, None


class MaxWithIndex(Function):
    """Two outputs, one of them integer indices marked non-differentiable."""

    @staticmethod
    def forward(ctx, x):
        xa = np.asarray(x)
        idx = xa.argmax(axis=1)
        vals = xa[np.arange(xa.shape[0]), idx]
        idx_t = Tensor(idx)
        ctx.mark_non_differentiable(idx_t)
        ctx.idx, ctx.shape = idx, xa.shape
        return Tensor(vals), idx_t

    @staticmethod
    def backward(ctx, g_vals, g_idx):
        gx = np.zeros(ctx.shape)
        gx[np.arange(ctx.shape[0]), ctx.idx] = np.asarray(g_vals)
        return gx


class SplitHalves(Function):
    """Two differentiable outputs; the loss may use only one of them."""

    @staticmethod
    def forward(ctx, x):
        n = x.shape[0] // 2
        ctx.n = n
        return x[:n] * 2, x[n:] * 3

    @staticmethod
    def backward(ctx, ga, gb):
        return minidl.concatenate([ga * 2, gb * 3])


vectors = hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=4),
                     elements=st.floats(-2, 2))


@given(v=vectors)
def test_legendre_gradcheck_and_matches_the_formula(v):
    for cls in (LegendrePolynomial3, LegendreNumPy):
        x = Tensor(v.copy(), requires_grad=True)
        y = cls.apply(x)
        np.testing.assert_allclose(y.numpy(), 0.5 * (5 * v ** 3 - 3 * v))
        assert gradcheck(cls.apply, [x])


def test_legendre_matches_torch_in_a_fit_loop():
    torch = _torch()

    class TorchLegendre(torch.autograd.Function):
        @staticmethod
        def forward(ctx, input):
            ctx.save_for_backward(input)
            return 0.5 * (5 * input ** 3 - 3 * input)

        @staticmethod
        def backward(ctx, grad_output):
            input, = ctx.saved_tensors
            return grad_output * 1.5 * (5 * input ** 2 - 1)

    xs = np.linspace(-np.pi, np.pi, 50)
    ys = np.sin(xs)
    init = [0.0, -1.0, 0.0, 0.3]
    ours = [Tensor(np.array(v), requires_grad=True) for v in init]
    theirs = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in init]
    x_m, y_m = Tensor(xs), Tensor(ys)
    x_t, y_t = torch.tensor(xs), torch.tensor(ys)
    for _ in range(5):
        a, b, c, d = ours
        loss = ((a + b * LegendrePolynomial3.apply(c + d * x_m) - y_m) ** 2).sum()
        loss.backward()
        at, bt, ct, dt = theirs
        loss_t = ((at + bt * TorchLegendre.apply(ct + dt * x_t) - y_t) ** 2).sum()
        loss_t.backward()
        assert loss.item() == pytest.approx(loss_t.item(), rel=1e-12)
        with minidl.no_grad():
            for p in ours:
                p -= 5e-6 * p.grad
                p.grad = None
        with torch.no_grad():
            for p in theirs:
                p -= 5e-6 * p.grad
                p.grad = None
    np.testing.assert_allclose([p.item() for p in ours], [p.item() for p in theirs], rtol=1e-10,
                               atol=1e-15)


def test_several_inputs_non_tensor_argument_and_needs_input_grad():
    a = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    b = Tensor(np.array([3.0, 4.0]))
    y = ScaledMul.apply(a, b, 10.0)
    assert "grad_fn=<ScaledMulBackward>" in repr(y)
    y.sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [30.0, 40.0])
    assert b.grad is None
    b.requires_grad_()
    assert gradcheck(lambda a, b: ScaledMul.apply(a, b, 0.5), [a, b])


def test_multiple_outputs_and_mark_non_differentiable():
    x = Tensor(np.array([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]]), requires_grad=True)
    vals, idx = MaxWithIndex.apply(x)
    assert vals.requires_grad and not idx.requires_grad
    np.testing.assert_array_equal(idx.numpy(), [1, 0])
    (vals * Tensor(np.array([2.0, 3.0]))).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 2, 0], [3, 0, 0]])

    x = Tensor(np.arange(4.0), requires_grad=True)
    first, second = SplitHalves.apply(x)
    first.sum().backward()               # second gets no gradient: zeros are materialized
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0, 0.0, 0.0])
    x.grad = None
    assert gradcheck(lambda x: minidl.concatenate(list(SplitHalves.apply(x))) ** 2, [x])


def test_no_graph_without_grad_and_under_no_grad():
    x = Tensor(np.array([0.5]))
    assert not LegendrePolynomial3.apply(x).requires_grad
    x.requires_grad_()
    with minidl.no_grad():
        assert not LegendrePolynomial3.apply(x).requires_grad


def test_saved_tensor_changed_in_place_raises():
    x = Tensor(np.array([0.5, 1.0]), requires_grad=True)
    b = Tensor(np.array([3.0, 4.0]))
    y = ScaledMul.apply(x, b, 1.0)
    with minidl.no_grad():
        b.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an in-place operation.*version 1"):
        y.sum().backward()


def test_wrong_number_or_shape_of_gradients_is_a_clear_error():
    class Bad(Function):
        @staticmethod
        def forward(ctx, x, y):
            return x + y

        @staticmethod
        def backward(ctx, g):
            return g

    x = Tensor(np.ones(2), requires_grad=True)
    with pytest.raises(RuntimeError, match="returned 1 gradients; expected 2"):
        Bad.apply(x, x).sum().backward()

    class BadShape(Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return np.ones(3)

    with pytest.raises(RuntimeError, match=r"shape \(3,\) for argument 0 of shape \(2,\)"):
        BadShape.apply(x).sum().backward()


def test_custom_function_on_device(device):
    x = Tensor(np.array([0.5, -1.0, 2.0]), requires_grad=True, device=device)
    y = LegendrePolynomial3.apply(x)
    assert y.device == device
    y.sum().backward()
    assert x.grad.device == device
    v = np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(x.grad.numpy(), 1.5 * (5 * v ** 2 - 1))
    assert gradcheck(LegendrePolynomial3.apply, [x])
