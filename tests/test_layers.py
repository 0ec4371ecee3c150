"""minidl.nn layers: torch's attributes, layouts, default inits and reprs; gradient checks of each
layer in float64 (inputs and parameters); batch-norm buffers and modes; errors naming shapes."""
import math

import numpy as np
import pytest

import minidl
import minidl.functional as F
from minidl import Tensor, gradcheck, nn


def check_layer(layer, x, params=True):
    layer.double()
    ps = list(layer.parameters()) if params else []
    xt = Tensor(x, requires_grad=True)
    assert gradcheck(lambda x, *p: layer(x), [xt] + ps)


def test_all_layers_exported():
    for name in ["Conv2d", "Linear", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
                 "AdaptiveMaxPool2d", "SPP", "LocalResponseNorm", "ReLU", "LeakyReLU", "PReLU",
                 "Tanh", "Sigmoid", "BatchNorm1d", "BatchNorm2d", "Dropout", "Flatten",
                 "Identity"]:
        assert issubclass(getattr(nn, name), nn.Module), name


def test_conv2d_attributes_layout_init_repr():
    minidl.manual_seed(0)
    m = nn.Conv2d(4, 6, (3, 5), stride=2, padding=1, groups=2)
    assert m.weight.shape == (6, 2, 3, 5) and m.bias.shape == (6,)
    assert (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
            m.groups) == (4, 6, (3, 5), (2, 2), (1, 1), (1, 1), 2)
    bound = 1 / math.sqrt(2 * 3 * 5)       # kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in))
    w = m.weight.numpy()
    assert np.all(np.abs(w) <= bound) and w.std() > bound / 3
    assert np.all(np.abs(m.bias.numpy()) <= bound)
    assert m.weight.dtype == np.float32 and m.weight.requires_grad
    assert repr(m) == ("Conv2d(4, 6, kernel_size=(3, 5), stride=(2, 2), padding=(1, 1), "
                       "groups=2)")
    nb = nn.Conv2d(3, 8, 3, bias=False)
    assert nb.bias is None and [n for n, _ in nb.named_parameters()] == ["weight"]
    assert repr(nb) == "Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), bias=False)"
    with pytest.raises(ValueError, match="groups=4"):
        nn.Conv2d(6, 8, 3, groups=4)


def test_conv2d_layer_forward_gradcheck_and_errors():
    minidl.manual_seed(1)
    m = nn.Conv2d(4, 2, 3, stride=(1, 2), padding=1, dilation=(2, 1), groups=2)
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 5))
    ref = F.conv2d(Tensor(x.astype(np.float32)), m.weight, m.bias, (1, 2), 1, (2, 1), 2)
    np.testing.assert_allclose(m(Tensor(x.astype(np.float32))).numpy(), ref.numpy())
    check_layer(m, x)
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\), got shape \(2, 3, 5, 5\)"):
        m(Tensor(np.zeros((2, 3, 5, 5))))


def test_linear_attributes_init_and_gradcheck():
    minidl.manual_seed(2)
    m = nn.Linear(10, 3)
    assert m.weight.shape == (3, 10) and m.bias.shape == (3,)
    assert np.all(np.abs(m.weight.numpy()) <= 1 / math.sqrt(10))
    assert np.all(np.abs(m.bias.numpy()) <= 1 / math.sqrt(10))
    assert repr(m) == "Linear(in_features=10, out_features=3, bias=True)"
    assert nn.Linear(2, 2, bias=False).bias is None
    check_layer(m, np.random.default_rng(0).standard_normal((4, 10)))


