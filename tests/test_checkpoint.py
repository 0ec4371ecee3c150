"""Checkpoints: full round trip, atomic saves (a failure mid-write leaves the old file loadable
and no temporary file), errors; the bit-identical resume across processes is in
test_checkpoint_resume.py."""
import os
import subprocess
import sys

import numpy as np
import pytest

import minidl
from minidl import random as mrandom
from minidl.data import DataLoader
from minidl.optim import SGD, decay_groups
from minidl.optim.lr_scheduler import MultiStepLR, ReduceLROnPlateau, Warmup
from minidl.train import checkpoint as ckpt_mod
from minidl.train import load_checkpoint, read_checkpoint, save_checkpoint

from train_helpers import ArrayDataset, blobs, nn_mlp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup(seed=0):
    minidl.manual_seed(seed)
    model = nn_mlp(p_drop=0.3, batchnorm=True, prelu=True)
    opt = SGD(decay_groups(model, 1e-3), lr=0.1, momentum=0.9)
    main = MultiStepLR(opt, [5, 9], 0.1)
    sched = Warmup(opt, factor=0.1, steps=3, after=main)
    x, y = blobs(n_per_class=8)
    loader = DataLoader(ArrayDataset(x, y), batch_size=4, shuffle=True, seed=5)
    return model, opt, sched, loader


def _train(model, opt, sched, loader, steps):
    from minidl import functional as F
    model.train()
    done = 0
    while done < steps:
        for xb, yb in loader:
            loss = F.cross_entropy(model(minidl.Tensor(xb)), minidl.Tensor(yb))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            if done == steps:
                break


def _weights(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def test_round_trip_restores_everything(tmp_path):
    model, opt, sched, loader = _setup()
    _train(model, opt, sched, loader, 5)  # mid-epoch (8 batches per epoch)
    path = tmp_path / "run.npz"
    extra = dict(epoch=0, iteration=5, best=float("inf"), note="warm", hist=[0.5, 0.4],
                 pair=(1, 2), by_int={3: "three"}, arr=np.arange(3.0))
    save_checkpoint(path, model, opt, sched, loader, **extra)
    after_save = mrandom.generator().random(4)

    model2, opt2, sched2, loader2 = _setup(seed=123)  # different init and random state
    got = load_checkpoint(path, model2, opt2, sched2, loader2)
    assert got.keys() == extra.keys()
    for k in ("epoch", "iteration", "best", "note", "hist", "pair", "by_int"):
        assert got[k] == extra[k] and type(got[k]) is type(extra[k]), k
    np.testing.assert_array_equal(got["arr"], extra["arr"])
    w1, w2 = _weights(model), _weights(model2)
    assert w1.keys() == w2.keys() and any("running_mean" in k for k in w1)
    for k in w1:
        np.testing.assert_array_equal(w1[k], w2[k], err_msg=k)
        assert w1[k].dtype == w2[k].dtype
    np.testing.assert_array_equal(mrandom.generator().random(4), after_save)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i in s1["state"]:
        np.testing.assert_array_equal(s1["state"][i]["momentum_buffer"],
                                      s2["state"][i]["momentum_buffer"])
    assert sched2.state_dict() == sched.state_dict()
    assert loader2.state_dict() == loader.state_dict()
    assert loader2.state_dict()["position"] == 5
    # and the restored loader's next batch is the original's batch 5 (a new iterator of the
    # original starts epoch 0 afresh, as in PyTorch)
    b2 = next(iter(loader2))
    b1 = list(loader)[5]
    np.testing.assert_array_equal(b1[0].numpy(), b2[0].numpy())
    np.testing.assert_array_equal(b1[1].numpy(), b2[1].numpy())


def test_model_only_and_plateau_state(tmp_path):
    model, opt, _, _ = _setup()
    plateau = ReduceLROnPlateau(opt, patience=0)
    plateau.step(1.0)
    plateau.step(2.0)
    save_checkpoint(tmp_path / "a.npz", model, opt, plateau)
    model2, opt2, _, _ = _setup(seed=1)
    plateau2 = ReduceLROnPlateau(opt2, patience=0)
    assert load_checkpoint(tmp_path / "a.npz", model2, opt2, plateau2) == {}
    # _setup's warm-up had set 0.1 * 0.1; the plateau's one reduction took it to 0.001
    assert plateau2.best == 1.0 and opt2.param_groups[0]["lr"] == pytest.approx(0.001)
    assert plateau2.state_dict() == plateau.state_dict()
    # a checkpoint without an optimizer refuses to fill one
    save_checkpoint(tmp_path / "m.npz", model)
    with pytest.raises(ValueError, match="no optimizer"):
        load_checkpoint(tmp_path / "m.npz", model2, opt2)
    load_checkpoint(tmp_path / "m.npz", model2)


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "junk.npz"
    p.write_bytes(b"not a zip file")
    model, *_ = _setup()
    with pytest.raises(ValueError, match="not a readable minidl checkpoint"):
        load_checkpoint(p, model)
    np.savez(tmp_path / "plain.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="not a minidl checkpoint"):
        read_checkpoint(tmp_path / "plain.npz")


def _listing(d):
    return sorted(os.listdir(d))


def test_failure_mid_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    model, opt, sched, loader = _setup()
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, model, opt, sched, loader, iteration=1)
    old = _weights(model)
    before = path.read_bytes()
    _train(model, opt, sched, loader, 2)

    def half_then_fail(f, arrays):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(ckpt_mod, "_write_npz", half_then_fail)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, model, opt, sched, loader, iteration=3)
    assert _listing(tmp_path) == ["ckpt.npz"]  # the temporary file is gone
    assert path.read_bytes() == before
    model2, opt2, sched2, loader2 = _setup(seed=9)
    assert load_checkpoint(path, model2, opt2, sched2, loader2) == {"iteration": 1}
    for k, v in _weights(model2).items():
        np.testing.assert_array_equal(v, old[k])


