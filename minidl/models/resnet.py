"""Residual networks — He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition"
(2015), built only from the public ``minidl.nn`` API.

ImageNet models (Table 1), input 224: conv1 7x7 64 /2 (pad 3) + BN + ReLU, max-pool 3x3 /2
(pad 1), four stages of 64, 128, 256, 512 base channels on maps 56, 28, 14, 7 (the first
block of stages 2-4 subsamples with stride 2), global average pool, fc 1000.

=====  ===============  ===========  =======  ===================
depth  blocks/stage     block        GFLOPs   parameters (shortcut B)
=====  ===============  ===========  =======  ===================
18     2, 2, 2, 2       basic        1.8      11,689,512
34     3, 4, 6, 3       basic        3.6      21,797,672
50     3, 4, 6, 3       bottleneck   3.8      25,557,032
101    3, 4, 23, 3      bottleneck   7.6      44,549,160
152    3, 8, 36, 3      bottleneck   11.3     60,192,808
=====  ===============  ===========  =======  ===================

* basic block: 3x3 conv - BN - ReLU - 3x3 conv - BN, plus the shortcut, then ReLU.
* bottleneck: 1x1 (reduce) - BN - ReLU - 3x3 - BN - ReLU - 1x1 (restore, 4x) - BN, plus the
  shortcut, then ReLU. With ``stride_in_1x1=True`` (the default) the stride-2 subsampling sits
  in the first 1x1 conv, as in the paper and Caffe's released models; ``stride_in_1x1=False``
  moves it to the 3x3 conv, torchvision's "v1.5" (same parameters, different function: load
  torchvision's ResNet-50/101/152 weights with ``stride_in_1x1=False``).
* BN after every conv, before the activation; convs followed by BN have no bias.
* shortcut "A": identity, with stride-2 subsampling and zero-padded extra channels where the
  dimensions grow (no parameters); "B": a 1x1 projection conv (stride 2 where the map
  shrinks) + BN only where the dimensions change, identity elsewhere; "C": projections on
  every block.
* He init (fan_in, ReLU gain) on convs and the fc, BN weight 1 and bias 0.

Names are torchvision's, so its checkpoints load with ``strict=True``: ``conv1``, ``bn1``,
``layer1`` .. ``layer4`` (Sequentials of blocks), ``fc``; in a block ``conv1``/``bn1``,
``conv2``/``bn2`` (bottleneck also ``conv3``/``bn3``) and ``downsample`` (the projection
Sequential ``downsample.0`` conv, ``downsample.1`` BN; option A's parameter-free
:class:`ShortcutA`; None for the identity). Every factory takes ``weights=PATH`` (anything
:func:`minidl.load` reads, loaded with ``strict=True``).

CIFAR-10 models (section 4.2), input 32x32: conv 3x3 16 + BN + ReLU, three stages of n basic
blocks (2n 3x3 conv layers) on maps 32, 16, 8 with 16, 32, 64 filters (stride-2 conv to
subsample), global average pool, fc 10. Depth 6n + 2. Shortcut option A everywhere by default,
so ``plain=True`` (the same net without any shortcut) has the same parameters.
Named like the ImageNet models: ``conv1``, ``bn1``, ``layer1`` .. ``layer3``, ``fc``.
Parameters (BN weight and bias counted, running statistics not): ResNet-20 269,722,
ResNet-32 464,154, ResNet-44 658,586, ResNet-56 853,018, ResNet-110 1,727,962,
ResNet-1202 19,421,274 (Table 6: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M, 19.4M).
"""
import minidl.functional as F
from minidl import nn
from minidl.models._weights import load_weights
from minidl.nn import init as nninit

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "CifarResNet", "resnet18", "resnet34",
           "resnet50", "resnet101", "resnet152", "cifar_resnet", "resnet20", "resnet32",
           "resnet44", "resnet56", "resnet110", "resnet1202"]

_SHORTCUTS = ("A", "B", "C")


