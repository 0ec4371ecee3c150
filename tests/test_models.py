"""minidl.models: parameter counts against the papers' layer tables, output shapes, and a
forward + backward of every model at a small input size.

The expected parameter counts are computed here from the layer tables with plain arithmetic
(kernel sizes and channel counts written out), not by asking the models, and checked against
the published figures (torchvision's counts for the ImageNet ResNets, the issue's AlexNet
figures, Table 6's rounded ResNet sizes).
"""
import numpy as np
import pytest

import minidl
import minidl.functional as F
from minidl import models, nn
from minidl.models.alexnet import alexnet_feature_size


# ---------------------------------------------------------------------------------------------
# independent arithmetic from the tables

def conv(cin, cout, k, groups=1, bias=True):
    return cout * (cin // groups) * k * k + (cout if bias else 0)


def fc(cin, cout):
    return cin * cout + cout


def bn(c):
    return 2 * c  # weight and bias; running statistics are buffers


def alexnet_table_count(towers, width=1.0, num_classes=1000, side=6):
    g = towers
    c = [int(round(n * width / g)) * g for n in (96, 256, 384, 384, 256, 4096)]
    return (conv(3, c[0], 11) + conv(c[0], c[1], 5, g) + conv(c[1], c[2], 3)
            + conv(c[2], c[3], 3, g) + conv(c[3], c[4], 3, g)
            + fc(c[4] * side * side, c[5]) + fc(c[5], c[5]) + fc(c[5], num_classes))


def resnet_table_count(blocks, bottleneck, num_classes=1000):
    total = conv(3, 64, 7, bias=False) + bn(64)
    cin = 64
    for n, c in zip(blocks, (64, 128, 256, 512)):
        for _ in range(n):
            if bottleneck:
                out = 4 * c
                total += conv(cin, c, 1, bias=False) + bn(c) + conv(c, c, 3, bias=False) + bn(c)
                total += conv(c, out, 1, bias=False) + bn(out)
            else:
                out = c
                total += conv(cin, c, 3, bias=False) + bn(c) + conv(c, c, 3, bias=False) + bn(c)
            if cin != out:  # option B: projection where the dimensions change
                total += conv(cin, out, 1, bias=False) + bn(out)
            cin = out
    return total + fc(cin, num_classes)


def cifar_table_count(depth):
    n = (depth - 2) // 6
    total = conv(3, 16, 3, bias=False) + bn(16)
    cin = 16
    for c in (16, 32, 64):
        for _ in range(n):
            total += conv(cin, c, 3, bias=False) + bn(c) + conv(c, c, 3, bias=False) + bn(c)
            cin = c
    return total + fc(64, 10)


def prelu_table_count(stem, stages, spp_levels, fc_width=4096, num_classes=1000,
                      slopes=None):
    """stem (cout, k), stages [(n, cout, k)]; slopes: None | 'shared' | 'channel'."""
    def act(c):
        return 0 if slopes is None else (1 if slopes == "shared" else c)
    total = conv(3, stem[0], stem[1]) + act(stem[0])
    cin = stem[0]
    for n, c, k in stages:
        for _ in range(n):
            total += conv(cin, c, k) + act(c)
            cin = c
    bins = sum(level * level for level in spp_levels)
    total += fc(cin * bins, fc_width) + act(fc_width) + fc(fc_width, fc_width) + act(fc_width)
    return total + fc(fc_width, num_classes)


# ---------------------------------------------------------------------------------------------
# AlexNet

@pytest.fixture(scope="module")
def full_alexnet():
    return models.alexnet()


@pytest.mark.slow  # the two full-size AlexNets (61M and 62M parameters)
def test_alexnet_parameter_counts_match_the_table_and_the_issue(full_alexnet):
    assert alexnet_table_count(2) == 60_965_224
    assert alexnet_table_count(1) == 62_378_344
    assert full_alexnet.num_parameters() == 60_965_224
    assert models.alexnet(towers=1).num_parameters() == 62_378_344


@pytest.mark.slow  # the full-size AlexNet
def test_alexnet_layer_shapes_follow_the_paper(full_alexnet):
    m = full_alexnet
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert [tuple(c.weight.shape) for c in convs] == [
        (96, 3, 11, 11), (256, 48, 5, 5), (384, 256, 3, 3), (384, 192, 3, 3), (256, 192, 3, 3)]
    lins = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    assert [tuple(lin.weight.shape) for lin in lins] == [(4096, 9216), (4096, 4096), (1000, 4096)]
    assert alexnet_feature_size(227) == 6


def test_alexnet_paper_init():
    minidl.manual_seed(0)
    m = models.alexnet(width=0.25, num_classes=10)
    layers = [mod for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    bias_one = [False, True, False, True, True, True, True, False]  # conv2/4/5, fc6/7
    for layer, one in zip(layers, bias_one):
        np.testing.assert_array_equal(layer.bias.numpy(), 1.0 if one else 0.0)
        w = layer.weight.numpy()
        assert abs(w.std() - 0.01) < 0.001, w.std()
        assert abs(w.mean()) < 0.001


def test_alexnet_he_init_std():
    minidl.manual_seed(0)
    m = models.alexnet(init="he", width=0.5)
    w = m.features[0].weight.numpy()          # conv1: fan_in 3*11*11
    assert abs(w.std() - np.sqrt(2.0 / 363)) / np.sqrt(2.0 / 363) < 0.02
    for mod in m.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            assert not mod.bias.numpy().any()


def test_alexnet_width_and_towers():
    half = models.alexnet(towers=1, width=0.5, num_classes=10)
    assert half.num_parameters() == alexnet_table_count(1, 0.5, 10)
    small = models.alexnet(width=0.25, input_size=111, num_classes=10)
    assert small.num_parameters() == alexnet_table_count(2, 0.25, 10, side=2)


def test_alexnet_dropout_follows_fc6_and_fc7_relus():
    """The paper and Caffe drop the OUTPUTS of fc6 and fc7 (after their ReLUs); nothing is
    dropped before fc6 or between fc8 and the loss."""
    m = models.alexnet(width=0.25, input_size=67, num_classes=10)
    kinds = [type(mod).__name__ for mod in m.classifier]
    assert kinds == ["Flatten", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout",
                     "Linear"]
    assert [mod.p for mod in m.classifier if isinstance(mod, nn.Dropout)] == [0.5, 0.5]
    assert not any(isinstance(mod, nn.Dropout) for mod in m.features)


def test_alexnet_dropout_drops_fc7_outputs_in_training_only():
    """Functional check of the order with p=1: dropping fc6's and fc7's OUTPUTS leaves fc8 only
    its bias, exactly. (Dropout before fc6 and fc7, torchvision's order, would leave
    relu(fc7.bias) @ fc8.weight.T + fc8.bias instead.) In eval mode dropout is the identity."""
    minidl.manual_seed(0)
    m = models.alexnet(width=0.25, input_size=67, num_classes=10, init="he", dropout=1.0)
    for lin in m.fcs():
        nn.init.normal_(lin.bias, 0.0, 1.0)
    _, fc7, fc8 = m.fcs()
    x = minidl.Tensor(np.random.default_rng(0).standard_normal((2, 3, 67, 67)).astype("f4"))
    with minidl.no_grad():
        out = m.train()(x).numpy()
        evaluated = m.eval()(x).numpy()
    np.testing.assert_array_equal(out, np.broadcast_to(fc8.bias.numpy(), out.shape))
    torchvision_order = (np.maximum(fc7.bias.numpy(), 0) @ fc8.weight.numpy().T
                         + fc8.bias.numpy())
    assert not np.allclose(out[0], torchvision_order, atol=1e-3)
    assert not np.allclose(evaluated, out, atol=1e-3)


def alexnet_one_gpu_table_count(width=1.0, num_classes=1000, side=6):
    # footnote 2: conv1-conv4 at half the kernels (48, 128, 192, 192), conv5 and fcs whole
    c = [int(round(n * width)) for n in (48, 128, 192, 192, 256, 4096)]
    return (conv(3, c[0], 11) + conv(c[0], c[1], 5) + conv(c[1], c[2], 3)
            + conv(c[2], c[3], 3) + conv(c[3], c[4], 3)
            + fc(c[4] * side * side, c[5]) + fc(c[5], c[5]) + fc(c[5], num_classes))


@pytest.mark.slow  # the full-size one-GPU AlexNet
def test_alexnet_one_gpu_matches_footnote_2():
    assert alexnet_one_gpu_table_count() == 59_798_312
    m = models.alexnet_one_gpu()
    assert m.num_parameters() == 59_798_312
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert [tuple(c.weight.shape) for c in convs] == [
        (48, 3, 11, 11), (128, 48, 5, 5), (192, 128, 3, 3), (192, 192, 3, 3), (256, 192, 3, 3)]
    assert all(c.groups == 1 for c in convs)
    assert [tuple(lin.weight.shape) for lin in m.fcs()] == [(4096, 9216), (4096, 4096),
                                                           (1000, 4096)]
    small = models.alexnet_one_gpu(num_classes=10, width=0.25, input_size=67)
    assert small.num_parameters() == alexnet_one_gpu_table_count(0.25, 10, side=1)
    with pytest.raises(TypeError, match="towers"):
        models.alexnet_one_gpu(towers=2)


def test_alexnet_owt_is_torchvisions_layout():
    m = models.alexnet_owt()
    # torchvision AlexNet: 64-192-384-256-256, conv1 pad 2, 9216-4096-4096-1000
    count = (conv(3, 64, 11) + conv(64, 192, 5) + conv(192, 384, 3) + conv(384, 256, 3)
             + conv(256, 256, 3) + fc(9216, 4096) + fc(4096, 4096) + fc(4096, 1000))
    assert count == 61_100_840
    assert m.num_parameters() == count
    keys = [k for k in m.state_dict()]
    assert keys == [f"features.{i}.{w}" for i in (0, 3, 6, 8, 10) for w in ("weight", "bias")] \
        + [f"classifier.{i}.{w}" for i in (1, 4, 6) for w in ("weight", "bias")]
    assert m.features[0].padding == (2, 2)


def test_resnet_module_names_are_torchvisions():
    r18 = models.resnet18()
    keys = list(r18.state_dict())
    assert keys[:6] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean",
                        "bn1.running_var", "bn1.num_batches_tracked"]
    assert "layer2.0.downsample.0.weight" in keys and "layer2.0.downsample.1.running_var" in keys
    assert "layer1.0.downsample.0.weight" not in keys            # identity shortcut: none
    assert keys[-2:] == ["fc.weight", "fc.bias"]
    assert len(keys) == 122                                        # torchvision's resnet18
    r50 = models.resnet50()
    keys = list(r50.state_dict())
    assert len(keys) == 320                                        # torchvision's resnet50
    assert "layer4.2.conv3.weight" in keys and "layer4.2.bn3.num_batches_tracked" in keys
    assert "layer1.0.downsample.0.weight" in keys                 # 64 -> 256 channels


def test_bottleneck_stride_in_1x1_or_3x3():
    paper = models.resnet50(width=0.125)
    v15 = models.resnet50(width=0.125, stride_in_1x1=False)
    b, c = paper.layer2[0], v15.layer2[0]
    assert (b.conv1.stride, b.conv2.stride) == ((2, 2), (1, 1))
    assert (c.conv1.stride, c.conv2.stride) == ((1, 1), (2, 2))
    assert paper.num_parameters() == v15.num_parameters()
    x = minidl.Tensor(np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype("f4"))
    v15.load_state_dict(paper.state_dict())
    paper.eval(), v15.eval()
    assert paper(x).shape == v15(x).shape == (1, 1000)
    assert not np.allclose(paper(x).numpy(), v15(x).numpy())


@pytest.mark.slow  # builds, saves and reloads every model
def test_weights_argument_on_every_factory(tmp_path):
    builders = {
        "alexnet": dict(num_classes=10, width=0.125, input_size=67),
        "alexnet_one_gpu": dict(num_classes=10, width=0.125, input_size=67),
        "alexnet_owt": dict(num_classes=10, width=0.0625),
        "prelu_net14": dict(num_classes=10, width=0.0625, activation="prelu"),
        "prelu_net30": dict(num_classes=10, width=0.0625),
        "prelu_net_a": dict(num_classes=10, width=0.0625),
        "prelu_net_b": dict(num_classes=10, width=0.0625),
        "prelu_net_c": dict(num_classes=10, width=0.03125),
        "resnet18": dict(num_classes=10, width=0.125), "resnet34": dict(num_classes=10,
                                                                       width=0.125),
        "resnet50": dict(num_classes=10, width=0.125), "resnet101": dict(num_classes=10,
                                                                         width=0.0625),
        "resnet152": dict(num_classes=10, width=0.0625), "cifar_resnet": dict(depth=8),
        "resnet20": {}, "resnet32": {}, "resnet44": {}, "resnet56": {}, "resnet110": {},
        "resnet1202": {},
    }
    for name, kw in builders.items():
        fn = getattr(models, name)
        minidl.manual_seed(0)
        src = fn(**kw)
        path = tmp_path / f"{name}.safetensors"
        minidl.save(src.state_dict(), path)
        minidl.manual_seed(1)
        dst = fn(weights=path, **kw)
        for (k, a), (k2, b) in zip(src.state_dict().items(), dst.state_dict().items()):
            assert k == k2
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=f"{name} {k}")


