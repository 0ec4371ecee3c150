"""The papers' test-time methods on a batch: dense (fully-convolutional) multi-scale scores and
multi-scale 10-view scores, each averaging class probabilities over positions, views, scales
and flips.

* Dense (PReLU paper Sec. 3 "multi-view testing on feature maps"; ResNet Sec. 3.4,
  scales {224, 256, 384, 480, 640}): the batch is resized so its shorter side is each scale,
  the model's ``dense_forward(x)`` gives a class-score map ``(N, K, h, w)`` (its fully
  connected layers applied as convolutions over the last feature map, or after SPP / global
  pooling), the softmax at every position is averaged over the positions, then over the scales
  and (with ``flip=True``) the horizontal mirror images. A model without ``dense_forward`` is
  run with its ordinary forward at each scale (valid for nets that pool globally).
* Multi-view (AlexNet's 10 views; the PReLU paper's 10 views at several scales): at each
  scale, the 4 corner crops, the centre crop and their mirror images of side ``crop_size``.

These functions work on arrays (NumPy, or CuPy on the GPU: the resize runs on the host) and
return float64 probabilities ``(N, K)``; :func:`minidl.train.evaluate` calls them through its
``dense_scales=`` / ``ten_crop_scales=`` options.
"""
import numpy as np

from minidl import backend
from minidl.tensor import Tensor, no_grad

__all__ = ["resize_batch", "ten_crop_batch", "dense_probabilities", "multi_view_probabilities",
           "softmax_positions"]


def _array(x):
    return x.data if isinstance(x, Tensor) else x


def _check_batch(name, x):
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"{name} expects an (N, C, H, W) batch, got shape "
                         f"{getattr(x, 'shape', type(x).__name__)}")


def _check_scales(name, scales):
    scales = tuple(scales)
    if not scales:
        raise ValueError(f"{name} must name at least one scale, got {scales!r}")
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s <= 0:
            raise ValueError(f"{name} must be positive integers (shorter image sides), "
                             f"got {scales!r}")
    return tuple(int(s) for s in scales)


def resize_batch(x, shorter):
    """Resize an ``(N, C, H, W)`` array (bilinear, antialiased when shrinking) so that its
    shorter spatial side is ``shorter``, keeping the aspect ratio. Returns ``x`` itself when the
    shorter side already is ``shorter`` (so the training size is evaluated bit for bit)."""
    x = _array(x)
    _check_batch("resize_batch", x)
    h, w = int(x.shape[2]), int(x.shape[3])
    if h <= w:
        nh, nw = shorter, max(1, int(round(w * shorter / h)))
    else:
        nh, nw = max(1, int(round(h * shorter / w))), shorter
    if (nh, nw) == (h, w):
        return x
    from minidl.data.transforms import _resize_array  # lazy: Pillow only when resizing
    xp = backend.get_array_module(x)
    out = _resize_array(backend.to_numpy(x), nh, nw)
    return out if xp is np else xp.asarray(out)


def ten_crop_batch(x, size):
    """The 10 views of every image of an ``(N, C, H, W)`` array: top-left, top-right,
    bottom-left, bottom-right and centre crops of side ``size`` and their mirror images, as
    ``(N, 10, C, size, size)`` (the order of :class:`minidl.data.transforms.TenCrop`)."""
    x = _array(x)
    _check_batch("ten_crop_batch", x)
    H, W = int(x.shape[2]), int(x.shape[3])
    h = w = int(size)
    if h > H or w > W:
        raise ValueError(f"ten_crop_batch: crop {size} is larger than the images ({H}, {W})")
    top, left = (H - h) // 2, (W - w) // 2
    views = [x[:, :, :h, :w], x[:, :, :h, W - w:], x[:, :, H - h:, :w], x[:, :, H - h:, W - w:],
             x[:, :, top:top + h, left:left + w]]
    views += [v[..., ::-1] for v in views]
    xp = backend.get_array_module(x)
    return xp.ascontiguousarray(xp.stack(views, axis=1))


def softmax_positions(scores):
    """Class probabilities of a score map ``(N, K, h, w)`` (softmax over K at each position),
    averaged over the positions: ``(N, K)`` float64. A ``(N, K)`` input is a 1x1 map."""
    xp = backend.get_array_module(scores)
    z = scores.astype(xp.float64)
    if z.ndim == 2:
        z = z[:, :, None, None]
    if z.ndim != 4:
        raise ValueError(f"softmax_positions expects (N, K) or (N, K, h, w) scores, got shape "
                         f"{scores.shape}")
    z = z - z.max(axis=1, keepdims=True)
    p = xp.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return p.mean(axis=(2, 3))


def _device(model, device):
    if device is not None:
        return backend.normalize_device(device)
    for p in model.parameters():
        return p.device
    return "cpu"


def _scores(model, x, device, dense):
    t = Tensor(xp_contig(x), device=device)
    fn = getattr(model, "dense_forward", None) if dense else None
    out = fn(t) if fn is not None else model(t)
    return out.data


def xp_contig(x):
    xp = backend.get_array_module(x)
    return xp.ascontiguousarray(x)


def dense_probabilities(model, x, scales, flip=False, device=None):
    """Dense multi-scale class probabilities ``(N, K)`` float64 of ``model`` on the images
    ``x`` (N, C, H, W): for each scale (shorter side) and, with ``flip``, each mirror image,
    ``model.dense_forward`` (or ``model(...)``) gives a score map whose per-position softmax
    is averaged; the results are averaged over scales and flips. Run it under ``no_grad`` and
    in eval mode (as :func:`minidl.train.evaluate` does)."""
    scales = _check_scales("dense_scales", scales)
    x = _array(x)
    _check_batch("dense_probabilities", x)
    device = _device(model, device)
    total, count = None, 0
    with no_grad():
        for s in scales:
            xs = resize_batch(x, s)
            for mirrored in ((False, True) if flip else (False,)):
                v = xs[..., ::-1] if mirrored else xs
                p = softmax_positions(_scores(model, v, device, dense=True))
                total = p if total is None else total + p
                count += 1
    return total / count


def multi_view_probabilities(model, x, crop_size, scales, device=None):
    """10-view class probabilities ``(N, K)`` float64 at several scales (the PReLU paper's
    multi-view test; one scale is AlexNet's): for each scale the images are resized to that
    shorter side, the 10 views of side ``crop_size`` are classified and all softmaxes
    averaged."""
    scales = _check_scales("ten_crop_scales", scales)
    x = _array(x)
    _check_batch("multi_view_probabilities", x)
    device = _device(model, device)
    n = int(x.shape[0])
    total, count = None, 0
    with no_grad():
        for s in scales:
            if s < crop_size:
                raise ValueError(f"ten_crop_scales: scale {s} is smaller than crop_size "
                                 f"{crop_size}")
            v = ten_crop_batch(resize_batch(x, s), crop_size)
            flat = v.reshape((n * 10,) + tuple(v.shape[2:]))
            p = softmax_positions(_scores(model, flat, device, dense=False))
            p = p.reshape(n, 10, -1).sum(axis=1)
            total = p if total is None else total + p
            count += 10
    return total / count
