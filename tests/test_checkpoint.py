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
    # and the next batches are the same
    b1, b2 = next(iter(loader)), next(iter(loader2))
    np.testing.assert_array_equal(b1[0], b2[0])


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
