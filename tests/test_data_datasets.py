"""ImageFolder, ImageList, CIFAR10 and GeneratedShapes over files the tests write in tmp_path."""
import os
import pickle

import numpy as np
import pytest

import minidl.data.generated as generated
from minidl.data import (CIFAR10, SHAPES, CorruptSample, DataLoader, GeneratedShapes,
                         ImageFolder, ImageList)
from minidl.data import transforms as T

from conftest import require

Image = require("PIL.Image", "Pillow-based test module")


def _save(path, seed, size=(6, 5)):
    a = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}[
        os.path.splitext(str(path))[1].lower()]
    Image.fromarray(a).save(path, format=fmt)
    return a


def test_image_folder_layout_mixed_extensions(tmp_path):
    files = {"zebra": ["a.PNG", "b.jpg"], "ant": ["x.JPEG", "y.png", "deep/z.Jpg"],
             "mole": ["m.BMP"]}
    pixels = {}
    for k, (cls, names) in enumerate(sorted(files.items())):
        for j, name in enumerate(names):
            p = tmp_path / cls / name
            p.parent.mkdir(parents=True, exist_ok=True)
            pixels[str(p)] = _save(p, 10 * k + j)
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "stray.png").write_bytes(b"")  # a file at the top level is no class

    ds = ImageFolder(tmp_path)
    assert ds.classes == ["ant", "mole", "zebra"]
    assert ds.class_to_idx == {"ant": 0, "mole": 1, "zebra": 2}
    assert len(ds) == 6
    assert sorted(os.path.relpath(p, tmp_path) for p, _ in ds.samples) == sorted(
        os.path.join(c, n.replace("/", os.sep)) for c, ns in files.items() for n in ns)
    for (path, label), target in zip(ds.samples, ds.targets):
        cls = os.path.relpath(path, tmp_path).split(os.sep)[0]
        assert label == target == ds.class_to_idx[cls]
    for i, (path, label) in enumerate(ds.samples):
        img, y = ds[i]
        assert y == label and img.mode == "RGB" and img.size == (6, 5)
        if path.lower().endswith((".png", ".bmp")):  # lossless: exactly the pixels written
            np.testing.assert_array_equal(np.asarray(img), pixels[path])

    ds2 = ImageFolder(tmp_path, transform=T.Compose([T.ToArray(255.0)]))
    x, y = ds2[0]
    assert x.shape == (3, 5, 6) and x.dtype == np.float32


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolder(tmp_path)


def test_image_list(tmp_path):
    (tmp_path / "val").mkdir()
    a = _save(tmp_path / "val" / "img one.png", 1)
    b = _save(tmp_path / "val" / "two.PNG", 2)
    lst = tmp_path / "val.txt"
    lst.write_text("# path label\nval/img one.png 7\n\nval/two.PNG 3\n")
    ds = ImageList(lst, tmp_path)
    assert len(ds) == 2 and ds.targets == [7, 3]
    img, y = ds[0]
    assert y == 7
    np.testing.assert_array_equal(np.asarray(img), a)
    np.testing.assert_array_equal(np.asarray(ds[1][0]), b)
    lst.write_text("val/two.PNG three\n")
    with pytest.raises(ValueError, match=r"val.txt:1"):
        ImageList(lst, tmp_path)


def _write_cifar(folder, seed):
    os.makedirs(folder)
    rng = np.random.default_rng(seed)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 3).tolist()
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels,
                         b"filenames": [b"x.png"] * 3}, f, protocol=2)
        written[name] = (data, labels)
    return written