def test_failure_at_rename_and_bad_extra_keep_the_old_checkpoint(tmp_path, monkeypatch):
    model, opt, sched, loader = _setup()
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, model, opt, iteration=1)
    before = path.read_bytes()
    with pytest.raises(TypeError, match="cannot store"):
        save_checkpoint(path, model, opt, iteration=2, bad=object())
    assert path.read_bytes() == before and _listing(tmp_path) == ["ckpt.npz"]

    def no_rename(src, dst):
        raise OSError("rename failed (simulated)")
    monkeypatch.setattr(ckpt_mod.os, "replace", no_rename)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, model, opt, iteration=2)
    assert path.read_bytes() == before and _listing(tmp_path) == ["ckpt.npz"]


def test_process_killed_mid_write_keeps_the_old_checkpoint(tmp_path):
    """A hard crash (no exception handling runs): the old file is intact and loads."""
    path = tmp_path / "ckpt.npz"
    script = f"""
import os, sys
sys.path.insert(0, {os.path.join(REPO, 'tests')!r})
import minidl
from minidl.train import checkpoint, save_checkpoint
from train_helpers import nn_mlp
minidl.manual_seed(0)
model = nn_mlp()
save_checkpoint({str(path)!r}, model, iteration=1)
for p in model.parameters():
    p.data += 1
def crash(f, arrays):
    f.write(b"PK partial")
    f.flush()
    os._exit(3)
checkpoint._write_npz = crash
save_checkpoint({str(path)!r}, model, iteration=2)
"""
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == 3, r.stderr
    minidl.manual_seed(0)
    model = nn_mlp()
    expected = _weights(model)
    for p in model.parameters():
        p.data = p.data * 0
    assert load_checkpoint(path, model) == {"iteration": 1}
    for k, v in _weights(model).items():
        np.testing.assert_array_equal(v, expected[k])
    # the killed writer's temporary file is a hidden sibling; it never replaced the checkpoint
    assert all(n == "ckpt.npz" or (n.startswith(".ckpt.npz.") and n.endswith(".tmp"))
               for n in _listing(tmp_path))


def test_loads_onto_the_models_device_and_dtype(tmp_path, device):
    model, opt, _, _ = _setup()
    save_checkpoint(tmp_path / "c.npz", model, opt)
    model2, _, _, _ = _setup(seed=4)
    model2.to(device)
    opt2 = SGD(decay_groups(model2, 1e-3), lr=0.1, momentum=0.9)
    load_checkpoint(tmp_path / "c.npz", model2, opt2)
    for (k, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert b.device == device
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)