def test_alexnet_ablation_switches():
    base = models.alexnet(width=0.25, input_size=127, num_classes=10)
    no_lrn = models.alexnet(width=0.25, input_size=127, num_classes=10, lrn=False)
    no_overlap = models.alexnet(width=0.25, input_size=127, num_classes=10, overlap_pool=False)
    assert any(isinstance(m, nn.LocalResponseNorm) for m in base.modules())
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in no_lrn.modules())
    pools = [m for m in no_overlap.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3
    x = minidl.Tensor(np.random.default_rng(0).standard_normal((2, 3, 127, 127))
                      .astype(np.float32))
    for m in (base, no_lrn, no_overlap):
        assert m(x).shape == (2, 10)


def test_alexnet_rejects_too_small_inputs():
    with pytest.raises(ValueError, match="too small"):
        models.alexnet(input_size=60)


def test_alexnet_two_towers_normalize_within_each_tower():
    """With towers=2 the LRN after conv1 sees only its own tower's channels: changing tower 2's
    activations leaves tower 1's normalized output unchanged."""
    m = models.alexnet(width=0.25, input_size=67, num_classes=10).eval()
    lrn = m.features[2]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1, 24, 5, 5)).astype(np.float32)
    b = a.copy()
    b[:, 12:] *= 10
    ya, yb = lrn(minidl.Tensor(a)).numpy(), lrn(minidl.Tensor(b)).numpy()
    np.testing.assert_allclose(ya[:, :12], yb[:, :12], rtol=1e-6)
    assert not np.allclose(ya[:, 12:], yb[:, 12:] / 10)


