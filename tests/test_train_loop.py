"""train_one_epoch / evaluate: NaN stops with the step named and the weights untouched,
schedulers per iteration or epoch, early stop, evaluation (incl. ten-crop) against a direct
computation, devices, and convergence of a small MLP and a small CNN on tiny generated problems."""
import numpy as np
import pytest

import minidl
import minidl.functional as F
from minidl import nn
from minidl.data import DataLoader
from minidl.optim import SGD, decay_groups
from minidl.optim.lr_scheduler import StepLR, Warmup
from minidl.train import NonFiniteLossError, evaluate, train_one_epoch

from train_helpers import ArrayDataset, bars, blobs, nn_mlp


def _loader(x, y, batch_size=8, shuffle=True, seed=0):
    return DataLoader(ArrayDataset(x, y), batch_size=batch_size, shuffle=shuffle, seed=seed)


def _weights(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_names_the_step_and_keeps_the_weights(bad):
    minidl.manual_seed(0)
    model = nn_mlp()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = blobs(n_per_class=8)
    loader = _loader(x, y)  # 4 batches per epoch
    calls = []
    snapshots = []

    def loss_fn(out, target):
        calls.append(1)
        loss = F.cross_entropy(out, target)
        return loss * bad if len(calls) == 7 else loss

    def on_step(info):
        snapshots.append(_weights(model))

    r = train_one_epoch(model, loader, opt, loss_fn, progress=False, on_step=on_step, epoch=0)
    assert r["step"] == 4
    with pytest.raises(NonFiniteLossError, match=r"at step 7 \(epoch 1, batch 2") as ei:
        train_one_epoch(model, loader, opt, loss_fn, progress=False, on_step=on_step,
                        start_step=r["step"], epoch=1)
    assert ei.value.step == 7 and ei.value.batch == 2 and ei.value.epoch == 1
    assert str(bad) in str(ei.value) and "checkpoint" in str(ei.value)
    for k, v in _weights(model).items():  # the weights after step 6: step 7 changed nothing
        np.testing.assert_array_equal(v, snapshots[-1][k])


def test_scheduler_per_iter_and_per_epoch():
    x, y = blobs(n_per_class=8)
    for per, expected_epochs in (("iter", 4), ("epoch", 1)):
        minidl.manual_seed(0)
        model = nn_mlp()
        opt = SGD(model.parameters(), lr=1.0)
        sched = StepLR(opt, step_size=1, gamma=0.5)
        r = train_one_epoch(model, _loader(x, y), opt, F.cross_entropy, scheduler=sched,
                            scheduler_per=per, progress=False)
        assert sched.last_epoch == expected_epochs
        assert r["lr"] == pytest.approx(0.5 ** expected_epochs)
    with pytest.raises(ValueError, match="scheduler_per"):
        train_one_epoch(model, _loader(x, y), opt, F.cross_entropy, scheduler=sched,
                        scheduler_per="batch")


def test_metric_schedulers_get_the_batch_training_error():
    minidl.manual_seed(0)
    model = nn_mlp()
    opt = SGD(model.parameters(), lr=0.1)
    seen, recorded = [], []
    sched = Warmup(opt, factor=0.1, until=lambda err: seen.append(err) or False)
    x, y = blobs(n_per_class=8)
    train_one_epoch(model, _loader(x, y), opt, F.cross_entropy, scheduler=sched,
                    progress=False, on_step=lambda info: recorded.append(info["top1"]))
    assert seen == recorded and len(seen) == 4 and all(0 <= e <= 1 for e in seen)


def test_on_step_can_stop_mid_epoch_and_the_loader_state_resumes_there():
    minidl.manual_seed(0)
    model = nn_mlp()
    opt = SGD(model.parameters(), lr=0.1)
    x, y = blobs(n_per_class=8)
    loader = _loader(x, y)
    lrs = []
    r = train_one_epoch(model, loader, opt, F.cross_entropy, progress=False,
                        on_step=lambda info: lrs.append(info["lr"]) or info["batch"] == 1)
    assert r["stopped"] and r["steps"] == 2 and r["samples"] == 16 and lrs == [0.1, 0.1]
    state = loader.state_dict()
    assert state["position"] == 2 and state["epoch"] == 0
    # as in PyTorch, a new pass starts the epoch from its beginning ...
    again = train_one_epoch(model, loader, opt, F.cross_entropy, progress=False,
                            on_step=lambda info: info["batch"] == 0)
    assert again["steps"] == 1 and loader.state_dict()["epoch"] == 0
    # ... and the saved state resumes where the stop left off (what a checkpoint does)
    loader.load_state_dict(state)
    r2 = train_one_epoch(model, loader, opt, F.cross_entropy, progress=False,
                         start_step=r["step"])
    assert r2["steps"] == 2 and r2["step"] == 4 and r2["samples"] == 16 and not r2["stopped"]
    assert loader.state_dict() == {**loader.state_dict(), "epoch": 1, "position": 0}


def _direct_eval(model, x, y):
    with minidl.no_grad():
        out = model.eval()(minidl.Tensor(x)).numpy().astype(np.float64)
    z = out - out.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -logp[np.arange(len(y)), y].mean()
    top1 = np.mean(out.argmax(axis=1) != y)
    return loss, top1


def test_evaluate_matches_a_direct_computation_and_restores_the_mode(device):
    minidl.manual_seed(0)
    model = nn_mlp(p_drop=0.5, batchnorm=True)
    x, y = blobs(n_per_class=10, spread=3.0)
    opt = SGD(model.parameters(), lr=0.05)
    train_one_epoch(model, _loader(x, y), opt, F.cross_entropy, progress=False)
    loss, top1 = _direct_eval(model, x, y)
    model.train().to(device)
    r = evaluate(model, _loader(x, y, batch_size=7, shuffle=False), ks=(1, 3))
    assert model.training
    assert r["samples"] == 40
    assert r["loss"] == pytest.approx(loss, rel=1e-5)
    assert r["top1"] == pytest.approx(top1)
    assert 0 <= r["top3"] <= r["top1"]
    r2 = evaluate(model, _loader(x, y, batch_size=7, shuffle=False), device=device,
                  loss_fn=F.cross_entropy)
    assert r2["loss"] == pytest.approx(loss, rel=1e-5) and r2["top1"] == r["top1"]


def test_evaluate_ten_crop_averages_the_softmaxes():
    minidl.manual_seed(0)
    model = nn_mlp(n_in=8, n_out=4)
    rng = np.random.default_rng(0)
    views = rng.normal(size=(6, 10, 8)).astype(np.float32)  # (N, V, features)
    y = rng.integers(0, 4, 6)
    with minidl.no_grad():
        out = model.eval()(minidl.Tensor(views.reshape(60, 8))).numpy().astype(np.float64)
    p = np.exp(out - out.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    avg = p.reshape(6, 10, 4).mean(axis=1)
    loss = -np.log(avg[np.arange(6), y]).mean()
    top1 = np.mean(avg.argmax(axis=1) != y)

    class Views(ArrayDataset):
        pass
    loader = DataLoader(Views(views, y), batch_size=4)
    # ten_crop expects (N, V, C, H, W): give the features a (C, H, W) = (8, 1, 1) shape
    loader4d = DataLoader(Views(views.reshape(6, 10, 8, 1, 1), y), batch_size=4)

    class FlattenFirst(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.reshape(x.shape[0], -1))
    r = evaluate(FlattenFirst(model), loader4d, ten_crop=True)
    assert r["loss"] == pytest.approx(loss, rel=1e-5) and r["top1"] == pytest.approx(top1)
    with pytest.raises(ValueError, match="N, V, C, H, W"):
        evaluate(model, loader, ten_crop=True)


def test_training_runs_on_each_device(device):
    minidl.manual_seed(0)
    model = nn_mlp().to(device)
    opt = SGD(decay_groups(model, 1e-4), lr=0.1, momentum=0.9)
    x, y = blobs(n_per_class=8)
    before = _weights(model)
    r = train_one_epoch(model, _loader(x, y), opt, F.cross_entropy, progress=False)
    assert r["steps"] == 4 and np.isfinite(r["loss"])
    assert all(p.device == device for p in model.parameters())
    assert any(not np.array_equal(before[k], v) for k, v in _weights(model).items())


# -- convergence (not timing) -------------------------------------------------------------------

@pytest.mark.slow
def test_mlp_learns_blobs_to_zero_training_error():
    minidl.manual_seed(0)
    model = nn_mlp(n_in=8, hidden=32, n_out=4, p_drop=0.1)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = blobs(n_per_class=32, spread=1.0)
    loader = _loader(x, y, batch_size=16)
    first = None
    for epoch in range(30):
        r = train_one_epoch(model, loader, opt, F.cross_entropy, progress=False, epoch=epoch)
        first = r if first is None else first
    ev = evaluate(model, _loader(x, y, batch_size=64, shuffle=False))
    assert first["top1"] > 0.2  # it did start from chance-ish
    assert ev["top1"] == 0.0 and ev["loss"] < 0.05


@pytest.mark.slow
def test_cnn_learns_bars_to_near_zero_training_error():
    minidl.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 3))
    opt = SGD(decay_groups(model, 1e-4), lr=0.05, momentum=0.9)
    x, y = bars(n_per_class=20, size=8)
    loader = _loader(x, y, batch_size=12)
    first = None
    for epoch in range(25):
        r = train_one_epoch(model, loader, opt, F.cross_entropy, progress=False, epoch=epoch)
        first = r if first is None else first
    ev = evaluate(model, _loader(x, y, batch_size=60, shuffle=False))
    assert first["top1"] > 0.3
    assert ev["top1"] <= 0.02 and ev["loss"] < 0.1


