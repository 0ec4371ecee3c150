"""The papers' networks, built only from the public ``minidl.nn`` API.

* :mod:`~minidl.models.alexnet`: ``alexnet`` (Krizhevsky et al. 2012), ``alexnet_one_gpu``
  (the paper's one-GPU net), ``alexnet_owt`` (torchvision's AlexNet)
* :mod:`~minidl.models.prelu_nets`: ``prelu_net14``, ``prelu_net30``, ``prelu_net_a/b/c``
  (He et al. 2015, "Delving Deep into Rectifiers")
* :mod:`~minidl.models.resnet`: ``resnet18/34/50/101/152`` (ImageNet) and ``cifar_resnet``,
  ``resnet20/32/44/56/110/1202`` (CIFAR-10) (He et al. 2015, "Deep Residual Learning")

Each module's docstring holds the layer table it implements. The ImageNet ResNets and
``alexnet_owt`` use torchvision's module names, and every factory takes ``weights=PATH`` (a
checkpoint :func:`minidl.load` reads, loaded with ``strict=True``).
"""
from minidl.models.alexnet import AlexNet, AlexNetOWT, alexnet, alexnet_one_gpu, alexnet_owt
from minidl.models.prelu_nets import (PReLUNet, prelu_net14, prelu_net30,
                                      prelu_net_a, prelu_net_b, prelu_net_c)
from minidl.models.resnet import (CifarResNet, ResNet, cifar_resnet, resnet18,
                                  resnet20, resnet32, resnet34, resnet44, resnet50, resnet56,
                                  resnet101, resnet110, resnet152, resnet1202)

__all__ = ["AlexNet", "AlexNetOWT", "alexnet", "alexnet_one_gpu", "alexnet_owt", "PReLUNet",
           "prelu_net14", "prelu_net30", "prelu_net_a", "prelu_net_b", "prelu_net_c",
           "CifarResNet", "ResNet", "cifar_resnet", "resnet18", "resnet20", "resnet32",
           "resnet34", "resnet44", "resnet50", "resnet56", "resnet101", "resnet110", "resnet152",
           "resnet1202"]
