"""minidl.data: datasets, the papers' augmentations, and a parallel, resumable DataLoader.

Everything here produces NumPy arrays (the training loop moves batches to the device) and
imports NumPy only; Pillow is imported when an image is first decoded or transformed.

* :class:`Dataset` (``__len__``, ``__getitem__``; ``getitem(index, rng)`` for random
  transforms), :class:`Subset`
* :class:`DataLoader` -- ``(N, C, H, W)`` float32 / ``(N,)`` int64 batches, worker processes,
  ``state_dict()`` / ``load_state_dict()`` for exact mid-epoch resume
* :class:`ImageFolder`, :class:`ImageList`, :class:`CIFAR10` (local files, never downloaded),
  :class:`GeneratedShapes` (drawn on first use, cached)
* :mod:`minidl.data.transforms` -- ``Compose, ToArray, Resize, CenterCrop, RandomCrop,
  RandomHorizontalFlip, ScaleJitter, FancyPCA, SubtractMean, Normalize, TenCrop``
"""
from . import transforms
from .dataloader import DataLoader, collate
from .dataset import (CorruptImageWarning, CorruptSample, Dataset, Subset, sample_rng,
                      shuffle_rng)
from .datasets import CIFAR10, ImageFolder, ImageList, VisionDataset, image_extensions
from .generated import SHAPES, GeneratedShapes

__all__ = ["Dataset", "Subset", "DataLoader", "collate", "CorruptSample", "CorruptImageWarning",
           "sample_rng", "shuffle_rng", "VisionDataset", "ImageFolder", "ImageList", "CIFAR10",
           "GeneratedShapes", "SHAPES", "image_extensions", "transforms"]