def test_cifar10_reader(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    written = _write_cifar(folder, 0)
    for root in (tmp_path, folder):  # the parent or the folder itself
        train = CIFAR10(root, train=True)
        assert len(train) == 15
        test = CIFAR10(root, train=False, transform=T.ToArray(255.0))
        assert len(test) == 3
    data, labels = written["data_batch_2"]
    img, y = train[4]  # batch 2, row 1
    assert img.size == (32, 32) and y == labels[1]
    row = data[1]
    a = np.asarray(img)
    for c in range(3):
        for (yy, xx) in [(0, 0), (5, 17), (31, 31)]:
            assert a[yy, xx, c] == row[c * 1024 + yy * 32 + xx]
    x, y = test[2]
    assert x.shape == (3, 32, 32) and y == written["test_batch"][1][2]
    np.testing.assert_array_equal(x.reshape(-1), written["test_batch"][0][2])
    assert train.targets[:3] == written["data_batch_1"][1]


def test_cifar10_missing_says_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py") as e:
        CIFAR10(tmp_path)
    assert str(tmp_path) in str(e.value) and "never downloads" in str(e.value)


def test_truncated_image_is_a_corrupt_sample(tmp_path):
    (tmp_path / "c").mkdir()
    _save(tmp_path / "c" / "good.jpg", 0, size=(64, 64))
    data = (tmp_path / "c" / "good.jpg").read_bytes()
    (tmp_path / "c" / "bad.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "c" / "empty.png").write_bytes(b"")
    ds = ImageFolder(tmp_path, transform=T.ToArray())
    kinds = {os.path.basename(p): ds.load(i)[0] for i, (p, _) in enumerate(ds.samples)}
    assert isinstance(kinds["bad.jpg"], CorruptSample) and "bad.jpg" in kinds["bad.jpg"].path
    assert isinstance(kinds["empty.png"], CorruptSample)
    assert not isinstance(kinds["good.jpg"], CorruptSample)
    loader = DataLoader(ds, batch_size=3)
    with pytest.warns(UserWarning):
        out = list(loader)
    assert loader.skipped == 2 and sum(len(y) for _, y in out) == 1


# --- GeneratedShapes ----------------------------------------------------------------------------

def _files(folder):
    return {os.path.relpath(os.path.join(d, f), folder): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, fs in os.walk(folder) for f in fs}


def test_generated_shapes_generates_then_reuses(tmp_path, monkeypatch):
    ds = GeneratedShapes(root=tmp_path, split="train", n_per_class=3, image_size=32, seed=1)
    assert ds.generated and len(ds) == 30 and len(ds.classes) == 10
    assert ds.classes == sorted(SHAPES) and len(set(SHAPES)) == 10
    assert os.path.commonpath([ds.root, str(tmp_path)]) == str(tmp_path)
    assert ds.root == os.path.join(ds.dataset_root, "train")
    assert sorted(ds.targets) == sorted(list(range(10)) * 3)
    img, label = ds[0]
    assert img.size == (32, 32) and img.mode == "RGB"
    before = _files(ds.dataset_root)
    assert sum(f.endswith(".jpg") for f in before) == 30
    assert not [f for f in os.listdir(tmp_path / os.path.basename(ds.dataset_root))
                if f.startswith(".")]  # no temp folders left

    def no_drawing(*a, **k):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(generated, "draw_shape_image", no_drawing)
    again = GeneratedShapes(root=tmp_path, split="train", n_per_class=3, image_size=32, seed=1)
    assert not again.generated and again.samples == ds.samples
    fewer = GeneratedShapes(root=tmp_path, split="train", n_per_class=2, image_size=32, seed=1)
    assert len(fewer) == 20 and set(fewer.samples) <= set(ds.samples)
    assert _files(ds.dataset_root) == before  # nothing rewritten


def test_generated_shapes_deterministic_and_val_differs(tmp_path):
    a = GeneratedShapes(root=tmp_path / "a", n_per_class=2, image_size=32, seed=4)
    b = GeneratedShapes(root=tmp_path / "b", n_per_class=2, image_size=32, seed=4, processes=1)
    for (pa, ta), (pb, tb) in zip(a.samples, b.samples):
        assert ta == tb
        with open(pa, "rb") as fa, open(pb, "rb") as fb:
            assert fa.read() == fb.read()
    val = GeneratedShapes(root=tmp_path / "a", split="val", n_per_class=2, image_size=32, seed=4)
    assert val.dataset_root == a.dataset_root and val.root != a.root
    other = GeneratedShapes(root=tmp_path / "a", n_per_class=2, image_size=32, seed=5)
    assert other.dataset_root != a.dataset_root
    for ds in (val, other):
        for (p, _), (q, _) in zip(ds.samples, a.samples):
            x = np.asarray(Image.open(p), dtype=np.float32)
            y = np.asarray(Image.open(q), dtype=np.float32)
            assert np.abs(x - y).mean() > 5  # different images, not re-encodings
    with pytest.raises(ValueError, match="split"):
        GeneratedShapes(root=tmp_path, split="test")


def test_generated_shapes_draws_the_named_shape():
    """The shape's pixel area relative to its bounding box tells the classes apart."""
    rng = np.random.default_rng(0)
    from PIL import ImageDraw
    fills = {}
    for name in ("circle", "square", "ring", "cross", "bar"):
        # draw the mask the generator draws, on a plain canvas, and measure its fill ratio
        parts = generated._shape_parts(name, rng)
        m = Image.new("L", (200, 200), 0)
        d = ImageDraw.Draw(m)
        for poly, filled in parts:
            d.polygon([(100 + 80 * x, 100 + 80 * y) for x, y in poly], fill=255 if filled else 0)
        a = np.asarray(m) > 0
        ys, xs = np.nonzero(a)
        fills[name] = a.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    assert abs(fills["circle"] - np.pi / 4) < 0.03
    assert abs(fills["square"] - 1.0) < 0.03
    assert fills["ring"] < 0.6 and fills["cross"] < 0.6 and fills["bar"] > 0.9


# --- symlink loops, EXIF orientation, 16-bit images --------------------------------------------


def _build_in_thread(fn, seconds=60):
    """Run fn in a daemon thread; a hang fails the test instead of hanging the suite."""
    import threading
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the test
            box["error"] = e

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(seconds)
    assert not th.is_alive(), f"still running after {seconds} s (a symlink loop followed?)"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_image_folder_does_not_follow_symlink_loops(tmp_path):
    cat = tmp_path / "cat"
    (cat / "sub").mkdir(parents=True)
    Image.new("RGB", (4, 4), (10, 20, 30)).save(cat / "a.png")
    Image.new("RGB", (4, 4), (40, 50, 60)).save(cat / "sub" / "b.png")
    os.symlink(cat, cat / "loop1")          # two loops in one folder: 2**40 paths if followed
    os.symlink("..", cat / "sub" / "loop2")
    os.symlink(cat / "sub", cat / "again")  # a second path to a folder already read
    other = tmp_path.parent / (tmp_path.name + "_elsewhere")
    other.mkdir()
    Image.new("RGB", (4, 4), (70, 80, 90)).save(other / "c.png")
    os.symlink(other, cat / "linked")       # a symlinked folder that is not a loop: followed
    ds = _build_in_thread(lambda: ImageFolder(tmp_path))
    names = sorted(os.path.relpath(p, tmp_path) for p, _ in ds.samples)
    assert len(names) == 3
    assert {os.path.basename(n) for n in names} == {"a.png", "b.png", "c.png"}
    assert any(p.endswith("loop1") for p in ds.skipped_links)
    assert any(p.endswith("loop2") for p in ds.skipped_links)


def test_image_folder_applies_exif_orientation(tmp_path):
    (tmp_path / "c").mkdir()
    a = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high: left half red, right half blue
    a[:, :20] = (255, 0, 0)
    a[:, 20:] = (0, 0, 255)
    img = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "c" / "rot.jpg", exif=exif, quality=100)
    ds = ImageFolder(tmp_path)
    shown, _ = ds.load(0)
    assert shown.size == (20, 40)  # displayed upright: 20 wide, 40 high
    s = np.asarray(shown).astype(int)
    # rotated 90 degrees clockwise: the left (red) half is now on top
    assert s[5, 10, 0] > 200 and s[5, 10, 2] < 60
    assert s[35, 10, 2] > 200 and s[35, 10, 0] < 60


def test_sixteen_bit_images_are_scaled_not_saturated(tmp_path):
    (tmp_path / "c").mkdir()
    a = np.array([[0, 1000, 20000], [40000, 60000, 65535]], np.uint16)
    Image.fromarray(a).save(tmp_path / "c" / "g16.png")
    ds = ImageFolder(tmp_path, transform=T.ToArray())
    x, _ = ds.getitem(0)
    expect = np.round(a / 65535.0 * 255.0) / 255.0
    np.testing.assert_allclose(x[0], expect, atol=1e-6)
    np.testing.assert_array_equal(x[0], x[2])  # grey into RGB
    assert len(np.unique(x)) == 6  # distinct levels stay distinct (not all 1.0)
    # ToArray on an "I;16" PIL image directly, too
    y = T.ToArray()(Image.fromarray(a))
    np.testing.assert_allclose(y[0], expect, atol=1e-6)
