"""minidl.geometry: the one home of pairs, output sizes and the conv/pool geometries, and the
argument errors every user of it (functional, nn, the CUDA wrappers) reports through it."""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import minidl.functional as F
from minidl import Tensor, nn
from minidl.cuda import kernels as K
from minidl.geometry import (ConvGeometry, PoolGeometry, conv_geometry, conv_output_size, pair,
                             pool_geometry, pool_output_size, pool_window)


def test_pair_accepts_ints_numpy_ints_and_pairs():
    assert pair(3) == (3, 3)
    assert pair(np.int64(2)) == (2, 2)
    assert pair((2, 5)) == (2, 5)
    assert pair([4, 1]) == (4, 1)
    assert pair(np.array([1, 7])) == (1, 7)
    assert all(type(v) is int for v in pair((np.int32(2), np.int16(3))))


@pytest.mark.parametrize("bad", [2.5, (2, 2.5), "ab", None, (1.0, 1.0)])
def test_pair_rejects_non_integers_with_a_type_error_naming_the_argument(bad):
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair of ints"):
        pair(bad, "kernel_size")


def test_pair_rejects_wrong_lengths_and_values_below_the_minimum():
    with pytest.raises(ValueError, match=r"stride must be an int or a pair.*3 values"):
        pair((1, 2, 3), "stride")
    with pytest.raises(ValueError, match=r"kernel_size must be >= 1, got 0"):
        pair(0, "kernel_size", 1)
    with pytest.raises(ValueError, match=r"padding must be >= 0, got \(1, -1\)"):
        pair((1, -1), "padding", 0)
    assert pair(0, "padding", 0) == (0, 0)


@given(size=st.integers(1, 40), k=st.integers(1, 7), s=st.integers(1, 5), p=st.integers(0, 4),
       d=st.integers(1, 4))
def test_conv_output_size_counts_the_windows_that_fit(size, k, s, p, d):
    # brute force: window i starts at i*s in the padded input and spans d*(k-1)+1 elements
    span = d * (k - 1) + 1
    count = sum(1 for i in range(size + 2 * p + 1) if i * s + span <= size + 2 * p)
    # the formula goes to 0 or below when nothing fits (conv_geometry then raises)
    assert max(conv_output_size(size, k, s, p, d), 0) == count


@given(size=st.integers(1, 40), k=st.integers(1, 7), s=st.integers(1, 5),
       ceil_mode=st.booleans(), data=st.data())
def test_pool_output_size_counts_windows(size, k, s, ceil_mode, data):
    p = data.draw(st.integers(0, k // 2))
    assume(size + 2 * p >= k)  # pool_geometry rejects windows larger than the padded input
    # floor: windows lying inside the padded input (length n); ceil: also a partial window
    # when the last full one stops short of the end, as long as it starts inside the input
    # or its left padding (before size + p)
    n = size + 2 * p
    starts = range(0, n, s)
    full = sum(1 for i in starts if i + k <= n)
    partial = sum(1 for i in starts if i + k > n and i - s + k < n and i < size + p)
    assert pool_output_size(size, k, s, p, ceil_mode) == full + (min(partial, 1) * ceil_mode)


def test_conv_geometry_is_named():
    g = conv_geometry("conv2d", (2, 3, 10, 9), (3, 2), stride=(2, 1), padding=(1, 0),
                      dilation=(1, 2))
    assert isinstance(g, ConvGeometry)
    assert (g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw) == (3, 2, 2, 1, 1, 0, 1, 2)
    assert g.output_size == (g.oh, g.ow) == (5, 7)
    assert (g.kernel_size, g.stride, g.padding, g.dilation) == ((3, 2), (2, 1), (1, 0), (1, 2))


def test_pool_geometry_is_named_and_stride_defaults_to_the_window():
    g = pool_geometry("max_pool2d", (2, 3, 7, 8), 3, None, 1, ceil_mode=True)
    assert isinstance(g, PoolGeometry)
    assert g.input_shape == (2, 3, 7, 8)
    assert (g.kernel_size, g.stride, g.padding) == ((3, 3), (3, 3), (1, 1))
    assert g.output_shape == (2, 3, g.oh, g.ow) == (2, 3, 3, 3)
    assert g.ceil_mode is True
    assert pool_window(2, (), 0) == ((2, 2), (2, 2), (0, 0))


# ---- every user reports bad geometry the same way -------------------------------------------

def _x(shape=(1, 2, 8, 8)):
    return Tensor(np.zeros(shape))


def _w():
    return Tensor(np.zeros((3, 2, 3, 3)))


CALLS = {
    "F.conv2d": lambda kw: F.conv2d(_x(), _w(), **kw),
    "F.im2col": lambda kw: F.im2col(_x(), kw.pop("kernel_size", 3), **kw),
    "F.max_pool2d": lambda kw: F.max_pool2d(_x(), kw.pop("kernel_size", 3), **kw),
    "F.avg_pool2d": lambda kw: F.avg_pool2d(_x(), kw.pop("kernel_size", 3), **kw),
    "nn.Conv2d": lambda kw: nn.Conv2d(2, 3, kw.pop("kernel_size", 3), **kw),
    "nn.MaxPool2d": lambda kw: nn.MaxPool2d(kw.pop("kernel_size", 3), **kw),
    "nn.AvgPool2d": lambda kw: nn.AvgPool2d(kw.pop("kernel_size", 3), **kw),
    "K.im2col": lambda kw: K.im2col(np.zeros((1, 2, 8, 8)), kw.pop("kernel_size", 3), **kw),
    "K.max_pool2d_forward": lambda kw: K.max_pool2d_forward(np.zeros((1, 2, 8, 8)),
                                                            kw.pop("kernel_size", 3), **kw),
}
BAD = [
    ("kernel_size", 2.5, TypeError, "kernel_size must be an int or a pair of ints"),
    ("kernel_size", 0, ValueError, "kernel_size must be >= 1"),
    ("stride", 0, ValueError, "stride must be >= 1"),
    ("stride", (1, 1.5), TypeError, "stride must be an int or a pair of ints"),
    ("padding", -1, ValueError, "padding must be >= 0"),
]
# F.conv2d takes its kernel size from the weight's shape
CASES = [(where, *bad) for where in sorted(CALLS) for bad in BAD
         if not (where == "F.conv2d" and bad[0] == "kernel_size")]


@pytest.mark.parametrize("where,arg,value,error,message", CASES)
def test_bad_geometry_is_reported_by_name_everywhere(where, arg, value, error, message):
    with pytest.raises(error, match=message):
        CALLS[where]({arg: value})


def test_pool_padding_rule_is_one_rule():
    for call in (lambda: F.max_pool2d(_x(), 2, padding=2), lambda: nn.MaxPool2d(2, padding=2),
                 lambda: K.max_pool2d_forward(np.zeros((1, 2, 8, 8)), 2, 2, 2)):
        with pytest.raises(ValueError, match=r"padding \(2, 2\) must be at most half the kernel "
                                             r"size \(2, 2\)"):
            call()
