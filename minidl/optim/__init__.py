"""Optimizers and learning-rate schedules.

    from minidl.optim import SGD, decay_groups
    from minidl.optim.lr_scheduler import MultiStepLR, Warmup

    opt = SGD(decay_groups(model, 1e-4), lr=0.1, momentum=0.9)          # torch form
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4,
              style="paper")                                             # AlexNet form

See :mod:`minidl.optim.sgd` for the two SGD formulas side by side. :class:`Adam`,
:class:`AdamW`, :class:`RMSprop` and :class:`Adadelta` are torch's, with its defaults, arguments
and ``state_dict`` layout (``{"state": {index: {"step": ..., "exp_avg": ...}},
"param_groups": [...]}``); every optimizer bumps ``p._version`` of each parameter it updates.
"""
from minidl.optim.optimizer import Optimizer
from minidl.optim.sgd import SGD
from minidl.optim.adam import Adam, AdamW
from minidl.optim.rmsprop import RMSprop
from minidl.optim.adadelta import Adadelta
from minidl.optim.groups import decay_groups
from minidl.optim import lr_scheduler

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adadelta", "decay_groups",
           "lr_scheduler"]
