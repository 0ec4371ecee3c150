"""AlexNet — Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional
Neural Networks" (2012), built only from the public ``minidl.nn`` API.

The paper's network (input 227x227x3 so conv1's arithmetic is exact; the paper says 224):

=======  ===========================================  ==============================
layer    spec                                         then
=======  ===========================================  ==============================
conv1    96 kernels 11x11x3, stride 4                 ReLU, LRN, max-pool 3x3 /2
conv2    256 kernels 5x5x48 (two groups), pad 2       ReLU, LRN, max-pool 3x3 /2
conv3    384 kernels 3x3x256 (sees both groups), pad 1  ReLU
conv4    384 kernels 3x3x192 (two groups), pad 1      ReLU
conv5    256 kernels 3x3x192 (two groups), pad 1      ReLU, max-pool 3x3 /2
fc6      4096                                         ReLU, dropout 0.5
fc7      4096                                         ReLU, dropout 0.5
fc8      1000                                         (softmax in the loss)
=======  ===========================================  ==============================

Dropout acts on the outputs of fc6 and fc7 after their ReLUs, as in the paper ("setting to zero
the output of each hidden neuron with probability 0.5") and Caffe's reference net (torchvision's
AlexNet instead drops the inputs of fc6 and fc7).

* ``towers=2`` is the paper's two-GPU layout: conv2, conv4 and conv5 are grouped convolutions
  (``groups=2``; each GPU reads only its own half), conv3 and the fc layers read both halves.
  The LRN after conv1 and conv2 also runs within each tower (each GPU normalized over its own
  48 / 128 kernels). ``towers=1`` is the same network with ``groups=1`` everywhere at full
  width.
* :func:`alexnet_one_gpu` is the paper's one-GPU comparison net (footnote 2: "the one-GPU net
  actually has the same number of kernels as the two-GPU net in the final convolutional
  layer"): half the kernels of conv1-conv4 (48, 128, 192, 192), conv5 (256) and the
  fully-connected layers whole, no groups; 59,798,312 parameters.
* Parameter count (conv and fc weights and biases): 60,965,224 with towers=2, 62,378,344 with
  towers=1 at width 1.
* :func:`alexnet_owt` is torchvision's AlexNet ("one weird trick" widths 64-192-384-256-256, conv1
  padding 2, no LRN, no groups, adaptive 6x6 average pool, dropout before fc6 and fc7) with
  torchvision's module indices (``features.0`` .. ``features.10``, ``classifier.1/4/6``), so its
  checkpoints load with ``strict=True``.
* Every factory takes ``weights=PATH`` (anything :func:`minidl.load` reads, strict=True).
* ``width`` multiplies every layer's channel count and the fc widths (rounded to a multiple of
  ``towers``); ``input_size`` sets the spatial arithmetic and hence fc6's input size.
* ``init="paper"``: weights N(0, 0.01^2), biases 1 in conv2, conv4, conv5, fc6, fc7 and 0
  elsewhere. ``init="he"``: He/Kaiming normal weights (fan_in, ReLU gain), zero biases.
* Ablation switches (the paper's): ``lrn=False`` drops the LRN layers; ``overlap_pool=False``
  uses 2x2 stride-2 pooling (z = s = 2) instead of 3x3 stride 2 (z = 3 > s = 2); ``dropout``
  is the drop probability of fc6/fc7.

LRN uses minidl's paper form ``k + alpha * sum`` (alpha not divided by n) with n=5, k=2,
alpha=1e-4, beta=0.75 (see ``nn.LocalResponseNorm``).
"""
import minidl
import minidl.functional as F
from minidl import nn
from minidl.models._weights import load_weights
from minidl.nn import init as nninit

__all__ = ["AlexNet", "AlexNetOWT", "alexnet", "alexnet_feature_size", "alexnet_one_gpu",
           "alexnet_owt"]

PAPER_CHANNELS = (96, 256, 384, 384, 256, 4096)      # conv1..conv5, fc6/fc7
ONE_GPU_CHANNELS = (48, 128, 192, 192, 256, 4096)    # footnote 2: conv1-conv4 halved


def _pool_out(n, kernel, stride):
    return (n - kernel) // stride + 1


def _feature_size(input_size, overlap_pool):
    k = 3 if overlap_pool else 2
    if input_size < 11:
        return 0
    n = (input_size - 11) // 4 + 1          # conv1, stride 4, no padding
    for _ in range(3):                      # pool1; conv2 (pad 2) + pool2; conv3-5 (pad 1) + pool5
        n = _pool_out(n, k, 2) if n >= k else 0
    return n


def alexnet_feature_size(input_size=227, overlap_pool=True):
    """Spatial size of conv5's pooled output for a square ``input_size`` (6 for 227)."""
    n = _feature_size(input_size, overlap_pool)
    if n < 1:
        smallest = next(s for s in range(11, 1000) if _feature_size(s, overlap_pool) >= 1)
        raise ValueError(f"alexnet: input_size={input_size} is too small: the feature map "
                         f"vanishes before fc6 (the smallest input is {smallest} px with "
                         f"overlap_pool={overlap_pool})")
    return n


