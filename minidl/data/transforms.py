"""Image transforms: the augmentations of the AlexNet, PReLU-net and ResNet papers.

Every transform is a callable ``t(img, rng=None)``. Random ones draw from ``rng``, the sample's
``numpy.random.Generator`` that the :class:`~minidl.data.DataLoader` derives from
``(seed, epoch, index)``; with ``rng=None`` they use :func:`~minidl.data.dataset.current_rng`
(the loader's generator while a sample is being loaded, else a fresh OS-seeded one).
:class:`Compose` passes its ``rng`` to each transform in turn.

Two kinds of image flow through a pipeline:

* a PIL image (what the datasets return), before :class:`ToArray`;
* a CHW float32 NumPy array, after :class:`ToArray`.

================================  ===========================  ================================
transform                         PIL image in                 CHW array in
================================  ===========================  ================================
ToArray                           yes (-> CHW float32)         HWC uint8 array also accepted
Resize, ScaleJitter               yes                          yes (bilinear per channel)
CenterCrop, RandomCrop            yes                          yes (also (..., C, H, W))
RandomHorizontalFlip              yes                          yes (also (..., C, H, W))
RandomResizedCrop                 yes                          yes (also (..., C, H, W))
ColorJitter                       yes                          yes, values in [0, 1]
Lambda                            whatever the function takes  idem
TenCrop                           no                           yes -> (10, C, h, w)
SubtractMean, Normalize, FancyPCA no                           yes (also (..., C, H, W))
================================  ===========================  ================================

The recipes, from the papers::

    # AlexNet: raw 0-255 values minus the mean image, subtracted before cropping
    Compose([Resize(256), CenterCrop(256), ToArray(scale=255.0), SubtractMean(mean),
             RandomCrop(227), RandomHorizontalFlip(), FancyPCA.from_dataset(...)])
    # ResNet / PReLU-net ImageNet: scale jitter, then a random crop and flip
    Compose([ScaleJitter(256, 480), RandomCrop(224), RandomHorizontalFlip(), ToArray(),
             Normalize(mean, std)])
    # ResNet CIFAR-10: pad 4, random 32x32 crop, flip
    Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), ToArray(), Normalize(...)])

Pillow is imported lazily: ``import minidl.data.transforms`` needs NumPy only.
"""
import json
import math
import os

import numpy as np

from .dataset import CorruptSample, current_rng, using_rng

__all__ = ["Transform", "Compose", "ToArray", "Resize", "CenterCrop", "RandomCrop",
           "RandomHorizontalFlip", "ScaleJitter", "FancyPCA", "SubtractMean", "Normalize",
           "TenCrop", "RandomResizedCrop", "ColorJitter", "Lambda", "compute_mean_image",
           "rgb_covariance"]


def _pil():
    """Pillow's Image module, or an ImportError saying how to get it."""
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("minidl.data needs Pillow to decode and transform images: "
                          "pip install pillow (or pip install minidl[data])") from e
    return Image


def _is_pil(img):
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - then nothing is a PIL image
        return False
    return isinstance(img, Image.Image)


def _hw(img):
    """(height, width) of a PIL image or a (..., C, H, W) array."""
    if _is_pil(img):
        return img.height, img.width
    if isinstance(img, np.ndarray) and img.ndim >= 3:
        return img.shape[-2], img.shape[-1]
    raise TypeError(f"expected a PIL image or a (C, H, W) array, got "
                    f"{type(img).__name__}{getattr(img, 'shape', '')}")


def _array(img, who, min_ndim=3):
    if _is_pil(img):
        raise TypeError(f"{who} works on CHW arrays: put it after ToArray() in the Compose "
                        f"(got a PIL image of size {img.size})")
    if not isinstance(img, np.ndarray) or img.ndim < min_ndim:
        raise TypeError(f"{who} expects a (C, H, W) float array, got "
                        f"{type(img).__name__} with shape {getattr(img, 'shape', None)}")
    return img


