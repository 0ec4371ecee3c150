"""minidl.data.transforms: shapes and statistics, each checked against NumPy computed here."""
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidl.data import transforms as T
from minidl.data.dataset import Dataset

from conftest import require

Image = require("PIL.Image", "Pillow-based test module")


def pil_rgb(h, w, seed=0):
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(a), a


def chw(c, h, w, seed=0):
    return np.random.default_rng(seed).standard_normal((c, h, w)).astype(np.float32)


# --- ToArray ----------------------------------------------------------------------------------

def test_toarray_rgb_scale_and_layout():
    img, a = pil_rgb(5, 7)
    x = T.ToArray()(img)
    assert x.shape == (3, 5, 7) and x.dtype == np.float32
    np.testing.assert_allclose(x, a.transpose(2, 0, 1) / 255.0, rtol=1e-6)
    x255 = T.ToArray(scale=255.0)(img)
    np.testing.assert_array_equal(x255, a.transpose(2, 0, 1).astype(np.float32))
    white = T.ToArray()(Image.new("RGB", (2, 2), (255, 255, 255)))
    assert np.all(white == 1.0)  # exactly the top of [0, scale]


def test_toarray_gray_and_hwc_array():
    g = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    x = T.ToArray(scale=255.0)(Image.fromarray(g))
    assert x.shape == (1, 3, 4)
    np.testing.assert_array_equal(x[0], g)
    _, a = pil_rgb(4, 6, seed=1)
    np.testing.assert_array_equal(T.ToArray(255.0)(a), a.transpose(2, 0, 1))


