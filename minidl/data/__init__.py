"""minidl.data: datasets, the papers' augmentations, and a parallel, resumable DataLoader.

Datasets and transforms produce NumPy arrays; the DataLoader collates them into batches of
minidl Tensors on the device asked for. Importing it needs NumPy only; Pillow is imported when
an image is first decoded or transformed.

* :class:`Dataset` (``__len__``, ``__getitem__``; ``getitem(index, rng)`` for random
  transforms), :class:`Subset`
* :class:`DataLoader` -- batches of Tensors (``device=``) through ``collate_fn`` (default
  :func:`default_collate`), worker processes, ``state_dict()`` / ``load_state_dict()`` for exact
  mid-epoch resume, sharding across data-parallel ranks (``num_replicas``, ``rank``)
* :class:`ImageFolder`, :class:`ImageList`, :class:`CIFAR10` (local files, never downloaded),
  :class:`GeneratedShapes` (drawn on first use, cached)
* :mod:`minidl.data.transforms` -- ``Compose, ToArray, Resize, CenterCrop, RandomCrop,
  RandomHorizontalFlip, ScaleJitter, FancyPCA, SubtractMean, Normalize, TenCrop,
  RandomResizedCrop, ColorJitter, Lambda``
"""
from . import transforms
from .dataloader import DataLoader, WorkerInfo, default_collate, get_worker_info
from .dataset import (CorruptImageWarning, CorruptSample, Dataset, Subset, current_rng,
                      sample_rng, shuffle_rng)
from .datasets import CIFAR10, ImageFolder, ImageList, VisionDataset, image_extensions
from .generated import SHAPES, GeneratedShapes

__all__ = ["Dataset", "Subset", "DataLoader", "default_collate", "get_worker_info",
           "WorkerInfo", "CorruptSample", "CorruptImageWarning", "sample_rng",
           "shuffle_rng", "current_rng", "VisionDataset", "ImageFolder", "ImageList",
           "CIFAR10", "GeneratedShapes", "SHAPES", "image_extensions", "transforms"]
