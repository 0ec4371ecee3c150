"""Learning-rate schedules: each schedule's rate sequence (hand-written expectations), the
conditional warm-up, state round trips; PyTorch's schedulers as an extra cross-check."""
import json

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minidl.nn import Parameter
from minidl.optim import SGD
from minidl.optim.lr_scheduler import (LRScheduler, MultiStepLR, ReduceLROnPlateau, StepLR,
                                       Warmup)

from conftest import require


def _opt(lr=0.1, groups=1):
    ps = [Parameter(np.zeros(2, np.float32)) for _ in range(groups)]
    return SGD([{"params": [p], "lr": lr * (i + 1)} for i, p in enumerate(ps)], lr=lr,
               momentum=0.9)


def _seq(sched, n, metrics=None):
    """Rates in effect for steps 0..n-1 (step 0 = after construction)."""
    out = [sched.get_last_lr()[0]]
    for i in range(n - 1):
        if metrics is None:
            sched.step()
        else:
            sched.step(metrics[i])
        out.append(sched.get_last_lr()[0])
        assert sched.optimizer.param_groups[0]["lr"] == out[-1]
    return out


def test_steplr_sequence():
    s = StepLR(_opt(), step_size=3, gamma=0.1)
    np.testing.assert_allclose(_seq(s, 8), [0.1] * 3 + [0.01] * 3 + [0.001] * 2, rtol=1e-12)


def test_multisteplr_sequence_resnet_cifar_style():
    opt = _opt(0.1, groups=2)
    s = MultiStepLR(opt, milestones=[5, 2], gamma=0.1)  # sorted internally
    np.testing.assert_allclose(_seq(s, 7), [0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001],
                               rtol=1e-12)
    np.testing.assert_allclose(s.get_last_lr(), [0.001, 0.002], rtol=1e-12)
    assert [g["initial_lr"] for g in opt.param_groups] == [0.1, 0.2]


def test_plateau_sequence_by_hand():
    opt = _opt(1.0)
    s = ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=2, threshold=0.0, cooldown=1,
                          min_lr=0.2)
    metrics = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.8]
    lrs = []
    for m in metrics:
        s.step(m)
        lrs.append(opt.param_groups[0]["lr"])
    # best 1.0, 0.9; bad 1, 2, 3 (> patience 2) -> 0.5 at the 5th step, cooldown 1 step;
    # the step after the cooldown starts counting again: bad 1, 2, 3 at steps 7, 8, 9 -> 0.25;
    # cooldown at 10; bad 1 at 11; 0.8 is better at 12. min_lr 0.2 never reached.
    assert lrs == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25]
    for _ in range(20):
        s.step(5.0)
    assert opt.param_groups[0]["lr"] == 0.2  # floored at min_lr
    assert s.get_last_lr() == [0.2]


def test_plateau_max_mode_and_abs_threshold():
    opt = _opt(1.0)
    s = ReduceLROnPlateau(opt, mode="max", factor=0.1, patience=0, threshold=0.1,
                          threshold_mode="abs")
    s.step(0.5)    # better than -inf
    s.step(0.55)   # not > 0.5 + 0.1: bad 1 > patience 0 -> reduce
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    s.step(0.7)    # > 0.5 + 0.1: better
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_constant_warmup_ending_on_a_condition_resnet110():
    opt = _opt(0.1)
    s = Warmup(opt, factor=0.1, until=lambda err: err is not None and err < 0.8)
    assert s.wants_metric
    errors = [0.9, 0.85, 0.81, 0.79, 0.9, 0.95]
    lrs = _seq(s, 7, errors)
    # 0.01 until the first step whose training error is below 80% (the 4th), then 0.1 for good
    np.testing.assert_allclose(lrs, [0.01, 0.01, 0.01, 0.01, 0.1, 0.1, 0.1], rtol=1e-12)
    assert s.finished and s.finished_at == 4


def test_constant_warmup_on_steps_and_linear_warmup():
    s = Warmup(_opt(0.1), factor=0.1, steps=3)
    np.testing.assert_allclose(_seq(s, 5), [0.01, 0.01, 0.01, 0.1, 0.1], rtol=1e-12)
    s = Warmup(_opt(0.1), factor=0.25, steps=4, mode="linear")
    # f(t) = 0.25 + 0.75 t / 4
    np.testing.assert_allclose(_seq(s, 6), [0.025, 0.04375, 0.0625, 0.08125, 0.1, 0.1],
                               rtol=1e-12)
    # a condition can end a linear warm-up early
    s = Warmup(_opt(0.1), factor=0.25, steps=4, mode="linear", until=lambda m: m == "go")
    np.testing.assert_allclose(_seq(s, 4, [None, "go", None]), [0.025, 0.04375, 0.1, 0.1],
                               rtol=1e-12)
    s = Warmup(_opt(0.1), factor=0.1, steps=0)
    assert s.finished and s.get_last_lr() == [0.1]


