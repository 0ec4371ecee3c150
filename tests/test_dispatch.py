"""The CPU/GPU split of the autograd Functions: each op's ``forward_cuda``/``backward_cuda``
(the CUDA kernels' path) beside its NumPy ``forward``/``backward``.

Without a GPU the GPU path is exercised through the kernels' CPU emulation: the launch wrappers
of :mod:`minidl.cuda.kernels` run the same .cu source on NumPy arrays, so calling a Function's
``forward_cuda``/``backward_cuda`` on NumPy arrays checks that it hands the kernels the right
geometry and arguments; its results must match the NumPy path's.
"""
import numpy as np
import pytest

from minidl import nn
from minidl.functional.activation import PReLUFunction
from minidl.functional.conv import Col2ImFunction, Conv2dFunction, Im2ColFunction
from minidl.functional.norm import LocalResponseNormFunction
from minidl.functional.pooling import AvgPool2dFunction, MaxPool2dFunction
from minidl.geometry import conv_geometry, pool_geometry
from minidl.tensor import Function


def _run(cls, path, arrays, params, gy_shape_from_y, needs, seed=1):
    fn = cls()
    fn.needs_input_grad = needs
    forward = fn.forward if path == "numpy" else fn.forward_cuda
    backward = fn.backward if path == "numpy" else fn.backward_cuda
    y = forward(*arrays, **params)
    gy = np.random.default_rng(seed).standard_normal(gy_shape_from_y(y))
    return y, backward(gy)


def _both(cls, arrays, params, needs, out=lambda y: y.shape):
    ref = _run(cls, "numpy", arrays, params, out, needs)
    emu = _run(cls, "cuda", arrays, params, out, needs)
    return ref, emu


def _close(a, b):
    if isinstance(a, tuple):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            _close(u, v)
    elif a is None:
        assert b is None
    else:
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_conv2d_cuda_path_matches_numpy(rng):
    x = rng.standard_normal((2, 4, 7, 6))
    w = rng.standard_normal((6, 2, 3, 2))
    b = rng.standard_normal(6)
    geo = conv_geometry("conv2d", x.shape, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    (y0, g0), (y1, g1) = _both(Conv2dFunction, (x, w, b), dict(geo=geo, groups=2),
                               (True, True, True))
    _close(y0, y1)
    _close(g0, g1)


def test_im2col_col2im_cuda_paths_match_numpy(rng):
    x = rng.standard_normal((2, 3, 6, 5))
    geo = conv_geometry("im2col", x.shape, (2, 3), stride=(1, 2), padding=(1, 0),
                        dilation=(2, 1))
    (c0, g0), (c1, g1) = _both(Im2ColFunction, (x,), dict(geo=geo), (True,))
    _close(c0, c1)
    _close(g0, g1)
    (x0, h0), (x1, h1) = _both(Col2ImFunction, (c0,), dict(output_size=(6, 5), geo=geo),
                               (True,))
    _close(x0, x1)
    _close(h0, h1)


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_pooling_cuda_paths_match_numpy(rng, ceil_mode):
    x = rng.standard_normal((2, 3, 7, 8))
    geo = pool_geometry("max_pool2d", x.shape, (3, 2), (2, 2), (1, 1), ceil_mode)
    (y0, g0), (y1, g1) = _both(MaxPool2dFunction, (x,), dict(geo=geo), (True,))
    _close(y0, y1)
    _close(g0, g1)
    for cip in (True, False):
        (y0, g0), (y1, g1) = _both(AvgPool2dFunction, (x,),
                                   dict(geo=geo, count_include_pad=cip), (True,))
        _close(y0, y1)
        _close(g0, g1)


def test_lrn_and_prelu_cuda_paths_match_numpy(rng):
    x = rng.standard_normal((2, 6, 3, 4))
    (y0, g0), (y1, g1) = _both(LocalResponseNormFunction, (x,),
                               dict(size=4, alpha=1e-2, beta=0.75, k=2.0), (True,))
    _close(y0, y1)
    _close(g0, g1)
    for a in (rng.standard_normal(6), np.array([0.25])):
        for needs in ((True, True), (True, False)):
            (y0, g0), (y1, g1) = _both(PReLUFunction, (x, a), {}, needs)
            _close(y0, y1)
            _close(g0[0], g1[0])
            if needs[1]:
                _close(g0[1], g1[1])
            else:
                assert g1[1] is None


def _subclasses(cls):
    out = set()
    for c in cls.__subclasses__():
        out |= {c} | _subclasses(c)
    return out


def test_autograd_nodes_do_not_share_names_with_modules():
    functions = {c.__name__ for c in _subclasses(Function) if c.__module__.startswith("minidl.")}
    modules = {name for name, obj in vars(nn).items()
               if isinstance(obj, type) and issubclass(obj, nn.Module)}
    assert len(functions) > 30 and "Conv2d" in modules
    assert not functions & modules