class TowerLRN(nn.Module):
    """Cross-channel LRN applied separately to each of ``towers`` equal channel groups.

    On the paper's two GPUs each half of conv1's/conv2's kernels was normalized over its own
    channels only; with ``towers=1`` this is a plain ``nn.LocalResponseNorm``.
    """

    def __init__(self, towers, size=5, alpha=1e-4, beta=0.75, k=2.0):
        super().__init__()
        self.towers = int(towers)
        self.lrn = nn.LocalResponseNorm(size, alpha=alpha, beta=beta, k=k)

    def forward(self, x):
        if self.towers == 1:
            return self.lrn(x)
        c = x.shape[1] // self.towers
        parts = [self.lrn(x[:, i * c:(i + 1) * c]) for i in range(self.towers)]
        return minidl.concatenate(parts, axis=1)

    def extra_repr(self):
        return f"towers={self.towers}"


class AlexNet(nn.Module):
    """The 8-layer AlexNet; see the module docstring for the table and the switches.

    ``features`` (conv1..pool5), ``classifier`` (fc6..fc8, each hidden fc followed by ReLU then
    dropout). Input (N, 3, input_size, input_size); output logits (N, num_classes).
    ``channels`` (conv1..conv5, fc6/fc7 widths before ``width`` scaling) defaults to the
    paper's 96, 256, 384, 384, 256, 4096.
    """

    def __init__(self, num_classes=1000, towers=2, width=1.0, input_size=227, init="paper",
                 lrn=True, overlap_pool=True, dropout=0.5, channels=PAPER_CHANNELS):
        super().__init__()
        if towers not in (1, 2):
            raise ValueError(f"alexnet: towers must be 1 or 2, got {towers!r}")
        if init not in ("paper", "he"):
            raise ValueError(f"alexnet: init must be 'paper' or 'he', got {init!r}")
        if width <= 0:
            raise ValueError(f"alexnet: width must be positive, got {width!r}")
        if len(channels) != 6 or any(int(c) < 1 for c in channels):
            raise ValueError(f"alexnet: channels must be 6 positive widths (conv1..conv5, "
                             f"fc6/fc7), got {channels!r}")
        self.towers, self.width, self.input_size = towers, width, input_size
        self.init_mode, self.lrn_on, self.overlap_pool = init, bool(lrn), bool(overlap_pool)
        g = towers

        def ch(n):  # scaled channel count, a multiple of the number of towers
            return max(g, int(round(n * width / g)) * g)

        c1, c2, c3, c4, c5, f = (ch(c) for c in channels)
        pk = 3 if overlap_pool else 2

        def norm():
            return TowerLRN(g) if lrn else nn.Identity()

        self.features = nn.Sequential(
            nn.Conv2d(3, c1, 11, stride=4),                         # conv1
            nn.ReLU(), norm(), nn.MaxPool2d(pk, stride=2),
            nn.Conv2d(c1, c2, 5, padding=2, groups=g),              # conv2
            nn.ReLU(), norm(), nn.MaxPool2d(pk, stride=2),
            nn.Conv2d(c2, c3, 3, padding=1),                        # conv3 (both towers)
            nn.ReLU(),
            nn.Conv2d(c3, c4, 3, padding=1, groups=g),              # conv4
            nn.ReLU(),
            nn.Conv2d(c4, c5, 3, padding=1, groups=g),              # conv5
            nn.ReLU(), nn.MaxPool2d(pk, stride=2),
        )
        s = alexnet_feature_size(input_size, overlap_pool)
        self.feature_size = s
        self.classifier = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(c5 * s * s, f), nn.ReLU(), nn.Dropout(dropout),   # fc6
            nn.Linear(f, f), nn.ReLU(), nn.Dropout(dropout),            # fc7
            nn.Linear(f, num_classes),                                  # fc8
        )
        self.reset_parameters(init)

    def convs(self):
        return [m for m in self.features if isinstance(m, nn.Conv2d)]

    def fcs(self):
        return [m for m in self.classifier if isinstance(m, nn.Linear)]

    def reset_parameters(self, init="paper"):
        layers = self.convs() + self.fcs()          # conv1..5, fc6..8
        ones = {1, 3, 4, 5, 6}                      # conv2, conv4, conv5, fc6, fc7
        for i, m in enumerate(layers):
            if init == "paper":
                nninit.normal_(m.weight, 0.0, 0.01)
                nninit.constant_(m.bias, 1.0 if i in ones else 0.0)
            else:
                nninit.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nninit.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.features(x))

    def dense_forward(self, x):
        """Fully-convolutional scores for dense testing: fc6 applied as a
        ``feature_size``-square convolution over conv5's pooled map, fc7 and fc8 as 1x1
        convolutions (dropout is the identity at test time). Returns ``(N, num_classes, h, w)``
        with one score vector per ``input_size`` window (stride 32 px at 227); at
        ``input_size`` it is ``forward(x)`` as a 1x1 map. Needs inputs of at least
        ``input_size``."""
        if min(x.shape[2:]) < self.input_size:
            raise ValueError(f"alexnet.dense_forward: input {tuple(x.shape[2:])} is smaller "
                             f"than the training size; use inputs of at least "
                             f"{self.input_size} px")
        f = self.features(x)
        s = self.feature_size
        if f.shape[2] < s or f.shape[3] < s:
            raise ValueError(f"alexnet.dense_forward: input {tuple(x.shape[2:])} gives a "
                             f"{tuple(f.shape[2:])} feature map, smaller than fc6's {s}x{s} "
                             f"window; use inputs of at least {self.input_size} px")
        fc6, fc7, fc8 = self.fcs()
        y = F.relu(F.conv2d(f, fc6.weight.reshape(fc6.out_features, f.shape[1], s, s),
                            fc6.bias))
        y = F.relu(F.conv2d(y, fc7.weight.reshape(fc7.out_features, fc7.in_features, 1, 1),
                            fc7.bias))
        return F.conv2d(y, fc8.weight.reshape(fc8.out_features, fc8.in_features, 1, 1),
                        fc8.bias)

    def extra_repr(self):
        return (f"towers={self.towers}, width={self.width}, input_size={self.input_size}, "
                f"init={self.init_mode!r}, lrn={self.lrn_on}, overlap_pool={self.overlap_pool}")


