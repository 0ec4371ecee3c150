"""Loss modules with ``torch.nn``'s names, arguments and defaults; each calls the function of
the same name in :mod:`minidl.functional` (formulas there).

=====================  =========================================  ============================
module                 arguments (torch's defaults)               functional
=====================  =========================================  ============================
``CrossEntropyLoss``   weight=None, ignore_index=-100,            ``cross_entropy``
                       reduction="mean", label_smoothing=0.0
``NLLLoss``            weight=None, ignore_index=-100,            ``nll_loss``
                       reduction="mean"
``MSELoss``            reduction="mean"                           ``mse_loss``
``L1Loss``             reduction="mean"                           ``l1_loss``
``SmoothL1Loss``       reduction="mean", beta=1.0                 ``smooth_l1_loss``
``BCELoss``            weight=None, reduction="mean"              ``binary_cross_entropy``
``BCEWithLogitsLoss``  weight=None, reduction="mean",             ``binary_cross_entropy_with_
                       pos_weight=None                            logits``
=====================  =========================================  ============================

``weight`` and ``pos_weight`` are buffers (in ``state_dict`` when given, moved by ``.to``), as
in torch. torch's deprecated ``size_average``/``reduce`` arguments are not accepted.
"""
from minidl import functional as F
from minidl.functional.loss import REDUCTIONS
from minidl.nn.module import Module

__all__ = ["CrossEntropyLoss", "NLLLoss", "MSELoss", "L1Loss", "SmoothL1Loss", "BCELoss",
           "BCEWithLogitsLoss"]


class _Loss(Module):
    def __init__(self, reduction="mean"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"{type(self).__name__}: {reduction!r} is not a valid reduction: "
                             "'mean', 'sum' or 'none'")
        self.reduction = reduction

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


class _WeightedLoss(_Loss):
    def __init__(self, weight=None, reduction="mean"):
        super().__init__(reduction)
        self.register_buffer("weight", weight)


class CrossEntropyLoss(_WeightedLoss):
    """``loss(input, target)``: ``F.cross_entropy`` of logits (N, C, ...) against class
    indices (N, ...), with ``weight``, ``ignore_index``, ``reduction``, ``label_smoothing``."""

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__(weight, reduction)
        self.ignore_index = int(ignore_index)
        self.label_smoothing = F.loss._check_smoothing(label_smoothing)

    def forward(self, input, target):
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)

    def extra_repr(self):
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}")


class NLLLoss(_WeightedLoss):
    """``loss(input, target)``: ``F.nll_loss`` of log-probabilities (N, C, ...) against class
    indices (N, ...)."""

    def __init__(self, weight=None, ignore_index=-100, reduction="mean"):
        super().__init__(weight, reduction)
        self.ignore_index = int(ignore_index)

    def forward(self, input, target):
        return F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                          reduction=self.reduction)

    def extra_repr(self):
        return f"ignore_index={self.ignore_index}, reduction={self.reduction!r}"


class MSELoss(_Loss):
    """``loss(input, target)``: ``F.mse_loss``, the mean squared error."""

    def forward(self, input, target):
        return F.mse_loss(input, target, reduction=self.reduction)


class L1Loss(_Loss):
    """``loss(input, target)``: ``F.l1_loss``, the mean absolute error."""

    def forward(self, input, target):
        return F.l1_loss(input, target, reduction=self.reduction)


class SmoothL1Loss(_Loss):
    """``loss(input, target)``: ``F.smooth_l1_loss`` with threshold ``beta``."""

    def __init__(self, reduction="mean", beta=1.0):
        super().__init__(reduction)
        self.beta = beta

    def forward(self, input, target):
        return F.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)

    def extra_repr(self):
        return f"reduction={self.reduction!r}, beta={self.beta}"


class BCELoss(_WeightedLoss):
    """``loss(input, target)``: ``F.binary_cross_entropy`` of probabilities in [0, 1]."""

    def forward(self, input, target):
        return F.binary_cross_entropy(input, target, weight=self.weight,
                                      reduction=self.reduction)


class BCEWithLogitsLoss(_Loss):
    """``loss(input, target)``: ``F.binary_cross_entropy_with_logits`` (sigmoid and BCE in one
    stable step), with ``weight`` and ``pos_weight`` buffers."""

    def __init__(self, weight=None, reduction="mean", pos_weight=None):
        super().__init__(reduction)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, input, target):
        return F.binary_cross_entropy_with_logits(input, target, weight=self.weight,
                                                  reduction=self.reduction,
                                                  pos_weight=self.pos_weight)
