"""The autograd engine: generic ops gradient-checked on hypothesis-drawn shapes, graph semantics,
dtype rules and error messages."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import minidl
from minidl import Tensor, gradcheck, ops


def T(a, device="cpu", grad=True):
    return Tensor(np.asarray(a, dtype=np.float64), requires_grad=grad, device=device)


# -- strategies -------------------------------------------------------------------------------

shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)


@st.composite
def broadcast_pair(draw):
    """Two shapes that broadcast: size-1 dims and missing leading dims included."""
    shape = draw(shapes)
    other = list(shape)
    for i in range(len(other)):
        if draw(st.booleans()):
            other[i] = 1
    drop = draw(st.integers(0, len(other) - 1))
    other = other[drop:]
    if draw(st.booleans()):
        return shape, tuple(other)
    return tuple(other), shape


def arr(rng, shape, low=-2.0, high=2.0):
    return rng.uniform(low, high, size=shape)


# -- arithmetic with broadcasting ----------------------------------------------------------------

@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
@given(pair=broadcast_pair(), seed=st.integers(0, 2**16))
def test_binary_ops_gradcheck_broadcasting(op, pair, seed):
    rng = np.random.default_rng(seed)
    a = T(arr(rng, pair[0]))
    b_vals = arr(rng, pair[1])
    if op == "div":  # keep the denominator away from 0
        b_vals = np.sign(b_vals) * (np.abs(b_vals) + 0.5)
    b = T(b_vals)
    fn = {"add": lambda x, y: x + y, "sub": lambda x, y: x - y,
          "mul": lambda x, y: x * y, "div": lambda x, y: x / y}[op]
    assert gradcheck(fn, [a, b])
    # forward matches NumPy
    np.testing.assert_allclose(fn(a, b).numpy(), fn(a.numpy(), b.numpy()))


@given(shape=shapes, seed=st.integers(0, 2**16), p=st.sampled_from([2, 3, 0.5, 1.5, -1.0]))
def test_pow_scalar_and_tensor_exponent(shape, seed, p):
    rng = np.random.default_rng(seed)
    x = T(arr(rng, shape, 0.5, 2.0))
    assert gradcheck(lambda x: x ** p, [x])
    e = T(arr(rng, shape, -1, 1))
    assert gradcheck(lambda x, e: x ** e, [x, e])
    assert gradcheck(lambda x: 2.0 ** x, [x])


@given(seed=st.integers(0, 2**16), n=st.integers(1, 4), k=st.integers(1, 4), m=st.integers(1, 4),
       batch=st.sampled_from([(), (1,), (2,), (3, 1)]), vec=st.sampled_from(["none", "a", "b"]))
def test_matmul_gradcheck(seed, n, k, m, batch, vec):
    rng = np.random.default_rng(seed)
    a_shape = (k,) if vec == "a" else batch + (n, k)
    b_shape = (k,) if vec == "b" else (k, m)
    a, b = T(arr(rng, a_shape)), T(arr(rng, b_shape))
    np.testing.assert_allclose((a @ b).numpy(), a.numpy() @ b.numpy())
    assert gradcheck(lambda a, b: a @ b, [a, b])


@pytest.mark.parametrize("name", ["exp", "log", "sqrt", "tanh", "sigmoid", "relu", "neg", "abs"])
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_unary_gradcheck(name, shape, seed):
    rng = np.random.default_rng(seed)
    vals = arr(rng, shape)
    if name in ("log", "sqrt"):
        vals = np.abs(vals) + 0.3
    if name in ("relu", "abs"):  # keep away from the kink
        vals = np.sign(vals) * (np.abs(vals) + 0.1)
    x = T(vals)
    assert gradcheck(lambda x: getattr(x, name)() if name != "neg" else -x, [x])
    ref = {"exp": np.exp, "log": np.log, "sqrt": np.sqrt, "tanh": np.tanh,
           "sigmoid": lambda v: 1 / (1 + np.exp(-v)), "relu": lambda v: np.maximum(v, 0),
           "neg": np.negative, "abs": np.abs}[name]
    out = getattr(x, name)() if name != "neg" else -x
    np.testing.assert_allclose(out.numpy(), ref(vals), rtol=1e-12, atol=1e-12)


def test_sigmoid_stable_for_large_inputs():
    x = Tensor(np.array([-1000.0, 0.0, 1000.0], dtype=np.float32))
    y = x.sigmoid().numpy()
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, [0.0, 0.5, 1.0], atol=1e-7)


# -- reductions ---------------------------------------------------------------------------------

@st.composite
def shape_and_axis(draw):
    shape = draw(shapes)
    axis = draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1),
                          st.lists(st.integers(0, len(shape) - 1), min_size=1, unique=True)
                          .map(tuple)))
    return shape, axis


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min"])
@given(sa=shape_and_axis(), keepdims=st.booleans(), seed=st.integers(0, 2**16))
def test_reductions(name, sa, keepdims, seed):
    shape, axis = sa
    rng = np.random.default_rng(seed)
    vals = rng.permutation(np.linspace(-2, 2, int(np.prod(shape)))).reshape(shape)  # tie-free
    x = T(vals)
    out = getattr(x, name)(axis=axis, keepdims=keepdims)
    ref = getattr(np, {"max": "amax", "min": "amin"}.get(name, name))(vals, axis=axis,
                                                                      keepdims=keepdims)
    np.testing.assert_allclose(out.numpy(), ref)
    assert gradcheck(lambda x: getattr(x, name)(axis=axis, keepdims=keepdims), [x])


def test_max_ties_share_the_gradient():
    x = T([1.0, 3.0, 3.0, 2.0])
    x.max().backward()
    np.testing.assert_allclose(x.grad.numpy(), [0, 0.5, 0.5, 0])


def test_var_matches_numpy():
    rng = np.random.default_rng(0)
    x = T(rng.standard_normal((3, 4)))
    np.testing.assert_allclose(x.var(axis=0).numpy(), np.var(x.numpy(), axis=0))
    np.testing.assert_allclose(x.var(ddof=1).numpy(), np.var(x.numpy(), ddof=1))
    assert gradcheck(lambda x: x.var(axis=1), [x])


def test_argmax_and_comparisons_have_no_grad():
    x = T([[1.0, 5.0, 2.0], [7.0, 0.0, 7.0]])
    np.testing.assert_array_equal(x.argmax(axis=1).numpy(), [1, 0])
    assert x.argmax(axis=1).dtype == np.int64
    c = x > 2.0
    assert c.dtype == bool and not c.requires_grad
    np.testing.assert_array_equal(c.numpy(), [[False, True, False], [True, False, True]])
    np.testing.assert_array_equal((x == x).numpy(), np.ones((2, 3), bool))


# -- shapes and indexing ---------------------------------------------------------------------

@given(seed=st.integers(0, 2**16))
def test_reshape_transpose_flatten(seed):
    rng = np.random.default_rng(seed)
    x = T(arr(rng, (2, 3, 4)))
    assert x.reshape(4, -1).shape == (4, 6)
    assert x.reshape((6, 4)).shape == (6, 4)
    assert x.transpose(0, 2, 1).shape == (2, 4, 3)
    assert x.transpose().shape == (4, 3, 2)
    assert x.flatten(1).shape == (2, 12)
    assert x.flatten().shape == (24,)
    np.testing.assert_array_equal(x.transpose(2, 0, 1).numpy(), x.numpy().transpose(2, 0, 1))
    assert gradcheck(lambda x: x.reshape(4, -1) * T(np.arange(24.0).reshape(4, 6), grad=False),
                     [x])
    assert gradcheck(lambda x: x.transpose(2, 0, 1) ** 2, [x])
    assert gradcheck(lambda x: x.flatten(1)[:, ::3], [x])


@pytest.mark.parametrize("index", [
    (slice(None), slice(1, 4, 2)), (slice(1, 3), slice(None, None, 2)),
    (0,), (Ellipsis, -1), (None, 1), (slice(None, None, -1),),
    (np.array([0, 1, 1, 0]),),                       # repeated rows accumulate
    (slice(None), np.array([2, 0, 2])),
    (np.array([1, 2]), np.array([3, 0])),
])
def test_getitem_gradcheck(index):
    rng = np.random.default_rng(1)
    x = T(arr(rng, (3, 4)))
    np.testing.assert_array_equal(x[index].numpy(), x.numpy()[index])
    assert gradcheck(lambda x: x[index], [x])


def test_getitem_repeated_index_accumulates():
    x = T([1.0, 2.0, 3.0])
    x[np.array([0, 0, 2])].sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 0.0, 1.0])


def test_getitem_boolean_mask():
    x = T([[1.0, -2.0], [-3.0, 4.0]])
    m = x.numpy() > 0
    x[m].sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), m.astype(float))


@given(seed=st.integers(0, 2**16), axis=st.integers(0, 2), n=st.integers(1, 3))
def test_concatenate_and_stack(seed, axis, n):
    rng = np.random.default_rng(seed)
    xs = [T(arr(rng, (2, 3, 2))) for _ in range(n)]
    np.testing.assert_array_equal(minidl.concatenate(xs, axis=axis).numpy(),
                                  np.concatenate([x.numpy() for x in xs], axis=axis))
    np.testing.assert_array_equal(minidl.stack(xs, axis=axis).numpy(),
                                  np.stack([x.numpy() for x in xs], axis=axis))
    assert gradcheck(lambda *xs: minidl.concatenate(xs, axis=axis) ** 2, xs)
    assert gradcheck(lambda *xs: minidl.stack(xs, axis=axis) ** 2, xs)


def test_pad_where_clip():
    rng = np.random.default_rng(2)
    x = T(arr(rng, (2, 3)))
    y = x.pad(((1, 0), (0, 2)), value=5.0)
    np.testing.assert_array_equal(y.numpy(), np.pad(x.numpy(), ((1, 0), (0, 2)),
                                                    constant_values=5.0))
    assert gradcheck(lambda x: x.pad(((1, 0), (0, 2))) ** 2, [x])
    b = T(arr(rng, (2, 3)))
    cond = x.numpy() > b.numpy()
    assert gradcheck(lambda x, b: minidl.where(cond, x, b) * 3, [x, b])
    vals = np.array([-2.0, -0.5, 0.3, 1.7])
    c = T(vals)
    np.testing.assert_array_equal(c.clip(-1, 1).numpy(), np.clip(vals, -1, 1))
    c.clip(-1, 1).sum().backward()
    np.testing.assert_array_equal(c.grad.numpy(), [0, 1, 1, 0])
    m = ops.maximum(T([1.0, 5.0]), T([3.0, 2.0]))
    np.testing.assert_array_equal(m.numpy(), [3.0, 5.0])


# -- graph semantics -----------------------------------------------------------------------------

def test_tensor_used_twice_accumulates():
    x = T([2.0, 3.0])
    (x * x + x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy() + 1)


def test_grad_accumulates_across_backward_calls_until_zeroed():
    x = T([1.0, -1.0])
    (x * 3).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [6.0, 6.0])
    x.zero_grad()
    assert x.grad is None


def test_no_grad_records_nothing_and_detach_cuts():
    x = T([1.0, 2.0])
    with minidl.no_grad():
        y = x * 2
    assert not y.requires_grad and y.is_leaf
    z = (x.detach() * 2 + x).sum()
    z.backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0, 1.0])

    @minidl.no_grad()
    def f(t):
        return t * 3
    assert not f(x).requires_grad
    assert (x * 2).requires_grad  # re-enabled after the block


def test_graph_freed_unless_retained():
    x = T([1.0, 2.0])
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 4 * x.numpy())
    assert y._ctx._freed and not vars(y._ctx).get("parents")  # freed after the second call
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        y.backward()


def test_deep_chain_backprops_without_recursion():
    x = T([0.5])
    y = x
    for _ in range(5000):
        y = y * 1.0001 + 0.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0001 ** 5000], rtol=1e-9)


def test_diamond_graph():
    x = T([1.5])
    a = x.exp()
    b = a * a
    c = a + b
    c.backward(Tensor(np.ones(1)))
    e = np.exp(1.5)
    np.testing.assert_allclose(x.grad.numpy(), [e + 2 * e * e])


def test_retain_grad_on_intermediate():
    x = T([1.0, 2.0])
    h = (x * 3).retain_grad()
    (h * h).sum().backward()
    np.testing.assert_allclose(h.grad.numpy(), 2 * h.numpy())
    np.testing.assert_allclose(x.grad.numpy(), 18 * x.numpy())


# -- dtype rule ----------------------------------------------------------------------------------

def test_dtype_rule():
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(3.0).dtype == np.float32
    assert Tensor([1, 2]).dtype == np.int64
    assert Tensor(np.zeros(2)).dtype == np.float64
    assert Tensor(np.zeros(2, np.int64)).dtype == np.int64
    f32 = Tensor(np.ones(3, np.float32))
    for r in (f32 + 1.5, 1.5 * f32, f32 ** 2, 2 - f32, f32 / 3, f32 * 2):
        assert r.dtype == np.float32
    assert (Tensor(np.ones(2)) + 1).dtype == np.float64
    assert Tensor([1, 2]).double().dtype == np.float64


def test_astype_and_to_are_differentiable():
    x = Tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    y = x.double() * 2
    assert y.dtype == np.float64
    y.sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0])


def test_factories_and_repr():
    assert minidl.zeros(2, 3).shape == (2, 3)
    assert minidl.ones((2,), dtype=np.float64).dtype == np.float64
    np.testing.assert_array_equal(minidl.full((2, 2), 7.0).numpy(), np.full((2, 2), 7.0))
    assert minidl.arange(5).dtype == np.int64
    assert minidl.arange(0.0, 1.0, 0.25).shape == (4,)
    minidl.manual_seed(3)
    a = minidl.randn(4, 5).numpy()
    minidl.manual_seed(3)
    np.testing.assert_array_equal(a, minidl.randn(4, 5).numpy())
    r = repr(Tensor([1.0, 2.0], requires_grad=True))
    assert r.startswith("tensor([1., 2.]") and "requires_grad=True" in r
    assert "grad_fn=<MulBackward>" in repr(Tensor([1.0], requires_grad=True) * 2)
    assert Tensor([[3.5]]).item() == 3.5


def test_numpy_returns_a_copy():
    x = Tensor(np.zeros(3))
    x.numpy()[0] = 5
    assert x.numpy()[0] == 0


def test_random_state_round_trip():
    minidl.manual_seed(11)
    st0 = minidl.random.get_state()
    a = minidl.random.normal(size=5)
    minidl.random.set_state(st0)
    np.testing.assert_array_equal(a, minidl.random.normal(size=5))
    import json
    json.dumps(st0)  # checkpoints store it as JSON


# -- errors ---------------------------------------------------------------------------------------

def test_errors_name_shapes_and_dtypes():
    a, b = T(np.ones((2, 3))), T(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 3\)"):
        a + b
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 3\)"):
        a @ b
    with pytest.raises(RuntimeError, match=r"one-element.*\(2, 3\)"):
        (a * 2).backward()
    with pytest.raises(TypeError, match="int64"):
        Tensor(np.array([1, 2]), requires_grad=True)
    with pytest.raises(ValueError, match=r"reshape.*\(2, 3\).*\(4,\)"):
        a.reshape(4)
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor([1.0]).backward()
    with pytest.raises(ValueError, match=r"grad has shape \(3,\).*\(2, 3\)"):
        (a * 2).backward(np.ones(3))
    with pytest.raises(AttributeError):
        _ = a.no_such_attribute


def test_cuda_request_without_gpu_is_a_clear_error():
    from minidl import backend
    if backend.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(backend.DeviceError, match="CuPy|CUDA"):
        Tensor([1.0], device="cuda")
    with pytest.raises(ValueError, match="unknown device"):
        Tensor([1.0], device="tpu")
    assert minidl.cuda.is_available() is False


def test_get_array_module_is_numpy_for_cpu():
    from minidl import backend
    assert backend.get_array_module(np.zeros(2)) is np
    assert backend.get_array_module(Tensor([1.0])) is np


# -- the same checks on every device (cuda skips cleanly without a GPU) ---------------------------

def test_ops_on_device(device):
    rng = np.random.default_rng(5)
    a = T(arr(rng, (3, 1, 2)), device=device)
    b = T(arr(rng, (4, 2)), device=device)
    assert a.device == device
    assert gradcheck(lambda a, b: ((a * b).tanh() @ b.transpose()).sum(axis=0), [a, b])
    y = (a + b).exp().mean()
    y.backward()
    assert a.grad.device == device
    np.testing.assert_allclose(y.item(), np.exp(a.numpy() + b.numpy()).mean())
    if device == "cuda":
        with pytest.raises(minidl.backend.DeviceError, match="different devices"):
            a + T(np.ones(2))
        c = a.to("cpu")
        assert c.device == "cpu"
        c.sum().backward()
