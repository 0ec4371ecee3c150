"""Neural-network building blocks: Module, Parameter, containers, layers, loss modules and
initializers."""
from minidl.nn.module import Module, ModuleList, Parameter, Sequential  # noqa: F401
from minidl.nn import init  # noqa: F401
from minidl.nn.layers import *  # noqa: F401,F403
from minidl.nn.loss import *  # noqa: F401,F403