class ShortcutA(nn.Module):
    """Option A: identity; where the map shrinks take every ``stride``-th pixel, and pad the
    extra ``out - in`` channels with zeros. No parameters."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"shortcut A cannot reduce channels ({in_channels} -> "
                             f"{out_channels}); use shortcut 'B' or 'C'")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x):
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        extra = self.out_channels - self.in_channels
        if extra:
            # torch-style flat pad tuple: (W left, W right, H top, H bottom, C front, C back)
            x = F.pad(x, (0, 0, 0, 0, 0, extra))
        return x

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def _projection(in_channels, out_channels, stride):
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


def _downsample(kind, in_channels, out_channels, stride, plain):
    """A block's ``downsample`` module (torchvision's name for the shortcut), or None when the
    shortcut is the identity (or absent: the plain net)."""
    if plain:
        return None
    changes = stride != 1 or in_channels != out_channels
    if kind == "C" or (kind == "B" and changes):
        return _projection(in_channels, out_channels, stride)
    if kind == "A" and changes:
        return ShortcutA(in_channels, out_channels, stride)
    return None


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; ``y = relu(F(x) + shortcut(x))`` (``relu(F(x))`` when plain).

    ``stride_in_1x1`` is accepted for a uniform signature and ignored (no 1x1 conv here).
    """

    expansion = 1

    def __init__(self, in_channels, channels, stride=1, shortcut="B", plain=False,
                 stride_in_1x1=True):
        super().__init__()
        out = channels * self.expansion
        self.plain = bool(plain)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.downsample = _downsample(shortcut, in_channels, out, stride, plain)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if not self.plain:
            y = y + (x if self.downsample is None else self.downsample(x))
        return self.relu(y)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 restore (4x), BN after each. The stride sits in the first 1x1 with
    ``stride_in_1x1=True`` (the paper, Caffe) and in the 3x3 with False (torchvision v1.5)."""

    expansion = 4

    def __init__(self, in_channels, channels, stride=1, shortcut="B", plain=False,
                 stride_in_1x1=True):
        super().__init__()
        out = channels * self.expansion
        self.plain, self.stride_in_1x1 = bool(plain), bool(stride_in_1x1)
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, channels, 1, stride=s1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=s3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU()
        self.downsample = _downsample(shortcut, in_channels, out, stride, plain)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        if not self.plain:
            y = y + (x if self.downsample is None else self.downsample(x))
        return self.relu(y)


def _init_resnet(model):
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nninit.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nninit.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nninit.ones_(m.weight)
            nninit.zeros_(m.bias)


def _check_shortcut(shortcut):
    if shortcut not in _SHORTCUTS:
        raise ValueError(f"shortcut must be one of {_SHORTCUTS}, got {shortcut!r}")


class ResNet(nn.Module):
    """ImageNet ResNet (Table 1) with torchvision's module names; see
    :mod:`minidl.models.resnet`. ``layer1`` .. ``layer4`` (Sequentials of blocks) hold conv2_x
    .. conv5_x. ``stride_in_1x1`` places a bottleneck's stride (True: the paper; False:
    torchvision v1.5); ``width`` scales the base channels 64/128/256/512."""

    def __init__(self, block, layers, num_classes=1000, shortcut="B", plain=False, width=1.0,
                 stride_in_1x1=True):
        super().__init__()
        _check_shortcut(shortcut)
        if len(layers) != 4:
            raise ValueError(f"ResNet: layers must give the number of blocks of the 4 stages, "
                             f"got {layers!r}")
        base = [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.stride_in_1x1 = bool(stride_in_1x1)
        self.conv1 = nn.Conv2d(3, base[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c = base[0]
        for i, (n, ch) in enumerate(zip(layers, base)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(c, ch, stride=stride, shortcut=shortcut, plain=plain,
                                    stride_in_1x1=stride_in_1x1))
                c = ch * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(c, num_classes)
        _init_resnet(self)

    def stages(self):
        """``[layer1, layer2, layer3, layer4]``."""
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.stages():
            x = stage(x)
        return self.fc(self.flatten(self.avgpool(x)))

    def dense_forward(self, x):
        """Fully-convolutional scores for dense testing: global average pooling already makes
        the net fully convolutional (the fc on the pooled map is the average of the fc applied
        at every position), so this is ``forward(x)`` as a ``(N, num_classes, 1, 1)`` map, for
        any input size."""
        return self.forward(x).reshape(x.shape[0], -1, 1, 1)


def _imagenet(block, layers, num_classes, shortcut, weights, kwargs):
    return load_weights(ResNet(block, layers, num_classes, shortcut, **kwargs), weights)


def resnet18(num_classes=1000, shortcut="B", weights=None, **kwargs):
    """ResNet-18 (basic blocks 2,2,2,2): 11,689,512 parameters with shortcut B.
    ``weights``: a checkpoint path (e.g. torchvision's) loaded with strict=True."""
    return _imagenet(BasicBlock, (2, 2, 2, 2), num_classes, shortcut, weights, kwargs)


def resnet34(num_classes=1000, shortcut="B", weights=None, **kwargs):
    """ResNet-34 (basic blocks 3,4,6,3): 21,797,672 parameters with shortcut B."""
    return _imagenet(BasicBlock, (3, 4, 6, 3), num_classes, shortcut, weights, kwargs)


def resnet50(num_classes=1000, shortcut="B", weights=None, **kwargs):
    """ResNet-50 (bottlenecks 3,4,6,3): 25,557,032 parameters with shortcut B. Pass
    ``stride_in_1x1=False`` for torchvision's v1.5 weights."""
    return _imagenet(Bottleneck, (3, 4, 6, 3), num_classes, shortcut, weights, kwargs)


def resnet101(num_classes=1000, shortcut="B", weights=None, **kwargs):
    """ResNet-101 (bottlenecks 3,4,23,3): 44,549,160 parameters with shortcut B."""
    return _imagenet(Bottleneck, (3, 4, 23, 3), num_classes, shortcut, weights, kwargs)


def resnet152(num_classes=1000, shortcut="B", weights=None, **kwargs):
    """ResNet-152 (bottlenecks 3,8,36,3): 60,192,808 parameters with shortcut B."""
    return _imagenet(Bottleneck, (3, 8, 36, 3), num_classes, shortcut, weights, kwargs)


class CifarResNet(nn.Module):
    """The CIFAR-10 ResNet of section 4.2 (depth 6n+2), or its plain twin (``plain=True``).

    ``conv1``/``bn1`` then ``layer1`` .. ``layer3`` (Sequentials of n BasicBlocks: 16, 32, 64
    filters), global average pool, ``fc``. :meth:`response_modules` gives the BN layers whose
    outputs are the "responses" of Figure 7 (after BN, before the addition and ReLU).
    """

    def __init__(self, depth, plain=False, shortcut="A", num_classes=10):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"cifar_resnet: depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, "
                             f"110, 1202, ...), got {depth}")
        _check_shortcut(shortcut)
        n = (depth - 2) // 6
        self.depth, self.plain, self.shortcut_kind = depth, bool(plain), shortcut
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        c = 16
        for i, ch in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(c, ch, stride=stride, shortcut=shortcut, plain=plain))
                c = ch
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(64, num_classes)
        _init_resnet(self)

    def response_modules(self):
        """The BN layer after every 3x3 conv, input to output (Figure 7's responses)."""
        out = [self.bn1]
        for stage in self.stages():
            for b in stage:
                out += [b.bn1, b.bn2]
        return out

    def stages(self):
        """``[layer1, layer2, layer3]``."""
        return [self.layer1, self.layer2, self.layer3]

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for stage in self.stages():
            x = stage(x)
        return self.fc(self.flatten(self.avgpool(x)))

    def dense_forward(self, x):
        """Fully-convolutional scores for dense testing: global average pooling already makes
        the net fully convolutional (the fc on the pooled map is the average of the fc applied
        at every position), so this is ``forward(x)`` as a ``(N, num_classes, 1, 1)`` map, for
        any input size."""
        return self.forward(x).reshape(x.shape[0], -1, 1, 1)

    def extra_repr(self):
        return f"depth={self.depth}, plain={self.plain}, shortcut={self.shortcut_kind!r}"


