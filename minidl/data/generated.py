"""GeneratedShapes: a 10-class image set drawn procedurally, the zero-download default dataset.

Each image holds one large filled shape -- arrow, bar, circle, cross, ellipse, pentagon, ring,
square, star or triangle -- in a random colour, size, position and rotation, on a cluttered
background: a two-colour linear gradient at a random angle, small distractor blobs, boxes, arcs
and strokes (a few drawn over the shape), and pixel noise. The classes differ in outline, not in
colour or position, and stay distinguishable after random crops (the shape is kept away from the
borders) and horizontal flips (every class is closed under mirroring). It is a real image
pipeline -- JPEG files in the ImageFolder layout, decoded by Pillow -- that a small CNN learns
in minutes on a CPU, without being trivial (outline, not colour; clutter; rotation). Measured
(generator v3, 128 px images, 64 px random crops + flips, 300/50 per class, a 4-layer 16-32-64-64
BN CNN of 61k parameters, Adam 2e-3, batch 32, 2 busy CPU cores): val error 0.49 after 3 epochs
(~100 s), 0.30 after 6 (~250 s); the confusions left are square/pentagon/ellipse, bar/arrow and
triangle/cross -- outline details, as intended.

Images are written once, as ``<dataset_root>/<split>/<class>/<i>.jpg`` with
``dataset_root = <root>/generated_shapes_<hash of (generator version, image_size, seed)>`` and
``root`` defaulting to ``$MINIDL_DATA`` or ``~/.cache/minidl``; later calls reuse the files.
Image ``i`` of a class is a pure function of ``(seed, split, class, i, image_size)``, so a split
generated with more images serves any smaller ``n_per_class`` (its first ``n`` per class), and
train and val come from different random streams. A split is drawn into a temporary folder and
renamed into place, so a crash or a concurrent run never leaves a half-written split.
"""
import hashlib
import json
import os
import shutil
import uuid

import numpy as np

from .datasets import ImageFolder
from .transforms import _pil

__all__ = ["GeneratedShapes", "SHAPES", "draw_shape_image", "default_data_root"]

SHAPES = ("arrow", "bar", "circle", "cross", "ellipse", "pentagon", "ring", "square", "star",
          "triangle")  # sorted: the class index ImageFolder gives each
GENERATOR_VERSION = 3
_SPLITS = {"train": 0, "val": 1}
_DEFAULT_N = {"train": 300, "val": 50}
_JPEG_QUALITY = 90
_SUPERSAMPLE = 2  # the shape mask is drawn at 2x and downsampled: antialiased edges


def default_data_root():
    """``$MINIDL_DATA`` if set, else ``~/.cache/minidl``."""
    return os.environ.get("MINIDL_DATA") or os.path.join(os.path.expanduser("~"), ".cache",
                                                         "minidl")


# --- the shapes, as polygons in units of the shape's radius r, centred at 0 ------------------

def _ngon(n, radius, phase=0.0, k=None):
    t = phase + 2 * np.pi * np.arange(n if k is None else k) / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _star(points, outer, inner):
    t = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    rad = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([rad * np.cos(t), rad * np.sin(t)], axis=1)


def _ellipse(a, b, n=72):
    t = 2 * np.pi * np.arange(n) / n
    return np.stack([a * np.cos(t), b * np.sin(t)], axis=1)


def _shape_parts(name, rng):
    """[(polygon (k, 2) in units of r, filled?)]: filled parts, then holes cut out of them."""
    if name == "circle":
        return [(_ellipse(1.0, 1.0), True)]
    if name == "ellipse":
        return [(_ellipse(1.05, rng.uniform(0.42, 0.58)), True)]
    if name == "ring":
        return [(_ellipse(1.0, 1.0), True), (_ellipse(*(2 * [rng.uniform(0.48, 0.62)])), False)]
    if name == "square":
        s = 0.78
        return [(np.array([[-s, -s], [s, -s], [s, s], [-s, s]]), True)]
    if name == "triangle":
        return [(_ngon(3, 1.05, -np.pi / 2), True)]
    if name == "pentagon":
        return [(_ngon(5, 0.95, -np.pi / 2), True)]
    if name == "star":
        return [(_star(5, 1.08, rng.uniform(0.38, 0.46)), True)]
    if name == "cross":
        w = rng.uniform(0.22, 0.3)
        return [(np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1],
                           [-w, w], [-1, w], [-1, -w], [-w, -w]]), True)]
    if name == "bar":
        hl, hw = rng.uniform(0.95, 1.1), rng.uniform(0.15, 0.24)
        return [(np.array([[-hl, -hw], [hl, -hw], [hl, hw], [-hl, hw]]), True)]
    if name == "arrow":
        sw, hw, h0 = rng.uniform(0.13, 0.19), rng.uniform(0.45, 0.55), rng.uniform(0.05, 0.25)
        return [(np.array([[-1, -sw], [h0, -sw], [h0, -hw], [1, 0], [h0, hw], [h0, sw],
                           [-1, sw]]), True)]
    raise ValueError(f"unknown shape {name!r}; known: {SHAPES}")


