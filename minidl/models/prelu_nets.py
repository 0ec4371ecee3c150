"""The networks of He, Zhang, Ren & Sun, "Delving Deep into Rectifiers: Surpassing Human-Level
Performance on ImageNet Classification" (2015), built only from the public ``minidl.nn`` API.

14-layer model (Table 1; model E of He & Sun, "Convolutional Neural Networks at Constrained
Time Cost", which uses 2x2 filters), input 224:

==========  =============================  ==========
layer       spec                           map size
==========  =============================  ==========
conv1       7x7, 64, stride 2 (no pad)     109
pool1       max 3x3, stride 3              36
conv2_1..4  2x2, 128 (size kept)           36
pool2       max 2x2, stride 2              18
conv3_1..6  2x2, 256 (size kept)           18
spp         pyramid {6, 3, 2, 1}           256 x 50
fc1, fc2    4096, dropout 0.5
fc3         1000
==========  =============================  ==========

30-layer model (``prelu_net30``, the init study's Figure 3): the 14-layer model with 16 more
2x2 conv layers of 256 filters in the last stage (conv3_1..conv3_22): 27 conv + 3 fc.

Table 3 models (all with SPP {7, 3, 2, 1} then fc 4096, 4096, 1000; dropout 0.5 in fc1/fc2):

=====  ==========================================================================
A(19)  conv 7x7 96 /2 (pad 3, 112), max 2x2 /2, 5 x conv3x3 256 (56),
       max 2x2 /2, 5 x conv3x3 512 (28), max 2x2 /2, 5 x conv3x3 512 (14)
B(22)  A with 6 conv layers per stage
C(22)  B with 384 / 768 / 896 filters in the three stages
=====  ==========================================================================

Choices the paper leaves open, documented here:

* The 2x2 convolutions keep the map size by padding one pixel on one side of each axis. The
  side alternates from layer to layer (right/bottom for the 1st, 3rd, ... 2x2 conv of a stage,
  left/top for the 2nd, 4th, ...) so the receptive fields do not drift towards one corner over
  a deep stack (22 of them in the 30-layer net). This is ``F.pad`` then an unpadded 2x2 conv.
* ``activation``: "relu", "prelu_shared" (one slope per layer, ``nn.PReLU(1)``) or "prelu"
  (channel-wise, ``nn.PReLU(channels)``), after every conv and fc1/fc2; slopes start at 0.25.
* ``init="he"``: ``0.5 (1 + a^2) n Var[w] = 1`` with n the fan-in and a = 0 for ReLU, 0.25
  (the initial slope) for PReLU (the paper's eq. 15). ``init="xavier"``: the paper's
  comparison ``n Var[w] = 1`` (fan-in, gain 1) — what Xavier's derivation gives for a linear
  net; torch's ``xavier_normal_`` averages fan-in and fan-out instead, which differs only
  where the channel count changes. Biases are 0.
* ``fc_std=(s1, s2, s3)``: fc1, fc2, fc3 drawn from N(0, s^2) instead, whatever ``init`` says:
  the paper's practice for inputs in the [-128, 128] pixel range (section 2.2's footnote: std
  0.01 for the first two fc layers and 0.001 for the last, smaller than the rule gives, so
  the softmax does not overflow). None (default): every layer follows ``init``.
* ``width`` scales every conv channel count and the fc widths (the scaled-down CPU examples);
  the SPP makes the fc1 input independent of the input size.
"""
from collections import OrderedDict

import minidl.functional as F
from minidl import nn
from minidl.models._weights import load_weights
from minidl.nn import init as nninit

__all__ = ["PReLUNet", "Conv2x2Same", "prelu_net14", "prelu_net30", "prelu_net_a",
           "prelu_net_b", "prelu_net_c"]

_ACTIVATIONS = ("relu", "prelu_shared", "prelu")


