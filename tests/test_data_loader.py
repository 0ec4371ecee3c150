"""minidl.data.DataLoader: order, seeding, workers, resume, skipping corrupt images."""
import json
import multiprocessing as mp
import os
import warnings

import numpy as np
import pytest

from minidl.data import (CorruptImageWarning, CorruptSample, DataLoader, Dataset, ImageFolder,
                         sample_rng)
from minidl.data import transforms as T

Image = pytest.importorskip("PIL.Image")

N = 23


class Augmented(Dataset):
    """Sample i is a (3, 8, 8) array of value-encoded pixels, randomly cropped/flipped/coloured;
    its label is i, so a batch's labels say which samples it holds."""

    def __init__(self, n=N, fail_at=None):
        self.base = [np.random.default_rng(i).standard_normal((3, 8, 8)).astype(np.float32)
                     for i in range(n)]
        lam, P = np.linalg.eigh(np.array([[2.0, 1, 0], [1, 2, 0], [0, 0, 1]]))
        self.transform = T.Compose([T.RandomCrop(6, padding=1), T.RandomHorizontalFlip(),
                                    T.FancyPCA(lam, P, std=0.5)])
        self.fail_at = fail_at

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        return self.getitem(i)

    def getitem(self, i, rng=None):
        if i == self.fail_at:
            raise ValueError(f"bad sample {i}")
        return self.transform(self.base[i], rng=rng), i


def batches(loader):
    return [(x.copy(), y.copy()) for x, y in loader]


def assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)


def test_batches_shapes_dtypes_and_order():
    loader = DataLoader(Augmented(), batch_size=5)
    assert len(loader) == 5
    out = batches(loader)
    assert [len(y) for _, y in out] == [5, 5, 5, 5, 3]
    x, y = out[0]
    assert x.shape == (5, 3, 6, 6) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(np.concatenate([y for _, y in out]), np.arange(N))
    assert loader.epoch == 1  # a full pass advances the epoch


def test_drop_last():
    loader = DataLoader(Augmented(), batch_size=5, drop_last=True, shuffle=True)
    assert len(loader) == 4
    out = batches(loader)
    assert [len(y) for _, y in out] == [5, 5, 5, 5]
    assert len(set(np.concatenate([y for _, y in out]).tolist())) == 20


def test_each_sample_gets_the_generator_of_seed_epoch_index():
    ds = Augmented()
    loader = DataLoader(ds, batch_size=4, shuffle=True, seed=11)
    for epoch in range(2):
        for x, y in loader:
            for xi, i in zip(x, y):
                expect = ds.transform(ds.base[i], rng=sample_rng(11, epoch, int(i)))
                np.testing.assert_array_equal(xi, expect)


def test_shuffle_reproducible_and_differs_across_epochs():
    def labels(seed, epochs=2):
        loader = DataLoader(Augmented(), batch_size=4, shuffle=True, seed=seed)
        return [np.concatenate([y for _, y in loader]) for _ in range(epochs)]

    e0, e1 = labels(3)
    assert sorted(e0.tolist()) == list(range(N)) and sorted(e1.tolist()) == list(range(N))
    assert not np.array_equal(e0, e1)
    assert not np.array_equal(e0, np.arange(N))
    r0, r1 = labels(3)
    np.testing.assert_array_equal(e0, r0)
    np.testing.assert_array_equal(e1, r1)
    assert not np.array_equal(labels(4, 1)[0], e0)


def test_workers_give_identical_batches():
    ref = DataLoader(Augmented(), batch_size=4, shuffle=True, seed=5)
    par = DataLoader(Augmented(), batch_size=4, shuffle=True, seed=5, num_workers=2)
    for _ in range(2):
        assert_same(batches(ref), batches(par))
    assert par.epoch == 2


def test_state_dict_resume_mid_epoch():
    ref = DataLoader(Augmented(), batch_size=4, shuffle=True, seed=9)
    full = batches(ref) + batches(ref)  # epochs 0 and 1

    cut = DataLoader(Augmented(), batch_size=4, shuffle=True, seed=9)
    head = []
    for k, (x, y) in enumerate(cut):
        head.append((x.copy(), y.copy()))
        if k == 2:
            break
    state = json.loads(json.dumps(cut.state_dict()))  # JSON-able
    assert state["epoch"] == 0 and state["position"] == 3

    resumed = DataLoader(Augmented(), batch_size=4, shuffle=True, seed=0, num_workers=2)
    resumed.load_state_dict(state)
    rest = batches(resumed) + batches(resumed)
    assert_same(head + rest, full)
    assert resumed.epoch == 2


def test_breaking_then_iterating_continues_and_state_after_last_batch():
    loader = DataLoader(Augmented(), batch_size=10)
    it = iter(loader)
    next(it)
    next(it)
    next(it)  # the last batch of epoch 0; the loop has not been closed
    del it
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["position"] == 0
    assert len(batches(loader)) == 3  # epoch 1 from its start


