"""Image datasets read from local files: ImageFolder, ImageList, CIFAR10.

Each returns ``(image, label)`` with ``image`` a PIL RGB image passed through ``transform``
(``transform(img, rng=...)``; see :mod:`minidl.data.transforms`) and ``label`` an int. Nothing is
ever downloaded. An image that cannot be decoded comes back as a
:class:`~minidl.data.dataset.CorruptSample`, which the DataLoader skips, counts and names. Image
files are decoded with their EXIF orientation applied, and 16-bit images are scaled to 8 bits
from their range (not clipped at 255).
"""
import os
import pickle
import warnings

import numpy as np

from .dataset import CorruptImageWarning, CorruptSample, Dataset, _normalize_index, using_rng
from .transforms import Transform, _pil, _to_8bit

__all__ = ["VisionDataset", "ImageFolder", "ImageList", "CIFAR10", "image_extensions",
           "load_image"]


def image_extensions():
    """Lower-case file extensions (with the dot) of every format this Pillow can open."""
    Image = _pil()
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN)


def load_image(path):
    """Decode ``path`` to an RGB PIL image, or a CorruptSample if it cannot be decoded.

    A missing or unreadable file is an error (it raises); a file that is there but does not
    decode (truncated, corrupt, not an image) is data damage and gives a CorruptSample.
    EXIF orientation is applied (a photo taken upright comes out upright), and 16-bit
    (and 32-bit integer) images are scaled from their range to 8 bits instead of saturating.
    """
    Image = _pil()
    from PIL import ImageOps
    with open(path, "rb") as f:
        try:
            img = Image.open(f)
            img.load()  # the full decode while the file is open
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # damaged EXIF metadata: the pixels are still good
                pass
            img = _to_8bit(img).convert("RGB")
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error ...
            return CorruptSample(path, f"{type(e).__name__}: {e}")
    return img


class VisionDataset(Dataset):
    """Base of the image datasets: :meth:`load` gives the raw ``(PIL image, label)``;
    ``getitem(index, rng)`` applies ``transform`` with the sample's generator."""

    transform = None

    def load(self, index):
        """The undecorated sample ``(PIL RGB image or CorruptSample, label)``."""
        raise NotImplementedError

    def getitem(self, index, rng=None):
        img, label = self.load(index)
        if isinstance(img, CorruptSample) or self.transform is None:
            return img, label
        with using_rng(rng):  # also reaches rng=None transforms inside user callables
            if isinstance(self.transform, Transform):
                img = self.transform(img, rng=rng)
            else:
                img = self.transform(img)
        return img, label

    def __getitem__(self, index):
        img, label = self.getitem(index)
        if isinstance(img, CorruptSample):
            warnings.warn(f"skipping corrupt image {img.path} ({img.error})", CorruptImageWarning,
                          stacklevel=2)
        return img, label


def _dir_key(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class ImageFolder(VisionDataset):
    """The ImageNet layout ``root/<class>/<image>``; images may sit in nested sub-folders.

    Class indices follow the sorted folder names. Every file whose extension (case-insensitive)
    belongs to a format Pillow can open is a sample; samples are ordered by class, then path.
    Symbolic links are followed, but each directory is read once per class: a link back to an
    ancestor (a loop) or to a directory already read is not entered (listed in
    ``skipped_links``).

    Attributes: ``classes`` (sorted names), ``class_to_idx``, ``samples`` (list of
    ``(path, class_index)``), ``targets`` (the class indices).
    """

    def __init__(self, root, transform=None, extensions=None):
        self.root = os.fspath(root)
        self.transform = transform
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"ImageFolder root {self.root!r} is not a directory")
        exts = image_extensions() if extensions is None else \
            frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        self.extensions = exts
        self.classes = sorted(e.name for e in os.scandir(self.root)
                              if e.is_dir() and not e.name.startswith("."))
        if not self.classes:
            raise FileNotFoundError(f"ImageFolder found no class folders in {self.root!r} "
                                    f"(expected root/<class>/<image>)")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = []
        self.skipped_links = []  # directories not entered: symlink loops and repeats
        for c in self.classes:
            top = os.path.join(self.root, c)
            seen = {_dir_key(top)}  # each directory (by device and inode) is read once
            for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
                keep = []
                for d in sorted(dirnames):
                    if d.startswith("."):
                        continue
                    key = _dir_key(os.path.join(dirpath, d))
                    if key is None or key in seen:  # broken link, loop, or a second path
                        self.skipped_links.append(os.path.join(dirpath, d))
                        continue
                    seen.add(key)
                    keep.append(d)
                dirnames[:] = keep
                for fn in sorted(filenames):
                    if os.path.splitext(fn)[1].lower() in exts and not fn.startswith("."):
                        self.samples.append((os.path.join(dirpath, fn), self.class_to_idx[c]))
        if not self.samples:
            raise FileNotFoundError(f"ImageFolder found no images under {self.root!r} in "
                                    f"classes {self.classes[:5]}... with extensions like "
                                    f"{sorted(exts)[:8]}")
        self.targets = [t for _, t in self.samples]

    def __len__(self):
        return len(self.samples)

    def load(self, index):
        path, target = self.samples[_normalize_index(index, len(self.samples), "ImageFolder")]
        return load_image(path), target

    def __repr__(self):
        return (f"{type(self).__name__}(root={self.root!r}, {len(self)} images, "
                f"{len(self.classes)} classes)")