def test_the_module_docstring_recipe_runs_and_resumes(tmp_path):
    """minidl.train.loop's example script, run for 3 epochs, then 2 more after a resume."""
    from minidl.optim.lr_scheduler import MultiStepLR
    from minidl.train import EpochLog, load_checkpoint, plot_curves, read_jsonl, save_checkpoint

    x, y = blobs(n_per_class=8)
    path, log_path = tmp_path / "ckpt.npz", tmp_path / "run.jsonl"

    def run(epochs, resume):
        minidl.manual_seed(0)
        model = nn_mlp(p_drop=0.2)
        opt = SGD(decay_groups(model, 1e-4), lr=0.1, momentum=0.9)
        sched = MultiStepLR(opt, [10], 0.1)
        train_loader = _loader(x, y, seed=1)
        val_loader = _loader(x, y, batch_size=32, shuffle=False)
        device = "cpu"
        step = 0
        if resume:
            step = load_checkpoint(path, model, opt, sched, train_loader)["step"]
        log = EpochLog(log_path)
        while train_loader.state_dict()["epoch"] < epochs:
            epoch = train_loader.state_dict()["epoch"]
            tr = train_one_epoch(model, train_loader, opt, F.cross_entropy, device,
                                 scheduler=sched, scheduler_per="iter", start_step=step,
                                 epoch=epoch, progress=False)
            step = tr["step"]
            va = evaluate(model, val_loader, device)
            log.append(epoch=epoch, lr=tr["lr"], train_loss=tr["loss"], train_top1=tr["top1"],
                       train_top5=tr["top5"], val_loss=va["loss"], val_top1=va["top1"],
                       val_top5=va["top5"])
            save_checkpoint(path, model, opt, sched, train_loader, step=step, epoch=epoch + 1)
        return step, opt

    assert run(3, resume=False)[0] == 12
    step, opt = run(5, resume=True)
    assert step == 20 and opt.param_groups[0]["lr"] == pytest.approx(0.01)
    assert [r["epoch"] for r in read_jsonl(log_path)] == [0, 1, 2, 3, 4]
    pytest.importorskip("matplotlib")
    assert plot_curves(log_path, tmp_path / "curves.png").exists()