# ---------------------------------------------------------------------------------------------
# ResNets

@pytest.mark.parametrize("fn, blocks, bottleneck, published", [
    (models.resnet18, (2, 2, 2, 2), False, 11_689_512),
    pytest.param(models.resnet34, (3, 4, 6, 3), False, 21_797_672, marks=pytest.mark.slow),
    pytest.param(models.resnet50, (3, 4, 6, 3), True, 25_557_032, marks=pytest.mark.slow),
    pytest.param(models.resnet101, (3, 4, 23, 3), True, 44_549_160, marks=pytest.mark.slow),
    pytest.param(models.resnet152, (3, 8, 36, 3), True, 60_192_808, marks=pytest.mark.slow),
])
def test_imagenet_resnet_parameter_counts(fn, blocks, bottleneck, published):
    assert resnet_table_count(blocks, bottleneck) == published
    assert fn().num_parameters() == published


@pytest.mark.slow  # three full-width ResNet-18s
def test_resnet_shortcut_options_change_only_the_projections():
    a, b, c = (models.resnet18(shortcut=s).num_parameters() for s in "ABC")
    proj = lambda cin, cout: conv(cin, cout, 1, bias=False) + bn(cout)  # noqa: E731
    assert b - a == proj(64, 128) + proj(128, 256) + proj(256, 512)
    # C: a projection on every one of the 8 blocks
    assert c - a == (2 * proj(64, 64) + proj(64, 128) + proj(128, 128) + proj(128, 256)
                     + proj(256, 256) + proj(256, 512) + proj(512, 512))
    with pytest.raises(ValueError):
        models.resnet18(shortcut="D")