# ----------------------------------------------------------------------------------------------
# faults: kill -9 mid-write, damaged files, loads that fail part-way


def test_kill_9_mid_write_leaves_nothing_after_the_next_save(tmp_path):
    """A writer killed by SIGKILL mid-save cannot clean up; the next save to the same path
    removes its temporary file (its process is gone), and the old checkpoint stayed loadable."""
    import signal
    path = tmp_path / "ckpt.npz"
    script = f"""
import os, sys, time
sys.path.insert(0, {os.path.join(REPO, 'tests')!r})
import minidl
from minidl.train import checkpoint, save_checkpoint
from train_helpers import nn_mlp
minidl.manual_seed(0)
model = nn_mlp()
save_checkpoint({str(path)!r}, model, iteration=1)
def hang(f, arrays):
    f.write(b"PK" + bytes(1 << 20))   # a megabyte of a half-written zip
    f.flush()
    print("writing", flush=True)
    time.sleep(600)
checkpoint._write_npz = hang
save_checkpoint({str(path)!r}, model, iteration=2)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO))
    try:
        assert proc.stdout.readline().strip() == "writing", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    left = [n for n in _listing(tmp_path) if n != "ckpt.npz"]
    assert len(left) == 1 and left[0].startswith(".ckpt.npz.") and left[0].endswith(".tmp")
    assert os.path.getsize(tmp_path / left[0]) > 1 << 20  # the killed writer's partial file

    minidl.manual_seed(0)
    model = nn_mlp()
    assert load_checkpoint(path, model) == {"iteration": 1}
    save_checkpoint(path, model, iteration=3)
    assert _listing(tmp_path) == ["ckpt.npz"]
    assert load_checkpoint(path, model) == {"iteration": 3}


def test_temporary_file_of_a_live_writer_is_left_alone(tmp_path):
    """Only leftovers of processes that are gone are removed: a concurrent save's temporary file
    (here: one named after a live process) survives another save to the same path."""
    import signal
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        live = tmp_path / f".ckpt.npz.{ckpt_mod._host_tag()}.{proc.pid}.abc.tmp"
        live.write_bytes(b"in progress")
        other_host = tmp_path / ".ckpt.npz.some-other-host.1.abc.tmp"
        other_host.write_bytes(b"not ours to judge")
        model = nn_mlp()
        save_checkpoint(tmp_path / "ckpt.npz", model)
        assert _listing(tmp_path) == sorted([live.name, other_host.name, "ckpt.npz"])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        save_checkpoint(tmp_path / "ckpt.npz", model)
        assert _listing(tmp_path) == sorted([other_host.name, "ckpt.npz"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _unchanged_after_failed_load(path, expect_match):
    """load_checkpoint(path, ...) must raise a CheckpointError naming the file, and change
    nothing: weights, momentum buffers, scheduler, loader, random state."""
    model, opt, sched, loader = _setup(seed=77)
    _train(model, opt, sched, loader, 3)
    w, o = _weights(model), opt.state_dict()
    s, ld = sched.state_dict(), loader.state_dict()
    r = mrandom.get_state()
    with pytest.raises(ckpt_mod.CheckpointError, match=expect_match) as info:
        load_checkpoint(path, model, opt, sched, loader)
    assert str(path) in str(info.value)
    for k, v in _weights(model).items():
        np.testing.assert_array_equal(v, w[k], err_msg=k)
    o2 = opt.state_dict()
    assert o2["param_groups"] == o["param_groups"]
    for i in o["state"]:
        np.testing.assert_array_equal(o2["state"][i]["momentum_buffer"],
                                      o["state"][i]["momentum_buffer"])
    assert sched.state_dict() == s and loader.state_dict() == ld and mrandom.get_state() == r


def test_truncated_and_byte_flipped_files_are_named_and_change_nothing(tmp_path):
    model, opt, sched, loader = _setup()
    _train(model, opt, sched, loader, 2)
    good = tmp_path / "good.npz"
    save_checkpoint(good, model, opt, sched, loader, iteration=2)
    data = good.read_bytes()
    bad = tmp_path / "bad.npz"
    for cut in (0, 1, 22, len(data) // 3, len(data) // 2, len(data) - 23, len(data) - 1):
        bad.write_bytes(data[:cut])
        _unchanged_after_failed_load(bad, "not a readable minidl checkpoint")
    rng = np.random.default_rng(1)
    caught = 0
    for pos in rng.choice(len(data), size=25, replace=False):
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        bad.write_bytes(bytes(flipped))
        try:
            ms, meta = read_checkpoint(bad)
        except ckpt_mod.CheckpointError as e:
            assert str(bad) in str(e)
            caught += 1
            _unchanged_after_failed_load(bad, None)
            continue
        # a flip in a field nothing reads (a zip timestamp, ...) may pass: the content is intact
        ms0, meta0 = read_checkpoint(good)
        assert ms.keys() == ms0.keys() and meta["extra"] == meta0["extra"]
        for k in ms:
            np.testing.assert_array_equal(ms[k], ms0[k])
    assert caught >= 15  # the zip CRCs catch flips in the data


def _with_meta(tmp_path, good, text):
    """A copy of checkpoint ``good`` whose JSON metadata is replaced by ``text`` (bytes)."""
    with np.load(good) as z:
        arrays = {k: z[k] for k in z.files}
    arrays[ckpt_mod.META] = np.frombuffer(text, dtype=np.uint8)
    p = tmp_path / "meta.npz"
    np.savez(p, **arrays)
    return p


def test_damaged_metadata_is_named(tmp_path):
    model, opt, sched, loader = _setup()
    _train(model, opt, sched, loader, 2)  # momentum buffers exist (entries state/10 ...)
    good = tmp_path / "good.npz"
    save_checkpoint(good, model, opt, sched, loader)
    with np.load(good) as z:
        text = z[ckpt_mod.META].tobytes()
    cases = [
        (text[:len(text) // 2], "JSON metadata .* is damaged"),          # truncated JSON
        (text.replace(b'"format"', b'"form\xffat"'), "JSON metadata .* is damaged"),  # not UTF-8
        (text.replace(b"{", b"[", 1), "JSON metadata .* is damaged"),
        (b"[1, 2]", "not a JSON object"),
        (text.replace(b'"version": 1', b'"version": "1"'), "version '1'"),
        (text.replace(b'"state/10"', b'"state/999"'), "optimizer entry of the metadata"),
        (text.replace(b'"random"', b'"rondom"'), "no random state"),
        (text.replace(b'"model_keys": [', b'"model_keys": ["extra.weight", '), "model entries"),
    ]
    for damaged, match in cases:
        assert damaged != text
        _unchanged_after_failed_load(_with_meta(tmp_path, good, damaged), match)


def test_load_is_all_or_nothing(tmp_path):
    """A checkpoint whose model part fits but whose optimizer/scheduler/loader part does not:
    the model is not overwritten (PyTorch's separate load_state_dict calls would have loaded
    the model before the optimizer failed)."""
    model, opt, sched, loader = _setup()
    _train(model, opt, sched, loader, 4)
    # an optimizer over a different parameter grouping
    p1 = tmp_path / "opt.npz"
    save_checkpoint(p1, model, SGD(model.parameters(), lr=0.1, momentum=0.9), sched, loader)
    _unchanged_after_failed_load(p1, "cannot load the optimizer state .*param groups")
    # a scheduler without the warm-up's inner schedule
    p2 = tmp_path / "sched.npz"
    save_checkpoint(p2, model, opt, MultiStepLR(opt, [5, 9], 0.1), loader)
    _unchanged_after_failed_load(p2, "cannot load the scheduler state")
    # a loader of another batch size
    p3 = tmp_path / "loader.npz"
    x, y = blobs(n_per_class=8)
    save_checkpoint(p3, model, opt, sched, DataLoader(ArrayDataset(x, y), batch_size=2))
    _unchanged_after_failed_load(p3, "cannot load the loader state .*batch_size")
    # a model with other shapes: refused before anything is written
    from train_helpers import nn_mlp as mlp
    p4 = tmp_path / "model.npz"
    other = mlp(p_drop=0.3, batchnorm=False, prelu=True)
    save_checkpoint(p4, other, SGD(decay_groups(other, 1e-3), lr=0.1, momentum=0.9), sched,
                    loader)
    _unchanged_after_failed_load(p4, "does not fit|shape")


def test_missing_file_is_named(tmp_path):
    model = nn_mlp()
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        load_checkpoint(tmp_path / "nothere.npz", model)
