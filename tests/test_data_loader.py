"""minidl.data.DataLoader: order, seeding, workers, resume, skipping corrupt images."""
import json
import multiprocessing as mp
import os
import warnings

import numpy as np
import pytest

import minidl
from minidl.data import (CorruptImageWarning, CorruptSample, DataLoader, Dataset, ImageFolder,
                         sample_rng)
from minidl.data import transforms as T

from conftest import require

Image = require("PIL.Image", "Pillow-based test module")

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
    """One epoch as NumPy (images, labels) pairs, checking they came as minidl Tensors."""
    out = []
    for x, y in loader:
        assert isinstance(x, minidl.Tensor) and isinstance(y, minidl.Tensor)
        out.append((x.numpy(), y.numpy()))
    return out


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
        for x, y in batches(loader):
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
        head.append((x.numpy(), y.numpy()))
        if k == 2:
            break
    state = json.loads(json.dumps(cut.state_dict()))  # JSON-able
    assert state["epoch"] == 0 and state["position"] == 3

    resumed = DataLoader(Augmented(), batch_size=4, shuffle=True, seed=0, num_workers=2)
    resumed.load_state_dict(state)
    rest = batches(resumed) + batches(resumed)
    assert_same(head + rest, full)
    assert resumed.epoch == 2


def test_iterator_that_yielded_the_whole_epoch_advances_it():
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
    ref = batches(DataLoader(Growing(), batch_size=1))
    par = batches(DataLoader(Growing(), batch_size=1, num_workers=2))
    assert_same(ref, par)
    assert [x.shape[-1] for x, _ in par] == [2, 2] + list(range(4, 14))
    # every slot unlinked (only this process's: other test runs on the machine make their own)
    assert _our_segments() == []


# --- PyTorch's iterator semantics, collate_fn, device, Subset ----------------------------------


def test_peeking_drops_nothing_and_a_new_iterator_restarts_the_epoch():
    ref = batches(DataLoader(Augmented(), batch_size=4, shuffle=True, seed=3))
    loader = DataLoader(Augmented(), batch_size=4, shuffle=True, seed=3)
    _, y0 = next(iter(loader))  # peek
    np.testing.assert_array_equal(y0.numpy(), ref[0][1])
    assert loader.epoch == 0
    assert_same(batches(loader), ref)  # the whole of epoch 0, peeked batch included
    assert loader.epoch == 1
    for k, _ in enumerate(loader):  # leave epoch 1 after two batches ...
        if k == 1:
            break
    assert loader.epoch == 1 and loader.state_dict()["position"] == 2
    again = batches(loader)  # ... and a new iterator runs epoch 1 from its start
    assert len(again) == len(loader) and loader.epoch == 2
    assert sorted(np.concatenate([y for _, y in again]).tolist()) == list(range(N))


def test_only_the_first_iterator_after_load_state_dict_resumes():
    ref = DataLoader(Augmented(), batch_size=4, shuffle=True, seed=9)
    epoch0 = batches(ref)
    epoch1 = batches(ref)
    resumed = DataLoader(Augmented(), batch_size=4, shuffle=True, seed=9)
    resumed.load_state_dict({"epoch": 0, "position": 4, "seed": 9})
    assert resumed.state_dict()["position"] == 4  # a checkpoint taken now resumes there too
    assert_same(batches(resumed), epoch0[4:])
    assert_same(batches(resumed), epoch1)
    # a resume left early: the next iterator starts that epoch from its beginning
    resumed.load_state_dict({"epoch": 0, "position": 2, "seed": 9})
    it = iter(resumed)
    np.testing.assert_array_equal(next(it)[1].numpy(), epoch0[2][1])
    del it
    assert_same(batches(resumed), epoch0)