@pytest.mark.parametrize("depth, table6", [
    (20, 0.27e6), (32, 0.46e6), (44, 0.66e6), (56, 0.85e6), (110, 1.7e6),
    pytest.param(1202, 19.4e6, marks=pytest.mark.slow)])
def test_cifar_resnet_parameter_counts(depth, table6):
    expected = cifar_table_count(depth)
    assert abs(expected - table6) / table6 < 0.02   # Table 6's rounded sizes
    fn = getattr(models, f"resnet{depth}")
    assert fn().num_parameters() == expected
    assert fn(plain=True).num_parameters() == expected  # option A: no extra parameters


def test_cifar_resnet_exact_counts_from_the_issue():
    assert cifar_table_count(20) == 269_722
    assert cifar_table_count(110) == 1_727_962
    assert models.cifar_resnet(20).num_parameters() == 269_722


def test_cifar_resnet_rejects_bad_depth():
    with pytest.raises(ValueError, match="6n"):
        models.cifar_resnet(21)


def test_convs_before_bn_have_no_bias():
    for m in (models.resnet20(), models.resnet18()):
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d):
                assert mod.bias is None


def test_plain_and_residual_differ_only_by_the_shortcut():
    """Same seed, same parameters (option A has none): the state dicts are interchangeable,
    and the outputs differ only because of the shortcuts."""
    minidl.manual_seed(0)
    res = models.resnet20()
    minidl.manual_seed(0)
    plain = models.resnet20(plain=True)
    x = minidl.Tensor(np.random.default_rng(1).standard_normal((2, 3, 16, 16))
                      .astype(np.float32))
    res.eval(), plain.eval()
    assert not np.allclose(res(x).numpy(), plain(x).numpy())
    res.load_state_dict(plain.state_dict())  # identical keys: plain has the same parameters