def test_pool_layers():
    x = np.random.default_rng(0).permutation(np.linspace(-1, 1, 2 * 2 * 7 * 7)).reshape(2, 2, 7, 7)
    mp = nn.MaxPool2d(3, 2)
    assert mp.stride == 3 - 1 and nn.MaxPool2d(2).stride == 2
    np.testing.assert_array_equal(mp(Tensor(x)).numpy(), F.max_pool2d(Tensor(x), 3, 2).numpy())
    assert repr(mp) == "MaxPool2d(kernel_size=3, stride=2, padding=0, dilation=1, ceil_mode=False)"
    check_layer(nn.MaxPool2d(3, 2, padding=1, ceil_mode=True), x, params=False)
    check_layer(nn.AvgPool2d(2, 1, count_include_pad=False), x, params=False)
    assert repr(nn.AvgPool2d(2)) == "AvgPool2d(kernel_size=2, stride=2, padding=0)"
    assert nn.AdaptiveAvgPool2d(1)(Tensor(x)).shape == (2, 2, 1, 1)
    assert nn.AdaptiveMaxPool2d((3, 2))(Tensor(x)).shape == (2, 2, 3, 2)
    spp = nn.SPP((4, 2, 1))
    assert spp(Tensor(x)).shape == (2, spp.output_features(2)) == (2, 42)
    check_layer(nn.SPP((3, 1)), x[:1], params=False)


def test_lrn_layer_uses_paper_alpha():
    m = nn.LocalResponseNorm(5)
    assert (m.size, m.alpha, m.beta, m.k) == (5, 1e-4, 0.75, 2.0)
    assert repr(m) == "LocalResponseNorm(5, alpha=0.0001, beta=0.75, k=2.0)"
    x = np.random.default_rng(0).standard_normal((2, 6, 3, 3)) * 20
    m2 = nn.LocalResponseNorm(3, alpha=0.5, beta=0.75, k=1.0)
    np.testing.assert_allclose(m2(Tensor(x)).numpy(),
                               F.local_response_norm(Tensor(x), 3, 0.5, 0.75, 1.0).numpy())
    check_layer(m2, x[:1, :4, :2, :2], params=False)


def test_prelu_layer():
    m = nn.PReLU()
    assert m.weight.shape == (1,) and m.weight.numpy()[0] == np.float32(0.25)
    mc = nn.PReLU(3, init=0.1)
    assert mc.weight.shape == (3,) and np.allclose(mc.weight.numpy(), 0.1)
    assert repr(mc) == "PReLU(num_parameters=3)"
    x = np.random.default_rng(0).standard_normal((2, 3, 3, 3))
    x = np.sign(x) * (np.abs(x) + 0.1)
    check_layer(m, x)
    check_layer(mc, x)
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 4, 3, 3\)"):
        mc(Tensor(np.zeros((2, 4, 3, 3))))


def test_activation_layers():
    x = np.random.default_rng(0).standard_normal((3, 4)) + 0.05
    np.testing.assert_array_equal(nn.ReLU()(Tensor(x)).numpy(), np.maximum(x, 0))
    np.testing.assert_allclose(nn.Tanh()(Tensor(x)).numpy(), np.tanh(x))
    np.testing.assert_allclose(nn.Sigmoid()(Tensor(x)).numpy(), 1 / (1 + np.exp(-x)))
    np.testing.assert_allclose(nn.LeakyReLU(0.2)(Tensor(x)).numpy(), np.where(x > 0, x, 0.2 * x))
    for m in (nn.Tanh(), nn.Sigmoid(), nn.LeakyReLU(0.1)):
        check_layer(m, x, params=False)


def test_batchnorm2d_buffers_modes_and_gradcheck():
    bn = nn.BatchNorm2d(3)
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]
    assert [n for n, _ in bn.named_buffers()] == ["running_mean", "running_var",
                                                  "num_batches_tracked"]
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var",
                                     "num_batches_tracked"]
    np.testing.assert_array_equal(bn.weight.numpy(), 1)
    np.testing.assert_array_equal(bn.running_var.numpy(), 1)
    assert repr(bn) == "BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, " \
                       "track_running_stats=True)"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 2, 2)).astype(np.float32) * 2 + 3
    y = bn(Tensor(x)).numpy()
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    mu = x.mean(axis=(0, 2, 3))
    var_unbiased = x.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.1 * mu, rtol=1e-5)
    np.testing.assert_allclose(bn.running_var.numpy(), 0.9 + 0.1 * var_unbiased, rtol=1e-5)
    assert int(bn.num_batches_tracked.item()) == 1
    bn.eval()
    ye = bn(Tensor(x)).numpy()
    s = (1, 3, 1, 1)
    ref = (x - bn.running_mean.numpy().reshape(s)) / np.sqrt(bn.running_var.numpy().reshape(s)
                                                             + 1e-5)
    np.testing.assert_allclose(ye, ref, rtol=1e-5, atol=1e-5)
    assert int(bn.num_batches_tracked.item()) == 1            # eval does not count
    check_layer(nn.BatchNorm2d(3), x.astype(np.float64))
    check_layer(nn.BatchNorm2d(3).eval(), x.astype(np.float64))
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3\).*\(4, 2, 2, 2\)"):
        bn(Tensor(np.zeros((4, 2, 2, 2))))