def test_toarray_rejects_bad_input():
    with pytest.raises(TypeError, match="ToArray"):
        T.ToArray()(np.zeros((3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="scale"):
        T.ToArray(scale=0)


# --- Resize / ScaleJitter ---------------------------------------------------------------------

@given(h=st.integers(4, 60), w=st.integers(4, 60), s=st.integers(2, 50))
def test_resize_shorter_side_keeps_aspect(h, w, s):
    img = Image.new("RGB", (w, h), (10, 200, 30))
    out = T.Resize(s)(img)
    short, long_ = min(h, w), max(h, w)
    assert min(out.height, out.width) == s
    assert max(out.height, out.width) == max(1, round(long_ * s / short))
    assert (out.height if h <= w else out.width) == s  # the shorter side is the one set
    # a constant image stays that constant
    assert np.all(np.asarray(out) == (10, 200, 30))


def test_resize_exact_and_array_matches_pil():
    img, a = pil_rgb(20, 30)
    out = T.Resize((10, 12))(img)
    assert (out.height, out.width) == (10, 12)
    x = T.ToArray(255.0)(img)
    xr = T.Resize((10, 12))(x)
    assert xr.shape == (3, 10, 12) and xr.dtype == np.float32
    # per-channel float resize agrees with Pillow's uint8 resize up to its rounding
    np.testing.assert_allclose(xr, np.asarray(out).transpose(2, 0, 1), atol=1.01)
    c = np.full((2, 9, 13), 3.5, np.float32)
    np.testing.assert_allclose(T.Resize(4)(c), 3.5, rtol=1e-6)
    assert T.Resize(4)(c).shape == (2, 4, 6)


def test_scale_jitter_in_range_and_covers_it():
    img = Image.new("RGB", (30, 20))
    rng = np.random.default_rng(0)
    jitter = T.ScaleJitter(10, 14)
    seen = set()
    for _ in range(200):
        out = jitter(img, rng=rng)
        short = min(out.height, out.width)
        assert 10 <= short <= 14
        assert out.height == short  # height was the shorter side
        assert out.width == round(30 * short / 20)
        seen.add(short)
    assert seen == {10, 11, 12, 13, 14}
    with pytest.raises(ValueError, match="min_size"):
        T.ScaleJitter(300, 200)


# --- crops and flips --------------------------------------------------------------------------

@given(c=st.integers(1, 3), h=st.integers(1, 20), w=st.integers(1, 20), data=st.data())
def test_center_crop_matches_slicing(c, h, w, data):
    ch = data.draw(st.integers(1, h))
    cw = data.draw(st.integers(1, w))
    x = chw(c, h, w)
    out = T.CenterCrop((ch, cw))(x)
    top, left = int(round((h - ch) / 2)), int(round((w - cw) / 2))
    np.testing.assert_array_equal(out, x[:, top:top + ch, left:left + cw])


def test_center_crop_pil_equals_array_and_rejects_too_big():
    img, a = pil_rgb(9, 11)
    np.testing.assert_array_equal(np.asarray(T.CenterCrop(5)(img)), a[2:7, 3:8])
    with pytest.raises(ValueError, match=r"\(12, 12\).*\(9, 11\)"):
        T.CenterCrop(12)(img)


@given(h=st.integers(3, 12), w=st.integers(3, 12), pad=st.integers(0, 3), seed=st.integers(0, 99))
def test_random_crop_is_a_window_of_the_padded_image(h, w, pad, seed):
    x = (np.arange(h * w, dtype=np.float32) + 1).reshape(1, h, w)  # unique values, no zeros
    size = (min(h, 3), min(w, 3))
    out = T.RandomCrop(size, padding=pad)(x, rng=np.random.default_rng(seed))
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    H, W = padded.shape[1:]
    windows = [(i, j) for i in range(H - size[0] + 1) for j in range(W - size[1] + 1)
               if np.array_equal(padded[:, i:i + size[0], j:j + size[1]], out)]
    assert windows, "the crop is not a window of the zero-padded image"


def test_random_crop_positions_uniform_with_padding():
    # CIFAR recipe on a 4x4 image: pad 1, crop 4 -> 3x3 = 9 positions, each ~1/9 of draws
    x = (np.arange(16, dtype=np.float32) + 1).reshape(1, 4, 4)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    rng = np.random.default_rng(1)
    counts = {}
    for _ in range(1800):
        out = T.RandomCrop(4, padding=1)(x, rng=rng)
        pos = [(i, j) for i in range(3) for j in range(3)
               if np.array_equal(padded[:, i:i + 4, j:j + 4], out)]
        assert len(pos) == 1
        counts[pos[0]] = counts.get(pos[0], 0) + 1
    assert len(counts) == 9
    assert all(140 < v < 260 for v in counts.values())  # expected 200, sd ~13
    # PIL path pads with black too
    img = Image.fromarray(np.full((4, 4, 3), 255, np.uint8))
    crops = [np.asarray(T.RandomCrop(4, padding=2)(img, rng=rng)) for _ in range(50)]
    assert any((c == 0).any() for c in crops) and all(c.shape == (4, 4, 3) for c in crops)


def test_flip_twice_is_identity_and_p_matters():
    x = chw(3, 5, 6)
    flip = T.RandomHorizontalFlip(p=1.0)
    np.testing.assert_array_equal(flip(x), x[:, :, ::-1])
    np.testing.assert_array_equal(flip(flip(x)), x)
    np.testing.assert_array_equal(T.RandomHorizontalFlip(p=0.0)(x), x)
    img, a = pil_rgb(4, 5)
    np.testing.assert_array_equal(np.asarray(flip(img)), a[:, ::-1])
    np.testing.assert_array_equal(np.asarray(flip(flip(img))), a)
    rng = np.random.default_rng(3)
    half = T.RandomHorizontalFlip()
    flips = sum(not np.array_equal(half(x, rng=rng), x) for _ in range(1000))
    assert 430 < flips < 570  # binomial(1000, 0.5): sd ~16


def test_ten_crop_views():
    x = chw(3, 10, 12)
    v = T.TenCrop(6)(x)
    assert v.shape == (10, 3, 6, 6)
    np.testing.assert_array_equal(v[0], x[:, :6, :6])
    np.testing.assert_array_equal(v[1], x[:, :6, 6:])
    np.testing.assert_array_equal(v[2], x[:, 4:, :6])
    np.testing.assert_array_equal(v[3], x[:, 4:, 6:])
    np.testing.assert_array_equal(v[4], T.CenterCrop(6)(x))
    np.testing.assert_array_equal(v[4], x[:, 2:8, 3:9])
    for k in range(5):
        np.testing.assert_array_equal(v[5 + k], v[k][:, :, ::-1])
    with pytest.raises(TypeError, match="after ToArray"):
        T.TenCrop(2)(Image.new("RGB", (4, 4)))


# --- Normalize / SubtractMean -----------------------------------------------------------------

def test_normalize_per_channel():
    x = chw(3, 4, 5)
    mean, std = [0.1, -0.2, 0.3], [0.5, 2.0, 4.0]
    out = T.Normalize(mean, std)(x)
    for c in range(3):
        np.testing.assert_allclose(out[c], (x[c] - mean[c]) / std[c], rtol=1e-6, atol=1e-7)
    ten = np.stack([x, 2 * x])  # (2, C, H, W) after TenCrop works too
    np.testing.assert_allclose(T.Normalize(mean, std)(ten)[1, 2], (2 * x[2] - 0.3) / 4.0,
                               rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="3 channel means.*2 channels"):
        T.Normalize(mean, std)(chw(2, 3, 3))


class ArrayDataset(Dataset):
    def __init__(self, arrays):
        self.arrays = arrays

    def __len__(self):
        return len(self.arrays)

    def __getitem__(self, i):
        return self.arrays[i], 0


def test_subtract_mean_and_mean_image(tmp_path):
    arrays = [chw(3, 6, 8, seed=s) for s in range(7)]
    cache = tmp_path / "mean.npy"
    m = T.compute_mean_image(ArrayDataset(arrays), cache=str(cache))
    np.testing.assert_allclose(m, np.mean(np.stack(arrays).astype(np.float64), axis=0),
                               rtol=1e-5, atol=1e-6)
    assert cache.exists()
    # second call reads the cache: a dataset that cannot be read proves it is not touched
    m2 = T.SubtractMean.from_dataset(BrokenDataset(), cache=str(cache)).mean
    np.testing.assert_array_equal(m2, m)
    sub = T.SubtractMean(str(cache))
    np.testing.assert_allclose(sub(arrays[0]), arrays[0] - m, rtol=1e-6, atol=1e-6)
    # a mean of another size is resized to the image: a constant mean stays constant
    const = T.SubtractMean(np.full((3, 16, 16), 2.0, np.float32))
    np.testing.assert_allclose(const(np.full((3, 5, 7), 3.0, np.float32)), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="channels"):
        T.SubtractMean(m)(chw(1, 6, 8))


class BrokenDataset(Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, i):
        raise AssertionError("the cache should have been used")


# --- FancyPCA ---------------------------------------------------------------------------------

def test_fancy_pca_shift_has_the_right_covariance():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((3, 3))
    sigma = A @ A.T + 0.1 * np.eye(3)  # an RGB covariance
    lam, P = np.linalg.eigh(sigma)
    pca = T.FancyPCA(lam, P, std=0.1)
    x = np.zeros((3, 2, 3), np.float32)
    shifts = []
    for _ in range(20000):
        out = pca(x, rng=rng)
        # one offset per image: every pixel moves by the same RGB vector
        assert np.allclose(out, out[:, :1, :1])
        shifts.append(out[:, 0, 0])
    s = np.asarray(shifts, dtype=np.float64)
    np.testing.assert_allclose(s.mean(axis=0), 0.0, atol=0.1 * 0.05 * np.sqrt(lam.max()))
    np.testing.assert_allclose(np.cov(s.T), 0.01 * sigma, atol=0.05 * 0.01 * lam.max())


def test_fancy_pca_from_dataset_recovers_covariance(tmp_path):
    rng = np.random.default_rng(1)
    sigma = np.array([[0.04, 0.03, 0.01], [0.03, 0.05, 0.02], [0.01, 0.02, 0.03]])
    L = np.linalg.cholesky(sigma)
    arrays = [(0.5 + (L @ rng.standard_normal((3, 400)))).reshape(3, 20, 20).astype(np.float32)
              for _ in range(20)]
    cache = tmp_path / "pca.json"
    pca = T.FancyPCA.from_dataset(ArrayDataset(arrays), n=20, cache=str(cache))
    pixels = np.concatenate([a.reshape(3, -1) for a in arrays], axis=1).astype(np.float64)
    lam, P = np.linalg.eigh(np.cov(pixels))
    np.testing.assert_allclose(pca.eigvals, lam[::-1], rtol=1e-4)
    # eigenvectors up to sign
    np.testing.assert_allclose(np.abs(np.sum(pca.eigvecs * P[:, ::-1], axis=0)), 1.0, atol=1e-4)
    json.loads(cache.read_text())
    again = T.FancyPCA.from_dataset(BrokenDataset(), cache=str(cache), std=0.2)
    np.testing.assert_allclose(again.eigvals, pca.eigvals)
    assert again.std == 0.2
    with pytest.raises(ValueError, match="3 eigenvalues"):
        T.FancyPCA([1, 2], np.eye(3))
    with pytest.raises(TypeError, match="after ToArray"):
        pca(Image.new("RGB", (3, 3)))


# --- Compose and the generator ------------------------------------------------------------------

def test_compose_hands_the_same_rng_to_each_transform():
    img, _ = pil_rgb(20, 24)
    pipe = T.Compose([T.ScaleJitter(14, 20), T.RandomCrop(12), T.RandomHorizontalFlip(),
                      T.ToArray(), T.Normalize([0.5] * 3, [0.25] * 3)])
    a = pipe(img, rng=np.random.default_rng([7, 1]))
    b = pipe(img, rng=np.random.default_rng([7, 1]))
    assert a.shape == (3, 12, 12)
    np.testing.assert_array_equal(a, b)
    # the same draws made by hand, step by step
    rng = np.random.default_rng([7, 1])
    step = T.ScaleJitter(14, 20)(img, rng=rng)
    step = T.RandomCrop(12)(step, rng=rng)
    step = T.RandomHorizontalFlip()(step, rng=rng)
    np.testing.assert_allclose(a, (np.asarray(step).transpose(2, 0, 1) / 255.0 - 0.5) / 0.25,
                               rtol=1e-5, atol=1e-5)
    assert "RandomCrop" in repr(pipe)


# --- RandomResizedCrop, ColorJitter, Lambda (torchvision's arguments and semantics) ------------


def test_random_resized_crop_params_follow_torchvisions_sampling():
    img = np.random.default_rng(0).random((3, 40, 60)).astype(np.float32)
    t = T.RandomResizedCrop(16, scale=(0.25, 0.5), ratio=(0.5, 2.0))
    for seed in range(40):
        top, left, h, w = t.get_params(img, np.random.default_rng(seed))
        # the same draws by hand: area fraction, log-uniform ratio, rounding, then the corner
        r = np.random.default_rng(seed)
        area = 40 * 60 * r.uniform(0.25, 0.5)
        aspect = np.exp(r.uniform(np.log(0.5), np.log(2.0)))
        ew, eh = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
        if 0 < ew <= 60 and 0 < eh <= 40:
            assert (h, w) == (eh, ew)
            assert (top, left) == (int(r.integers(0, 40 - eh + 1)), int(r.integers(0, 60 - ew + 1)))
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 60
        out = t(img, rng=np.random.default_rng(seed))
        assert out.shape == (3, 16, 16) and out.dtype == np.float32


def test_random_resized_crop_whole_image_and_fallback():
    img = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    # scale 1, ratio 1 on a square image: the crop is the whole image, resized to itself
    np.testing.assert_array_equal(T.RandomResizedCrop(8, scale=(1, 1), ratio=(1, 1))(
        img, rng=np.random.default_rng(1)), img)
    # a crop that never fits (area 4x the image): torchvision's central fallback, the whole
    # 8 x 20 image clamped to ratio <= 1 -> its central 8 x 8
    wide = np.random.default_rng(2).random((1, 8, 20)).astype(np.float32)
    t = T.RandomResizedCrop(8, scale=(4, 4), ratio=(0.5, 1.0))
    assert t.get_params(wide, np.random.default_rng(0)) == (0, 6, 8, 8)
    np.testing.assert_array_equal(t(wide, rng=np.random.default_rng(0)), wide[:, :, 6:14])
    pil = Image.fromarray((np.random.default_rng(3).random((30, 50, 3)) * 255).astype(np.uint8))
    assert T.RandomResizedCrop((10, 12))(pil, rng=np.random.default_rng(0)).size == (12, 10)
    with pytest.raises(ValueError, match="scale"):
        T.RandomResizedCrop(8, scale=(0.9, 0.1))
    with pytest.raises(ValueError, match="ratio"):
        T.RandomResizedCrop(8, ratio=(0, 1))


def test_color_jitter_factors_by_hand_on_arrays():
    x = np.array([[[0.2, 0.6]], [[0.4, 0.1]], [[0.8, 0.3]]], np.float32)  # (3, 1, 2)
    gray = 0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(T.ColorJitter(brightness=(1.5, 1.5))(x, rng=rng),
                               np.clip(1.5 * x, 0, 1), rtol=1e-6)
    np.testing.assert_allclose(T.ColorJitter(contrast=(2, 2))(x, rng=rng),
                               np.clip(2 * x - gray.mean(), 0, 1), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(T.ColorJitter(saturation=(0, 0))(x, rng=rng),
                               np.broadcast_to(gray, x.shape), rtol=1e-6)
    red = np.zeros((3, 1, 1), np.float32)
    red[0] = 1.0
    np.testing.assert_allclose(T.ColorJitter(hue=(0.5, 0.5))(red, rng=rng).ravel(), [0, 1, 1],
                               atol=1e-6)  # red turned half way round the hue circle: cyan
    np.testing.assert_allclose(T.ColorJitter(hue=(1 / 3, 1 / 3))(red, rng=rng).ravel(),
                               [0, 1, 0], atol=1e-6)  # a third of the way: green
    assert T.ColorJitter().brightness is None and T.ColorJitter(0.5).brightness == (0.5, 1.5)
    assert T.ColorJitter(brightness=2).brightness == (0.0, 3.0)  # clipped at 0 like torch's


def test_color_jitter_on_pil_matches_pillow_enhance_and_shifts_hue():
    from PIL import ImageEnhance
    a = (np.random.default_rng(4).random((6, 7, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(a)
    rng = np.random.default_rng(0)
    out = T.ColorJitter(brightness=(0.5, 0.5))(img, rng=rng)
    # Pillow's brightness blends with black: round(0.5 * v)
    np.testing.assert_allclose(np.asarray(out, np.float64), a * 0.5, atol=0.51)
    out = T.ColorJitter(contrast=(1.7, 1.7))(img, rng=rng)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ImageEnhance.Contrast(img).enhance(1.7)))
    red = Image.new("RGB", (2, 2), (255, 0, 0))
    cyanish = np.asarray(T.ColorJitter(hue=(0.5, 0.5))(red, rng=rng))[0, 0]
    assert cyanish[0] <= 2 and cyanish[1] >= 250 and cyanish[2] >= 245  # int(0.5*255)=127/255
    with pytest.raises(ValueError, match="hue"):
        T.ColorJitter(hue=0.6)
    with pytest.raises(ValueError, match="brightness"):
        T.ColorJitter(brightness=-1)


def test_color_jitter_draws_order_and_factors_from_the_sample_rng():
    x = np.random.default_rng(5).random((3, 4, 4)).astype(np.float32)
    t = T.ColorJitter(0.4, 0.4, 0.4, 0.1)
    a = t(x, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a, t(x, rng=np.random.default_rng(7)))
    assert not np.allclose(a, t(x, rng=np.random.default_rng(8)))
    order, b, c, s, h = t.get_params(np.random.default_rng(7))
    assert sorted(order.tolist()) == [0, 1, 2, 3]
    assert 0.6 <= b <= 1.4 and 0.6 <= c <= 1.4 and 0.6 <= s <= 1.4 and -0.1 <= h <= 0.1
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1


def test_lambda_calls_the_function_with_the_sample_stream():
    from minidl.data import DataLoader, current_rng, sample_rng

    class Noise(Dataset):
        def __init__(self):
            self.transform = T.Compose([T.Lambda(lambda im: im + current_rng().random()),
                                        T.Lambda(lambda im: im * 2)])

        def __len__(self):
            return 6

        def getitem(self, i, rng=None):
            return self.transform(np.full((1,), float(i), np.float32), rng=rng), i

        def __getitem__(self, i):
            return self.getitem(i)

    ds = Noise()
    out = [[x.numpy() for x, _ in DataLoader(ds, batch_size=3, seed=4, num_workers=w)]
           for w in (0, 2)]
    np.testing.assert_array_equal(np.concatenate(out[0]), np.concatenate(out[1]))
    for i in range(6):
        expect = (i + sample_rng(4, 0, i).random()) * 2
        assert np.concatenate(out[0])[i, 0] == np.float32(expect)
    with pytest.raises(TypeError, match="callable"):
        T.Lambda(3)