def test_default_collate_structures_and_dtypes_by_hand():
    from minidl.data import default_collate
    samples = [{"img": np.full((2, 2), k, np.float32), "label": k, "w": 0.5 * k, "ok": k > 0,
                "name": f"s{k}", "pair": (np.int32(k), [k, -k])} for k in range(3)]
    b = default_collate(samples)
    assert set(b) == {"img", "label", "w", "ok", "name", "pair"}
    assert isinstance(b["img"], minidl.Tensor) and b["img"].shape == (3, 2, 2)
    assert b["img"].dtype == np.float32
    np.testing.assert_array_equal(b["img"].numpy()[:, 0, 0], [0, 1, 2])
    assert b["label"].dtype == np.int64 and b["label"].tolist() == [0, 1, 2]
    assert b["w"].dtype == np.float64 and b["w"].tolist() == [0.0, 0.5, 1.0]
    assert b["ok"].dtype == np.bool_ and b["ok"].tolist() == [False, True, True]
    assert b["name"] == ["s0", "s1", "s2"]
    assert isinstance(b["pair"], list) and b["pair"][0].dtype == np.int32
    assert [t.tolist() for t in b["pair"][1]] == [[0, 1, 2], [0, -1, -2]]
    with pytest.raises(ValueError, match=r"sample 1 has 3"):
        default_collate([(1, 2), (1, 2, 3)])
    with pytest.raises(TypeError, match="object"):
        default_collate([object(), object()])


def test_default_collate_matches_torch():
    torch = require("torch")
    from torch.utils.data import default_collate as torch_collate

    from minidl.data import default_collate
    rng = np.random.default_rng(0)
    samples = [(rng.standard_normal((3, 4)).astype(np.float32), int(k), float(k) / 3,
                {"a": rng.integers(0, 9, (2,)), "b": [True, k]}) for k in range(4)]
    ours, theirs = default_collate(samples), torch_collate(samples)

    def compare(a, b):
        if isinstance(b, torch.Tensor):
            assert isinstance(a, minidl.Tensor)
            assert a.numpy().dtype == b.numpy().dtype, (a.dtype, b.dtype)
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        elif isinstance(b, dict):
            assert a.keys() == b.keys()
            for k in b:
                compare(a[k], b[k])
        else:
            assert type(a) is type(b) and len(a) == len(b)
            for u, v in zip(a, b):
                compare(u, v)
    compare(ours, theirs)