# --- colours -----------------------------------------------------------------------------------

def _hsv_to_rgb(h, s, v):
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array([r, g, b]) * 255.0


def _luma(c):
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _colours(rng):
    """(shape colour, two background colours) with the shape clearly visible on both."""
    fg = _hsv_to_rgb(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.35, 1.0))
    for _ in range(50):
        bg = [_hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.1, 1.0))
              for _ in range(2)]
        if all(np.linalg.norm(fg - c) > 120 and abs(_luma(fg) - _luma(c)) > 45 for c in bg):
            break
    else:  # rare: fall back to a background of opposite brightness
        v = 30.0 if _luma(fg) > 128 else 225.0
        bg = [np.array([v, v, v]) + rng.uniform(-20, 20, 3) for _ in range(2)]
    return fg, bg


# --- drawing -------------------------------------------------------------------------------------

def _draw_clutter(draw, rng, S, n, max_frac):
    """n random distractors no larger than max_frac * S: blobs, boxes, arcs and strokes."""
    for _ in range(n):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 4)
        cx, cy = rng.uniform(0, S, 2)
        rad = rng.uniform(0.02, max_frac) * S
        box = [cx - rad, cy - rad * rng.uniform(0.5, 1.0), cx + rad, cy + rad]
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        elif kind == 2:
            a0 = rng.uniform(0, 360)
            draw.arc(box, a0, a0 + rng.uniform(60, 200), fill=colour,
                     width=max(1, int(rng.uniform(0.005, 0.015) * S)))
        else:
            ang, length = rng.uniform(0, np.pi), rng.uniform(0.1, 0.45) * S
            dx, dy = 0.5 * length * np.cos(ang), 0.5 * length * np.sin(ang)
            draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=colour,
                      width=max(1, int(rng.uniform(0.005, 0.02) * S)))