class Conv2x2Same(nn.Module):
    """A 2x2 convolution (stride 1) that keeps the map size: one pixel of zero padding on the
    right and bottom (``side="br"``) or on the left and top (``side="tl"``), then the conv."""

    def __init__(self, in_channels, out_channels, side="br"):
        super().__init__()
        if side not in ("br", "tl"):
            raise ValueError(f"Conv2x2Same: side must be 'br' or 'tl', got {side!r}")
        self.side = side
        self.conv = nn.Conv2d(in_channels, out_channels, 2)

    def forward(self, x):
        # F.pad's flat tuple is (left, right, top, bottom) for the last two axes
        pad = (0, 1, 0, 1) if self.side == "br" else (1, 0, 1, 0)
        return self.conv(F.pad(x, pad))

    @property
    def weight(self):
        return self.conv.weight

    @property
    def bias(self):
        return self.conv.bias

    def extra_repr(self):
        return f"side={self.side!r}"


def _act(activation, channels):
    if activation == "relu":
        return nn.ReLU()
    if activation == "prelu_shared":
        return nn.PReLU(1, init=0.25)
    return nn.PReLU(channels, init=0.25)


class PReLUNet(nn.Module):
    """A PReLU-paper network described by a stem, conv stages and SPP + three fc layers.

    ``stages`` is a list of ``(pool_before, n_convs, channels, kernel)``: ``pool_before`` is
    ``(kernel, stride)`` of the max pool in front of the stage. Layers are registered with the
    paper's names (``conv1``, ``act1``, ``pool1``, ``conv2_1``, ``act2_1``, ..., ``spp``,
    ``fc1``, ``act_fc1``, ...), so ``named_parameters()`` reads like the paper's tables; the
    PReLU slopes of layer ``L`` are ``act<L>.weight``.
    """

    def __init__(self, stem, stages, spp_levels, num_classes=1000, activation="relu",
                 init="he", width=1.0, fc_width=4096, dropout=0.5, fc_std=None):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
        if init not in ("he", "xavier"):
            raise ValueError(f"init must be 'he' or 'xavier', got {init!r}")
        if width <= 0:
            raise ValueError(f"width must be positive, got {width!r}")
        if fc_std is not None:
            fc_std = tuple(float(v) for v in fc_std)
            if len(fc_std) != 3 or not all(v > 0 for v in fc_std):
                raise ValueError(f"fc_std must be three positive stds (fc1, fc2, fc3), got "
                                 f"{fc_std!r}")
        self.activation, self.init_mode, self.width = activation, init, width
        self.fc_std = fc_std

        def ch(n):
            return max(1, int(round(n * width)))

        layers = OrderedDict()
        stem_ch, stem_k, stem_stride, stem_pad = stem
        c = ch(stem_ch)
        layers["conv1"] = nn.Conv2d(3, c, stem_k, stride=stem_stride, padding=stem_pad)
        layers["act1"] = _act(activation, c)
        for s, (pool, n, out, k) in enumerate(stages, start=2):
            layers[f"pool{s - 1}"] = nn.MaxPool2d(pool[0], stride=pool[1])
            out = ch(out)
            for i in range(1, n + 1):
                if k == 2:
                    layers[f"conv{s}_{i}"] = Conv2x2Same(c, out, side="br" if i % 2 else "tl")
                else:
                    layers[f"conv{s}_{i}"] = nn.Conv2d(c, out, k, padding=k // 2)
                layers[f"act{s}_{i}"] = _act(activation, out)
                c = out
        layers["spp"] = nn.SPP(spp_levels)
        layers["flatten"] = nn.Flatten(1)
        f = ch(fc_width)
        spp_out = c * sum(level * level for level in spp_levels)
        layers["fc1"] = nn.Linear(spp_out, f)
        layers["act_fc1"] = _act(activation, f)
        layers["drop1"] = nn.Dropout(dropout)
        layers["fc2"] = nn.Linear(f, f)
        layers["act_fc2"] = _act(activation, f)
        layers["drop2"] = nn.Dropout(dropout)
        layers["fc3"] = nn.Linear(f, num_classes)
        self.layers = nn.Sequential(layers)
        self.reset_parameters()

    def weight_layers(self):
        """(name, module) of every conv and fc layer, input to output."""
        return [(n, m) for n, m in self.layers.named_children()
                if isinstance(m, (nn.Conv2d, nn.Linear, Conv2x2Same))]

    def activations(self):
        """(name of the layer it follows, activation module) for every conv and fc1/fc2."""
        names = [n for n, _ in self.layers.named_children()]
        out = []
        for i, (n, m) in enumerate(self.layers.named_children()):
            if n.startswith("act"):
                out.append((names[i - 1], m))
        return out

    def reset_parameters(self):
        a = 0.0 if self.activation == "relu" else 0.25
        for _, m in self.weight_layers():
            if self.init_mode == "he":
                nninit.kaiming_normal_(m.weight, a=a, mode="fan_in", nonlinearity="leaky_relu")
            else:  # n * Var[w] = 1: the linear case, gain 1
                nninit.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
            nninit.zeros_(m.bias)
        if self.fc_std is not None:
            for name, std in zip(("fc1", "fc2", "fc3"), self.fc_std):
                nninit.normal_(getattr(self.layers, name).weight, 0.0, std)

    def forward(self, x):
        return self.layers(x)

    def dense_forward(self, x):
        """Scores for dense testing (SPP-net's full-image view): the conv layers run over the
        whole image, SPP pools the whole last feature map to the fixed pyramid, the fc layers
        follow. Returns ``(N, num_classes, 1, 1)``; equal to ``forward(x)``, for any input
        size the convs accept."""
        return self.layers(x).reshape(x.shape[0], -1, 1, 1)

    def extra_repr(self):
        return f"activation={self.activation!r}, init={self.init_mode!r}, width={self.width}"


def _net14_stages(extra=0):
    return [((3, 3), 4, 128, 2), ((2, 2), 6 + extra, 256, 2)]


def prelu_net14(activation="relu", init="he", num_classes=1000, width=1.0, weights=None,
                **kwargs):
    """The 14-layer model of the PReLU paper's Table 1 (2x2 convs, SPP {6,3,2,1}); see
    :mod:`minidl.models.prelu_nets`. ``activation`` "relu" | "prelu_shared" | "prelu"."""
    model = PReLUNet(
        (64, 7, 2, 0), _net14_stages(), (6, 3, 2, 1), num_classes=num_classes,
        activation=activation, init=init, width=width, **kwargs)
    return load_weights(model, weights)


def prelu_net30(activation="relu", init="he", num_classes=1000, width=1.0, weights=None,
                **kwargs):
    """The 30-layer (27 conv + 3 fc) extension of the 14-layer model used in the paper's
    Figure 3 (He vs Xavier init): 16 more 2x2 conv layers of 256 filters in the last stage."""
    model = PReLUNet(
        (64, 7, 2, 0), _net14_stages(extra=16), (6, 3, 2, 1), num_classes=num_classes,
        activation=activation, init=init, width=width, **kwargs)
    return load_weights(model, weights)


def _table3(n, chans):
    return [((2, 2), n, chans[0], 3), ((2, 2), n, chans[1], 3), ((2, 2), n, chans[2], 3)]


def prelu_net_a(activation="relu", init="he", num_classes=1000, width=1.0, weights=None,
                **kwargs):
    """Model A of the PReLU paper's Table 3 (19 layers: 5 conv3x3 per stage, 256/512/512,
    SPP {7,3,2,1})."""
    model = PReLUNet(
        (96, 7, 2, 3), _table3(5, (256, 512, 512)), (7, 3, 2, 1), num_classes=num_classes,
        activation=activation, init=init, width=width, **kwargs)
    return load_weights(model, weights)


def prelu_net_b(activation="relu", init="he", num_classes=1000, width=1.0, weights=None,
                **kwargs):
    """Model B of Table 3 (22 layers: A with 6 conv3x3 per stage); the init study's Figure 2
    net."""
    model = PReLUNet(
        (96, 7, 2, 3), _table3(6, (256, 512, 512)), (7, 3, 2, 1), num_classes=num_classes,
        activation=activation, init=init, width=width, **kwargs)
    return load_weights(model, weights)


def prelu_net_c(activation="relu", init="he", num_classes=1000, width=1.0, weights=None,
                **kwargs):
    """Model C of Table 3 (22 layers: B with 384/768/896 filters)."""
    model = PReLUNet(
        (96, 7, 2, 3), _table3(6, (384, 768, 896)), (7, 3, 2, 1), num_classes=num_classes,
        activation=activation, init=init, width=width, **kwargs)
    return load_weights(model, weights)
