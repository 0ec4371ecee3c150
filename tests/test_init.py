"""Initializers: empirical moments on large tensors against the formulas (the He/PReLU paper's
``0.5 * (1 + a^2) * n * Var[w] = 1`` for every mode and slope), fans, gains, dtype/device,
determinism from minidl.random; PyTorch's fans and gains as an extra cross-check."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minidl
from minidl.nn import Parameter, init

from conftest import require

CONV = (256, 128, 3, 3)      # fan_in = 128*9 = 1152, fan_out = 256*9 = 2304; 294,912 weights
LINEAR = (512, 1024)         # fan_in = 1024, fan_out = 512
FANS = {CONV: (1152, 2304), LINEAR: (1024, 512)}
# the sample variance of n draws has relative std sqrt(2/n) (normal) ~ 0.3% here: allow 3%
RTOL = 0.03


def _p(shape, dtype=np.float32, device="cpu"):
    return Parameter(minidl.Tensor(np.zeros(shape, dtype=dtype), device=device).data)


def _var(t):
    return float(np.var(t.numpy().astype(np.float64)))


def _mean(t):
    return float(np.mean(t.numpy().astype(np.float64)))


@pytest.mark.parametrize("shape", [CONV, LINEAR])
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
@pytest.mark.parametrize("a", [0.0, 0.25, 0.681, 1.0, math.sqrt(5)])
@pytest.mark.parametrize("fn", ["kaiming_normal_", "kaiming_uniform_"])
def test_kaiming_satisfies_the_prelu_paper_condition(shape, mode, a, fn):
    """0.5 * (1 + a^2) * n * Var[w] = 1 with n = k*k*c (fan_in) or k*k*d (fan_out)."""
    minidl.manual_seed(1)
    t = getattr(init, fn)(_p(shape), a=a, mode=mode)
    n = FANS[shape][0 if mode == "fan_in" else 1]
    assert 0.5 * (1 + a * a) * n * _var(t) == pytest.approx(1.0, rel=RTOL)
    assert abs(_mean(t)) < 4 * math.sqrt(_var(t) / t.numel())
    if fn == "kaiming_uniform_":
        bound = math.sqrt(3.0 * 2.0 / ((1 + a * a) * n))
        assert np.abs(t.numpy()).max() <= bound and np.abs(t.numpy()).max() > 0.99 * bound


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_kaiming_relu_ignores_a(mode):
    minidl.manual_seed(2)
    t = init.kaiming_normal_(_p(CONV), a=0.9, mode=mode, nonlinearity="relu")
    n = FANS[CONV][0 if mode == "fan_in" else 1]
    assert _var(t) == pytest.approx(2.0 / n, rel=RTOL)


def test_kaiming_linear_nonlinearity_is_xavier_linear_case():
    # gain 1: n * Var[w] = 1 (the a = 1 case of the PReLU condition)
    minidl.manual_seed(3)
    t = init.kaiming_normal_(_p(LINEAR), nonlinearity="linear")
    assert 1024 * _var(t) == pytest.approx(1.0, rel=RTOL)


@pytest.mark.parametrize("shape", [CONV, LINEAR])
@pytest.mark.parametrize("gain", [1.0, math.sqrt(2.0), 5.0 / 3])
def test_xavier(shape, gain):
    fi, fo = FANS[shape]
    minidl.manual_seed(4)
    t = init.xavier_normal_(_p(shape), gain=gain)
    assert _var(t) == pytest.approx(gain ** 2 * 2.0 / (fi + fo), rel=RTOL)
    t = init.xavier_uniform_(_p(shape), gain=gain)
    b = gain * math.sqrt(6.0 / (fi + fo))
    assert _var(t) == pytest.approx(b * b / 3.0, rel=RTOL)
    assert np.abs(t.numpy()).max() <= b


def test_normal_uniform_constant():
    minidl.manual_seed(5)
    t = init.normal_(_p(LINEAR), mean=0.5, std=0.01)  # AlexNet's N(0, 0.01^2), shifted
    assert math.sqrt(_var(t)) == pytest.approx(0.01, rel=RTOL)
    assert _mean(t) == pytest.approx(0.5, abs=1e-4)
    t = init.uniform_(_p(LINEAR), -2.0, 1.0)
    assert _var(t) == pytest.approx(9.0 / 12, rel=RTOL)
    assert _mean(t) == pytest.approx(-0.5, abs=0.01)
    assert t.numpy().min() >= -2.0 and t.numpy().max() < 1.0
    b = _p((7,))
    assert np.all(init.constant_(b, 1.0).numpy() == 1.0)  # AlexNet's biases of 1
    assert np.all(init.zeros_(b).numpy() == 0.0)
    assert np.all(init.ones_(b).numpy() == 1.0)


def test_keeps_dtype_device_and_identity(device):
    for dtype in (np.float32, np.float64):
        p = _p((16, 8, 3, 3), dtype=dtype, device=device)
        out = init.kaiming_normal_(p, a=0.25)
        assert out is p and p.dtype == dtype and p.device == device and p.requires_grad
        init.constant_(p, 2.0)
        assert p.dtype == dtype and p.device == device


def test_draws_from_minidl_random():
    minidl.manual_seed(7)
    a = init.kaiming_uniform_(_p((8, 4))).numpy()
    b = init.kaiming_uniform_(_p((8, 4))).numpy()
    minidl.manual_seed(7)
    np.testing.assert_array_equal(init.kaiming_uniform_(_p((8, 4))).numpy(), a)
    assert not np.array_equal(a, b)


def test_fans_and_errors():
    assert init._calculate_fan_in_and_fan_out(_p(CONV)) == FANS[CONV]
    assert init._calculate_fan_in_and_fan_out(_p(LINEAR)) == FANS[LINEAR]
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.kaiming_normal_(_p((5,)))
    with pytest.raises(ValueError, match="mode"):
        init.kaiming_normal_(_p((5, 5)), mode="fan_avg")
    with pytest.raises(ValueError, match="nonlinearity"):
        init.calculate_gain("swish")


def test_gains_by_hand():
    assert init.calculate_gain("linear") == 1.0
    assert init.calculate_gain("conv2d") == 1.0
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01 ** 2)))
    assert init.calculate_gain("leaky_relu", 0.25) == pytest.approx(math.sqrt(2 / 1.0625))
    assert init.calculate_gain("leaky_relu", 0) == pytest.approx(math.sqrt(2))


# -- PyTorch cross-check (extra) -----------------------------------------------------------------

@given(shape=st.lists(st.integers(1, 6), min_size=2, max_size=5))
def test_fans_match_torch(shape):
    torch = require("torch")
    ours = init._calculate_fan_in_and_fan_out(_p(tuple(shape)))
    theirs = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(*shape))
    assert ours == theirs


@pytest.mark.parametrize("nl,param", [("linear", None), ("sigmoid", None), ("tanh", None),
                                      ("relu", None), ("leaky_relu", None),
                                      ("leaky_relu", 0.25), ("selu", None)])
def test_gains_match_torch(nl, param):
    torch = require("torch")
    assert init.calculate_gain(nl, param) == pytest.approx(
        torch.nn.init.calculate_gain(nl, param), rel=1e-12)


def test_kaiming_uniform_bound_matches_torch():
    torch = require("torch")
    for a, mode in ((math.sqrt(5), "fan_in"), (0.25, "fan_out")):
        tt = torch.nn.init.kaiming_uniform_(torch.empty(*CONV), a=a, mode=mode)
        ours = init.kaiming_uniform_(_p(CONV), a=a, mode=mode)
        assert np.abs(ours.numpy()).max() == pytest.approx(tt.abs().max().item(), rel=1e-3)
        assert _var(ours) == pytest.approx(float(tt.double().var()), rel=RTOL)