def _size2(size, name="size"):
    """An int or (h, w) pair -> (h, w) of positive ints."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    else:
        try:
            h, w = (int(s) for s in size)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an int or an (h, w) pair, got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive, got {size!r}")
    return h, w


def _rng(rng):
    return rng if rng is not None else current_rng()


def _crop(img, top, left, h, w):
    if _is_pil(img):
        return img.crop((left, top, left + w, top + h))
    return np.ascontiguousarray(img[..., top:top + h, left:left + w])


def _flip(img):
    if _is_pil(img):
        return img.transpose(_pil().Transpose.FLIP_LEFT_RIGHT)
    return np.ascontiguousarray(img[..., ::-1])


def _resize_array(x, h, w):
    """Bilinear resize of a (..., H, W) float array, one channel plane at a time (PIL 'F')."""
    Image = _pil()
    lead = x.shape[:-2]
    planes = x.reshape((-1,) + x.shape[-2:])
    out = np.empty((planes.shape[0], h, w), dtype=np.float32)
    for i, p in enumerate(planes):
        im = Image.fromarray(np.ascontiguousarray(p, dtype=np.float32))  # mode "F"
        out[i] = np.asarray(im.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    return out.reshape(lead + (h, w)).astype(x.dtype if x.dtype.kind == "f" else np.float32,
                                               copy=False)


def _resize(img, h, w):
    if _is_pil(img):
        if (img.height, img.width) == (h, w):
            return img
        return img.resize((w, h), _pil().Resampling.BILINEAR)
    if img.shape[-2:] == (h, w):
        return img
    return _resize_array(img, h, w)


def _shorter_side_to(img, size):
    h, w = _hw(img)
    if h <= w:
        nh, nw = size, max(1, int(round(w * size / h)))
    else:
        nh, nw = max(1, int(round(h * size / w))), size
    return _resize(img, nh, nw)


def _to_8bit(img):
    """A PIL image with more than 8 bits per channel scaled to 8 bits ("L") from its range:
    16-bit modes ("I;16*") by 255/65535; 32-bit integer ("I") images by the range their values
    need (255, 65535 or 2**32 - 1); others are returned as they are."""
    mode = img.mode
    if not (mode.startswith("I;16") or mode == "I"):
        return img
    a = np.asarray(img).astype(np.float64)
    if mode == "I":
        top = float(a.max()) if a.size else 0.0
        full = 255.0 if top <= 255 else 65535.0 if top <= 65535 else 4294967295.0
        a = np.clip(a, 0, None)
    else:
        full = 65535.0
    out = np.clip(np.round(a * (255.0 / full)), 0, 255).astype(np.uint8)
    return _pil().fromarray(out, "L")


class Transform:
    """Base class of minidl's transforms: ``__call__(img, rng=None)``."""

    def __call__(self, img, rng=None):
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply ``transforms`` in order, handing each the same per-sample ``rng``.

    Items that are not minidl :class:`Transform` instances (plain functions) are called with the
    image only.
    """

    def __init__(self, transforms):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose items must be callable, got {t!r}")

    def __call__(self, img, rng=None):
        rng = _rng(rng)
        with using_rng(rng):  # plain functions drawing from current_rng() get it too
            for j, t in enumerate(self.transforms):
                try:
                    img = t(img, rng=rng) if isinstance(t, Transform) else t(img)
                except Exception as e:
                    e.add_note(f"in transform {j} of the Compose: {t!r}")
                    raise
        return img

    def __repr__(self):
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


class ToArray(Transform):
    """PIL image (or HWC uint8 array) -> CHW float32 array with values in [0, scale].

    ``scale=1.0`` gives [0, 1]; the AlexNet recipe uses ``scale=255.0`` (raw pixel values).
    RGB gives C=3, grayscale ('L') C=1, RGBA C=4; other modes are converted to RGB.
    """

    def __init__(self, scale=1.0):
        self.scale = float(scale)
        if not self.scale > 0:
            raise ValueError(f"ToArray scale must be positive, got {scale!r}")

    def __call__(self, img, rng=None):
        if _is_pil(img):
            img = _to_8bit(img)
            if img.mode not in ("RGB", "L", "RGBA"):
                img = img.convert("RGB")
            a = np.asarray(img)
        elif isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim in (2, 3):
            a = img
        else:
            raise TypeError(f"ToArray expects a PIL image or an HWC uint8 array, got "
                            f"{type(img).__name__} {getattr(img, 'dtype', '')} "
                            f"{getattr(img, 'shape', '')}")
        if a.ndim == 2:
            a = a[:, :, None]
        out = np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32)
        # divide (not multiply by scale/255) so 255 maps to exactly `scale` for 1 and 255
        out /= np.float32(255.0 / self.scale)
        return out


class Resize(Transform):
    """Resize so the shorter side is ``size`` (aspect kept), or to exactly ``(h, w)``.

    Bilinear, antialiased when shrinking (Pillow's resampling). PIL image or CHW array.
    """

    def __init__(self, size):
        self.size = size
        if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
            if size <= 0:
                raise ValueError(f"Resize size must be positive, got {size!r}")
            self._hw = None
        else:
            self._hw = _size2(size)

    def __call__(self, img, rng=None):
        if self._hw is None:
            return _shorter_side_to(img, int(self.size))
        return _resize(img, *self._hw)


class ScaleJitter(Transform):
    """Resize the shorter side to S drawn uniformly from the integers [min_size, max_size].

    The ResNet recipe uses [256, 480], the PReLU-net one [256, 512]. PIL image or CHW array.
    """

    def __init__(self, min_size=256, max_size=480):
        self.min_size, self.max_size = int(min_size), int(max_size)
        if not 0 < self.min_size <= self.max_size:
            raise ValueError(f"ScaleJitter needs 0 < min_size <= max_size, got "
                             f"({min_size}, {max_size})")

    def __call__(self, img, rng=None):
        s = int(_rng(rng).integers(self.min_size, self.max_size + 1))
        return _shorter_side_to(img, s)


def _check_fits(img, h, w, who):
    H, W = _hw(img)
    if h > H or w > W:
        raise ValueError(f"{who}: crop ({h}, {w}) is larger than the image ({H}, {W}); "
                         f"resize first")
    return H, W


class CenterCrop(Transform):
    """The central ``size`` (int or (h, w)) crop; offsets round like torchvision's.

    PIL image or (..., C, H, W) array.
    """

    def __init__(self, size):
        self.size = size
        self._hw = _size2(size)

    def __call__(self, img, rng=None):
        h, w = self._hw
        H, W = _check_fits(img, h, w, "CenterCrop")
        top, left = int(round((H - h) / 2.0)), int(round((W - w) / 2.0))
        return _crop(img, top, left, h, w)


class RandomCrop(Transform):
    """A uniformly placed ``size`` crop, after zero-padding ``padding`` pixels on every side.

    ``RandomCrop(32, padding=4)`` is the CIFAR recipe; the top-left corner is uniform over all
    ``(H + 2p - h + 1) x (W + 2p - w + 1)`` positions. PIL image or (..., C, H, W) array.
    """

    def __init__(self, size, padding=0):
        self.size = size
        self.padding = int(padding)
        self._hw = _size2(size)
        if self.padding < 0:
            raise ValueError(f"RandomCrop padding must be >= 0, got {padding!r}")

    def __call__(self, img, rng=None):
        rng = _rng(rng)
        p = self.padding
        if p:
            if _is_pil(img):
                Image = _pil()
                padded = Image.new(img.mode, (img.width + 2 * p, img.height + 2 * p))
                padded.paste(img, (p, p))
                img = padded
            else:
                pad = [(0, 0)] * (img.ndim - 2) + [(p, p), (p, p)]
                img = np.pad(img, pad)
        h, w = self._hw
        H, W = _check_fits(img, h, w, "RandomCrop")
        top = int(rng.integers(0, H - h + 1))
        left = int(rng.integers(0, W - w + 1))
        return _crop(img, top, left, h, w)


class RandomHorizontalFlip(Transform):
    """Mirror left-right with probability ``p``. PIL image or (..., C, H, W) array."""

    def __init__(self, p=0.5):
        self.p = float(p)
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip p must be in [0, 1], got {p!r}")

    def __call__(self, img, rng=None):
        if _rng(rng).random() < self.p:
            return _flip(img)
        return img


class TenCrop(Transform):
    """The 10 test views of AlexNet: 4 corner crops, the centre crop, and their mirror images.

    CHW array in, ``(10, C, h, w)`` array out, in the order top-left, top-right, bottom-left,
    bottom-right, centre, then the same five flipped (index 4 equals :class:`CenterCrop`). The
    loader collates a batch of them into ``(N, 10, C, h, w)``; average the 10 softmaxes.
    """

    def __init__(self, size):
        self.size = size
        self._hw = _size2(size)
        self._center = CenterCrop(size)

    def __call__(self, img, rng=None):
        x = _array(img, "TenCrop")
        if x.ndim != 3:
            raise ValueError(f"TenCrop expects a (C, H, W) array, got shape {x.shape}")
        h, w = self._hw
        H, W = _check_fits(x, h, w, "TenCrop")
        views = [x[:, :h, :w], x[:, :h, W - w:], x[:, H - h:, :w], x[:, H - h:, W - w:],
                 self._center(x)]
        views += [v[:, :, ::-1] for v in views]
        return np.ascontiguousarray(np.stack(views))


class RandomResizedCrop(Transform):
    """A crop of random area and aspect ratio, resized to ``size`` (torchvision's arguments and
    sampling; the Inception / ResNet-v1.5 ImageNet augmentation).

    Up to 10 times: the crop's area is ``uniform(scale) * H * W``, its aspect ratio (w / h)
    ``exp(uniform(log(ratio)))``, ``w = round(sqrt(area * ratio))``, ``h = round(sqrt(area /
    ratio))``; the first that fits is placed uniformly. If none fits, the central crop of the
    whole image clamped to the ratio range is taken. The crop is resized bilinearly
    (antialiased when shrinking, as torchvision's PIL path). PIL image or (..., C, H, W) array;
    all draws come from ``rng``.
    """

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
        self.size = size
        self._hw = _size2(size)
        self.scale = _float_pair(scale, "RandomResizedCrop scale")
        self.ratio = _float_pair(ratio, "RandomResizedCrop ratio")
        if self.scale[0] < 0 or self.scale[0] > self.scale[1]:
            raise ValueError(f"RandomResizedCrop scale must be (min, max) with 0 <= min <= max, "
                             f"got {scale!r}")
        if self.ratio[0] <= 0 or self.ratio[0] > self.ratio[1]:
            raise ValueError(f"RandomResizedCrop ratio must be (min, max) with 0 < min <= max, "
                             f"got {ratio!r}")

    def get_params(self, img, rng=None):
        """``(top, left, h, w)`` of the crop for ``img``, drawn from ``rng``."""
        rng = _rng(rng)
        H, W = _hw(img)
        area = H * W
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(self.scale[0], self.scale[1])
            aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= W and 0 < h <= H:
                top = int(rng.integers(0, H - h + 1))
                left = int(rng.integers(0, W - w + 1))
                return top, left, h, w
        in_ratio = W / H  # fallback: the central crop
        if in_ratio < min(self.ratio):
            w = W
            h = round(w / min(self.ratio))
        elif in_ratio > max(self.ratio):
            h = H
            w = round(h * max(self.ratio))
        else:
            w, h = W, H
        return (H - h) // 2, (W - w) // 2, h, w

    def __call__(self, img, rng=None):
        top, left, h, w = self.get_params(img, rng)
        return _resize(_crop(img, top, left, h, w), *self._hw)


def _float_pair(value, name):
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (min, max) pair of numbers, got {value!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return a, b


def _jitter_range(value, name, center=1.0, bound=(0.0, math.inf), clip_first_on_zero=True):
    """torchvision's ColorJitter._check_input: a number v gives [center - v, center + v]."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"ColorJitter {name} must be a non-negative number, got {value!r}")
        lo, hi = center - float(value), center + float(value)
        if clip_first_on_zero:
            lo = max(lo, 0.0)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        lo, hi = _float_pair(value, f"ColorJitter {name}")
    else:
        raise TypeError(f"ColorJitter {name} should be a single number or a (min, max) pair, "
                        f"got {value!r}")
    if not bound[0] <= lo <= hi <= bound[1]:
        raise ValueError(f"ColorJitter {name} values should be between {bound}, got "
                         f"{value!r} (the range [{lo}, {hi}])")
    if lo == hi == center:
        return None
    return lo, hi


def _gray(x):
    """ITU-R 601-2 luma of a (..., 3, H, W) array, kept as (..., 1, H, W) (torchvision's)."""
    r, g, b = x[..., 0, :, :], x[..., 1, :, :], x[..., 2, :, :]
    return (0.2989 * r + 0.587 * g + 0.114 * b)[..., None, :, :]


def _blend(x, other, factor):
    return np.clip(factor * x + (1.0 - factor) * other, 0.0, 1.0)


def _rgb_to_hsv(x):
    r, g, b = x[..., 0, :, :], x[..., 1, :, :], x[..., 2, :, :]
    maxc, minc = x.max(axis=-3), x.min(axis=-3)
    eqc = maxc == minc
    cr = maxc - minc
    s = cr / np.where(eqc, 1.0, maxc)
    div = np.where(eqc, 1.0, cr)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    h = (maxc == r) * (bc - gc) + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc) \
        + ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = np.fmod(h / 6.0 + 1.0, 1.0)
    return h, s, maxc


def _hsv_to_rgb(h, s, v):
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.astype(np.int64) % 6
    p = np.clip(v * (1.0 - s), 0.0, 1.0)
    q = np.clip(v * (1.0 - s * f), 0.0, 1.0)
    t = np.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros(h.shape[:-2] + (3,) + h.shape[-2:], dtype=np.result_type(v, np.float32))
    for k, (r, g, b) in enumerate(table):
        m = i == k
        out[..., 0, :, :] = np.where(m, r, out[..., 0, :, :])
        out[..., 1, :, :] = np.where(m, g, out[..., 1, :, :])
        out[..., 2, :, :] = np.where(m, b, out[..., 2, :, :])
    return out


class ColorJitter(Transform):
    """Random brightness, contrast, saturation and hue, in a random order (torchvision's
    arguments and semantics).

    Each of ``brightness``, ``contrast``, ``saturation`` is a number ``v`` (the factor is drawn
    uniformly from ``[max(0, 1 - v), 1 + v]``) or a ``(min, max)`` pair; ``hue`` is a number in
    [0, 0.5] (shift drawn from ``[-hue, hue]``) or a pair within [-0.5, 0.5]. Per image: the
    order is a random permutation of the four adjustments, then the factors are drawn (all from
    ``rng``). Factor 1 (hue 0) leaves the image unchanged.

    * PIL image: Pillow's ``ImageEnhance.Brightness / Contrast / Color`` and a hue shift of the
      HSV image's 8-bit hue channel (with wrap-around), as torchvision's PIL path.
    * (..., C, H, W) float array with values in [0, 1] (torchvision's float-tensor semantics):
      brightness ``clip(f x)``, contrast ``clip(f x + (1 - f) mean(gray(x)))``, saturation
      ``clip(f x + (1 - f) gray(x))``, hue by rotating H in HSV; gray is ITU-R 601-2 luma.
      Saturation and hue leave 1-channel images unchanged.
    """

    def __init__(self, brightness=0, contrast=0, saturation=0, hue=0):
        self.brightness = _jitter_range(brightness, "brightness")
        self.contrast = _jitter_range(contrast, "contrast")
        self.saturation = _jitter_range(saturation, "saturation")
        self.hue = _jitter_range(hue, "hue", center=0.0, bound=(-0.5, 0.5),
                                 clip_first_on_zero=False)

    def get_params(self, rng=None):
        """``(order, brightness, contrast, saturation, hue)``: the permutation of 0..3 and the
        factors (None for an adjustment that is off), drawn from ``rng``."""
        rng = _rng(rng)
        order = rng.permutation(4)
        draw = (lambda r: None if r is None else float(rng.uniform(r[0], r[1])))
        b = draw(self.brightness)
        c = draw(self.contrast)
        s = draw(self.saturation)
        h = draw(self.hue)
        return order, b, c, s, h

    def __call__(self, img, rng=None):
        order, b, c, s, h = self.get_params(rng)
        pil = _is_pil(img)
        if not pil:
            img = _array(img, "ColorJitter")
            dtype = img.dtype if img.dtype.kind == "f" else np.float32
            img = img.astype(np.float64)
        for k in order:
            f = (b, c, s, h)[k]
            if f is None:
                continue
            img = (_jitter_pil if pil else _jitter_array)(img, int(k), f)
        return img if pil else img.astype(dtype)


def _jitter_pil(img, k, f):
    from PIL import ImageEnhance
    Image = _pil()
    if k == 0:
        return ImageEnhance.Brightness(img).enhance(f)
    if k == 1:
        return ImageEnhance.Contrast(img).enhance(f)
    if k == 2:
        return ImageEnhance.Color(img).enhance(f)
    if img.mode in ("L", "1", "I", "F"):
        return img
    mode = img.mode
    hh, ss, vv = img.convert("HSV").split()
    np_h = np.array(hh, dtype=np.uint8)
    with np.errstate(over="ignore"):
        np_h += np.array(np.int32(f * 255)).astype(np.uint8)
    hh = Image.fromarray(np_h, "L")
    return Image.merge("HSV", (hh, ss, vv)).convert(mode)


def _jitter_array(x, k, f):
    C = x.shape[-3]
    if k == 0:
        return _blend(x, 0.0, f)
    if k == 1:
        g = _gray(x) if C == 3 else x
        return _blend(x, g.mean(axis=(-3, -2, -1), keepdims=True), f)
    if C == 1:
        return x
    if C != 3:
        raise ValueError(f"ColorJitter saturation/hue need 1 or 3 channels, got shape {x.shape}")
    if k == 2:
        return _blend(x, _gray(x), f)
    hh, ss, vv = _rgb_to_hsv(x)
    return _hsv_to_rgb(np.mod(hh + f, 1.0), ss, vv)


class Lambda(Transform):
    """Apply a user function: ``Lambda(lambda img: ...)`` (torchvision's ``Lambda``).

    ``lambd(img)`` is called with the sample's generator installed as
    :func:`minidl.data.current_rng`, so a random function that draws from ``current_rng()``
    follows the loader's per-sample stream (identical for any number of workers).
    """

    def __init__(self, lambd):
        if not callable(lambd):
            raise TypeError(f"Argument lambd should be callable, got {type(lambd).__name__!r}")
        self.lambd = lambd

    def __call__(self, img, rng=None):
        if rng is None:
            return self.lambd(img)
        with using_rng(rng):
            return self.lambd(img)

    def __repr__(self):
        return f"Lambda({getattr(self.lambd, '__name__', repr(self.lambd))})"


def _channel_vector(v, name):
    a = np.asarray(v, dtype=np.float32).reshape(-1)
    if a.size == 0:
        raise ValueError(f"{name} must not be empty")
    return a


class Normalize(Transform):
    """``(x - mean[c]) / std[c]`` per channel; CHW or (..., C, H, W) float array."""

    def __init__(self, mean, std):
        self.mean = _channel_vector(mean, "Normalize mean")
        self.std = _channel_vector(std, "Normalize std")
        if self.mean.shape != self.std.shape:
            raise ValueError(f"Normalize mean and std differ in length: {self.mean.shape} vs "
                             f"{self.std.shape}")
        if np.any(self.std <= 0):
            raise ValueError(f"Normalize std must be positive, got {self.std.tolist()}")

    def __call__(self, img, rng=None):
        x = _array(img, "Normalize")
        C = x.shape[-3]
        if C != self.mean.size:
            raise ValueError(f"Normalize has {self.mean.size} channel means but the image has "
                             f"{C} channels (shape {x.shape})")
        m = self.mean.reshape(C, 1, 1)
        s = self.std.reshape(C, 1, 1)
        return ((x - m) / s).astype(np.float32, copy=False)

    def __repr__(self):
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


# --- statistics over a dataset (mean image, RGB covariance), cached to files -----------------

def _raw_images(dataset, n, seed, transform):
    """Yield CHW float arrays of up to n samples of dataset (a seeded random subset).

    Datasets with a ``load(index)`` method (minidl's image datasets) give the undecorated image,
    to which ``transform`` is applied (default ``ToArray()``); others must return arrays.
    """
    N = len(dataset)
    if N == 0:
        raise ValueError("cannot compute statistics of an empty dataset")
    if n is None or n >= N:
        indices = np.arange(N)
    else:
        indices = np.sort(np.random.default_rng([seed, N]).choice(N, size=int(n), replace=False))
    load = getattr(dataset, "load", None)
    if transform is None:
        transform = ToArray()
    for i in indices:
        i = int(i)
        if load is not None:
            img = load(i)[0]
            if isinstance(img, CorruptSample):
                continue
            x = transform(img, rng=np.random.default_rng([seed, i])) \
                if isinstance(transform, Transform) else transform(img)
        else:
            x = dataset[i][0]
            if isinstance(x, CorruptSample):
                continue
        x = np.asarray(x)
        if x.ndim != 3:
            raise ValueError(f"expected (C, H, W) arrays from sample {i}, got shape {x.shape}; "
                             f"pass transform=... ending in ToArray()")
        yield i, x


def _atomic_write(path, write):
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def compute_mean_image(dataset, transform=None, n=None, cache=None, seed=0):
    """The per-pixel mean image (C, H, W) float32 over ``n`` samples (all when None).

    ``transform`` must turn a raw image into a fixed-size CHW array, e.g. for AlexNet
    ``Compose([Resize(256), CenterCrop(256), ToArray(255.0)])``. With ``cache`` (a ``.npy``
    path) the result is loaded from there when the file exists, else computed and saved
    atomically. The sum is accumulated in float64.
    """
    if cache is not None and os.path.exists(cache):
        return np.load(cache).astype(np.float32)
    total, count, shape = None, 0, None
    for i, x in _raw_images(dataset, n, seed, transform):
        if total is None:
            shape = x.shape
            total = np.zeros(shape, dtype=np.float64)
        elif x.shape != shape:
            raise ValueError(f"mean image needs equally sized images: sample {i} has shape "
                             f"{x.shape}, earlier ones {shape}; give a transform that resizes "
                             f"and crops to a fixed size")
        total += x
        count += 1
    if count == 0:
        raise ValueError("no decodable images to compute the mean image from")
    mean = (total / count).astype(np.float32)
    if cache is not None:
        _atomic_write(cache, lambda f: np.save(f, mean))
    return mean


class SubtractMean(Transform):
    """Subtract the per-pixel mean image (C, H, W) -- or a per-channel mean (C,) -- from a CHW array.

    AlexNet subtracts the mean image before cropping. When the image's H, W differ from the
    mean's, the mean is resized to them (bilinear; cached per size), e.g. a 256x256 mean applied
    to 224x224 inputs. ``mean`` may be an array or the path of a ``.npy`` file;
    :meth:`from_dataset` computes it from a training set and caches it.
    """

    def __init__(self, mean):
        if isinstance(mean, (str, os.PathLike)):
            mean = np.load(mean)
        m = np.asarray(mean, dtype=np.float32)
        if m.ndim == 1:
            m = m.reshape(-1, 1, 1)
        if m.ndim != 3:
            raise ValueError(f"SubtractMean needs a (C, H, W) mean image or a (C,) vector, "
                             f"got shape {m.shape}")
        self.mean = m
        self._resized = {}

    @classmethod
    def from_dataset(cls, dataset, transform=None, n=None, cache=None, seed=0):
        """Compute (or load from ``cache``) the mean image: see :func:`compute_mean_image`."""
        return cls(compute_mean_image(dataset, transform=transform, n=n, cache=cache, seed=seed))

    def _mean_for(self, h, w):
        m = self.mean
        if m.shape[1:] in ((1, 1), (h, w)):
            return m
        if (h, w) not in self._resized:
            self._resized[(h, w)] = _resize_array(m, h, w)
        return self._resized[(h, w)]

    def __call__(self, img, rng=None):
        x = _array(img, "SubtractMean")
        C, h, w = x.shape[-3:]
        if C != self.mean.shape[0]:
            raise ValueError(f"SubtractMean: mean has {self.mean.shape[0]} channels, image "
                             f"shape {x.shape}")
        return (x - self._mean_for(h, w)).astype(np.float32, copy=False)

    def __repr__(self):
        return f"SubtractMean(mean of shape {self.mean.shape})"


def rgb_covariance(dataset, transform=None, n=1000, seed=0):
    """(mean (3,), covariance (3, 3)) of the RGB values of all pixels of ``n`` sampled images.

    Streamed in float64 (sums of x and x x^T), so memory does not grow with ``n``. ``transform``
    (default ``ToArray()``) sets the value scale: use ``ToArray(255.0)`` for 0-255 pipelines.
    """
    s1 = np.zeros(3)
    s2 = np.zeros((3, 3))
    count = 0
    for i, x in _raw_images(dataset, n, seed, transform):
        if x.shape[0] != 3:
            raise ValueError(f"RGB covariance needs 3-channel images, sample {i} has shape "
                             f"{x.shape}")
        p = x.reshape(3, -1).astype(np.float64)
        s1 += p.sum(axis=1)
        s2 += p @ p.T
        count += p.shape[1]
    if count < 2:
        raise ValueError("no decodable images to compute the RGB covariance from")
    mean = s1 / count
    cov = (s2 - count * np.outer(mean, mean)) / (count - 1)
    return mean, cov


class FancyPCA(Transform):
    """AlexNet's "fancy PCA" colour augmentation, on a (3, H, W) (or (..., 3, H, W)) array.

    Adds the same RGB offset to every pixel::

        shift = [p1 p2 p3] @ [a1 * sqrt(l1), a2 * sqrt(l2), a3 * sqrt(l3)]^T,   a_i ~ N(0, std^2)

    with ``p_i`` (the columns of ``eigvecs``) and ``l_i`` (``eigvals``) the eigenvectors and
    eigenvalues of the 3x3 covariance of the training set's RGB values, ``a`` drawn once per
    image per use. Then ``Cov(shift) = std^2 * Sigma``: the offset follows the data's own colour
    variation, at ``std`` (10%) of its size.

    Deviation from the paper's text, on purpose: it writes ``a_i * l_i``, which has units of
    pixel value squared -- at 0-255 it would shift pixels by hundreds, at [0, 1] by ~1/100 of a
    level. minidl uses ``sqrt(l_i)``, the standard deviation along ``p_i`` (as the fb.resnet.torch
    and torchvision reference "lighting" transforms do). Published constants that are already
    standard deviations (fb.resnet.torch's eigval ``[0.2175, 0.0188, 0.0045]`` for [0, 1]
    images) are passed squared.

    The eigenvalues must be in the scale of the images the transform sees (compute them with
    ``transform=ToArray(255.0)`` for a 0-255 pipeline).
    """

    def __init__(self, eigvals, eigvecs, std=0.1):
        self.eigvals = np.asarray(eigvals, dtype=np.float64).reshape(-1)
        self.eigvecs = np.asarray(eigvecs, dtype=np.float64)
        self.std = float(std)
        if self.eigvals.shape != (3,) or self.eigvecs.shape != (3, 3):
            raise ValueError(f"FancyPCA needs 3 eigenvalues and a (3, 3) eigenvector matrix, "
                             f"got shapes {self.eigvals.shape} and {self.eigvecs.shape}")
        if np.any(self.eigvals < 0):
            raise ValueError(f"FancyPCA eigenvalues must be >= 0 (a covariance's), got "
                             f"{self.eigvals.tolist()}")
        if self.std < 0:
            raise ValueError(f"FancyPCA std must be >= 0, got {std!r}")

    @classmethod
    def from_dataset(cls, dataset, n=1000, cache=None, std=0.1, transform=None, seed=0):
        """Eigen-decomposition of the RGB covariance of ``n`` sampled images of ``dataset``.

        ``transform`` turns a raw image into a CHW array and sets the scale (default
        ``ToArray()``, [0, 1]). With ``cache`` (a ``.json`` path) the eigenvalues/vectors are
        read from there when the file exists, else computed and written atomically.
        """
        if cache is not None and os.path.exists(cache):
            with open(cache) as f:
                d = json.load(f)
            return cls(d["eigvals"], d["eigvecs"], std=std)
        _, cov = rgb_covariance(dataset, transform=transform, n=n, seed=seed)
        eigvals, eigvecs = np.linalg.eigh(cov)
        eigvals, eigvecs = eigvals[::-1], eigvecs[:, ::-1]  # largest first
        eigvals = np.clip(eigvals, 0.0, None)
        if cache is not None:
            payload = {"eigvals": eigvals.tolist(), "eigvecs": eigvecs.tolist(),
                       "n": None if n is None else int(n), "seed": int(seed),
                       "transform": repr(transform) if transform is not None else "ToArray()"}
            _atomic_write(cache, lambda f: f.write(json.dumps(payload, indent=1).encode()))
        return cls(eigvals, eigvecs, std=std)

    def shift(self, rng=None):
        """One draw of the RGB offset (3,) float64."""
        alpha = _rng(rng).normal(0.0, self.std, size=3)
        return self.eigvecs @ (alpha * np.sqrt(self.eigvals))

    def __call__(self, img, rng=None):
        x = _array(img, "FancyPCA")
        if x.shape[-3] != 3:
            raise ValueError(f"FancyPCA needs 3 (RGB) channels, got shape {x.shape}")
        return (x + self.shift(rng).astype(np.float32).reshape(3, 1, 1)).astype(np.float32,
                                                                                  copy=False)

    def __repr__(self):
        return (f"FancyPCA(eigvals={np.round(self.eigvals, 6).tolist()}, std={self.std})")
