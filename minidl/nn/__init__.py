"""Neural-network building blocks: Module, Parameter, containers, layers, loss modules and
initializers; ``minidl.nn.parallel.DistributedDataParallel`` for data parallelism."""
from minidl.nn import init
from minidl.nn import layers as _layers
from minidl.nn import loss as _loss
from minidl.nn import parallel  # DistributedDataParallel (imports neither mpi4py nor CuPy)
from minidl.nn.layers import *  # noqa: F403  (the layers, listed in layers.__all__)
from minidl.nn.loss import *  # noqa: F403  (the loss modules, listed in loss.__all__)
from minidl.nn.module import Module, ModuleList, Parameter, Sequential

__all__ = ["Module", "ModuleList", "Parameter", "Sequential", "init", "parallel",
           *_layers.__all__, *_loss.__all__]