def test_warmup_followed_by_multistep_counts_from_the_start():
    opt = _opt(0.1, groups=2)
    main = MultiStepLR(opt, [3, 5], 0.1)
    s = Warmup(opt, factor=0.1, until=lambda e: e is not None and e < 0.8, after=main)
    errors = [0.9, 0.9, 0.9, 0.5, 0.5, 0.5, 0.5]
    lrs = _seq(s, 8, errors)
    # warm (x0.1) until step 4; the milestones 3 and 5 count from step 0:
    # t: 0 1 2 | 3 (milestone, still warm) | 4 (done) | 5 (milestone) ...
    np.testing.assert_allclose(lrs, [0.01, 0.01, 0.01, 0.001, 0.01, 0.001, 0.001, 0.001],
                               rtol=1e-12)
    np.testing.assert_allclose(s.get_last_lr(), [0.001, 0.002], rtol=1e-12)
    with pytest.raises(TypeError):
        Warmup(opt, until=lambda e: True, after=ReduceLROnPlateau(opt))


def test_warmup_argument_errors():
    with pytest.raises(ValueError, match="steps"):
        Warmup(_opt(), mode="linear", until=lambda m: True)
    with pytest.raises(ValueError, match="until"):
        Warmup(_opt())
    with pytest.raises(TypeError):
        Warmup(_opt(), until=0.8)


# -- state round trips -----------------------------------------------------------------------------

def _json(sd):
    return json.loads(json.dumps(sd))


def _make(kind, opt):
    if kind == "step":
        return StepLR(opt, 2, 0.5)
    if kind == "multi":
        return MultiStepLR(opt, [2, 4], 0.1)
    if kind == "plateau":
        return ReduceLROnPlateau(opt, factor=0.5, patience=1, cooldown=1)
    if kind == "warmup":
        return Warmup(opt, 0.1, steps=10, until=lambda e: e is not None and e < 0.3,
                      after=MultiStepLR(opt, [3, 6], 0.1))
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["step", "multi", "plateau", "warmup"])
def test_state_round_trip_continues_identically(kind):
    metrics = [0.9, 0.8, 0.85, 0.7, 0.75, 0.2, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1]
    opt = _opt(0.1, groups=2)
    s = _make(kind, opt)
    for m in metrics[:5]:
        s.step(m)
    saved_opt, saved = opt.state_dict(), _json(s.state_dict())
    opt2 = _opt(7.0, groups=2)
    opt2.load_state_dict(saved_opt)
    s2 = _make(kind, opt2)  # built fresh (it sets lrs), then restored
    s2.load_state_dict(saved)
    assert s2.get_last_lr() == s.get_last_lr()
    for m in metrics[5:]:
        s.step(m)
        s2.step(m)
        assert s2.get_last_lr() == s.get_last_lr()
        assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]


def test_every_schedule_is_an_lr_scheduler_with_its_factor_kept_as_torch_names_it():
    opt = _opt(0.1, groups=2)
    for kind in ("step", "multi", "plateau", "warmup"):
        assert isinstance(_make(kind, opt), LRScheduler)
    # ReduceLROnPlateau's and Warmup's `factor` is the float argument, not a method
    assert ReduceLROnPlateau(opt, factor=0.5).factor == 0.5
    assert Warmup(opt, 0.25, steps=3).factor == 0.25


# -- PyTorch cross-check (extra) ------------------------------------------------------------------

def _torch_opt(torch, lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr, momentum=0.9)


def test_step_and_multistep_match_torch():
    torch = require("torch")
    pairs = [(StepLR(_opt(), 3, 0.5), torch.optim.lr_scheduler.StepLR(_torch_opt(torch), 3, 0.5)),
             (MultiStepLR(_opt(), [2, 5, 5, 9], 0.3),
              torch.optim.lr_scheduler.MultiStepLR(_torch_opt(torch), [2, 5, 5, 9], 0.3))]
    for mine, theirs in pairs:
        for _ in range(12):
            assert mine.get_last_lr()[0] == pytest.approx(theirs.get_last_lr()[0], rel=1e-12)
            mine.step()
            theirs.optimizer.step()
            theirs.step()


@given(metrics=st.lists(st.floats(0, 1), min_size=1, max_size=30),
       mode=st.sampled_from(["min", "max"]), tmode=st.sampled_from(["rel", "abs"]),
       patience=st.integers(0, 3), cooldown=st.integers(0, 2),
       threshold=st.sampled_from([0.0, 1e-4, 0.05]), min_lr=st.sampled_from([0.0, 1e-3]))
def test_plateau_matches_torch(metrics, mode, tmode, patience, cooldown, threshold, min_lr):
    torch = require("torch")
    mine_opt = _opt(0.1)
    mine = ReduceLROnPlateau(mine_opt, mode=mode, factor=0.3, patience=patience,
                             threshold=threshold, threshold_mode=tmode, cooldown=cooldown,
                             min_lr=min_lr)
    topt = _torch_opt(torch)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(
        topt, mode=mode, factor=0.3, patience=patience, threshold=threshold,
        threshold_mode=tmode, cooldown=cooldown, min_lr=min_lr)
    for m in metrics:
        mine.step(m)
        theirs.step(m)
        assert mine_opt.param_groups[0]["lr"] == pytest.approx(topt.param_groups[0]["lr"],
                                                                rel=1e-12)