class DictSamples(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return {"x": np.full((2,), i, np.float32), "y": i, "tag": str(i)}


@pytest.mark.parametrize("workers", [0, 2])
def test_collate_fn_runs_per_batch_and_arrays_come_back_as_tensors(workers):
    def collate(samples):  # a user's collate_fn: returns NumPy; the loader makes Tensors
        return (np.stack([s["x"] for s in samples]) * 2, [s["tag"] for s in samples],
                np.array([s["y"] for s in samples]))

    out = list(DataLoader(DictSamples(), batch_size=4, collate_fn=collate, num_workers=workers))
    assert [len(t) for _, t, _ in out] == [4, 4, 2]
    x, tags, y = out[2]
    assert isinstance(x, minidl.Tensor) and isinstance(y, minidl.Tensor)
    np.testing.assert_array_equal(x.numpy(), [[16, 16], [18, 18]])
    assert tags == ["8", "9"] and y.tolist() == [8, 9]
    d = next(iter(DataLoader(DictSamples(), batch_size=3, num_workers=workers)))
    assert d["tag"] == ["0", "1", "2"] and d["y"].tolist() == [0, 1, 2]


def test_device_argument_puts_batches_on_the_device(device):
    loader = DataLoader(Augmented(), batch_size=5, device=device, num_workers=1)
    for x, y in loader:
        assert x.device == device and y.device == device
    loader.set_epoch(0)
    ref = batches(DataLoader(Augmented(), batch_size=5))
    assert_same([(x.numpy(), y.numpy()) for x, y in loader], ref)


def test_subset_of_a_plain_dataset_works_in_the_loader():
    from minidl.data import Subset
    plain = [(np.full((2,), i, np.float32), i) for i in range(10)]  # a list is a dataset
    for workers in (0, 2):
        out = batches(DataLoader(Subset(plain, [7, 3, 5]), batch_size=2, num_workers=workers))
        assert [y.tolist() for _, y in out] == [[7, 3], [5]]
        np.testing.assert_array_equal(out[0][0][:, 0], [7, 3])


# --- sharding across data-parallel ranks ------------------------------------------------------


@pytest.mark.parametrize("world,batch,drop_last,n", [(2, 3, False, 23), (3, 2, False, 23),
                                                      (3, 2, True, 23), (4, 3, False, 5),
                                                      (2, 4, False, 16), (1, 5, False, 23)])
def test_ranks_split_each_single_process_batch(world, batch, drop_last, n):
    single = DataLoader(Augmented(n), batch_size=world * batch, shuffle=True, seed=4,
                        drop_last=drop_last)
    ranks = [DataLoader(Augmented(n), batch_size=batch, shuffle=True, seed=4, rank=r,
                        num_replicas=world, drop_last=drop_last) for r in range(world)]
    for _ in range(2):  # two epochs: the order changes, the ranks stay in step
        ref = batches(single)
        per_rank = [batches(loader) for loader in ranks]
        assert all(len(b) == len(ref) == len(loader) for b, loader in zip(per_rank, ranks))
        for k, (_, y_ref) in enumerate(ref):
            parts = [per_rank[r][k][1] for r in range(world)]
            if len(y_ref) == world * batch:  # a full batch: rank r holds the r-th slice
                for r in range(world):
                    np.testing.assert_array_equal(parts[r], y_ref[r * batch:(r + 1) * batch])
            else:  # the tail: equal shares, covering the single-process batch, padded by
                # repeating the epoch's first samples
                assert not drop_last
                size = -(-len(y_ref) // world)
                assert [len(p) for p in parts] == [size] * world
                union = np.concatenate(parts)
                np.testing.assert_array_equal(union[:len(y_ref)], y_ref)
                first = np.concatenate([y for _, y in ref])
                np.testing.assert_array_equal(union[len(y_ref):],
                                              np.resize(first, size * world - len(y_ref)))
            for r in range(world):  # the images are the single process's, too
                x_ref = ref[k][0]
                np.testing.assert_array_equal(per_rank[r][k][0][:len(parts[r])][:1],
                                              x_ref[np.flatnonzero(y_ref == parts[r][0])[:1]])
        if drop_last:
            assert len(ref) == n // (world * batch)


def test_every_rank_resumes_from_rank_0s_state():
    world, batch = 3, 2
    make = (lambda r: DataLoader(Augmented(), batch_size=batch, shuffle=True, seed=6, rank=r,
                                 num_replicas=world))
    straight = [batches(make(r)) for r in range(world)]
    first = [make(r) for r in range(world)]
    for loader in first:
        for k, _ in enumerate(loader):
            if k == 1:
                break
    state = json.loads(json.dumps(first[0].state_dict()))
    assert state["position"] == 2 and state["num_replicas"] == world
    for r in range(world):
        resumed = make(r)
        resumed.load_state_dict(state)
        assert_same(batches(resumed), straight[r][2:])
    with pytest.raises(ValueError, match="num_replicas 3 vs 2"):
        DataLoader(Augmented(), batch_size=batch, shuffle=True, num_replicas=2,
                   rank=0).load_state_dict(state)


def test_sharding_arguments_are_checked():
    with pytest.raises(ValueError, match="rank must be in 0..num_replicas-1"):
        DataLoader(Augmented(), num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas"):
        DataLoader(Augmented(), num_replicas=0, rank=0)
    with pytest.raises(ValueError, match="give both"):
        DataLoader(Augmented(), num_replicas=2)


# --- timeouts and errors that name the sample ---------------------------------------------------


class Slow(Dataset):
    def __init__(self, slow_index, seconds=30.0):
        self.slow_index, self.seconds = slow_index, seconds

    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == self.slow_index:
            import time
            time.sleep(self.seconds)
        return np.zeros(2, np.float32), i


@pytest.mark.slow  # waits out the loader's timeout
def test_timeout_names_the_pending_sample_indices():
    loader = DataLoader(Slow(5), batch_size=2, num_workers=2, timeout=5)
    got = []
    with pytest.raises(RuntimeError, match=r"timed out after 5.0 s waiting for batch 2 .*"
                                           r"pending sample indices \[4, 5\]"):
        for _, y in loader:
            got.append(y.tolist())
    assert got == [[0, 1], [2, 3]]
    assert not mp.active_children()
    with pytest.raises(ValueError, match="timeout"):
        DataLoader(Slow(5), timeout=-1)


@pytest.mark.parametrize("workers", [0, 2])
def test_errors_name_the_sample_index_and_the_dataset(workers):
    loader = DataLoader(Augmented(fail_at=13), batch_size=4, num_workers=workers)
    with pytest.raises(ValueError, match="bad sample 13") as info:
        batches(loader)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "sample index 13" in notes and "Augmented" in notes and "batch 3" in notes


def _start_script(tmp_path, name, template, stderr):
    """Run ``template`` (formatted with the repository path) as a script in a new session,
    so its whole process group can be signalled; stdout is a text pipe."""
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / name
    script.write_text(template.format(repo=repo))
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=stderr, text=True, start_new_session=True)


def _group_gone(pgid, seconds, poll):
    """Whether every process of group ``pgid`` has exited within ``seconds``."""
    import time
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(poll)
    return False


# --- SIGKILL of the whole process group leaves nothing in /dev/shm ------------------------------

KILL_SCRIPT = r"""
import sys
import numpy as np
sys.path.insert(0, {repo!r})
from minidl.data import DataLoader, Dataset


class Images(Dataset):
    def __len__(self):
        return 100000

    def __getitem__(self, i):
        return np.full((3, 16, 16), i % 251, np.float32), i


if __name__ == "__main__":
    for k, (x, y) in enumerate(DataLoader(Images(), batch_size=8, num_workers=2)):
        print(k, flush=True)
"""


@pytest.mark.skipif(not (os.path.isdir("/dev/shm") and os.path.isdir("/proc/self")
                         and hasattr(os, "killpg")), reason="needs Linux /dev/shm and /proc")
def test_sigkill_of_the_process_group_mid_epoch_leaves_no_shared_memory(tmp_path):
    import signal
    import subprocess

    from minidl.data.dataloader import SHM_PREFIX
    p = _start_script(tmp_path, "loader.py", KILL_SCRIPT, subprocess.PIPE)
    prefix = f"{SHM_PREFIX}{p.pid}_"
    try:
        for line in p.stdout:  # mid-epoch: well past the first batches
            if int(line) >= 20:
                break
        assert p.poll() is None, p.stderr.read()
        # the slots exist (mapped by the loader) but their names are already gone
        with open(f"/proc/{p.pid}/maps") as f:
            maps = [m for m in f if f"/dev/shm/{prefix}" in m]
        assert maps and all("(deleted)" in m for m in maps), maps
        assert not [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        p.stdout.close()
        p.stderr.close()
    if not _group_gone(p.pid, 10, 0.1):  # the workers die with the group
        pytest.fail("processes of the killed loader's group are still alive")
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]


def test_ranks_default_to_the_initialized_process_group(monkeypatch):
    from minidl import distributed
    monkeypatch.setattr(distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed, "get_world_size", lambda: 3)
    monkeypatch.setattr(distributed, "get_rank", lambda: 2)
    loader = DataLoader(Augmented(), batch_size=2)
    assert (loader.num_replicas, loader.rank) == (3, 2)
    explicit = DataLoader(Augmented(), batch_size=2, num_replicas=3, rank=2)
    assert_same(batches(loader), batches(explicit))
    monkeypatch.setattr(distributed, "is_initialized", lambda: False)
    assert (DataLoader(Augmented()).num_replicas, DataLoader(Augmented()).rank) == (1, 0)


def _our_segments():
    from minidl.data.dataloader import SHM_PREFIX
    if not os.path.isdir("/dev/shm"):
        return []
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"{SHM_PREFIX}{os.getpid()}_")]