def draw_shape_image(name, rng, image_size=256):
    """One image of shape ``name`` as an RGB PIL image of ``image_size`` x ``image_size``."""
    Image = _pil()
    from PIL import ImageDraw
    S = int(image_size)
    fg, (c0, c1) = _colours(rng)

    # background: linear gradient between two colours at a random angle
    theta = rng.uniform(0, 2 * np.pi)
    coords = (np.arange(S, dtype=np.float32) - S / 2) / S
    t = np.clip(0.5 + coords[None, :] * np.cos(theta) + coords[:, None] * np.sin(theta), 0, 1)
    bg = c0[None, None, :].astype(np.float32) + t[:, :, None] * (c1 - c0).astype(np.float32)
    img = Image.fromarray(bg.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    _draw_clutter(draw, rng, S, int(rng.integers(1, 5)), 0.055)

    # the shape: radius, rotation, position kept clear of the borders (crops keep it)
    r = rng.uniform(0.25, 0.35) * S
    rot = rng.uniform(0, 2 * np.pi)
    extent = 1.1 * r + 0.06 * S
    cx, cy = S / 2 + rng.uniform(-1, 1, 2) * max(0.0, S / 2 - extent)
    rmat = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
    ss = _SUPERSAMPLE
    mask = Image.new("L", (S * ss, S * ss), 0)
    mdraw = ImageDraw.Draw(mask)
    for poly, filled in _shape_parts(name, rng):
        pts = (poly * r) @ rmat.T + np.array([cx, cy])
        mdraw.polygon([(float(x) * ss, float(y) * ss) for x, y in pts],
                      fill=255 if filled else 0)
    mask = mask.resize((S, S), Image.Resampling.BOX)
    img.paste(tuple(int(c) for c in fg), (0, 0), mask)

    # a few thin strokes over the shape (occlusion), then sensor noise
    _draw_clutter(ImageDraw.Draw(img), rng, S, int(rng.integers(0, 2)), 0.04)
    a = np.asarray(img, dtype=np.float32)
    a = a + rng.standard_normal(a.shape, dtype=np.float32) * np.float32(rng.uniform(2, 6))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _image_rng(seed, split, class_idx, i, image_size):
    return np.random.default_rng([GENERATOR_VERSION, seed, _SPLITS[split], class_idx, i,
                                  image_size])


def _write_chunk(args):
    """Draw and save images [lo, hi) of one class (runs in a pool worker or inline)."""
    folder, split, class_idx, lo, hi, image_size, seed = args
    name = SHAPES[class_idx]
    for i in range(lo, hi):
        img = draw_shape_image(name, _image_rng(seed, split, class_idx, i, image_size), image_size)
        img.save(os.path.join(folder, name, f"{i:05d}.jpg"), quality=_JPEG_QUALITY)
    return hi - lo


def _generate_split(split_dir, split, n, image_size, seed, processes=None):
    parent = os.path.dirname(split_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{split}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        for name in SHAPES:
            os.makedirs(os.path.join(tmp, name))
        chunk = max(1, min(50, n))
        jobs = [(tmp, split, c, lo, min(n, lo + chunk), image_size, seed)
                for c in range(len(SHAPES)) for lo in range(0, n, chunk)]
        total = n * len(SHAPES)
        procs = processes if processes is not None else min(os.cpu_count() or 1, len(jobs))
        done = False
        if procs > 1 and total >= 200:
            import multiprocessing as mp
            try:
                method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
                with mp.get_context(method).Pool(procs) as pool:
                    sum(pool.imap_unordered(_write_chunk, jobs))
                done = True
            except (OSError, RuntimeError):  # no processes here (sandbox): draw inline
                done = False
        if not done:
            for job in jobs:
                _write_chunk(job)
        meta = {"generator_version": GENERATOR_VERSION, "split": split, "n_per_class": n,
                "image_size": image_size, "seed": seed, "classes": list(SHAPES)}
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        # Swap into place. A concurrent run may have finished first: then keep the larger one.
        old = None
        if os.path.exists(split_dir):
            old = os.path.join(parent, f".old-{split}-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(split_dir, old)
            except OSError:
                old = None
        try:
            os.rename(tmp, split_dir)
        except OSError:
            if _split_n(split_dir) < n:
                raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _split_n(split_dir):
    """How many images per class a complete split folder holds (0 when absent/incomplete)."""
    try:
        with open(os.path.join(split_dir, "meta.json")) as f:
            return int(json.load(f)["n_per_class"])
    except (OSError, ValueError, KeyError):
        return 0


class GeneratedShapes(ImageFolder):
    """The procedurally drawn 10-class shapes dataset (see the module docstring).

    Args:
        root: folder for the cache (default ``$MINIDL_DATA`` or ``~/.cache/minidl``); the images
            live in ``root/generated_shapes_<hash>/<split>/<class>/*.jpg``.
        split: ``"train"`` or ``"val"`` (a different random stream).
        n_per_class: images per class; default 300 for train, 50 for val.
        image_size: side of the square images in pixels (default 256, as ImageNet's resized
            images; examples on a CPU pass smaller, e.g. 144 for ~127 px crops).
        seed: the dataset's seed (a different seed draws a different dataset).
        transform: applied to the decoded PIL RGB image, as for ImageFolder.
        processes: processes used to draw the images (default: all cores).

    Items are ``(PIL image or transform output, label)``; ``classes`` is :data:`SHAPES`
    (sorted, so index = position). ``dataset_root`` is the cache folder of this
    ``(image_size, seed)``, ``root`` the split's ImageFolder root.
    """

    def __init__(self, root=None, split="train", n_per_class=None, image_size=256, seed=0,
                 transform=None, processes=None):
        if split not in _SPLITS:
            raise ValueError(f"GeneratedShapes split must be 'train' or 'val', got {split!r}")
        n = _DEFAULT_N[split] if n_per_class is None else n_per_class
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n_per_class must be a positive integer, got {n_per_class!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) \
                or image_size < 16:
            raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.split, self.n_per_class = split, int(n)
        self.image_size, self.seed = int(image_size), int(seed)
        key = json.dumps({"v": GENERATOR_VERSION, "image_size": self.image_size,
                          "seed": self.seed}, sort_keys=True)
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        base = os.fspath(root) if root is not None else default_data_root()
        self.dataset_root = os.path.join(base, f"generated_shapes_{digest}")
        split_dir = os.path.join(self.dataset_root, split)
        self.generated = False  # True when this call drew the images
        if _split_n(split_dir) < self.n_per_class:
            _generate_split(split_dir, split, self.n_per_class, self.image_size, self.seed,
                            processes)
            self.generated = True
        super().__init__(split_dir, transform=transform, extensions=(".jpg",))
        # a folder drawn with more images per class serves its first n of each class
        self.samples = [(p, t) for p, t in self.samples
                        if int(os.path.splitext(os.path.basename(p))[0]) < self.n_per_class]
        self.targets = [t for _, t in self.samples]
        if self.classes != list(SHAPES) or len(self.samples) != len(SHAPES) * self.n_per_class:
            raise RuntimeError(f"GeneratedShapes cache {split_dir!r} is damaged (classes "
                               f"{self.classes}, {len(self.samples)} images, expected "
                               f"{len(SHAPES) * self.n_per_class}); delete it to regenerate")

    def __repr__(self):
        return (f"GeneratedShapes(split={self.split!r}, n_per_class={self.n_per_class}, "
                f"image_size={self.image_size}, seed={self.seed}, root={self.root!r})")