def cifar_resnet(depth, plain=False, shortcut="A", num_classes=10, weights=None):
    """CIFAR-10 ResNet of depth 6n+2 (``plain=True``: no shortcuts); see
    :mod:`minidl.models.resnet`. ``weights``: a checkpoint path loaded with strict=True."""
    return load_weights(CifarResNet(depth, plain=plain, shortcut=shortcut,
                                    num_classes=num_classes), weights)


def resnet20(plain=False, **kwargs):
    """CIFAR ResNet-20 (n=3): 269,722 parameters."""
    return cifar_resnet(20, plain=plain, **kwargs)


def resnet32(plain=False, **kwargs):
    """CIFAR ResNet-32 (n=5): 464,154 parameters."""
    return cifar_resnet(32, plain=plain, **kwargs)


def resnet44(plain=False, **kwargs):
    """CIFAR ResNet-44 (n=7): 658,586 parameters."""
    return cifar_resnet(44, plain=plain, **kwargs)


def resnet56(plain=False, **kwargs):
    """CIFAR ResNet-56 (n=9): 853,018 parameters."""
    return cifar_resnet(56, plain=plain, **kwargs)


def resnet110(plain=False, **kwargs):
    """CIFAR ResNet-110 (n=18): 1,727,962 parameters."""
    return cifar_resnet(110, plain=plain, **kwargs)


def resnet1202(plain=False, **kwargs):
    """CIFAR ResNet-1202 (n=200): 19,421,274 parameters."""
    return cifar_resnet(1202, plain=plain, **kwargs)