def alexnet(num_classes=1000, towers=2, width=1.0, input_size=227, init="paper", weights=None,
            **kwargs):
    """AlexNet (Krizhevsky et al. 2012). See :mod:`minidl.models.alexnet` for the layer table.

    ``towers`` 2 (grouped convs as on the paper's two GPUs) or 1; ``width`` scales channels and
    fc widths; ``input_size`` the square input side (227 in the paper); ``init`` "paper"
    (N(0, 0.01^2), biases 1 in conv2/4/5 and fc6/7) or "he". Keyword switches: ``lrn=True``,
    ``overlap_pool=True``, ``dropout=0.5`` (after the ReLUs of fc6 and fc7, as in the paper).
    ``weights``: a checkpoint path loaded with strict=True. 60,965,224 parameters at the
    defaults.
    """
    return load_weights(AlexNet(num_classes=num_classes, towers=towers, width=width,
                                input_size=input_size, init=init, **kwargs), weights)


def alexnet_one_gpu(num_classes=1000, weights=None, **kwargs):
    """The paper's one-GPU AlexNet (footnote 2): conv1-conv4 with half the kernels (48, 128,
    192, 192), conv5 (256) and fc6/fc7 (4096) whole, one tower (no groups). 59,798,312
    parameters at width 1. Takes :func:`alexnet`'s keywords (``width`` scales this table)."""
    if "towers" in kwargs or "channels" in kwargs:
        raise TypeError("alexnet_one_gpu: towers and channels are fixed (1 tower, the "
                        "footnote-2 widths); use alexnet(...) to choose them")
    return load_weights(AlexNet(num_classes=num_classes, towers=1, channels=ONE_GPU_CHANNELS,
                                **kwargs), weights)


class AlexNetOWT(nn.Module):
    """torchvision's AlexNet ("one weird trick", Krizhevsky 2014), module for module.

    ``features``: 0 conv 11x11/4 pad 2 (64), 1 ReLU, 2 max-pool 3/2, 3 conv 5x5 pad 2 (192),
    4 ReLU, 5 max-pool, 6 conv 3x3 (384), 7 ReLU, 8 conv 3x3 (256), 9 ReLU, 10 conv 3x3 (256),
    11 ReLU, 12 max-pool; ``avgpool`` adaptive 6x6; ``classifier``: 0 dropout, 1 fc 4096,
    2 ReLU, 3 dropout, 4 fc 4096, 5 ReLU, 6 fc ``num_classes``. 61,100,840 parameters at 1000
    classes. torch's default layer initialization. ``width`` (not in torchvision; default 1)
    scales every channel count and the fc widths, for small test twins.
    """

    def __init__(self, num_classes=1000, dropout=0.5, width=1.0):
        super().__init__()
        if width <= 0:
            raise ValueError(f"alexnet_owt: width must be positive, got {width!r}")
        c1, c2, c3, c4, c5, f = (max(1, int(round(n * width)))
                                 for n in (64, 192, 384, 256, 256, 4096))
        self.width = width
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c4, c5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(c5 * 6 * 6, f), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(f, f), nn.ReLU(),
            nn.Linear(f, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


def alexnet_owt(num_classes=1000, weights=None, **kwargs):
    """torchvision's AlexNet (64-192-384-256-256, no LRN, no groups) with its module names, so
    ``weights=`` takes torchvision's checkpoint (strict=True). See :class:`AlexNetOWT`."""
    return load_weights(AlexNetOWT(num_classes=num_classes, **kwargs), weights)