def test_shortcut_a_zero_pads_channels_and_subsamples():
    from minidl.models.resnet import ShortcutA
    s = ShortcutA(2, 4, 2)
    x = np.arange(2 * 2 * 4 * 4, dtype=np.float32).reshape(2, 2, 4, 4)
    y = s(minidl.Tensor(x)).numpy()
    assert y.shape == (2, 4, 2, 2)
    np.testing.assert_array_equal(y[:, :2], x[:, :, ::2, ::2])
    assert not y[:, 2:].any()


# ---------------------------------------------------------------------------------------------
# PReLU nets

NET14 = ((64, 7), [(4, 128, 2), (6, 256, 2)], (6, 3, 2, 1))
NET30 = ((64, 7), [(4, 128, 2), (22, 256, 2)], (6, 3, 2, 1))
NET_A = ((96, 7), [(5, 256, 3), (5, 512, 3), (5, 512, 3)], (7, 3, 2, 1))
NET_B = ((96, 7), [(6, 256, 3), (6, 512, 3), (6, 512, 3)], (7, 3, 2, 1))
NET_C = ((96, 7), [(6, 384, 3), (6, 768, 3), (6, 896, 3)], (7, 3, 2, 1))


def _scaled(table, width):
    (c0, k0), stages, spp = table
    return ((int(round(c0 * width)), k0), [(n, int(round(c * width)), k) for n, c, k in stages],
            spp)