@pytest.mark.slow  # waits for the killed worker to be noticed
@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGKILL"), reason="needs SIGKILL")
def test_a_worker_killed_mid_epoch_is_reported_and_nothing_is_left():
    import signal
    loader = DataLoader(Augmented(n=400), batch_size=2, num_workers=2)
    with pytest.raises(RuntimeError, match=r"worker \d \(pid \d+\) exited unexpectedly with exit "
                                           r"code -9.*sample indices \[\d+, \d+\]"):
        for k, _ in enumerate(loader):
            if k == 3:
                victim = [p for p in mp.active_children() if p.name.startswith("minidl-data")]
                os.kill(victim[0].pid, signal.SIGKILL)
    assert not mp.active_children()
    assert _our_segments() == []


def test_spawned_workers_give_the_same_batches_and_leave_no_segments():
    ref = batches(DataLoader(Augmented(), batch_size=4, shuffle=True, seed=5))
    spawned = DataLoader(Augmented(), batch_size=4, shuffle=True, seed=5, num_workers=2,
                         multiprocessing_context="spawn")
    assert_same(batches(spawned), ref)
    assert not mp.active_children()
    assert _our_segments() == []


class WhoLoads(Dataset):
    """Labels each sample with what the worker's init function and get_worker_info say."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        from minidl.data import get_worker_info
        info = get_worker_info()
        tag = -1 if info is None else info.id * 100 + info.num_workers * 10 + _INIT.get("x", 0)
        return np.zeros(1, np.float32), tag


_INIT = {}


def _init_worker(worker_id):
    _INIT["x"] = worker_id + 1


def _failing_init(worker_id):
    raise OSError(f"no GPU for worker {worker_id}")


def test_worker_init_fn_and_get_worker_info():
    tags = [y.tolist() for _, y in DataLoader(WhoLoads(), batch_size=2, num_workers=2,
                                               worker_init_fn=_init_worker)]
    # batch k is loaded by worker k % 2, whose init ran with its id
    assert tags == [[21, 21], [122, 122], [21, 21], [122, 122]]
    assert [y.tolist() for _, y in DataLoader(WhoLoads(), batch_size=4)] == [[-1] * 4] * 2
    with pytest.raises(OSError, match="no GPU for worker 0") as info:
        list(DataLoader(WhoLoads(), batch_size=2, num_workers=2, worker_init_fn=_failing_init))
    assert any("worker_init_fn" in n for n in info.value.__notes__)
    assert not mp.active_children()
    with pytest.raises(TypeError, match="worker_init_fn"):
        DataLoader(WhoLoads(), worker_init_fn=3)


ORPHAN_SCRIPT = r"""
import sys
import time
import numpy as np
sys.path.insert(0, {repo!r})
from minidl.data import DataLoader, Dataset