def test_load_state_dict_checks_structure():
    a = DataLoader(Augmented(), batch_size=4)
    with pytest.raises(ValueError, match="batch_size 4 vs 5"):
        DataLoader(Augmented(), batch_size=5).load_state_dict(a.state_dict())
    with pytest.raises(KeyError, match="position"):
        a.load_state_dict({"epoch": 0, "seed": 0})


def test_workers_shut_down_on_break_and_on_error():
    loader = DataLoader(Augmented(n=40), batch_size=2, num_workers=2)
    for k, _ in enumerate(loader):
        if k == 1:
            break
    assert not mp.active_children()
    assert loader.position == 2

    bad = DataLoader(Augmented(fail_at=5), batch_size=2, num_workers=2)
    with pytest.raises(ValueError, match="bad sample 5") as info:
        batches(bad)
    assert any("worker" in n for n in getattr(info.value, "__notes__", []))
    assert not mp.active_children()


def test_collate_errors_are_clear():
    class PilData(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return Image.new("RGB", (4, 4)), 0

    with pytest.raises(TypeError, match="ToArray"):
        batches(DataLoader(PilData(), batch_size=2))

    class Ragged(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return np.zeros((3, 4, 4 + i), np.float32), 0

    with pytest.raises(ValueError, match=r"sample 1 has shape \(3, 4, 5\)"):
        batches(DataLoader(Ragged(), batch_size=2))
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(Ragged(), batch_size=0)


def _tree(root, n_per_class=4, corrupt=()):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        os.makedirs(root / c)
        for i in range(n_per_class):
            a = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(a).save(root / c / f"{i}.jpg", quality=95)
    for c, i in corrupt:
        p = root / c / f"{i}.jpg"
        p.write_bytes(p.read_bytes()[:200])  # truncated JPEG


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_jpeg_is_skipped_and_counted(tmp_path, workers):
    _tree(tmp_path, corrupt=[("dog", 1)])
    ds = ImageFolder(tmp_path, transform=T.Compose([T.RandomCrop(8), T.ToArray()]))
    bad = [k for k, (p, _) in enumerate(ds.samples) if p.endswith(os.path.join("dog", "1.jpg"))]
    assert isinstance(ds.load(bad[0])[0], CorruptSample)
    loader = DataLoader(ds, batch_size=3, num_workers=workers, seed=1)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = batches(loader)
    assert sum(len(y) for _, y in out) == 7
    assert loader.skipped == 1 and loader.skipped_samples[0][0] == bad[0]
    messages = [str(x.message) for x in w if issubclass(x.category, CorruptImageWarning)]
    assert any("1.jpg" in m for m in messages)
    assert any("skipped 1 corrupt" in m for m in messages)  # the end-of-epoch report
    # the good images still decode to the bytes Pillow gives
    x0 = out[0][0][0]
    first = np.asarray(Image.open(ds.samples[0][0]).convert("RGB"))
    top_left = [(i, j) for i in range(5) for j in range(5)
                if np.allclose(first[i:i + 8, j:j + 8].transpose(2, 0, 1) / 255.0, x0)]
    assert top_left


class PlainGetitem(Dataset):
    """A user dataset that calls minidl's random transforms without passing a generator."""

    def __init__(self):
        self.base = [np.full((1, 6, 6), i, np.float32) + np.arange(6, dtype=np.float32)
                     for i in range(12)]
        self.t = T.Compose([T.RandomCrop(4), T.RandomHorizontalFlip()])

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        return self.t(self.base[i]), i


def test_transforms_without_rng_still_follow_the_sample_stream():
    ds = PlainGetitem()
    a = batches(DataLoader(ds, batch_size=5, shuffle=True, seed=2))
    b = batches(DataLoader(ds, batch_size=5, shuffle=True, seed=2, num_workers=2))
    assert_same(a, b)
    for x, y in a:
        for xi, i in zip(x, y):
            np.testing.assert_array_equal(xi, ds.t(ds.base[i], rng=sample_rng(2, 0, int(i))))


def test_empty_dataset_and_set_epoch():
    class Empty(Dataset):
        def __len__(self):
            return 0

    loader = DataLoader(Empty(), batch_size=3)
    assert len(loader) == 0 and list(loader) == [] and loader.epoch == 1
    full = DataLoader(Augmented(), batch_size=4, shuffle=True)
    first = batches(full)
    full.set_epoch(0)
    assert_same(batches(full), first)


class Growing(Dataset):
    """Later batches hold bigger images than the first: they outgrow the shared-memory slots
    sized after the first batch and must travel pickled."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        side = 2 if i < 2 else 2 + i
        return np.random.default_rng(i).standard_normal((1, side, side)).astype(np.float32), i


def test_workers_handle_batches_of_changing_size_and_free_shared_memory():
    shm_dir = "/dev/shm"
    before = set(os.listdir(shm_dir)) if os.path.isdir(shm_dir) else set()
    ref = batches(DataLoader(Growing(), batch_size=1))
    par = batches(DataLoader(Growing(), batch_size=1, num_workers=2))
    assert_same(ref, par)
    assert [x.shape[-1] for x, _ in par] == [2, 2] + list(range(4, 14))
    if os.path.isdir(shm_dir):
        assert set(os.listdir(shm_dir)) - before == set()  # every slot unlinked