@pytest.mark.parametrize("fn, table, layers", [
    (models.prelu_net14, NET14, 14), (models.prelu_net30, NET30, 30),
    pytest.param(models.prelu_net_a, NET_A, 19, marks=pytest.mark.slow),
    pytest.param(models.prelu_net_b, NET_B, 22, marks=pytest.mark.slow),
    pytest.param(models.prelu_net_c, NET_C, 22, marks=pytest.mark.slow)])
def test_prelu_net_parameter_counts(fn, table, layers):
    """At a quarter width (the full-size nets hold 75M-330M parameters, seconds each to draw);
    the full-size 14-layer count is checked separately."""
    w = 0.25
    stem, stages, spp = _scaled(table, w)
    fcw = int(4096 * w)
    assert 1 + sum(n for n, _, _ in stages) + 3 == layers
    assert fn(width=w).num_parameters() == prelu_table_count(stem, stages, spp, fcw)
    assert fn(width=w, activation="prelu_shared").num_parameters() == \
        prelu_table_count(stem, stages, spp, fcw, slopes="shared")
    assert fn(width=w, activation="prelu").num_parameters() == \
        prelu_table_count(stem, stages, spp, fcw, slopes="channel")
    assert len(fn(width=w).weight_layers()) == layers


@pytest.mark.slow  # the full-size net (tens of millions of parameters)
def test_prelu_net14_full_size_count():
    stem, stages, spp = NET14
    assert models.prelu_net14().num_parameters() == prelu_table_count(stem, stages, spp)


def test_prelu_net14_map_sizes_and_same_padding():
    """224 -> conv1 109 -> pool 36 -> (2x2 convs keep 36) -> pool 18 -> (keep 18)."""
    m = models.prelu_net14(width=0.0625, num_classes=10).eval()
    sizes = {}
    for name, mod in m.layers.named_children():
        mod.register_forward_hook(lambda mod_, inp, out, name=name: sizes.__setitem__(
            name, out.shape))
    with minidl.no_grad():
        m(minidl.Tensor(np.zeros((1, 3, 224, 224), np.float32)))
    assert sizes["conv1"][2:] == (109, 109)
    assert sizes["pool1"][2:] == (36, 36)
    assert all(sizes[f"conv2_{i}"][2:] == (36, 36) for i in range(1, 5))
    assert sizes["pool2"][2:] == (18, 18)
    assert all(sizes[f"conv3_{i}"][2:] == (18, 18) for i in range(1, 7))
    assert sizes["spp"][1] == 16 * 50


def test_conv2x2_same_padding_alternates_sides():
    from minidl.models.prelu_nets import Conv2x2Same
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 0, 0] = 1.0
    for side, hit in (("br", (0, 0)), ("tl", (1, 1))):
        c = Conv2x2Same(1, 1, side=side)
        w = np.zeros((1, 1, 2, 2), np.float32)
        w[0, 0, 0, 0] = 1.0  # picks the top-left pixel of each window
        c.weight.data = w
        c.bias.data = np.zeros(1, np.float32)
        y = c(minidl.Tensor(x)).numpy()[0, 0]
        assert y.shape == (4, 4)
        assert y[hit] == 1.0 and y.sum() == 1.0


