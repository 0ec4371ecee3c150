"""torchvision's layouts: minidl's ResNets and alexnet_owt against the same architectures
written here in plain torch (torchvision's module names and layer order, no torchvision, no
download). Weights saved by torch.save load into minidl with strict=True and give the same eval
outputs; minidl.save -> torch.load -> the torch model gives the same outputs too.

The torch twins are written from torchvision's published architecture (BasicBlock/Bottleneck
with ``downsample``, stride in the bottleneck's 3x3 for "v1.5"), not from minidl's code.
Batch norm statistics and affine parameters are randomized so eval-mode BN is not an identity.
"""
import numpy as np
import pytest

import minidl
from minidl import models

from conftest import require

torch = require("torch")
tnn = torch.nn


class TBasic(tnn.Module):
    expansion = 1

    def __init__(self, cin, c, stride, downsample, stride_in_1x1):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, c, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(c)
        self.relu = tnn.ReLU()
        self.conv2 = tnn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(c)
        self.downsample = downsample

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class TBottleneck(tnn.Module):
    expansion = 4

    def __init__(self, cin, c, stride, downsample, stride_in_1x1):
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = tnn.Conv2d(cin, c, 1, s1, bias=False)
        self.bn1 = tnn.BatchNorm2d(c)
        self.conv2 = tnn.Conv2d(c, c, 3, s3, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(c)
        self.conv3 = tnn.Conv2d(c, 4 * c, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(4 * c)
        self.relu = tnn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class TResNet(tnn.Module):
    """torchvision.models.ResNet's layout; ``base`` channels, ``stem`` "imagenet" (7x7/2 +
    max-pool, four stages) or "cifar" (3x3, three stages)."""

    def __init__(self, block, layers, base, num_classes, stride_in_1x1=False, stem="imagenet"):
        super().__init__()
        if stem == "imagenet":
            self.conv1 = tnn.Conv2d(3, base[0], 7, 2, 3, bias=False)
            self.maxpool = tnn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = tnn.Conv2d(3, base[0], 3, 1, 1, bias=False)
            self.maxpool = tnn.Identity()
        self.bn1 = tnn.BatchNorm2d(base[0])
        self.relu = tnn.ReLU()
        cin = base[0]
        self.n_stages = len(layers)
        for i, (n, c) in enumerate(zip(layers, base)):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                out = c * block.expansion
                ds = None
                if stride != 1 or cin != out:
                    ds = tnn.Sequential(tnn.Conv2d(cin, out, 1, stride, bias=False),
                                        tnn.BatchNorm2d(out))
                blocks.append(block(cin, c, stride, ds, stride_in_1x1))
                cin = out
            setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.fc = tnn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.n_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TAlexNet(tnn.Module):
    """torchvision.models.AlexNet's layout (channels scaled by ``width``)."""

    def __init__(self, num_classes, width=1.0):
        super().__init__()
        c1, c2, c3, c4, c5, f = (max(1, round(n * width)) for n in (64, 192, 384, 256, 256, 4096))
        self.features = tnn.Sequential(
            tnn.Conv2d(3, c1, 11, 4, 2), tnn.ReLU(inplace=True), tnn.MaxPool2d(3, 2),
            tnn.Conv2d(c1, c2, 5, padding=2), tnn.ReLU(inplace=True), tnn.MaxPool2d(3, 2),
            tnn.Conv2d(c2, c3, 3, padding=1), tnn.ReLU(inplace=True),
            tnn.Conv2d(c3, c4, 3, padding=1), tnn.ReLU(inplace=True),
            tnn.Conv2d(c4, c5, 3, padding=1), tnn.ReLU(inplace=True), tnn.MaxPool2d(3, 2))
        self.avgpool = tnn.AdaptiveAvgPool2d((6, 6))
        self.classifier = tnn.Sequential(
            tnn.Dropout(0.5), tnn.Linear(c5 * 36, f), tnn.ReLU(inplace=True),
            tnn.Dropout(0.5), tnn.Linear(f, f), tnn.ReLU(inplace=True), tnn.Linear(f, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _randomize_bn(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, tnn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.num_batches_tracked.fill_(7)
    return model


def _torch_out(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _both_ways(tmp_path, tmodel, build_minidl, x, dtype, rtol, atol):
    """torch.save -> minidl and minidl.save -> torch.load: equal eval outputs. float32 goes
    through the factory's ``weights=PATH``; float64 builds, casts, then load_state_dict(strict)
    (a float32 model would round the float64 weights)."""
    tmodel = tmodel.to(getattr(torch, dtype)).eval()
    want = _torch_out(tmodel, x)
    torch.save(tmodel.state_dict(), tmp_path / "torch.pth")
    if dtype == "float32":
        mm = build_minidl(weights=tmp_path / "torch.pth")   # strict=True inside
    else:
        mm = build_minidl(weights=None).to(dtype=np.dtype(dtype))
        mm.load_state_dict(minidl.load(tmp_path / "torch.pth"), strict=True)
    mm.eval()
    assert mm.state_dict()["fc.weight" if "fc.weight" in mm.state_dict()
                           else "classifier.6.weight"].dtype == np.dtype(dtype)
    got = mm(minidl.Tensor(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)

    # the way back: minidl writes, torch reads with weights_only=True, same outputs
    minidl.save(mm.state_dict(), tmp_path / "minidl.pth")
    tmodel2 = _fresh_like(tmodel)
    sd = torch.load(tmp_path / "minidl.pth", weights_only=True)
    tmodel2.load_state_dict(sd, strict=True)
    np.testing.assert_allclose(_torch_out(tmodel2.eval(), x), got, rtol=rtol, atol=atol)
    return mm


def _fresh_like(tmodel):
    import copy
    m = copy.deepcopy(tmodel)
    with torch.no_grad():
        for p in list(m.parameters()) + list(m.buffers()):
            p.zero_()
    return m


def _x(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("name, block, layers, stride_in_1x1", [
    ("resnet18", TBasic, (2, 2, 2, 2), True),
    # the deeper ones take seconds each (float64, both frameworks): slow
    pytest.param("resnet34", TBasic, (3, 4, 6, 3), True, marks=pytest.mark.slow),
    pytest.param("resnet50", TBottleneck, (3, 4, 6, 3), False,  # torchvision v1.5
                 marks=pytest.mark.slow),
    pytest.param("resnet50", TBottleneck, (3, 4, 6, 3), True,   # the paper / Caffe
                 marks=pytest.mark.slow),
])
def test_resnet_torchvision_weights_round_trip(tmp_path, name, block, layers, stride_in_1x1):
    torch.manual_seed(0)
    width = 0.125
    base = [round(c * width) for c in (64, 128, 256, 512)]
    tm = _randomize_bn(TResNet(block, layers, base, 10, stride_in_1x1=stride_in_1x1), 1)
    x = _x((2, 3, 64, 64), "float64")
    mm = _both_ways(tmp_path, tm, lambda weights: getattr(models, name)(
        num_classes=10, width=width, stride_in_1x1=stride_in_1x1, weights=weights),
        x, "float64", 1e-10, 1e-12)
    assert len(mm.state_dict()) == len(tm.state_dict())


def test_bottleneck_stride_placement_changes_the_function(tmp_path):
    """v1.5 weights computed with the stride in the 1x1 give a different answer: the option
    exists because renamed weights would load silently and compute something else."""
    torch.manual_seed(0)
    base = [8, 16, 32, 64]
    tm = _randomize_bn(TResNet(TBottleneck, (1, 1, 1, 1), base, 10, stride_in_1x1=False),
                       2).double().eval()
    torch.save(tm.state_dict(), tmp_path / "v15.pth")
    x = _x((2, 3, 32, 32), "float64")
    want = _torch_out(tm, x)
    right = models.ResNet(models.resnet.Bottleneck, (1, 1, 1, 1), num_classes=10, width=0.125,
                          stride_in_1x1=False)
    wrong = models.ResNet(models.resnet.Bottleneck, (1, 1, 1, 1), num_classes=10, width=0.125,
                          stride_in_1x1=True)
    for m in (right, wrong):
        m.load_state_dict(minidl.load(tmp_path / "v15.pth"), strict=True)
        m.double().eval()
    np.testing.assert_allclose(right(minidl.Tensor(x)).numpy(), want, rtol=1e-10, atol=1e-12)
    assert not np.allclose(wrong(minidl.Tensor(x)).numpy(), want, rtol=1e-3, atol=1e-3)


def test_cifar_resnet_names_match_a_torchvision_style_twin(tmp_path):
    """CIFAR ResNet with projection shortcuts (option B): conv1/bn1/layer1..3/fc, downsample.0/1."""
    torch.manual_seed(0)
    tm = _randomize_bn(TResNet(TBasic, (3, 3, 3), [16, 32, 64], 10, stem="cifar"), 3)
    x = _x((2, 3, 16, 16), "float64")
    _both_ways(tmp_path, tm, lambda weights: models.resnet20(shortcut="B", weights=weights),
               x, "float64", 1e-10, 1e-12)


def test_alexnet_owt_torchvision_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    tm = TAlexNet(10, width=1 / 16)
    x = _x((2, 3, 99, 99), "float64")       # 99 px: a 2x2 map before the adaptive 6x6 pool
    mm = _both_ways(tmp_path, tm, lambda weights: models.alexnet_owt(
        num_classes=10, width=1 / 16, weights=weights), x, "float64", 1e-10, 1e-12)
    assert list(mm.state_dict()) == list(tm.state_dict())


@pytest.mark.slow
def test_full_width_resnet18_resnet50_and_alexnet_owt(tmp_path):
    """At full width (torchvision's exact shapes and parameter counts), float32."""
    torch.manual_seed(0)
    base = [64, 128, 256, 512]
    cases = [
        (TResNet(TBasic, (2, 2, 2, 2), base, 1000), lambda weights: models.resnet18(
            weights=weights), 11_689_512, 224),
        (TResNet(TBottleneck, (3, 4, 6, 3), base, 1000), lambda weights: models.resnet50(
            stride_in_1x1=False, weights=weights), 25_557_032, 224),
        (TAlexNet(1000), lambda weights: models.alexnet_owt(weights=weights), 61_100_840, 224),
    ]
    for i, (tm, build, count, size) in enumerate(cases):
        assert sum(p.numel() for p in tm.parameters()) == count
        _randomize_bn(tm, i)
        x = _x((1, 3, size, size), "float32", seed=i)
        mm = _both_ways(tmp_path, tm, build, x, "float32", 1e-4, 1e-4)
        assert mm.num_parameters() == count


def test_weights_argument_is_strict(tmp_path):
    torch.manual_seed(0)
    tm = TResNet(TBasic, (2, 2, 2, 2), [8, 16, 32, 64], 10)
    sd = tm.state_dict()
    sd.pop("fc.bias")
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(KeyError, match=r"missing keys \['fc.bias'\]"):
        models.resnet18(num_classes=10, width=0.125, weights=tmp_path / "partial.pth")
    torch.save(tm.state_dict(), tmp_path / "r18.pth")
    x = _x((2, 3, 32, 32), "float32")
    mm = models.resnet18(num_classes=10, width=0.125, weights=tmp_path / "r18.pth").eval()
    np.testing.assert_allclose(mm(minidl.Tensor(x)).numpy(), _torch_out(tm.eval(), x),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"'fc.weight' has shape \(10, 64\).*\(1000, 64\)"):
        models.resnet18(width=0.125, weights=tmp_path / "r18.pth")