class Big(Dataset):
    # every batch is bigger than the last, so none fits a shared-memory slot: they are pickled
    # (hundreds of kB each) through the result pipe, which fills while the main process sleeps
    def __len__(self):
        return 100000

    def __getitem__(self, i):
        return np.zeros((64 + i // 2, 256), np.float32), i


if __name__ == "__main__":
    for k, (x, y) in enumerate(DataLoader(Big(), batch_size=2, num_workers=2)):
        print(k, flush=True)
        time.sleep(60)  # the workers fill the pipe meanwhile
"""


@pytest.mark.slow  # a subprocess that sleeps while its workers fill the pipe
@pytest.mark.skipif(not (os.path.isdir("/proc/self") and hasattr(os, "killpg")),
                    reason="needs Linux /proc and process groups")
def test_workers_exit_when_the_main_process_alone_is_killed(tmp_path):
    import signal
    import subprocess
    import time
    p = _start_script(tmp_path, "orphans.py", ORPHAN_SCRIPT, subprocess.DEVNULL)
    try:
        assert p.stdout.readline().strip() == "0"
        time.sleep(2.0)  # the workers load ahead and block on the full pipe
        os.kill(p.pid, signal.SIGKILL)  # the main process only
        p.wait(timeout=30)
        if not _group_gone(p.pid, 20, 0.2):
            pytest.fail("DataLoader workers outlived their killed main process by 20 s")
        from minidl.data.dataloader import SHM_PREFIX
        assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"{SHM_PREFIX}{p.pid}_")]
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.stdout.close()


def test_without_shared_memory_batches_are_pickled_and_the_same(monkeypatch):
    from multiprocessing import shared_memory

    def no_shm(*args, **kwargs):
        raise OSError(28, "No space left on device: /dev/shm")

    monkeypatch.setattr(shared_memory, "SharedMemory", no_shm)
    ref = batches(DataLoader(Augmented(), batch_size=4, shuffle=True, seed=2))
    assert_same(batches(DataLoader(Augmented(), batch_size=4, shuffle=True, seed=2,
                                   num_workers=2)), ref)
    assert not mp.active_children() and _our_segments() == []