def test_prelu_init_std_he_vs_xavier():
    minidl.manual_seed(0)
    he = models.prelu_net14(init="he", width=0.25)
    xav = models.prelu_net14(init="xavier", width=0.25)
    he_p = models.prelu_net14(init="he", activation="prelu", width=0.25)
    n = 64 * 2 * 2  # fan_in of conv3_2 at width 0.25: 64 channels * 2 * 2
    get = lambda m: m.layers.conv3_2.weight.numpy().std()  # noqa: E731
    assert abs(get(he) - np.sqrt(2.0 / n)) / np.sqrt(2.0 / n) < 0.03
    assert abs(get(xav) - np.sqrt(1.0 / n)) / np.sqrt(1.0 / n) < 0.03
    want = np.sqrt(2.0 / ((1 + 0.25 ** 2) * n))
    assert abs(get(he_p) - want) / want < 0.03
    with pytest.raises(ValueError):
        models.prelu_net14(activation="swish")


def test_prelu_net_fc_std_overrides_the_fc_init_only():
    # the paper's footnote for [-128, 128] inputs: fc1/fc2 at std 0.01, fc3 at 0.001
    minidl.manual_seed(0)
    m = models.prelu_net_b(init="he", width=0.25, fc_std=(0.01, 0.01, 0.001))
    minidl.manual_seed(0)
    plain = models.prelu_net_b(init="he", width=0.25)
    for name, want in (("fc1", 0.01), ("fc2", 0.01), ("fc3", 0.001)):
        got = getattr(m.layers, name).weight.numpy().std()
        assert abs(got - want) / want < 0.05, (name, got)
    # the conv layers still follow the init rule
    n = 64 * 3 * 3   # fan_in of conv2_2 at width 0.25: 64 channels, 3x3
    got = m.layers.conv2_2.weight.numpy().std()
    assert abs(got - np.sqrt(2.0 / n)) / np.sqrt(2.0 / n) < 0.05
    assert plain.layers.fc3.weight.numpy().std() > 0.01
    for bad in ((0.01, 0.01), (0.01, 0.0, 0.001), (0.01, -1, 0.001)):
        with pytest.raises(ValueError, match="fc_std"):
            models.prelu_net_b(width=0.25, fc_std=bad)


def test_prelu_slopes_start_at_a_quarter():
    m = models.prelu_net14(activation="prelu", width=0.125)
    acts = m.activations()
    assert [name for name, _ in acts][:3] == ["conv1", "conv2_1", "conv2_2"]
    assert acts[-1][0] == "fc2"
    assert len(acts) == 13   # 11 conv + fc1 + fc2, as in Table 1
    for _, a in acts:
        np.testing.assert_allclose(a.weight.numpy(), 0.25)


# ---------------------------------------------------------------------------------------------
# forward + backward of every model at a small size