def test_batchnorm1d_momentum_none_affine_false_no_tracking():
    rng = np.random.default_rng(1)
    x1, x2 = rng.standard_normal((5, 2)), rng.standard_normal((5, 2)) + 1
    bn = nn.BatchNorm1d(2, momentum=None, affine=False).double()
    assert bn.weight is None and list(bn.parameters()) == []
    bn(Tensor(x1))
    bn(Tensor(x2))                                  # cumulative average of the batch means
    np.testing.assert_allclose(bn.running_mean.numpy(), (x1.mean(0) + x2.mean(0)) / 2)
    nt = nn.BatchNorm1d(2, track_running_stats=False).double()
    assert nt.running_mean is None and list(nt.state_dict()) == ["weight", "bias"]
    nt.eval()
    y = nt(Tensor(x1)).numpy()                      # no running stats: batch statistics
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-12)
    check_layer(nn.BatchNorm1d(2), x1)
    check_layer(nn.BatchNorm1d(2), rng.standard_normal((3, 2, 4)))


def test_dropout_flatten_identity():
    d = nn.Dropout(0.5)
    x = Tensor(np.ones((10, 10)))
    minidl.manual_seed(0)
    assert np.any(d(x).numpy() == 0)
    d.eval()
    assert d(x) is x
    assert repr(d) == "Dropout(p=0.5, inplace=False)"
    f = nn.Flatten()
    assert f(Tensor(np.zeros((2, 3, 4, 5)))).shape == (2, 60)
    assert nn.Flatten(0, 1)(Tensor(np.zeros((2, 3, 4)))).shape == (6, 4)
    assert repr(f) == "Flatten(start_dim=1, end_dim=-1)"
    assert nn.Identity(54, unused=1)(x) is x


def test_dropout_inplace_is_refused_not_ignored():
    with pytest.raises(NotImplementedError, match="inplace=True"):
        nn.Dropout(0.5, inplace=True)
    assert "inplace=False" in repr(nn.Dropout(0.5))


def test_small_alexnet_like_stack_trains_one_step():
    minidl.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU(), nn.LocalResponseNorm(5),
        nn.MaxPool2d(3, 2), nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.PReLU(8),
        nn.BatchNorm2d(8), nn.SPP((2, 1)), nn.Dropout(0.5), nn.Linear(40, 4))
    x = Tensor(np.random.default_rng(0).standard_normal((3, 3, 17, 17)).astype(np.float32))
    target = np.array([0, 1, 3])
    minidl.manual_seed(1)                 # the same dropout mask before and after the step
    loss = F.cross_entropy(net(x), target)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
        assert np.all(np.isfinite(p.grad.numpy())), name
    with minidl.no_grad():
        for p in net.parameters():
            p.data -= 0.05 * p.grad.data
        minidl.manual_seed(1)
        after = F.cross_entropy(net(x), target).item()
    assert after < loss.item() - 0.01, (loss.item(), after)   # the step lowered the loss
    net.eval()
    assert net(x).shape == (3, 4)


def test_dropout_flatten_identity_gradcheck():
    x = np.random.default_rng(3).standard_normal((2, 3, 2, 2))
    check_layer(nn.Flatten(), x, params=False)
    check_layer(nn.Identity(), x, params=False)
    d = nn.Dropout(0.3)

    def fn(x):
        minidl.manual_seed(5)
        return d(x)
    assert gradcheck(fn, [Tensor(x, requires_grad=True)])