class ImageList(VisionDataset):
    """Images listed in a text file, one ``path label`` per line (Caffe's/Chainer's form).

    ``path`` is relative to ``root`` (or absolute) and may contain spaces (the label is the last
    field); blank lines and lines starting with ``#`` are ignored. ``samples`` holds
    ``(full path, label)``, ``targets`` the labels.
    """

    def __init__(self, list_file, root, transform=None):
        self.list_file = os.fspath(list_file)
        self.root = os.fspath(root)
        self.transform = transform
        if not os.path.isfile(self.list_file):
            raise FileNotFoundError(f"ImageList list file {self.list_file!r} does not exist")
        self.samples = []
        with open(self.list_file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                parts = line.rsplit(None, 1)
                try:
                    if len(parts) != 2:
                        raise ValueError
                    label = int(parts[1])
                except ValueError:
                    raise ValueError(f"{self.list_file}:{lineno}: expected 'path label' with an "
                                     f"integer label, got {line!r}") from None
                if label < 0:
                    raise ValueError(f"{self.list_file}:{lineno}: negative label {label}")
                self.samples.append((os.path.join(self.root, parts[0]), label))
        if not self.samples:
            raise ValueError(f"ImageList list file {self.list_file!r} lists no images")
        self.targets = [t for _, t in self.samples]

    def __len__(self):
        return len(self.samples)

    def load(self, index):
        path, target = self.samples[_normalize_index(index, len(self.samples), "ImageList")]
        return load_image(path), target

    def __repr__(self):
        return f"ImageList({self.list_file!r}, root={self.root!r}, {len(self)} images)"


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


def _unpickle(path):
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    # Keys are bytes in the official (Python 2) pickles; accept str keys too.
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


class CIFAR10(VisionDataset):
    """CIFAR-10 from the standard ``cifar-10-batches-py`` pickles on a local path.

    ``root`` is that folder or its parent. Train: ``data_batch_1`` .. ``data_batch_5`` (50,000
    images); test: ``test_batch`` (10,000). Each pickle is a dict with ``b'data'`` (N, 3072)
    uint8 (rows: 1024 R, 1024 G, 1024 B values of a 32x32 image) and ``b'labels'``. Never
    downloads. Only load pickles from a source you trust.

    Items are ``(PIL RGB 32x32 image, label)`` so the same transforms work as for ImageFolder
    (``as_pil=False`` gives HWC uint8 arrays, which ToArray also accepts). ``data`` is the
    (N, 32, 32, 3) uint8 array, ``targets`` the labels, ``classes`` the names.
    """

    base_folder = "cifar-10-batches-py"
    train_list = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_list = ("test_batch",)

    def __init__(self, root, train=True, transform=None, as_pil=True):
        self.root = os.fspath(root)
        self.train = bool(train)
        self.transform = transform
        self.as_pil = bool(as_pil)
        names = self.train_list if self.train else self.test_list
        folder = None
        for cand in (self.root, os.path.join(self.root, self.base_folder)):
            if all(os.path.isfile(os.path.join(cand, n)) for n in names):
                folder = cand
                break
        if folder is None:
            raise FileNotFoundError(
                f"CIFAR-10 {'training' if self.train else 'test'} batches not found under "
                f"{self.root!r}: expected {', '.join(names)} in {self.root!r} or in "
                f"{os.path.join(self.root, self.base_folder)!r}. Get 'CIFAR-10 python version' "
                f"(cifar-10-python.tar.gz) from https://www.cs.toronto.edu/~kriz/cifar.html and "
                f"extract it there (tar xzf cifar-10-python.tar.gz); minidl never downloads.")
        self.folder = folder
        data, labels = [], []
        for n in names:
            d = _unpickle(os.path.join(folder, n))
            if "data" not in d or "labels" not in d:
                raise ValueError(f"{os.path.join(folder, n)} is not a CIFAR-10 batch (keys "
                                 f"{sorted(d)})")
            x = np.asarray(d["data"], dtype=np.uint8)
            if x.ndim != 2 or x.shape[1] != 3072:
                raise ValueError(f"{os.path.join(folder, n)}: data has shape {x.shape}, "
                                 f"expected (N, 3072)")
            data.append(x)
            labels.extend(int(v) for v in d["labels"])
        self.data = np.ascontiguousarray(
            np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        self.targets = labels
        if len(self.targets) != len(self.data):
            raise ValueError(f"CIFAR-10 batches in {folder!r} hold {len(self.data)} images but "
                             f"{len(self.targets)} labels")
        meta = os.path.join(folder, "batches.meta")
        self.classes = list(CIFAR10_CLASSES)
        if os.path.isfile(meta):
            names_ = _unpickle(meta).get("label_names")
            if names_:
                self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names_]

    def __len__(self):
        return len(self.data)

    def load(self, index):
        i = _normalize_index(index, len(self.data), "CIFAR10")
        img = self.data[i]
        if self.as_pil:
            img = _pil().fromarray(img)  # HWC uint8 -> RGB
        return img, self.targets[i]

    def __repr__(self):
        return (f"CIFAR10(root={self.root!r}, train={self.train}, {len(self)} images)")
