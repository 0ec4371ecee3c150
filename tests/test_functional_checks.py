"""The functional package's argument rules, from the caller's side: one dtype rule for every
layer (floating point only, every Tensor argument of the input's dtype, no silent promotion),
cross_entropy targets, and non-finite hyperparameters, each error naming what is wrong."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minidl.functional as F
from minidl import Tensor

FLOATS = ["float16", "float32", "float64"]
OTHER_KINDS = ["bool", "int8", "int32", "int64", "uint8", "complex64", "complex128"]


def _t(shape, dtype, seed=0):
    a = np.random.default_rng(seed).standard_normal(shape)
    if np.dtype(dtype).kind == "b":
        return Tensor(a > 0)
    if np.dtype(dtype).kind == "c":
        return Tensor((a + 1j * a).astype(dtype))
    return Tensor(a.astype(dtype))


# op name -> (call(input_dtype, other_dtype), the name of the argument given other_dtype)
# Each call builds fresh Tensors: input (N, C, H, W) = (2, 3, 6, 6) unless the op needs less.
MIXED = {
    "linear/weight": (lambda a, b: F.linear(_t((2, 3), a), _t((4, 3), b)), "weight"),
    "linear/bias": (lambda a, b: F.linear(_t((2, 3), a), _t((4, 3), a), _t((4,), b)), "bias"),
    "conv2d/weight": (lambda a, b: F.conv2d(_t((2, 3, 6, 6), a), _t((4, 3, 3, 3), b)),
                      "weight"),
    "conv2d/bias": (lambda a, b: F.conv2d(_t((2, 3, 6, 6), a), _t((4, 3, 3, 3), a),
                                          _t((4,), b)), "bias"),
    "prelu/weight": (lambda a, b: F.prelu(_t((2, 3, 6, 6), a), _t((3,), b)), "weight"),
    "batch_norm/running_mean": (lambda a, b: F.batch_norm(
        _t((2, 3, 6, 6), a), _t((3,), b), _t((3,), a).abs(), training=False), "running_mean"),
    "batch_norm/running_var": (lambda a, b: F.batch_norm(
        _t((2, 3, 6, 6), a), _t((3,), a), _t((3,), b).abs(), training=True), "running_var"),
    "batch_norm/weight": (lambda a, b: F.batch_norm(
        _t((2, 3, 6, 6), a), None, None, _t((3,), b), training=True), "weight"),
    "batch_norm/bias": (lambda a, b: F.batch_norm(
        _t((2, 3, 6, 6), a), None, None, None, _t((3,), b), training=True), "bias"),
    "nll_loss/weight": (lambda a, b: F.nll_loss(_t((2, 3), a), Tensor(np.array([0, 2])),
                                                weight=_t((3,), b).abs()), "weight"),
}

# op -> call(input): the ops that take one floating input
SINGLE = {
    "linear": lambda x: F.linear(x, _t((4, 6), x.dtype) if x.dtype.kind == "f" else x),
    "conv2d": lambda x: F.conv2d(x, _t((4, 3, 3, 3), x.dtype) if x.dtype.kind == "f" else x),
    "max_pool2d": lambda x: F.max_pool2d(x, 2),
    "avg_pool2d": lambda x: F.avg_pool2d(x, 2),
    "adaptive_max_pool2d": lambda x: F.adaptive_max_pool2d(x, 4),
    "adaptive_avg_pool2d": lambda x: F.adaptive_avg_pool2d(x, 4),
    "spp": lambda x: F.spp(x, (2, 1)),
    "local_response_norm": lambda x: F.local_response_norm(x, 3),
    "batch_norm": lambda x: F.batch_norm(x, None, None, training=True),
    "prelu": lambda x: F.prelu(x, _t((1,), x.dtype) if x.dtype.kind == "f" else x),
    "leaky_relu": lambda x: F.leaky_relu(x),
    "dropout": lambda x: F.dropout(x, 0.5),
    "softmax": lambda x: F.softmax(x, 1),
    "log_softmax": lambda x: F.log_softmax(x, 1),
    "cross_entropy": lambda x: F.cross_entropy(x, Tensor(np.zeros((2, 6, 6), np.int64))),
}


@pytest.mark.parametrize("case", sorted(MIXED))
@pytest.mark.parametrize("a,b", [(a, b) for a in FLOATS for b in FLOATS if a != b])
def test_mixed_float_dtypes_raise_naming_both(case, a, b):
    call, arg = MIXED[case]
    op = case.split("/")[0]
    with pytest.raises(TypeError) as info:
        call(a, b)
    msg = str(info.value)
    assert msg.startswith(op + ":") and arg in msg and a in msg and b in msg, msg
    assert "shape" in msg, msg


@pytest.mark.parametrize("case", sorted(MIXED))
@pytest.mark.parametrize("a", ["float32", "float64"])
def test_same_float_dtype_works_and_keeps_it(case, a):
    y = MIXED[case][0](a, a)
    assert y.dtype == np.dtype(a)


@pytest.mark.parametrize("op", sorted(SINGLE))
@pytest.mark.parametrize("dtype", OTHER_KINDS)
def test_non_floating_inputs_raise_naming_the_dtype(op, dtype):
    x = _t((2, 6, 6, 6) if op == "linear" else (2, 3, 6, 6), dtype)
    with pytest.raises(TypeError, match=rf"^{op}: input has dtype {dtype} \(shape "):
        SINGLE[op](x)


@pytest.mark.parametrize("op", sorted(SINGLE))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_floating_inputs_keep_their_dtype(op, dtype):
    x = _t((2, 6, 6, 6) if op == "linear" else (2, 3, 6, 6), dtype)
    assert SINGLE[op](x).dtype == np.dtype(dtype)


def test_max_pool_on_bool_does_not_return_garbage():
    """(issue #10) a bool max-pool used to return all True for any input: it now refuses."""
    x = Tensor(np.zeros((1, 1, 4, 4), bool))
    with pytest.raises(TypeError, match="max_pool2d: input has dtype bool"):
        F.max_pool2d(x, 2)


@pytest.mark.parametrize("op,call", [
    ("linear", lambda: F.linear(np.ones((2, 3), np.float32), _t((4, 3), "float32"))),
    ("conv2d", lambda: F.conv2d(_t((1, 3, 4, 4), "float32"), np.ones((2, 3, 3, 3), np.float32))),
    ("prelu", lambda: F.prelu(_t((1, 3, 4, 4), "float32"), [0.25])),
    ("max_pool2d", lambda: F.max_pool2d(np.ones((1, 1, 4, 4), np.float32), 2)),
])
def test_non_tensor_arguments_are_named(op, call):
    with pytest.raises(TypeError, match=rf"^{op}: \w+ must be a minidl Tensor, got"):
        call()


# ----------------------------------------------------------------------------------------------
# cross_entropy / nll_loss targets


@pytest.mark.parametrize("fn", ["cross_entropy", "nll_loss"])
def test_targets_that_are_not_arrays_are_named(fn):
    x = _t((2, 3), "float32")
    for target in ([0, 1], (0, 1), 1, "01", None):
        with pytest.raises(TypeError, match=rf"^{fn}: target must be a Tensor"):
            getattr(F, fn)(x, target)


@pytest.mark.parametrize("fn", ["cross_entropy", "nll_loss"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "bool", "complex64"])
def test_targets_of_a_wrong_dtype_are_named(fn, dtype):
    x = _t((2, 3), "float32")
    with pytest.raises(TypeError, match=rf"^{fn}: target must hold integer class indices, got "
                                        rf"dtype {dtype}"):
        getattr(F, fn)(x, Tensor(np.zeros(2, dtype)))


@given(n=st.integers(1, 4), c=st.integers(1, 8), bad=st.one_of(st.integers(-50, -1),
                                                                 st.integers(0, 40)),
       pos=st.integers(0, 3))
def test_out_of_range_classes_are_named(n, c, bad, pos):
    if bad >= 0:
        bad += c          # c, c + 1, ...: past the last class
    t = np.zeros(n, np.int64)
    t[pos % n] = bad
    x = _t((n, c), "float64")
    for fn in ("cross_entropy", "nll_loss"):
        if bad == -100:   # the default ignore_index is a valid target value
            getattr(F, fn)(x, Tensor(t))
            continue
        with pytest.raises(IndexError, match=rf"^{fn}: target values must be in \[0, {c}\) .*"
                                             rf"got {bad} \(target shape \({n},\)"):
            getattr(F, fn)(x, Tensor(t))


def test_target_shape_is_named():
    with pytest.raises(ValueError, match=r"cross_entropy: target has shape \(3,\), expected "
                                         r"\(2,\)"):
        F.cross_entropy(_t((2, 3), "float32"), Tensor(np.zeros(3, np.int64)))


# ----------------------------------------------------------------------------------------------
# hyperparameters that are not finite numbers


@pytest.mark.parametrize("op,arg,call", [
    ("dropout", "p", lambda v: F.dropout(_t((2, 3), "float32"), v)),
    ("leaky_relu", "negative_slope", lambda v: F.leaky_relu(_t((2, 3), "float32"), v)),
    ("local_response_norm", "alpha",
     lambda v: F.local_response_norm(_t((1, 3, 2, 2), "float32"), 3, alpha=v)),
    ("local_response_norm", "beta",
     lambda v: F.local_response_norm(_t((1, 3, 2, 2), "float32"), 3, beta=v)),
    ("local_response_norm", "k",
     lambda v: F.local_response_norm(_t((1, 3, 2, 2), "float32"), 3, k=v)),
    ("batch_norm", "eps",
     lambda v: F.batch_norm(_t((4, 3), "float32"), None, None, training=True, eps=v)),
    ("batch_norm", "momentum",
     lambda v: F.batch_norm(_t((4, 3), "float32"), None, None, training=True, momentum=v)),
])
def test_non_finite_hyperparameters_are_named(op, arg, call):
    for v in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match=rf"^{op}: {arg} must be"):
            call(v)
    for v in ("0.5", None, [0.5]):
        with pytest.raises(TypeError, match=rf"^{op}: {arg} must be a real number"):
            call(v)


def test_out_of_range_hyperparameters_are_named():
    x = _t((4, 3), "float32")
    with pytest.raises(ValueError, match=r"dropout: p must be in \[0.0, 1.0\], got 1.5"):
        F.dropout(x, 1.5)
    with pytest.raises(ValueError, match=r"batch_norm: eps must be in \[0.0, inf\), got -1"):
        F.batch_norm(x, None, None, training=True, eps=-1)
    with pytest.raises(ValueError, match=r"batch_norm: momentum must be in \[0.0, 1.0\]"):
        F.batch_norm(x, None, None, training=True, momentum=2)


def test_zero_dimensional_linear_input_is_named():
    with pytest.raises(ValueError, match="linear: input must have at least 1 dimension"):
        F.linear(Tensor(np.float32(1)), _t((2, 1), "float32"))