def _fwd_bwd(model, size, n=2):
    """Forward and backward (finite outputs and gradients for every parameter); then, in eval
    mode, the samples of a batch must not see each other: row 0 of the batch's output equals
    the output of sample 0 alone."""
    rng = np.random.default_rng(0)
    x = minidl.Tensor(rng.standard_normal((n, 3, size, size)).astype(np.float32))
    y = minidl.Tensor(rng.integers(0, 10, n))
    out = model(x)
    assert out.shape == (n, 10)
    assert np.isfinite(out.numpy()).all()
    F.cross_entropy(out, y).backward()
    params = list(model.parameters())
    assert params and all(p.grad is not None for p in params)
    assert all(np.isfinite(p.grad.numpy()).all() for p in params)
    model.eval()
    with minidl.no_grad():
        both = model(x).numpy()
        alone = model(x[:1]).numpy()
    np.testing.assert_allclose(alone[0], both[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, build, size", [
    ("alexnet", lambda: models.alexnet(num_classes=10, width=0.125, input_size=67), 67),
    ("prelu_net_a", lambda: models.prelu_net_a(num_classes=10, width=0.0625), 32),
    ("resnet20", lambda: models.resnet20(), 16),
    ("resnet50", lambda: models.resnet50(num_classes=10, width=0.25), 32),
])
def test_whole_model_gradient_is_first_order_correct(name, build, size):
    """In float64, a step along -grad sized to lower the loss by 1e-4 of itself lowers it by
    ``lr * |g|^2`` within 10%: the gradient of the whole model (every layer, BN in training
    mode, dropout with fixed masks) has the right direction and scale. (float32 cannot show
    this: steps that small are below the weights' rounding.)"""
    minidl.manual_seed(0)
    model = build().double().train()
    rng = np.random.default_rng(0)
    x = minidl.Tensor(rng.standard_normal((2, 3, size, size)))
    y = minidl.Tensor(rng.integers(0, 10, 2))
    minidl.manual_seed(11)                      # the same dropout masks in both forwards
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    params = list(model.parameters())
    l0 = loss.item()
    g2 = sum(float(np.sum(p.grad.numpy() ** 2)) for p in params)
    lr = 1e-4 * l0 / g2
    with minidl.no_grad():
        for p in params:
            p.data = p.data - lr * p.grad.data
        minidl.manual_seed(11)
        l1 = F.cross_entropy(model(x), y).item()
    assert 0.9 < (l0 - l1) / (lr * g2) < 1.1, (l0, l1, lr * g2)


SLOW = pytest.mark.slow


@pytest.mark.parametrize("name, build, size", [
    ("alexnet", lambda: models.alexnet(num_classes=10, width=0.125, input_size=67), 67),
    ("alexnet-1tower-ablations", lambda: models.alexnet(
        num_classes=10, towers=1, width=0.0625, input_size=67, init="he", lrn=False,
        overlap_pool=False), 67),
    ("prelu_net14", lambda: models.prelu_net14(num_classes=10, width=0.0625,
                                               activation="prelu"), 40),
    ("prelu_net30", lambda: models.prelu_net30(num_classes=10, width=0.0625,
                                               activation="prelu_shared"), 40),
    ("prelu_net_a", lambda: models.prelu_net_a(num_classes=10, width=0.0625), 32),
    ("prelu_net_b", lambda: models.prelu_net_b(num_classes=10, width=0.0625,
                                               init="xavier"), 32),
    ("prelu_net_c", lambda: models.prelu_net_c(num_classes=10, width=0.03125), 32),
    # the full-width ImageNet ResNets (and the deep narrow ones) take seconds each: slow
    pytest.param("resnet18", lambda: models.resnet18(num_classes=10), 32, marks=SLOW),
    pytest.param("resnet34", lambda: models.resnet34(num_classes=10, shortcut="A"), 32,
                 marks=SLOW),
    pytest.param("resnet50", lambda: models.resnet50(num_classes=10), 32, marks=SLOW),
    pytest.param("resnet101", lambda: models.resnet101(num_classes=10, shortcut="C",
                                                       width=0.25), 32, marks=SLOW),
    pytest.param("resnet152", lambda: models.resnet152(num_classes=10, width=0.25), 32,
                 marks=SLOW),
    ("resnet20", lambda: models.resnet20(), 16),
    ("resnet20-plain", lambda: models.resnet20(plain=True), 16),
    ("resnet32", lambda: models.resnet32(shortcut="B"), 16),
    ("resnet44", lambda: models.resnet44(), 8),
    ("resnet56", lambda: models.resnet56(), 8),
    ("resnet110", lambda: models.resnet110(), 8),
    pytest.param("resnet1202", lambda: models.resnet1202(), 4, marks=SLOW),
])
def test_forward_backward_every_model(name, build, size):
    minidl.manual_seed(0)
    _fwd_bwd(build().train(), size)


def test_model_state_dict_roundtrip():
    minidl.manual_seed(0)
    a = models.resnet20()
    minidl.manual_seed(1)
    b = models.resnet20()
    b.load_state_dict(a.state_dict())
    x = minidl.Tensor(np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32))
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
