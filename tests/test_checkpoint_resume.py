"""Resume is bit-identical: on the CPU with the same seed, N steps straight == k steps (k in the
middle of an epoch), save, load in a NEW process, N - k more. The model has dropout, batch norm
(buffers) and PReLU; the data come from minidl.data.DataLoader with shuffling; SGD with momentum,
decay groups and a warm-up + multi-step schedule stepped per iteration."""
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r'''
import sys
import numpy as np
sys.path.insert(0, {tests!r})
import minidl
import minidl.functional as F
from minidl.data import DataLoader
from minidl.optim import SGD, decay_groups
from minidl.optim.lr_scheduler import MultiStepLR, Warmup
from minidl.train import load_checkpoint, save_checkpoint, train_one_epoch
from train_helpers import ArrayDataset, blobs, nn_mlp

mode, n_total, k, ckpt, out, style = sys.argv[1:]
n_total, k = int(n_total), int(k)
minidl.manual_seed(0)
model = nn_mlp(p_drop=0.5, batchnorm=True, prelu=True)
opt = SGD(decay_groups(model, 5e-4), lr=0.05, momentum=0.9, style=style)
sched = Warmup(opt, factor=0.2, until=lambda err: err is not None and err < 0.5,
               after=MultiStepLR(opt, [15, 25], 0.1))
x, y = blobs(n_per_class=12, spread=1.5)
loader = DataLoader(ArrayDataset(x, y), batch_size=8, shuffle=True, seed=7)  # 6 batches/epoch

step = 0
if mode.startswith("resume"):
    minidl.manual_seed(12345)  # whatever the process did before: the checkpoint decides
    extra = load_checkpoint(ckpt, model, opt, sched, loader,
                            restore_random=(mode == "resume"))
    step = extra["step"]
    assert extra["epoch"] == loader.state_dict()["epoch"]
stop_at = k if mode == "first" else n_total


def on_step(info):
    if info["step"] == stop_at:
        if mode == "first":
            save_checkpoint(ckpt, model, opt, sched, loader, step=info["step"],
                            epoch=info["epoch"])
        return True


while step < stop_at:
    r = train_one_epoch(model, loader, opt, F.cross_entropy, scheduler=sched,
                        scheduler_per="iter", progress=False, on_step=on_step,
                        start_step=step, epoch=loader.state_dict()["epoch"])
    step = r["step"]
np.savez(out, **{{name: t.numpy() for name, t in model.state_dict().items()}},
         __lr=np.array([g["lr"] for g in opt.param_groups]),
         __warm=np.array([-1 if sched.finished_at is None else sched.finished_at]))
'''


def _run(tmp_path, *args):
    script = tmp_path / "resume_script.py"
    script.write_text(SCRIPT.format(tests=os.path.join(REPO, "tests")))
    r = subprocess.run([sys.executable, str(script), *map(str, args)], cwd=REPO,
                       capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout + r.stderr


def _load(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.slow
@pytest.mark.parametrize("style", ["torch", "paper"])
def test_resume_in_a_new_process_is_bit_identical(tmp_path, style):
    n_total, k = 32, 9  # 6 batches per epoch: k is in the middle of the second epoch
    ckpt = tmp_path / "ckpt.npz"
    _run(tmp_path, "straight", n_total, k, ckpt, tmp_path / "straight.npz", style)
    _run(tmp_path, "first", n_total, k, ckpt, tmp_path / "first.npz", style)
    _run(tmp_path, "resume", n_total, k, ckpt, tmp_path / "resumed.npz", style)
    straight, first, resumed = (_load(tmp_path / f) for f in
                                ("straight.npz", "first.npz", "resumed.npz"))
    assert straight.keys() == resumed.keys()
    assert any("running_var" in name for name in straight)
    for name in straight:
        np.testing.assert_array_equal(resumed[name], straight[name], err_msg=name)
    # the test is not vacuous: training moved the weights after the checkpoint, the schedule
    # left its warm-up and passed both milestones (0.05 / 100)
    assert not np.array_equal(first["0.weight"], straight["0.weight"])
    assert straight["__warm"][0] > 0
    np.testing.assert_allclose(straight["__lr"], [0.0005, 0.0005])

    if style == "torch":
        # and it is sensitive: not restoring the dropout random state changes the result
        _run(tmp_path, "resume_norandom", n_total, k, ckpt, tmp_path / "norandom.npz", style)
        other = _load(tmp_path / "norandom.npz")
        assert not np.array_equal(other["0.weight"], straight["0.weight"])
