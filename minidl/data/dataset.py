"""The dataset protocol and the per-sample random generator.

A :class:`Dataset` maps an index to an ``(image, label)`` pair. The :class:`~minidl.data.DataLoader`
asks for samples through :meth:`Dataset.getitem` with a ``numpy.random.Generator`` derived from
``(seed, epoch, index)`` (see :func:`sample_rng`), which the dataset hands to its transform, so
the augmentation a sample gets does not depend on which worker process loads it.

Nothing here imports Pillow, CuPy or the rest of minidl: datasets produce NumPy arrays (the
DataLoader turns batches into Tensors).
"""
import contextlib
import threading

import numpy as np

__all__ = ["Dataset", "Subset", "CorruptSample", "CorruptImageWarning", "sample_rng",
           "shuffle_rng", "current_rng", "using_rng"]

# The first word of every SeedSequence key names what the stream is for, so the shuffle stream of
# an epoch can never coincide with a sample's stream (SeedSequence pads keys with zeros: [a, b]
# and [a, b, 0] give the same generator).
_TAG_SHUFFLE = 0x5348
_TAG_SAMPLE = 0x534D


def _check_seed(seed, name="seed"):
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {seed!r}")
    return int(seed)


def sample_rng(seed, epoch, index):
    """The generator of sample ``index`` in ``epoch``: a pure function of the three integers."""
    return np.random.default_rng([_TAG_SAMPLE, int(seed), int(epoch), int(index)])


def shuffle_rng(seed, epoch):
    """The generator that draws the sample order of ``epoch``."""
    return np.random.default_rng([_TAG_SHUFFLE, int(seed), int(epoch)])


# While the loader fetches a sample it also installs the sample's generator here, so a random
# transform called with rng=None from inside a user's own __getitem__ still draws from it.
_local = threading.local()


def current_rng():
    """The generator of the sample being loaded, or a fresh OS-seeded one outside the loader."""
    rng = getattr(_local, "rng", None)
    return rng if rng is not None else np.random.default_rng()


@contextlib.contextmanager
def using_rng(rng):
    """Make ``rng`` what :func:`current_rng` returns inside the ``with`` block."""
    previous = getattr(_local, "rng", None)
    _local.rng = rng
    try:
        yield rng
    finally:
        _local.rng = previous


class CorruptImageWarning(UserWarning):
    """An image could not be decoded and was skipped."""


class CorruptSample:
    """Returned in place of an image that could not be decoded.

    The :class:`~minidl.data.DataLoader` drops such samples from the batch, counts them
    (``loader.skipped``) and reports the count at the end of the epoch. ``path`` names the file,
    ``error`` says what the decoder raised. A CorruptSample is falsy.
    """
    __slots__ = ("path", "error")

    def __init__(self, path, error):
        self.path = str(path)
        self.error = str(error)

    def __bool__(self):
        return False

    def __repr__(self):
        return f"CorruptSample({self.path!r}, {self.error!r})"

    def __reduce__(self):
        return (CorruptSample, (self.path, self.error))


class Dataset:
    """Abstract dataset: ``len(ds)`` samples, ``ds[i] -> (image, label)``.

    Subclasses implement ``__len__`` and ``__getitem__``. Those whose transforms are random
    should also implement :meth:`getitem`, taking the sample's generator; the default
    :meth:`getitem` calls ``self[index]`` with ``rng`` installed as :func:`current_rng`, so
    minidl's random transforms called with ``rng=None`` inside ``__getitem__`` still draw from
    the loader's per-sample stream.

    ``image`` may be anything the transform produces; the loader's collation needs an array
    (after :class:`~minidl.data.transforms.ToArray`) and an integer label. A sample that could
    not be decoded is returned as a :class:`CorruptSample` image.
    """

    def __len__(self):
        raise NotImplementedError(f"{type(self).__name__} must implement __len__")

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must implement __getitem__")

    def getitem(self, index, rng=None):
        """Sample ``index``, drawing any randomness from ``rng`` (a numpy Generator)."""
        with using_rng(rng):
            return self[index]


class Subset(Dataset):
    """The samples ``indices`` of ``dataset``, in that order (e.g. a 45k/5k train/val split).

    ``dataset`` is anything with ``__len__`` and ``__getitem__`` (a minidl Dataset, a list, a
    torch-style dataset).
    """

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        n = len(dataset)
        bad = [i for i in self.indices if not -n <= i < n]
        if bad:
            raise IndexError(f"Subset indices {bad[:5]} out of range for a dataset of {n} samples")

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.dataset[self.indices[index]]

    def getitem(self, index, rng=None):
        """Sample ``indices[index]`` of the wrapped dataset, with ``rng`` for its transforms
        (through its own ``getitem`` when it has one, else installed as :func:`current_rng`)."""
        i = self.indices[index]
        get = getattr(self.dataset, "getitem", None)
        if get is not None:
            return get(i, rng)
        with using_rng(rng):
            return self.dataset[i]


def _normalize_index(index, n, owner):
    if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"{owner} indices must be integers, got {index!r}")
    i = int(index)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"index {index} out of range for {owner} of {n} samples")
    return i
